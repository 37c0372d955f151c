/**
 * Where a webgpu training step's time goes, for the GPU job (stage 2b): the step split into
 * phases (forward; forward + backward; the full optimizer step) with the WGSL kernels, with the
 * attention kernels untiled, with all but the WGSL attention, and with tf ops only
 * (`ANTHOS_WGSL`), each with its wall time, the time JavaScript took to enqueue it, and the
 * process's CPU time (all threads: tfjs and wgpu); then the products of the model's shapes at
 * batch 256 (forward, dX, the weight gradient plainly and split as lib/model/kernels.ts does it),
 * a softmax and an elementwise op; then each WGSL kernel of a block at this batch (attention
 * forward and backward, tiled and untiled, q/k norm, LayerNorm + modulation and its gradients,
 * gated residual, SwiGLU gate, loss). The adapter has no timestamp queries, so GPU
 * time is wall time after the queue drains.
 *
 * Usage: deno run -A bench/gpu/ops.ts [batch=256]     (SMOKE=1: batch 2, tiny shapes)
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import process from "node:process";
import { loadBackend } from "../../lib/runtime/backend.ts";
import { DiT } from "../../lib/model/dit.ts";
import { flowBatch, flowLoss } from "../../lib/model/flow.ts";
import { SPLIT_K_ROWS, splitKWeightGrad } from "../../lib/model/kernels.ts";
import * as wgsl from "../../lib/model/kernels_webgpu.ts";
import { Trainer } from "../../lib/training/trainer.ts";
import { Rng } from "../../lib/runtime/rng.ts";

const smoke = Deno.env.get("SMOKE") === "1";
const batch = Number(Deno.args[0] ?? (smoke ? 2 : 256));
// Timed repetitions: few for the step phases (4 settings x 3 phases at ~1 s each on a GPU).
let reps = smoke ? 2 : 3;
const info = await loadBackend("webgpu");
console.log(`RESULT ops backend ${info.name} ${info.adapter ?? ""} batch ${batch}`);

/** Wall ms, enqueue ms and process CPU ms per call of `f` (its result is drained each time). */
async function timeIt(f: () => tf.Tensor | tf.Tensor[]): Promise<[number, number, number]> {
  const drain = async (r: tf.Tensor | tf.Tensor[]) => {
    const list = Array.isArray(r) ? r : [r];
    await list[0].data(); // the queue runs in order: the first result waits for all
    tf.dispose(list);
  };
  await drain(f()); // compile + warm
  let enqueue = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let k = 0; k < reps; k++) {
    const e0 = performance.now();
    const r = f();
    enqueue += performance.now() - e0;
    await drain(r);
  }
  const wall = (performance.now() - t0) / reps;
  const cpu = process.cpuUsage(cpu0);
  return [wall, enqueue / reps, (cpu.user + cpu.system) / 1000 / reps];
}

const fmt = (name: string, [wall, enq, cpu]: [number, number, number], extra = "") =>
  console.log(
    `RESULT ${name}: wall ${wall.toFixed(2)} ms, enqueue ${enq.toFixed(2)} ms, ` +
      `CPU ${cpu.toFixed(2)} ms${extra}`,
  );

// 1) A training step in phases, with each setting of ANTHOS_WGSL (read at each op).
const fullStep = new Map<string, number>(); // setting -> wall ms of the full step
for (const wgsl of ["", "untiled-attention", "no-attention", "0"]) {
  if (wgsl) Deno.env.set("ANTHOS_WGSL", wgsl);
  else Deno.env.delete("ANTHOS_WGSL");
  const label = {
    "": "WGSL kernels",
    "untiled-attention": "WGSL, attention untiled",
    "no-attention": "WGSL, tf attention",
    "0": "tf ops only",
  }[wgsl];
  const rng = new Rng(0);
  const model = DiT.create({}, { seed: 0 });
  const data = tf.tensor4d(rng.normalArray(batch * 32 * 32 * 4), [batch, 32, 32, 4]);
  const y = Int32Array.from({ length: batch }, (_, i) => i % 102);
  const b = flowBatch(data, { y, rng });
  fmt(`phase forward (${label})`, await timeIt(() => model.forward(b.xt, b.t, b.y)));
  const vars = model.trainableVariables();
  fmt(
    `phase forward+backward (${label})`,
    await timeIt(() => {
      const { value, grads } = tf.variableGrads(() => flowLoss(model, b), vars);
      return [value, ...Object.values(grads)];
    }),
  );
  model.dispose();
  const trainer = new Trainer({ batchSize: batch, warmupSteps: 0 });
  trainer.readEvery = 10;
  const ds = { latents: data, labels: y, metadata: {} };
  await trainer.fit(ds, { untilStep: 1 });
  await trainer.sync();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await trainer.fit(ds, { untilStep: 1 + reps });
  const enq = (performance.now() - t0) / reps;
  await trainer.sync();
  const wall = (performance.now() - t0) / reps;
  const cpu = process.cpuUsage(cpu0);
  fmt(`phase full step, clip + AdamW + EMA on the device (${label})`, [
    wall,
    enq,
    (cpu.user + cpu.system) / 1000 / reps,
  ]);
  fullStep.set(wgsl, wall);
  trainer.dispose();
  tf.dispose([data, b.xt, b.t, b.y, b.v]);
}
Deno.env.delete("ANTHOS_WGSL");
// The fastest setting for this device: the GPU job trains with it (bench/gpu/job.sh).
const [best] = [...fullStep].sort((a, b) => a[1] - b[1])[0];
console.log(`RESULT fastest full step: ANTHOS_WGSL=${best || "default"}`);

// 2) Products on the model's shapes (M = tokens of the batch), and memory-bound kernels.
reps = smoke ? 2 : 10;
{
  const m = batch * 256;
  const r = new Rng(1);
  const t = (s: number[]) => tf.tensor(r.normalArray(s.reduce((a, c) => a * c, 1)), s);
  const x96 = t([m, 96]);
  const x192 = t([m, 192]);
  const w = t([96, 96]);
  const w192 = t([96, 192]);
  const tf_ = (flop: number, ms: number) => `, ${(flop / ms / 1e9).toFixed(2)} TFLOP/s`;
  let s = await timeIt(() => tf.matMul(x96, w));
  fmt(`matmul fwd [${m},96]@[96,96]`, s, tf_(2 * m * 96 * 96, s[0]));
  s = await timeIt(() => tf.matMul(x96, w192));
  fmt(`matmul fwd [${m},96]@[96,192]`, s, tf_(2 * m * 96 * 192, s[0]));
  s = await timeIt(() => tf.matMul(x96, w, false, true));
  fmt(`matmul dX [${m},96]@[96,96]^T`, s, tf_(2 * m * 96 * 96, s[0]));
  s = await timeIt(() => tf.matMul(x96, x192, true, false));
  fmt(`matmul dW plain [96,${m}]@[${m},192]`, s, tf_(2 * m * 96 * 192, s[0]));
  s = await timeIt(() => splitKWeightGrad(x96 as tf.Tensor2D, x192 as tf.Tensor2D));
  fmt(
    `matmul dW split-K (${SPLIT_K_ROWS} rows/slice) [96,${m}]@[${m},192]`,
    s,
    tf_(2 * m * 96 * 192, s[0]),
  );
  const logits = t([Math.max(1, batch * 4) * 256, 256]);
  s = await timeIt(() => tf.softmax(logits));
  fmt(`softmax [${logits.shape}]`, s, `, ${(2 * logits.size * 4 / s[0] / 1e6).toFixed(0)} GB/s`);
  s = await timeIt(() => tf.add(x96, x96));
  fmt(`add [${m},96]`, s, `, ${(3 * x96.size * 4 / s[0] / 1e6).toFixed(0)} GB/s`);
  // Host cost of one small op (nothing to wait for on the GPU).
  const small = tf.ones([1024]);
  s = await timeIt(() => {
    let a = tf.add(small, small);
    for (let k = 0; k < 99; k++) {
      const b2 = tf.add(a, small);
      a.dispose();
      a = b2;
    }
    return a;
  });
  fmt("100 chained add[1024] (per op)", [s[0] / 100, s[1] / 100, s[2] / 100]);
  tf.dispose([x96, x192, w, w192, logits, small]);
}

// 3) The WGSL kernels of one block at this batch (lib/model/kernels_webgpu.ts): which one to
//    make faster next. GB/s counts the bytes each must read and write at least once.
{
  const n = batch;
  const r = new Rng(2);
  const t = (s: number[]) => tf.tensor(r.normalArray(s.reduce((a, c) => a * c, 1)), s);
  const x = t([n, 256, 96]);
  const mod = t([n, 6 * 96]);
  const qkv = t([n * 256, 288]);
  const o = t([n * 256, 96]);
  const ab = t([n * 256, 384]);
  const g = t([n * 256, 192]);
  const dims = { tokens: 256, heads: 4 };
  const gbs = (bytes: number, ms: number) => `, ${(bytes / ms / 1e6).toFixed(0)} GB/s`;
  const act = n * 256 * 96 * 4; // bytes of one [N, T, D] activation
  let s = await timeIt(() => wgsl.qkNormWgsl(qkv, 4, 1e-6));
  fmt(`wgsl q/k norm [${n * 256},288]`, s, gbs(6 * act, s[0]));
  for (const tiled of [true, false]) {
    const how = tiled ? "tiled" : "untiled";
    s = await timeIt(() => wgsl.attentionWgsl(qkv, dims, { tiled }));
    fmt(`wgsl attention forward, ${how} [${n * 256},288]`, s, gbs(4 * act, s[0]));
    s = await timeIt(() => wgsl.attentionGradWgsl(qkv, o, o, dims, { tiled }));
    fmt(`wgsl attention backward (stats + grad), ${how}`, s, gbs(8 * act, s[0]));
  }
  s = await timeIt(() => wgsl.layerNormWgsl(x, 1e-6, { mod, at: 0 }));
  fmt(`wgsl layerNorm + modulation [${n},256,96]`, s, gbs(2 * act, s[0]));
  s = await timeIt(() => wgsl.layerNormGradWgsl(x, x, 1e-6, { mod, at: 0 }));
  fmt(`wgsl layerNorm + modulation, dx`, s, gbs(3 * act, s[0]));
  const blocks: wgsl.TokenTerm[] = ["dy", "dy*a", "zero", "zero", "zero", "zero"];
  s = await timeIt(() => wgsl.tokenTermsWgsl(x, blocks, { x, mod: { mod, at: 0 }, eps: 1e-6 }));
  fmt(`wgsl d(modulation), per-sample token sums`, s, gbs(2 * act, s[0]));
  s = await timeIt(() => wgsl.gateWgsl(x, { mod, at: 2 }, x));
  fmt(`wgsl gated residual [${n},256,96]`, s, gbs(3 * act, s[0]));
  s = await timeIt(() => wgsl.swigluPackedWgsl(ab));
  fmt(`wgsl SwiGLU gate on packed [${n * 256},384]`, s, gbs(6 * act, s[0]));
  s = await timeIt(() => wgsl.swigluPackedWgsl(ab, g));
  fmt(`wgsl SwiGLU gate backward`, s, gbs(10 * act, s[0]));
  s = await timeIt(() => wgsl.meanSquaredErrorWgsl(x, x));
  fmt(`wgsl loss (one-workgroup reduction) over [${n},256,96]`, s, gbs(2 * act, s[0]));
  tf.dispose([x, mod, qkv, o, ab, g]);
}
