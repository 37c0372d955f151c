// DiT-Nano/2 against the golden vectors of ../shared/spec/golden (made by dit_ref.py), on every
// backend CI has: the forward pass, the loss, every gradient, Euler and Heun samples.
import * as tf from "@tensorflow/tfjs-core";
import { assert, assertEquals, assertLess, assertRejects, assertThrows } from "./_assert.ts";
import { type BackendName, loadBackend } from "../lib/runtime/backend.ts";
import { DiT, forwardMacs, type NamedParam, PRESETS, toTorchLayout } from "../lib/model/dit.ts";
import { sample } from "../lib/model/flow.ts";
import { parseSafetensors, type RawTensor, readSafetensors } from "../lib/io/safetensors.ts";
import { relErr, sharedPath, useBackend, withProducts } from "./_shared.ts";

const weightsPath = sharedPath("spec/golden/weights.safetensors");
const casePath = sharedPath("spec/golden/case.safetensors");

async function golden(): Promise<Map<string, RawTensor>> {
  return (await readSafetensors(casePath!)).tensors;
}
const t4 = (r: RawTensor) =>
  tf.tensor4d(r.data as Float32Array, r.shape as [number, number, number, number]);

/** A parameter's gradient in PyTorch layout, to compare with `grad.<key>`. */
async function torchGrad(np: NamedParam, g: tf.Tensor): Promise<Float32Array> {
  // data(), not dataSync(): webgpu only reads back asynchronously.
  const data = await g.data() as Float32Array;
  return toTorchLayout(data, np.variable.shape, np.torchShape, np.layout);
}

Deno.test("DiT-Nano/2 has 983,808 parameters, 959,232 trainable", async () => {
  await loadBackend("wasm");
  const m = DiT.create();
  assertEquals(m.paramCount(), 983_808);
  assertEquals(m.trainableVariables().reduce((a, v) => a + v.size, 0), 959_232);
  m.dispose();
});

Deno.test("forwardMacs: the products of the model's own weights, token by token, plus attention", async () => {
  await loadBackend("cpu");
  for (const name of ["DiT-Nano/2", "DiT-Pico/2"]) {
    const model = DiT.create(PRESETS[name]);
    const c = model.config;
    const tokens = (c.inputSize / c.patchSize) ** 2;
    // Each 2-D weight is one product: per token, or once per sample for the conditioning layers;
    // the class embedding is a lookup, not a product.
    let macs = 0;
    for (const p of model.namedParams()) {
      if (p.variable.rank !== 2 || p.key.startsWith("y_embedder")) continue;
      const once = p.key.startsWith("t_embedder") || p.key.includes("adaLN_modulation");
      macs += p.variable.size * (once ? 1 : tokens);
    }
    macs += c.depth * 2 * tokens * tokens * c.hiddenSize; // q k^T and p v, all heads
    assertEquals(forwardMacs(c), macs, name);
    model.dispose();
  }
  assertEquals(forwardMacs(), 218_225_664); // by hand: 256 x 556,032 + 384,000 + 6 x 2 x 256^2 x 96
});

Deno.test("adaLN-Zero init: a fresh model outputs exactly zero", async () => {
  await loadBackend("wasm");
  const m = DiT.create({}, { seed: 3 });
  const x = tf.randomNormal([2, 32, 32, 4], 0, 1, "float32", 1) as tf.Tensor4D;
  const v = m.forward(x, [0.3, 0.9], [5, 102]);
  const data = v.dataSync();
  assert(data.every((a) => a === 0), "fresh model output must be exactly 0");
  // Not a trivial model: the embedders are initialised (non-zero), only the output gates are 0.
  assert(m.params.xEmbedder.proj.weight.dataSync().some((a) => a !== 0));
  tf.dispose([x, v]);
  m.dispose();
});

// wasm twice: products on the system BLAS (FFI) and on XNNPACK; webgpu with its WGSL kernels,
// with all but the WGSL attention, and with tf ops only (ANTHOS_WGSL).
const parityRuns = [
  { backend: "wasm", products: "blas" },
  { backend: "wasm", products: "xnnpack" },
  { backend: "webgpu" },
  { backend: "webgpu", wgsl: "no-attention" },
  { backend: "webgpu", wgsl: "0" },
] as const;
for (const run of parityRuns) {
  const { backend } = run;
  const label = "products" in run
    ? `${backend} (products on ${run.products})`
    : "wgsl" in run
    ? `${backend} (ANTHOS_WGSL=${run.wgsl})`
    : backend;
  Deno.test({
    name: `golden parity on ${label}: forward, loss, every gradient, Euler and Heun`,
    ignore: !weightsPath || !casePath,
    fn: async () => {
      if ("products" in run) return await withProducts(run.products, () => parity(backend, label));
      if (!("wgsl" in run)) return await parity(backend, label);
      Deno.env.set("ANTHOS_WGSL", run.wgsl);
      try {
        await parity(backend, label);
      } finally {
        Deno.env.delete("ANTHOS_WGSL");
      }
    },
  });
}

async function parity(backend: BackendName, label: string): Promise<void> {
  if (!(await useBackend(backend))) return;
  const c = await golden();
  const m = await DiT.load(weightsPath!);
  const x = t4(c.get("x_t")!);
  const t = tf.tensor1d(c.get("t")!.data as Float32Array);
  const y = tf.tensor1d(c.get("y")!.data as Int32Array, "int32");
  const vt = t4(c.get("v_target")!);
  const before = tf.memory().numTensors;

  const v = m.forward(x, t, y);
  const eFwd = relErr(await v.data() as Float32Array, c.get("v_pred")!.data);
  assertLess(eFwd, 1e-4, `forward rel err ${eFwd}`);
  v.dispose();

  const vars = m.trainableVariables();
  const { value, grads } = tf.variableGrads(
    () => tf.mean(tf.square(tf.sub(m.forward(x, t, y), vt))) as tf.Scalar,
    vars,
  );
  const eLoss = relErr(await value.data(), c.get("loss")!.data);
  assertLess(eLoss, 1e-4, `loss rel err ${eLoss}`);
  let worst = 0;
  const named = m.namedParams().filter((p) => p.key !== "pos_embed");
  assertEquals(named.length, Object.keys(grads).length);
  for (const np of named) {
    const e = relErr(
      await torchGrad(np, grads[np.variable.name]),
      c.get(`grad.${np.key}`)!.data,
    );
    assertLess(e, 1e-4, `gradient of ${np.key}: rel err ${e}`);
    worst = Math.max(worst, e);
  }
  tf.dispose([value, ...Object.values(grads)]);
  // No tensor leaks across a forward + backward pass.
  assertEquals(tf.memory().numTensors, before);

  const steps = Number((await readSafetensors(casePath!)).metadata.steps);
  const cfg = Number((await readSafetensors(casePath!)).metadata.cfg_scale);
  const noise = t4(c.get("sample_noise")!);
  const ys = Array.from(c.get("sample_y")!.data);
  const errs: Record<string, number> = {};
  for (const sampler of ["euler", "heun"] as const) {
    const n0 = tf.memory().numTensors;
    const z = await sample(m, noise, ys, { steps, cfgScale: cfg, sampler });
    errs[sampler] = relErr(await z.data() as Float32Array, c.get(`sample_${sampler}`)!.data);
    assertLess(errs[sampler], 1e-4, `${sampler} rel err ${errs[sampler]}`);
    z.dispose();
    assertEquals(tf.memory().numTensors, n0, "sample() leaked tensors");
  }
  console.log(
    `${label}: forward ${eFwd.toExponential(2)}, loss ${eLoss.toExponential(2)}, ` +
      `worst grad ${worst.toExponential(2)}, euler ${errs.euler.toExponential(2)}, ` +
      `heun ${errs.heun.toExponential(2)}`,
  );
  tf.dispose([x, t, y, vt, noise]);
  m.dispose();
}

Deno.test({
  name: "weights round trip: load golden, save, reload -> bit-identical tensors",
  ignore: !weightsPath,
  fn: async () => {
    await loadBackend("wasm");
    const src = (await readSafetensors(weightsPath!)).tensors;
    const m = await DiT.load(weightsPath!);
    const dir = await Deno.makeTempDir();
    await m.save(`${dir}/w.safetensors`);
    const saved = (await readSafetensors(`${dir}/w.safetensors`)).tensors;
    assertEquals([...saved.keys()].sort(), [...src.keys()].sort());
    for (const [k, t] of src) {
      assertEquals(saved.get(k)!.shape, t.shape, k);
      assertEquals(saved.get(k)!.dtype, "F32");
      assert(
        (saved.get(k)!.data as Float32Array).every((v, i) => Object.is(v, t.data[i])),
        `${k} differs after save`,
      );
    }
    const again = await DiT.load(`${dir}/w.safetensors`);
    for (const [a, b] of again.namedParams().map((p, i) => [p, m.namedParams()[i]])) {
      assert(a.variable.dataSync().every((v, i) => Object.is(v, b.variable.dataSync()[i])), a.key);
    }
    m.dispose();
    again.dispose();
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test("bad input: wrong latent shape, class id out of range, bad t", async () => {
  await loadBackend("wasm");
  const m = DiT.create();
  const x = tf.zeros([2, 4, 32, 32]) as tf.Tensor4D; // NCHW by mistake
  assertThrows(() => m.forward(x, [0.5, 0.5], [1, 2]), Error, "expected [N, 32, 32, 4]");
  const ok = tf.zeros([2, 32, 32, 4]) as tf.Tensor4D;
  assertThrows(() => m.forward(ok, [0.5, 0.5], [1, 103]), Error, "class id 103 is out of range");
  assertThrows(() => m.forward(ok, [0.5, 0.5], [-1, 3]), Error, "out of range");
  assertThrows(() => m.forward(ok, [0.5], [1, 2]), Error, "t has shape [1], expected [2]");
  assertThrows(() => m.forward(ok, [0.5, 0.5], [1]), Error, "y has shape [1], expected [2]");
  await assertRejects(() => sample(m, ok, [1, 2], { steps: 0 }), Error, "steps");
  await assertRejects(
    // deno-lint-ignore no-explicit-any
    () => sample(m, ok, [1, 2], { sampler: "dpm" as any }),
    Error,
    'unknown sampler "dpm"',
  );
  tf.dispose([x, ok]);
  m.dispose();
});

Deno.test({
  name: "bad weights: corrupt header, truncated file, missing and mis-shaped keys",
  ignore: !weightsPath,
  fn: async () => {
    await loadBackend("wasm");
    const bytes = await Deno.readFile(weightsPath!);
    // Corrupt JSON header.
    const corrupt = bytes.slice();
    corrupt[10] = 0xff;
    corrupt[11] = 0x7b;
    await assertRejects(() => DiT.load(corrupt), Error, "JSON header");
    // Truncated data: the error names a tensor and the byte where it ends.
    await assertRejects(() => DiT.load(bytes.slice(0, bytes.length - 1000)), Error, "ends at byte");
    await assertRejects(() => DiT.load(bytes.slice(0, 5)), Error, "8-byte header");
    // Missing key and wrong shape, built from the real file's tensors.
    const { tensors } = parseSafetensors(bytes);
    const { serializeSafetensors } = await import("../lib/io/safetensors.ts");
    const rec = Object.fromEntries(
      [...tensors].map(([k, t]) => [k, { dtype: "F32" as const, shape: t.shape, data: t.data }]),
    );
    const missing = { ...rec };
    delete missing["blocks.3.mlp.w2.bias"];
    await assertRejects(
      () => DiT.load(serializeSafetensors(missing)),
      Error,
      'missing key "blocks.3.mlp.w2.bias"',
    );
    const wrong = {
      ...rec,
      "final_layer.linear.weight": {
        dtype: "F32" as const,
        shape: [8, 96],
        data: new Float32Array(768),
      },
    };
    await assertRejects(
      () => DiT.load(serializeSafetensors(wrong)),
      Error,
      'key "final_layer.linear.weight" has shape [8,96], expected [16,96]',
    );
    await assertRejects(() => DiT.load("/nonexistent/model.safetensors"), Error, "not found");
  },
});

Deno.test({
  name: "bad weights: NaN or Inf in a tensor is refused at load, naming the tensor",
  ignore: !weightsPath,
  fn: async () => {
    await loadBackend("wasm");
    const { tensors } = parseSafetensors(await Deno.readFile(weightsPath!));
    const { serializeSafetensors } = await import("../lib/io/safetensors.ts");
    const poisoned = (key: string, index: number, value: number) => {
      const rec = Object.fromEntries(
        [...tensors].map((
          [k, t],
        ) => [k, {
          dtype: "F32" as const,
          shape: t.shape,
          data: (t.data as Float32Array).slice(),
        }]),
      );
      rec[key].data[index] = value;
      return serializeSafetensors(rec);
    };
    const before = tf.memory().numTensors;
    const nan = await assertRejects(
      () => DiT.load(poisoned("final_layer.linear.weight", 5, NaN)),
      Error,
      'tensor "final_layer.linear.weight" has 1 NaN/Inf (first: NaN at index 5)',
    );
    assert(nan.message.includes("exportCheckpoint()"), nan.message);
    await assertRejects(
      () => DiT.load(poisoned("blocks.0.attn.qkv.weight", 0, -Infinity)),
      Error,
      'tensor "blocks.0.attn.qkv.weight" has 1 NaN/Inf (first: -Infinity at index 0)',
    );
    assertEquals(tf.memory().numTensors, before, "a refused load leaked tensors");
  },
});

Deno.test("sample: NaN/Inf latents are an error naming the cause, never a result", async () => {
  await loadBackend("wasm");
  const before = tf.memory().numTensors;
  const noise = tf.randomNormal([2, 32, 32, 4], 0, 1, "float32", 1) as tf.Tensor4D;
  const key = "final_layer.linear.weight";
  const param = (m: DiT) => m.namedParams().find((p) => p.key === key)!.variable;
  // Weights that hold a NaN (as a model built or trained in memory can): the weights are named.
  const broken = DiT.create({}, { seed: 1 });
  tf.tidy(() => param(broken).assign(tf.fill(param(broken).shape, NaN)));
  const e = await assertRejects(
    () => sample(broken, noise, [1, 2], { steps: 2, sampler: "euler" }),
    Error,
    "sampling produced 8192 NaN/Inf latent value(s) in a batch of 2",
  );
  assert(e.message.includes(`weights hold NaN/Inf (${key})`), e.message);
  broken.dispose();
  // Finite weights whose outputs overflow float32 (huge values, like a diverged run, pushed
  // further by the guidance scale): the guidance scale is named first, the weights second.
  const huge = DiT.create({}, { seed: 1 });
  tf.tidy(() => param(huge).assign(tf.fill(param(huge).shape, 3e38)));
  const h = await assertRejects(
    () => sample(huge, noise, [1, 2], { steps: 2, cfgScale: 50, sampler: "heun" }),
    Error,
    "the guidance scale 50 is likely too large",
  );
  assert(h.message.includes("check the weights"), h.message);
  huge.dispose();
  // Scales outside [0, 50] are refused up front (1e40 used to overflow into a flat image).
  const m = DiT.create();
  for (const s of [1e40, -1, 50.5, NaN]) {
    await assertRejects(
      () => sample(m, noise, [1, 2], { cfgScale: s }),
      RangeError,
      "cfgScale must be a number from 0 to 50",
    );
  }
  m.dispose();
  noise.dispose();
  assertEquals(tf.memory().numTensors, before, "tensors leaked");
});
