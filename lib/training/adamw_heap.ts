/**
 * Gradient clipping, AdamW and the EMA update in one pass over the wasm backend's heap.
 *
 * Why: the same update written with tfjs ops is ~10 kernels per parameter tensor (about 2,000
 * kernel calls per step for DiT-Nano/2), each a separate pass, many of them tiny; on a machine
 * whose cores are busy, every call also pays XNNPACK's thread hand-off. Here one JS loop reads
 * each gradient once and writes the new parameter, moments and EMA into fresh heap buffers that
 * the variables then take over (no in-place writes: tensors sharing the old data keep it).
 * Every operation is rounded to float32 in the order of the tfjs version (trainer.ts), so the
 * result is that of the tfjs ops to float32 rounding.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { timeOp } from "../runtime/opstats.ts";

/** The pieces of tfjs-backend-wasm 4.22's internals used here. */
interface HeapBackend {
  makeOutput(shape: number[], dtype: "float32"): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array;
}

/** AdamW + EMA hyper-parameters of one step. */
export interface AdamWStep {
  lr: number;
  /** 1-based step number (bias corrections). */
  t: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
  /** Clip the global gradient norm to this. */
  gradClip: number;
  emaDecay: number;
}

/** The optimizer state that {@link adamwOnHeap} updates. */
export interface AdamWState {
  params: tf.Variable[];
  m: tf.Variable[];
  v: tf.Variable[];
  ema: tf.Variable[];
}

/**
 * One clipped AdamW + EMA step on the wasm heap; returns the global gradient norm (before
 * clipping), or null when the active backend is not wasm (the caller then uses tfjs ops).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { adamwOnHeap } from "./adamw_heap.ts";
 * const p = tf.variable(tf.ones([3])), m = tf.variable(tf.zeros([3])), v = tf.variable(tf.zeros([3]));
 * const ema = tf.variable(tf.ones([3]));
 * const hyper = { lr: 1e-3, t: 1, betas: [0.9, 0.95] as [number, number], eps: 1e-8,
 *   weightDecay: 0, gradClip: 1, emaDecay: 0.999 };
 * const norm = adamwOnHeap({ params: [p], m: [m], v: [v], ema: [ema] }, [tf.ones([3])], hyper);
 * ```
 */
export function adamwOnHeap(state: AdamWState, grads: tf.Tensor[], h: AdamWStep): number | null {
  const be = tf.backend() as unknown as Partial<HeapBackend>;
  if (tf.getBackend() !== "wasm" || !be.makeOutput || !be.typedArrayFromHeap) return null;
  if (grads.some((g) => g.dtype !== "float32")) return null;
  return timeOp("AdamW + EMA pass (js)", () => step(be as HeapBackend, state, grads, h));
}

function step(be: HeapBackend, s: AdamWState, grads: tf.Tensor[], h: AdamWStep): number {
  const f = Math.fround;
  // The global norm in float64 (tfjs sums float32 squares per tensor; same value to rounding).
  let sq = 0;
  for (const g of grads) {
    const d = be.typedArrayFromHeap(g);
    for (let i = 0; i < d.length; i++) sq += d[i] * d[i];
  }
  const gradNorm = Math.sqrt(sq);
  // torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6)).
  const clip = Math.min(1, h.gradClip / (gradNorm + 1e-6));
  const [b1, b2] = h.betas;
  // The scalars as tfjs makes them: float32 tensors.
  const clipF = f(clip);
  const oneMinusB1 = f(1 - b1);
  const b2F = f(b2);
  const oneMinusB2 = f(1 - b2);
  const bc2Sqrt = f(Math.sqrt(1 - b2 ** h.t));
  const eps = f(h.eps);
  const stepSize = f(h.lr / (1 - b1 ** h.t));
  const decay = f(1 - h.lr * h.weightDecay);
  const emaRate = f(1 - h.emaDecay);
  const fresh = s.params.map((p) => [0, 1, 2, 3].map(() => be.makeOutput(p.shape, "float32")));
  s.params.forEach((p, k) => {
    // Views taken after all allocations above (an allocation may grow the heap).
    const g = be.typedArrayFromHeap(grads[k]);
    const [pOld, mOld, vOld, eOld] = [p, s.m[k], s.v[k], s.ema[k]].map((t) =>
      be.typedArrayFromHeap(t)
    );
    const [pNew, mNew, vNew, eNew] = fresh[k].map((t) => be.typedArrayFromHeap(t));
    for (let i = 0; i < g.length; i++) {
      const gi = clip < 1 ? f(g[i] * clipF) : g[i];
      const mi = f(mOld[i] + f(f(gi - mOld[i]) * oneMinusB1)); // m.lerp_(g, 1 - b1)
      const vi = f(f(vOld[i] * b2F) + f(f(gi * gi) * oneMinusB2));
      const denom = f(f(f(Math.sqrt(vi)) / bc2Sqrt) + eps);
      const decayed = h.weightDecay ? f(pOld[i] * decay) : pOld[i];
      const pi = f(decayed - f(f(mi / denom) * stepSize));
      pNew[i] = pi;
      mNew[i] = mi;
      vNew[i] = vi;
      eNew[i] = f(eOld[i] + f(f(pi - eOld[i]) * emaRate)); // ema.lerp_(p, 1 - decay)
    }
  });
  s.params.forEach((p, k) => {
    const [pt, mt, vt, et] = fresh[k].map((i) => tf.engine().makeTensorFromTensorInfo(i));
    p.assign(pt);
    s.m[k].assign(mt);
    s.v[k].assign(vt);
    s.ema[k].assign(et);
    tf.dispose([pt, mt, vt, et]); // the variables hold their own references
  });
  return gradNorm;
}
