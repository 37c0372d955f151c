// The trainer: one AdamW step against the golden vectors, learning on a small latent set,
// bit-exact resume, no tensor growth, and a clean stop on a non-finite loss.
import * as tf from "@tensorflow/tfjs-core";
import {
  assert,
  assertEquals,
  assertGreater,
  assertLess,
  assertRejects,
  assertThrows,
} from "./_assert.ts";
import { type BackendName, loadBackend } from "../lib/runtime/backend.ts";
import { DiT, toTorchLayout } from "../lib/model/dit.ts";
import type { LatentDataset } from "../lib/data/latents.ts";
import {
  learningRate,
  NonFiniteLossError,
  Trainer,
  WASM_MICRO_BATCH,
} from "../lib/training/trainer.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import { relErr, sharedPath, useBackend, withProducts } from "./_shared.ts";

const weightsPath = sharedPath("spec/golden/weights.safetensors");
const casePath = sharedPath("spec/golden/case.safetensors");

/** A learnable set for the tiny preset: each class is a fixed random 8x8x4 pattern. */
function toySet(n: number, classes: number, seed = 1): LatentDataset {
  const per = 8 * 8 * 4;
  const protos = tf.tidy(() =>
    tf.randomNormal([classes, per], 0, 1, "float32", seed).arraySync()
  ) as number[][];
  const data = new Float32Array(n * per);
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    labels[i] = i % classes;
    data.set(protos[labels[i]], i * per);
  }
  return { latents: tf.tensor4d(data, [n, 8, 8, 4]), labels, metadata: {} };
}

const tiny = { model: "DiT-Pico/2", batchSize: 8, lr: 3e-3, warmupSteps: 5, emaDecay: 0.9 };

Deno.test("learning rate: linear warmup from 0, then constant", () => {
  const c = { lr: 1e-4, warmupSteps: 1000 };
  assertLess(Math.abs(learningRate(1, c) - 1e-7), 1e-20);
  assertLess(Math.abs(learningRate(500, c) - 5e-5), 1e-20);
  assertEquals(learningRate(1000, c), 1e-4);
  assertEquals(learningRate(50_000, c), 1e-4);
});

// wasm twice: products on the system BLAS (FFI) and on XNNPACK.
const stepRuns = [
  { backend: "wasm", products: "blas" },
  { backend: "wasm", products: "xnnpack" },
  { backend: "webgpu" },
] as const;
for (const run of stepRuns) {
  const { backend } = run;
  const label = "products" in run ? `${backend} (products on ${run.products})` : backend;
  Deno.test({
    name:
      `one step reproduces after_step.* of the golden case on ${label} (clipping + AdamW, lr 1e-3)`,
    ignore: !weightsPath || !casePath,
    fn: () =>
      "products" in run
        ? withProducts(run.products, () => goldenStep(backend, label))
        : goldenStep(backend, label),
  });
}

async function goldenStep(backend: BackendName, label: string): Promise<void> {
  if (!(await useBackend(backend))) return;
  const c = (await readSafetensors(casePath!)).tensors;
  const trainer = new Trainer({ init: await DiT.load(weightsPath!), weightDecay: 0 });
  const t4 = (k: string) =>
    tf.tensor4d(
      c.get(k)!.data as Float32Array,
      c.get(k)!.shape as [number, number, number, number],
    );
  const batch = {
    xt: t4("x_t"),
    t: tf.tensor1d(c.get("t")!.data as Float32Array),
    y: tf.tensor1d(c.get("y")!.data as Int32Array, "int32"),
    v: t4("v_target"),
  };
  const info = await trainer.stepOnBatch(batch, { lr: 1e-3 });
  assertLess(relErr([info.loss], c.get("loss")!.data), 1e-5);
  assertLess(
    relErr([info.gradNorm], c.get("grad_norm")!.data),
    1e-4,
    `grad norm ${info.gradNorm}`,
  );
  let worst = 0;
  for (const np of trainer.model.namedParams()) {
    if (np.key === "pos_embed") continue;
    const ours = toTorchLayout(
      await np.variable.data() as Float32Array,
      np.variable.shape,
      np.torchShape,
      np.layout,
    );
    const e = relErr(ours, c.get(`after_step.${np.key}`)!.data);
    assertLess(e, 1e-4, `${np.key}: rel err ${e}`);
    worst = Math.max(worst, e);
  }
  console.log(
    `${label}: after_step worst rel err ${worst.toExponential(2)}, grad norm ${info.gradNorm}`,
  );
  tf.dispose(Object.values(batch));
  trainer.dispose();
}

Deno.test("the loss falls on a learnable set; EMA moves, the position table does not", async () => {
  await loadBackend("wasm");
  const data = toySet(32, 4);
  const trainer = new Trainer({ ...tiny, preset: "smoke", steps: 150 });
  const pos0 = await trainer.model.params.posEmbed.data();
  const ema0 = await trainer.ema.params.blocks[0].attn.qkv.weight.data();
  const losses: number[] = [];
  await trainer.fit(data, { onStep: (s) => void losses.push(s.loss) });
  const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
  const first = mean(losses.slice(0, 10));
  const last = mean(losses.slice(-10));
  console.log(`loss ${first.toFixed(3)} -> ${last.toFixed(3)} over ${losses.length} steps`);
  assertLess(last, 0.7 * first, `loss did not fall clearly: ${first} -> ${last}`);
  const pos1 = await trainer.model.params.posEmbed.data();
  assert(pos1.every((v, i) => v === pos0[i]), "the frozen position table changed");
  const ema1 = await trainer.ema.params.blocks[0].attn.qkv.weight.data();
  assertGreater(relErr(ema1, ema0), 1e-3, "EMA weights did not move");
  data.latents.dispose();
  trainer.dispose();
});

Deno.test("resume equivalence: N steps straight == N/2, checkpoint, resume, N/2 (bit for bit)", async () => {
  await loadBackend("wasm");
  const data = toySet(24, 3);
  const straight = new Trainer({ ...tiny, preset: "smoke", steps: 8 });
  await straight.fit(data);
  const half = new Trainer({ ...tiny, preset: "smoke", steps: 8 });
  await half.fit(data, { untilStep: 4 });
  const dir = await Deno.makeTempDir();
  await half.saveCheckpoint(`${dir}/ckpt.safetensors`);
  half.dispose();
  const resumed = await Trainer.resume(`${dir}/ckpt.safetensors`);
  assertEquals(resumed.step, 4);
  await resumed.fit(data);
  assertEquals(resumed.step, 8);
  for (const [a, b] of [[straight.model, resumed.model], [straight.ema, resumed.ema]]) {
    const pa = a.namedParams();
    const pb = b.namedParams();
    for (let i = 0; i < pa.length; i++) {
      const x = await pa[i].variable.data();
      const y = await pb[i].variable.data();
      assert(x.every((v, j) => Object.is(v, y[j])), `${pa[i].key} differs after resume`);
    }
  }
  straight.dispose();
  resumed.dispose();
  data.latents.dispose();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("no tensor growth across 50 training steps", async () => {
  await loadBackend("wasm");
  const data = toySet(16, 4);
  const trainer = new Trainer({ ...tiny, preset: "smoke", steps: 52, microBatch: 4 });
  await trainer.fit(data, { untilStep: 2 });
  const before = tf.memory().numTensors;
  await trainer.fit(data);
  assertEquals(tf.memory().numTensors, before);
  trainer.dispose();
  data.latents.dispose();
});

Deno.test("micro-batching gives the same step as one full batch (to float rounding)", async () => {
  await loadBackend("wasm");
  const data = toySet(16, 4);
  const full = new Trainer({ ...tiny, preset: "smoke", steps: 2 });
  // The session's chunk size, set after construction (as a resumed run may), not the config's.
  const micro = new Trainer({ ...tiny, preset: "smoke", steps: 2 });
  micro.microBatch = 3;
  assertEquals(micro.config.microBatch, full.config.microBatch); // what a checkpoint would store
  // Unless set, wasm runs at most WASM_MICRO_BATCH per chunk (its heap); other backends the config's.
  const big = new Trainer({ ...tiny, preset: "smoke", batchSize: 64, microBatch: 64 });
  assertEquals(big.microBatch, WASM_MICRO_BATCH);
  await loadBackend("cpu");
  assertEquals(big.microBatch, 64);
  await loadBackend("wasm");
  big.dispose();
  for (const bad of [0, 2.5, NaN]) {
    assertThrows(() => micro.microBatch = bad, Error, "microBatch must be a positive integer");
  }
  const a = await full.fit(data);
  const b = await micro.fit(data);
  assertLess(Math.abs(a!.loss - b!.loss) / a!.loss, 1e-5);
  const wa = await full.model.params.blocks[1].mlp.w1.weight.data();
  const wb = await micro.model.params.blocks[1].mlp.w1.weight.data();
  assertLess(relErr(wb, wa), 1e-4);
  full.dispose();
  micro.dispose();
  data.latents.dispose();
});

Deno.test("a NaN loss stops training with a clear error and leaves weights and checkpoint intact", async () => {
  await loadBackend("wasm");
  const data = toySet(8, 2);
  const trainer = new Trainer({ ...tiny, preset: "smoke", steps: 10 });
  await trainer.fit(data, { untilStep: 2 });
  const dir = await Deno.makeTempDir();
  const ckpt = `${dir}/ckpt.safetensors`;
  await trainer.saveCheckpoint(ckpt);
  const saved = await Deno.readFile(ckpt);
  const w0 = await trainer.model.params.finalLayer.linear.weight.data();
  const bad: LatentDataset = { ...data, latents: tf.fill([8, 8, 8, 4], NaN) as tf.Tensor4D };
  await assertRejects(() => trainer.fit(bad), NonFiniteLossError, "loss is NaN at step 3");
  assertEquals(trainer.step, 2);
  const w1 = await trainer.model.params.finalLayer.linear.weight.data();
  assert(w1.every((v, i) => Object.is(v, w0[i])), "weights changed on a NaN step");
  assertEquals(await Deno.readFile(ckpt), saved);
  trainer.dispose();
  tf.dispose([data.latents, bad.latents]);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("resume across backends: wasm -> checkpoint -> webgpu equals a straight wasm run (float tolerance)", async () => {
  await loadBackend("wasm");
  const data = toySet(24, 3);
  const straight = new Trainer({ ...tiny, preset: "smoke", steps: 8 });
  await straight.fit(data);
  const want = new Map<string, Float32Array>();
  for (const [prefix, model] of [["model.", straight.model], ["ema.", straight.ema]] as const) {
    for (const p of model.namedParams()) {
      want.set(prefix + p.key, await p.variable.data() as Float32Array);
    }
  }
  const moments = async (t: Trainer) => {
    const s = t.state();
    return await Promise.all([...s.adamM, ...s.adamV].map((m) => m.data()));
  };
  const wantMoments = await moments(straight);
  straight.dispose();
  const half = new Trainer({ ...tiny, preset: "smoke", steps: 8 });
  await half.fit(data, { untilStep: 4 });
  const dir = await Deno.makeTempDir();
  await half.saveCheckpoint(`${dir}/ckpt.safetensors`);
  half.dispose();
  const latents = await data.latents.data() as Float32Array;
  data.latents.dispose();
  if (!(await useBackend("webgpu"))) return;
  const gpuData: LatentDataset = { ...data, latents: tf.tensor4d(latents, [24, 8, 8, 4]) };
  const resumed = await Trainer.resume(`${dir}/ckpt.safetensors`);
  await resumed.fit(gpuData);
  await resumed.sync();
  assertEquals(resumed.step, 8);
  let worst = 0;
  for (const [prefix, model] of [["model.", resumed.model], ["ema.", resumed.ema]] as const) {
    for (const p of model.namedParams()) {
      const e = relErr(await p.variable.data(), want.get(prefix + p.key)!);
      worst = Math.max(worst, e);
      assertLess(e, 1e-4, `${prefix}${p.key}: rel err ${e} after a webgpu resume`);
    }
  }
  const gotMoments = await moments(resumed);
  gotMoments.forEach((m, i) => {
    const e = relErr(m, wantMoments[i]);
    worst = Math.max(worst, e);
    assertLess(e, 1e-3, `AdamW moment ${i}: rel err ${e} after a webgpu resume`);
  });
  console.log(`wasm -> webgpu resume: worst rel err ${worst.toExponential(2)} after 4 + 4 steps`);
  resumed.dispose();
  gpuData.latents.dispose();
  await loadBackend("wasm");
  await Deno.remove(dir, { recursive: true });
});
