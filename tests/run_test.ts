// The training run (lib/training/run.ts) on a tiny model: a time-limit stop + resume equals an
// uninterrupted run, more data = a recorded new phase (and resumes exactly inside it), the
// held-out slice never trains, and the reliability fixes of issue 11 (seeds, stale temps, the
// documented resume with its preset, no claimed checkpoint after an early NaN).
import * as tf from "@tensorflow/tfjs-core";
import { assert, assertEquals, assertRejects, assertThrows } from "./_assert.ts";
import { loadBackend } from "../lib/runtime/backend.ts";
import { saveLatents } from "../lib/data/latents.ts";
import { Rng } from "../lib/runtime/rng.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import { Trainer } from "../lib/training/trainer.ts";
import {
  readLedger,
  readLog,
  RunChangedError,
  stopMessage,
  TrainingRun,
} from "../lib/training/run.ts";
import { checkpointInfo } from "../lib/training/checkpoint.ts";
import { readWeightsConfig } from "../lib/model/weights.ts";

const tiny = { model: "DiT-Pico/2", batchSize: 4, lr: 3e-3, warmupSteps: 2, emaDecay: 0.9 };

/** A latent cache of `n` 8x8x4 latents; latent i is filled with `offset + i` (plus nothing). */
async function makeCache(
  path: string,
  n: number,
  options: { offset?: number; source?: string } = {},
) {
  const per = 8 * 8 * 4;
  const rng = new Rng(n);
  const latents = new Float32Array(n * per);
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    labels[i] = rng.int(4);
    latents.fill((options.offset ?? 0) + i, i * per, (i + 1) * per);
  }
  await saveLatents(path, { latents, labels, shape: [n, 8, 8, 4] }, {
    dtype: "F32",
    metadata: { vae: "taesd", scaling_factor: "0.18215", source: options.source ?? "test" },
  });
}

async function tensorsOf(path: string): Promise<Map<string, Float32Array>> {
  const { tensors } = await readSafetensors(path);
  return new Map([...tensors].map(([k, t]) => [k, t.data as Float32Array]));
}

function assertSameBits(a: Map<string, Float32Array>, b: Map<string, Float32Array>): void {
  assertEquals([...a.keys()].sort(), [...b.keys()].sort());
  for (const [k, x] of a) {
    const y = b.get(k)!;
    assert(x.every((v, i) => Object.is(v, y[i])), `${k} differs`);
  }
}

/** wasm on, a temp folder, and a cache of `n` latents in it (`a.safetensors`). */
async function oneCache(n: number): Promise<{ tmp: string; cache: string }> {
  await loadBackend("wasm");
  const tmp = await Deno.makeTempDir();
  const cache = `${tmp}/a.safetensors`;
  await makeCache(cache, n);
  return { tmp, cache };
}

const open = (dir: string, data: string[], extra: Record<string, unknown> = {}) =>
  TrainingRun.open(dir, { preset: "smoke", data, overrides: tiny, ...extra });

Deno.test("a time-limit stop + resume equals an uninterrupted run (weights, EMA, moments, log)", async () => {
  const { tmp, cache } = await oneCache(40);
  const straight = await open(`${tmp}/straight`, [cache], { steps: 6 });
  assertEquals((await straight.train()).reason, "done");
  straight.dispose();

  const cut = await open(`${tmp}/cut`, [cache], { steps: 6 });
  const first = await cut.train({ deadline: Date.now() }); // already due: stops after one step
  assertEquals([first.reason, first.step, first.savedAt], ["time", 1, 1]);
  await cut.finish({ backend: { name: "wasm" }, result: first, evalItems: 2 });
  cut.dispose();
  const again = await open(`${tmp}/cut`, [], { resume: true, data: undefined, steps: 6 });
  const second = await again.train();
  assertEquals([second.reason, second.fromStep, second.step], ["done", 1, 6]);
  await again.finish({ backend: { name: "wasm" }, result: second, evalItems: 2 });
  again.dispose();

  assertSameBits(
    await tensorsOf(`${tmp}/cut/checkpoint.safetensors`),
    await tensorsOf(`${tmp}/straight/checkpoint.safetensors`),
  );
  const [la, lb] = [
    await readLog(`${tmp}/cut/log.jsonl`),
    await readLog(`${tmp}/straight/log.jsonl`),
  ];
  assertEquals(
    la.map((l) => [l.step, l.loss, l.gradNorm]),
    lb.map((l) => [l.step, l.loss, l.gradNorm]),
  );
  const ledger = await readLedger(`${tmp}/cut/ledger.jsonl`);
  assertEquals(ledger.map((e) => [e.slot, e.stepsFrom, e.stepsTo, e.stop]), [[1, 0, 1, "time"], [
    2,
    1,
    6,
    "done",
  ]]);
  const cfg = await readWeightsConfig(`${tmp}/cut/export/config.json`);
  assertEquals(cfg.training?.step, 6);
  assertEquals(cfg.training?.samplesSeen, 6 * 4);
  assertEquals(cfg.training?.backend, "wasm");
  assertEquals(cfg.training?.data, [cache]);
  assert(typeof cfg.training?.valLoss === "number" && cfg.training.valLoss > 0, "valLoss");
  assertEquals(tf.memory().numTensors, 0);
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("the held-out slice never trains; validation loss is logged beside the loss", async () => {
  const { tmp, cache } = await oneCache(300);
  const run = await open(`${tmp}/r`, [cache], { steps: 2 });
  const held = run.split.heldOut;
  assert(held.length > 0, "2% of 300 latents are held out");
  assertEquals(run.trainSet.labels.length + held.length, 300);
  // Latent i is filled with i: the training set's values are exactly the split's train indices.
  const first = tf.tidy(() =>
    tf.slice(tf.reshape(run.trainSet.latents, [-1, 256]), [0, 0], [-1, 1])
  );
  const values = await first.data();
  first.dispose();
  const trained = new Set(Array.from(values));
  for (const i of held) assert(!trained.has(i), `held-out latent ${i} is in the training set`);
  assertEquals(trained.size, 300 - held.length);
  const r = await run.train({ evalEvery: 1, evalItems: 3 });
  const log = await readLog(run.folder.log);
  assertEquals(log.map((l) => typeof l.valLoss), ["number", "number"]);
  assertEquals(log[0].valBuckets?.length, 10);
  assertEquals(r.step, 2);
  run.dispose();
  assertEquals(tf.memory().numTensors, 0);
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("more data on resume is a recorded new phase, and a resume inside it is exact", async () => {
  await loadBackend("wasm");
  const tmp = await Deno.makeTempDir();
  const [a, b] = [`${tmp}/a.safetensors`, `${tmp}/b.safetensors`];
  await makeCache(a, 24, { source: "first" });
  await makeCache(b, 16, { offset: 100, source: "second" });
  // Two runs: 3 steps on a, then a + b to 7 (one straight, one cut at 5 and resumed).
  for (const name of ["x", "y"]) {
    const r0 = await open(`${tmp}/${name}`, [a], { steps: 3 });
    await r0.train();
    r0.dispose();
    const r1 = await open(`${tmp}/${name}`, [a, b], { resume: true, steps: name === "x" ? 7 : 5 });
    assert(r1.newPhase, "a new phase");
    assertEquals(r1.info.phases.map((p) => [p.index, p.startStep, p.data]), [[0, 0, [a]], [1, 3, [
      a,
      b,
    ]]]);
    assertEquals(r1.trainer.dataOrder, { startStep: 3, size: r1.trainSet.labels.length });
    await r1.train();
    r1.dispose();
  }
  const r2 = await open(`${tmp}/y`, [], { resume: true, data: undefined, steps: 7 });
  assert(!r2.newPhase, "same data, same phase");
  assertEquals(r2.info.data, [a, b]);
  await r2.train();
  r2.dispose();
  assertSameBits(
    await tensorsOf(`${tmp}/x/checkpoint.safetensors`),
    await tensorsOf(`${tmp}/y/checkpoint.safetensors`),
  );
  assertEquals((await checkpointInfo(`${tmp}/y/checkpoint.safetensors`)).dataOrder.startStep, 3);
  const info = JSON.parse(await Deno.readTextFile(`${tmp}/y/run.json`));
  assertEquals(info.phases.length, 2);
  // Dropping a file is not "more data".
  await assertRejects(() => open(`${tmp}/y`, [b], { resume: true }), Error, "can only add data");
  assertEquals(tf.memory().numTensors, 0);
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("issue 11.3: the trainer's seed must be an integer in 0..2^32-1 (no silent aliasing)", () => {
  for (const seed of [2 ** 32, -1, 1.5]) {
    assertThrows(() => new Trainer({ ...tiny, preset: "smoke", seed }), RangeError, "4294967295");
  }
  const t = new Trainer({ ...tiny, preset: "smoke", seed: 2 ** 32 - 1 });
  t.dispose();
});

Deno.test("issue 11.9: stale temp files of our pattern are removed when the run opens again", async () => {
  const { tmp, cache } = await oneCache(16);
  const run = await open(`${tmp}/r`, [cache], { steps: 1 });
  await run.train();
  run.dispose();
  // What a kill -9 during a checkpoint write leaves (pid 4194305 is above Linux's pid_max).
  const stale = `${tmp}/r/checkpoint.safetensors.4194305.0badf00d.tmp`;
  const other = `${tmp}/r/notes.tmp`;
  await Deno.writeFile(stale, new Uint8Array(1000));
  await Deno.writeTextFile(other, "mine");
  const again = await open(`${tmp}/r`, [], { resume: true, data: undefined, steps: 2 });
  assertEquals(again.removedTemps, [stale]);
  assert(again.describe("wasm").includes(stale));
  again.dispose();
  await assertRejects(() => Deno.stat(stale), Deno.errors.NotFound);
  assertEquals(await Deno.readTextFile(other), "mine");
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("issue 11.10: resuming with the run's own preset (the --help example) is no change", async () => {
  const { tmp, cache } = await oneCache(16);
  const run = await open(`${tmp}/r`, [cache], { steps: 1 });
  await run.train();
  run.dispose();
  const same = await open(`${tmp}/r`, [], {
    resume: true,
    data: undefined,
    steps: 2,
    fixed: { preset: "smoke", batchSize: 4, model: "DiT-Pico/2" },
  });
  same.dispose();
  const e = await assertRejects(
    () =>
      open(`${tmp}/r`, [], { resume: true, data: undefined, fixed: { preset: "anthos", lr: 1 } }),
    RunChangedError,
    "cannot change",
  );
  assertEquals((e as RunChangedError).keys, ["preset", "lr"]);
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("issue 11.11: a NaN before any checkpoint says none exists (no 'step 0 is kept')", async () => {
  const { tmp, cache } = await oneCache(16);
  const run = await TrainingRun.open(`${tmp}/r`, {
    preset: "smoke",
    data: [cache],
    steps: 30,
    overrides: { ...tiny, lr: 1e30, warmupSteps: 0 },
  });
  const r = await run.train({ ckptEvery: 0 });
  assertEquals([r.reason, r.savedAt], ["nonfinite", null]);
  const msg = stopMessage(r, run.folder.dir);
  assert(msg.includes("no checkpoint was written yet"), msg);
  assert(!msg.includes("is kept"), msg);
  await assertRejects(() => Deno.stat(run.folder.checkpoint), Deno.errors.NotFound);
  run.dispose();
  const withCkpt = stopMessage({ ...r, savedAt: 3 }, run.folder.dir);
  assert(withCkpt.includes("the last checkpoint (step 3) is kept"), withCkpt);
  await Deno.remove(tmp, { recursive: true });
});
