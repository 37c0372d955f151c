// The one-pass AdamW + EMA of the wasm backend (lib/training/adamw_heap.ts) against torch's
// formulas in float64 plain JS: clipping on and off, weight decay, three steps, no leaks.
import * as tf from "@tensorflow/tfjs-core";
import { assertEquals, assertLess } from "./_assert.ts";
import { loadBackend } from "../lib/runtime/backend.ts";
import { adamwOnHeap, type AdamWStep } from "../lib/training/adamw_heap.ts";
import { Rng } from "../lib/runtime/rng.ts";
import { relErr } from "./_shared.ts";

/** torch.optim.AdamW + clip_grad_norm_ + EMA lerp, in float64. */
function reference(
  s: { p: number[][]; m: number[][]; v: number[][]; e: number[][] },
  grads: Float32Array[],
  h: AdamWStep,
): number {
  const norm = Math.sqrt(grads.reduce((t, g) => t + g.reduce((u, x) => u + x * x, 0), 0));
  const clip = Math.min(1, h.gradClip / (norm + 1e-6));
  const [b1, b2] = h.betas;
  grads.forEach((g, k) => {
    for (let i = 0; i < g.length; i++) {
      const gi = g[i] * clip;
      s.m[k][i] = b1 * s.m[k][i] + (1 - b1) * gi;
      s.v[k][i] = b2 * s.v[k][i] + (1 - b2) * gi * gi;
      const denom = Math.sqrt(s.v[k][i]) / Math.sqrt(1 - b2 ** h.t) + h.eps;
      s.p[k][i] = s.p[k][i] * (1 - h.lr * h.weightDecay) -
        (h.lr / (1 - b1 ** h.t)) * (s.m[k][i] / denom);
      s.e[k][i] += (s.p[k][i] - s.e[k][i]) * (1 - h.emaDecay);
    }
  });
  return norm;
}

for (const gradClip of [1e3, 0.5]) {
  Deno.test(`AdamW + EMA on the heap equals torch's formulas (clip ${gradClip})`, async () => {
    await loadBackend("wasm");
    const rng = new Rng(11);
    const shapes = [[7, 5], [13], [3, 4, 2]];
    const init = shapes.map((sh) => rng.normalArray(sh.reduce((a, b) => a * b, 1)));
    const state = {
      params: init.map((d, k) => tf.variable(tf.tensor(d, shapes[k]))),
      m: shapes.map((sh) => tf.variable(tf.zeros(sh))),
      v: shapes.map((sh) => tf.variable(tf.zeros(sh))),
      ema: init.map((d, k) => tf.variable(tf.tensor(d, shapes[k]))),
    };
    const ref = {
      p: init.map((d) => Array.from(d)),
      m: init.map((d) => Array.from(d, () => 0)),
      v: init.map((d) => Array.from(d, () => 0)),
      e: init.map((d) => Array.from(d)),
    };
    const n0 = tf.memory().numTensors;
    for (let t = 1; t <= 3; t++) {
      const g = shapes.map((sh) => rng.normalArray(sh.reduce((a, b) => a * b, 1)));
      const grads = g.map((d, k) => tf.tensor(d, shapes[k]));
      const h: AdamWStep = {
        lr: 1e-2,
        t,
        betas: [0.9, 0.95],
        eps: 1e-8,
        weightDecay: 0.1,
        gradClip,
        emaDecay: 0.9,
      };
      const norm = adamwOnHeap(state, grads, h);
      const want = reference(ref, g, h);
      assertLess(Math.abs(norm! - want) / want, 1e-6, `norm ${norm} vs ${want}`);
      tf.dispose(grads);
    }
    assertEquals(tf.memory().numTensors, n0, "no tensors left behind");
    for (
      const [key, vars] of [["p", state.params], ["m", state.m], ["v", state.v], [
        "e",
        state.ema,
      ]] as const
    ) {
      for (let k = 0; k < shapes.length; k++) {
        const e = relErr(await vars[k].data() as Float32Array, ref[key][k]);
        assertLess(e, 1e-5, `${key}[${k}]: rel err ${e}`);
      }
    }
    tf.dispose([...state.params, ...state.m, ...state.v, ...state.ema]);
  });
}

Deno.test("AdamW on the heap declines on other backends (the trainer then uses tfjs ops)", async () => {
  await loadBackend("cpu");
  const p = tf.variable(tf.ones([2]));
  const got = adamwOnHeap({ params: [p], m: [p], v: [p], ema: [p] }, [tf.ones([2])], {
    lr: 1,
    t: 1,
    betas: [0.9, 0.95],
    eps: 1e-8,
    weightDecay: 0,
    gradClip: 1,
    emaDecay: 0.9,
  });
  assertEquals(got, null);
  await loadBackend("wasm");
});
