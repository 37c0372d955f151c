/**
 * Fused DiT layers with hand-written gradients, for the `wasm` and `webgpu` backends.
 *
 * Why this file exists: on wasm every tfjs kernel call costs a pass over memory, tensors saved for
 * the backward pass are copied (tfjs clones them), and autodiff of broadcasts ends in slow
 * reductions. Each op here runs a few kernels forward, saves only what its closed-form gradient
 * needs, and keeps every product a plain XNNPACK product (see matmul.ts). The maths is exactly
 * that of the plain tf ops in dit.ts (to float32 rounding); dit.ts uses these ops on wasm and on
 * webgpu (where they also mean fewer dispatches; see `fusedLayers()` in dit.ts), plain autodiff
 * elsewhere. On webgpu the row-wise and elementwise ones run as one WGSL kernel each way
 * (kernels_webgpu.ts), the adaLN modulation is read in place from the adaLN output (no split),
 * w1 and w2 of the SwiGLU run as one packed product, and weight gradients sum fixed slices (no
 * atomics).
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { activeBlas } from "../runtime/blas.ts";
import { timeOp } from "../runtime/opstats.ts";
import { env } from "../runtime/env.ts";
import { gemm, transposeLast } from "./matmul.ts";
import {
  attentionGradWgsl,
  attentionWgsl,
  columnSumWgsl,
  elementwiseWgsl,
  gateWgsl,
  layerNormGradWgsl,
  layerNormWgsl,
  MAX_HEAD_DIM,
  meanSquaredErrorWgsl,
  type ModulationWgsl,
  qkNormWgsl,
  sigmoidWgsl,
  sinusoidsWgsl,
  straightPathWgsl,
  swigluPackedWgsl,
  type TokenTerm,
  tokenTermsWgsl,
} from "./kernels_webgpu.ts";
import { silu } from "./ops.ts";

/** What a fused op's body returns: its value and the closed-form gradient. */
interface Fused {
  value: tf.Tensor;
  gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor[];
}

/** The engine method that tf.customGrad's `save` copies each saved tensor with. */
interface CloningEngine {
  clone(x: tf.Tensor): tf.Tensor;
}

/**
 * Saves tensors for the backward pass as views, not copies. tf.customGrad's `save` clones each
 * tensor (an Identity kernel: a full copy on wasm) so the engine may dispose the saved ones after
 * backprop without freeing the caller's tensors; a Reshape to the same shape gives the same
 * guarantee for free, since the wasm backend reference-counts the shared data.
 */
function saveViews(save: tf.GradSaveFunc, tensors: tf.Tensor[]): void {
  const engine = tf.engine() as unknown as CloningEngine;
  engine.clone = (x: tf.Tensor) => tf.reshape(x, x.shape); // a view sharing x's data
  try {
    save(tensors);
  } finally {
    delete (engine as Partial<CloningEngine>).clone; // back to the prototype's copying clone
  }
}

/**
 * tf.customGrad with a positional signature `(inputs..., save)` (tfjs types it as a rest list);
 * `save` keeps views (see {@link saveViews}).
 */
function fused(
  // deno-lint-ignore no-explicit-any
  body: (...args: any[]) => Fused,
): (...inputs: tf.Tensor[]) => tf.Tensor {
  // deno-lint-ignore no-explicit-any
  const viewing = (...args: any[]) => {
    const save = args[args.length - 1] as tf.GradSaveFunc;
    args[args.length - 1] = (tensors: tf.Tensor[]) => saveViews(save, tensors);
    return body(...args);
  };
  // deno-lint-ignore no-explicit-any
  return tf.customGrad(viewing as any) as unknown as (...inputs: tf.Tensor[]) => tf.Tensor;
}

/**
 * Sum over all leading axes as one product `ones[1, M] @ x[M, C]` -> `[C]` (fast on XNNPACK). On
 * webgpu a WGSL column sum, a long M in slices first (see {@link splitKWeightGrad}): tfjs-webgpu
 * would run `ones[1, M] @ x` for 128 < C <= 256 as its atomic split-K, whose sums vary run to run.
 */
function sumRows(x: tf.Tensor2D): tf.Tensor1D {
  const [m, c] = x.shape;
  if (onWebGpu()) return sumRowsBlocks(x, 1)[0]; // [C]
  return tf.reshape(gemm(tf.ones([1, m]), x), [c]); // [C]
}

/** The pieces of tfjs-backend-wasm 4.22's internals that {@link sumTokens} uses. */
interface HeapBackend {
  makeOutput(shape: number[], dtype: "float32"): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array;
}

/**
 * Sum over the token axis, `[N, T, D] -> [N, D]`, of `a` or of the product `a * b`. On wasm a
 * Sum over a middle axis is a transpose then a reduce; here one pass in JS over the backend's
 * heap does it (same order of additions as tfjs's Sum, float32 throughout) and fuses the product.
 */
function sumTokens(a: tf.Tensor, b?: tf.Tensor): tf.Tensor2D {
  return timeOp("token sums (js)", () => sumTokensNow(a, b));
}

function sumTokensNow(a: tf.Tensor, b?: tf.Tensor): tf.Tensor2D {
  const be = tf.backend() as unknown as Partial<HeapBackend>;
  if (!be.makeOutput || !be.typedArrayFromHeap) return tf.sum(b ? tf.mul(a, b) : a, 1);
  const [n, t, d] = a.shape;
  const out = tf.engine().makeTensorFromTensorInfo(be.makeOutput([n, d], "float32"));
  // Views made after the allocation (which may grow, and so move, the heap).
  const src = be.typedArrayFromHeap(a);
  const src2 = b ? be.typedArrayFromHeap(b) : null;
  const dst = be.typedArrayFromHeap(out);
  const acc = new Float32Array(d);
  for (let i = 0; i < n; i++) {
    acc.fill(0);
    for (let j = 0; j < t; j++) {
      const row = (i * t + j) * d;
      if (src2) { for (let k = 0; k < d; k++) acc[k] += Math.fround(src[row + k] * src2[row + k]); }
      else for (let k = 0; k < d; k++) acc[k] += src[row + k];
    }
    dst.set(acc, i * d);
  }
  return out as tf.Tensor2D; // [N, D]
}

/** Transposes made during the current backward pass, by the data they transpose. */
const transposes = new WeakMap<object, tf.Tensor>();

/**
 * `transposeLast(x)`, made once per backward pass for inputs shared by several linears (q, k
 * and v read the same activations, as do w1 and w2): saved views of one input share its data,
 * so the cache is keyed by `dataId`. Cached transposes die with the backward pass's scope.
 */
function sharedTranspose(x: tf.Tensor): tf.Tensor {
  const hit = transposes.get(x.dataId);
  if (hit && !hit.isDisposed && hit.size === x.size) return hit;
  const xt = transposeLast(x);
  transposes.set(x.dataId, xt);
  return xt;
}

/**
 * The weight and bias gradients `x^T @ dy` and `sum_rows(dy)` of a linear (`x [M, in]`,
 * `dy [M, out]`). XNNPACK packs a product's right operand on each call unless it is the very
 * tensor it packed last (slow for `[M, n]` with M in the thousands). When `out <= in`, dy is
 * packed once for both products. When `out > in`, x is the narrower one: `(dy^T @ x)^T` packs x
 * (w1 and w2 share it, packed once), and the bias sum is `dy^T @ ones[M, 1]`.
 */
function linearParamGrads(x: tf.Tensor2D, dy: tf.Tensor2D): [tf.Tensor2D, tf.Tensor1D] {
  const [m, out] = dy.shape;
  // tfjs-webgpu reads a transposed operand in place: no transposes, one product (split when long).
  if (tf.getBackend() === "webgpu") return [splitKWeightGrad(x, dy), sumRows(dy)];
  // The system BLAS reads x transposed in place and packs nothing across calls.
  if (activeBlas()) return [gemm(x, dy, { transposeA: true }) as tf.Tensor2D, sumRows(dy)];
  if (out <= x.shape[1]) {
    return [tf.matMul(sharedTranspose(x) as tf.Tensor2D, dy), sumRows(dy)]; // [in, out], [out]
  }
  const dyT = transposeLast(dy) as tf.Tensor2D; // [out, M]
  return [
    transposeLast(tf.matMul(dyT, x)) as tf.Tensor2D, // [in, out]
    tf.reshape(tf.matMul(dyT, tf.ones([m, 1])), [out]) as tf.Tensor1D, // [out]
  ];
}

/** Rows of one slice of a split-K weight gradient on webgpu ({@link splitKWeightGrad}). */
export const SPLIT_K_ROWS = 1024;

/** How many slices of {@link SPLIT_K_ROWS} rows `x^T @ dy` splits into on webgpu (1: none). */
function splitKSlices(m: number): number {
  return m >= 2 * SPLIT_K_ROWS && m % SPLIT_K_ROWS === 0 ? m / SPLIT_K_ROWS : 1;
}

/**
 * `x^T @ dy` for `x [M, in]`, `dy [M, out]` with M in the tens of thousands (every token of the
 * batch) as one batched product over slices of {@link SPLIT_K_ROWS} rows, then a sum of the
 * slices. Why: tfjs-webgpu tiles a product's output by 32 x 32, so a `[96, 96]` weight gradient
 * runs on 9 workgroups that each loop over all M rows, leaving a big GPU idle (its own split-K
 * starts only at <= 8 tiles and adds with atomics, so its sums change from run to run). Sliced,
 * the same product runs on M / 1024 times as many workgroups, and the sum order is fixed.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { splitKWeightGrad } from "./kernels.ts";
 * const g = splitKWeightGrad(tf.ones([2048, 3]), tf.ones([2048, 2])); // [3, 2], every value 2048
 * if (g.shape.join() !== "3,2" || g.dataSync().some((v) => v !== 2048)) throw new Error("x^T dy");
 * ```
 */
export function splitKWeightGrad(x: tf.Tensor2D, dy: tf.Tensor2D): tf.Tensor2D {
  const [m, i] = x.shape;
  const o = dy.shape[1];
  const s = splitKSlices(m);
  if (s === 1) return tf.matMul(x, dy, true, false); // [in, out]
  return tf.tidy(() => tf.reshape(sumRows(sliceProducts(x, dy)), [i, o])); // [in, out]
}

/** `x^T @ dy` of each slice of {@link SPLIT_K_ROWS} rows as one batched product: `[S, in * out]`. */
function sliceProducts(x: tf.Tensor2D, dy: tf.Tensor2D): tf.Tensor2D {
  const [m, i] = x.shape;
  const o = dy.shape[1];
  const s = splitKSlices(m);
  const r = m / s;
  const parts = tf.matMul(tf.reshape(x, [s, r, i]), tf.reshape(dy, [s, r, o]), true, false); // [S, in, out]
  return tf.reshape(parts, [s, i * o]);
}

/**
 * `x^T @ dy` for a `dy [M, k*w]` made of `k` column blocks, as `k` weight gradients `[in, w]`:
 * one product (split as {@link splitKWeightGrad} splits it), then one column sum per block
 * (webgpu).
 */
function weightGradBlocks(x: tf.Tensor2D, dy: tf.Tensor2D, k: number): tf.Tensor2D[] {
  const i = x.shape[1];
  const o = dy.shape[1];
  const w = o / k;
  return tf.tidy(() => {
    const flat = sliceProducts(x, dy); // [S, in * k*w]
    return Array.from({ length: k }, (_, b) =>
      tf.reshape(
        columnSumWgsl(flat, { blocks: i, width: w, pitch: o, from: b * w }),
        [i, w],
      ) as tf.Tensor2D // [in, w]
    );
  });
}

/**
 * Column sums of `dy [M, k*w]` as `k` bias gradients `[w]`, rows in slices first when long
 * (webgpu; `k` = 1 is {@link sumRows}).
 */
function sumRowsBlocks(dy: tf.Tensor2D, k: number): tf.Tensor1D[] {
  const [m, o] = dy.shape;
  const w = o / k;
  const s = splitKSlices(m);
  return tf.tidy(() => {
    const partial = s === 1 ? dy : columnSumWgsl(dy, { slices: s }) as tf.Tensor2D; // [S, k*w]
    return Array.from(
      { length: k },
      (_, b) => columnSumWgsl(partial, { from: b * w, width: w }) as tf.Tensor1D, // [w]
    );
  });
}

const linearOp = fused(
  (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    save([x, w]);
    return {
      value: gemm(x, w, { bias: b }), // [M, out]
      gradFunc: (dy: tf.Tensor, [sx, sw]: tf.Tensor[]) => [
        gemm(dy, sw, { transposeB: true }), // dx = dy @ W^T  [M, in]
        ...linearParamGrads(sx as tf.Tensor2D, dy as tf.Tensor2D), // dW [in, out], db [out]
      ],
    };
  },
);

const linearNoBiasOp = fused((x: tf.Tensor, w: tf.Tensor, save: tf.GradSaveFunc) => {
  save([x, w]);
  return {
    value: gemm(x, w), // [M, out]
    gradFunc: (dy: tf.Tensor, [sx, sw]: tf.Tensor[]) => [
      gemm(dy, sw, { transposeB: true }), // dx = dy @ W^T  [M, in]
      splitKWeightGrad(sx as tf.Tensor2D, dy as tf.Tensor2D), // dW [in, out]
    ],
  };
});

/**
 * `x @ w` for `x [M, in]`, `w [in, out]` (a bias-free linear) with the weight gradient of
 * {@link splitKWeightGrad}: on webgpu tfjs's own product gradient would run a long `x^T @ dy` as
 * its split-K, which adds with atomics (sums that change from run to run).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { linearNoBias } from "./kernels.ts";
 * const y = linearNoBias(tf.ones([2, 3]), tf.ones([3, 4])); // [2, 4], every value 3
 * if (y.dataSync().some((v) => v !== 3)) throw new Error("x @ w");
 * ```
 */
export function linearNoBias(x: tf.Tensor2D, w: tf.Tensor2D): tf.Tensor2D {
  return linearNoBiasOp(x, w) as tf.Tensor2D;
}

/**
 * `x @ w + b` for `x [M, in]`, `w [in, out]`, `b [out]`; the bias gradient is a ones-row product.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { linearBias } from "./kernels.ts";
 * const y = linearBias(tf.ones([2, 3]), tf.ones([3, 4]), tf.zeros([4])); // [2, 4], every value 3
 * if (y.dataSync().some((v) => v !== 3)) throw new Error("x @ w + b");
 * ```
 */
export function linearBias(x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D): tf.Tensor2D {
  return linearOp(x, w, b) as tf.Tensor2D;
}

const layerNormOp = fused((x: tf.Tensor, eps: tf.Tensor, save: tf.GradSaveFunc) => {
  // tf.moments' maths, with x - mean made once (moments also copies x through a Cast).
  const centred = tf.sub(x, tf.mean(x, -1, true)); // [..., D]
  const rstd = tf.rsqrt(tf.add(tf.mean(tf.square(centred), -1, true), eps)); // [..., 1]
  const y = tf.mul(centred, rstd); // [..., D]
  save([y, rstd]);
  return {
    value: y,
    // dx = rstd * (dy - mean(dy) - y * mean(dy * y)), all over the last axis.
    gradFunc: (dy: tf.Tensor, [sy, sr]: tf.Tensor[]) => {
      const centred = tf.sub(dy, tf.mean(dy, -1, true));
      const dx = tf.mul(tf.sub(centred, tf.mul(sy, tf.mean(tf.mul(dy, sy), -1, true))), sr);
      return [dx, tf.zerosLike(eps)];
    },
  };
});

/**
 * LayerNorm over the last axis without affine parameters (biased variance, as torch).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { layerNormFused } from "./kernels.ts";
 * const y = layerNormFused(tf.tensor2d([[1, 2, 3]]), 1e-6); // ~[[-1.22, 0, 1.22]]
 * if (Math.abs(y.dataSync()[0] + 1.2247) > 1e-3) throw new Error("normalised");
 * ```
 */
export function layerNormFused(x: tf.Tensor, eps: number): tf.Tensor {
  if (onWebGpu()) return layerNormGpuOp(eps)(x);
  return layerNormOp(x, tf.scalar(eps));
}

/**
 * Whether the WGSL kernels of kernels_webgpu.ts apply: on webgpu, unless `ANTHOS_WGSL=0` (then
 * the tf-op versions run, e.g. to compare speeds on one GPU).
 */
function onWebGpu(): boolean {
  return tf.getBackend() === "webgpu" && env.wgsl !== "0";
}

/**
 * Whether the WGSL attention ({@link attentionQkv}) runs: on webgpu unless `ANTHOS_WGSL` is `0`
 * or `no-attention` (`untiled-attention`: its kernels without workgroup tiles). It trades the head
 * transposes and `[T, T]` maps for recomputed scores, so which one is faster depends on the device
 * (the GPU job's stage 2b measures every setting).
 *
 * @example
 * ```ts
 * import { wgslAttention } from "./kernels.ts";
 * if (wgslAttention()) throw new Error("false unless the webgpu backend is active");
 * ```
 */
export function wgslAttention(): boolean {
  return onWebGpu() && env.wgsl !== "no-attention";
}

/** The webgpu LayerNorm op for one epsilon (a closure value: no scalar tensor to read back). */
function layerNormGpuOp(eps: number): (x: tf.Tensor) => tf.Tensor {
  let op = gpuLayerNorms.get(eps);
  if (!op) {
    op = fused((x: tf.Tensor, save: tf.GradSaveFunc) => {
      save([x]);
      return {
        value: layerNormWgsl(x, eps), // [..., D]
        gradFunc: (dy: tf.Tensor, [sx]: tf.Tensor[]) => [layerNormGradWgsl(sx, dy, eps)],
      };
    });
    gpuLayerNorms.set(eps, op);
  }
  return op;
}
const gpuLayerNorms = new Map<number, (x: tf.Tensor) => tf.Tensor>();

/**
 * The webgpu modulated LayerNorm for one (eps, shift block, affine or not): inputs `x`, `mod` and,
 * when affine, LayerNorm's weight and bias. Backward: dx, the gradient of `mod` with only its
 * shift and scale blocks non-zero (one kernel, in place: no split to undo), and for the affine
 * weight and bias per-sample parts summed over samples.
 */
function layerNormModulateGpuOp(eps: number, at: number, affine: boolean) {
  const key = `${eps}/${at}/${affine}`;
  let op = gpuModulatedNorms.get(key);
  if (op) return op;
  const spec = (mod: tf.Tensor, w?: tf.Tensor, b?: tf.Tensor): ModulationWgsl => ({
    mod,
    at,
    affine: w && b ? { weight: w, bias: b } : undefined,
  });
  op = fused((...args: tf.Tensor[]) => {
    const save = args.pop() as unknown as tf.GradSaveFunc;
    const [x, mod, w, b] = args;
    save(args);
    return {
      value: layerNormWgsl(x, eps, spec(mod, w, b)), // [N, T, D]
      gradFunc: (dy: tf.Tensor, [sx, sm, sw, sb]: tf.Tensor[]) => {
        const m = spec(sm, sw, sb);
        const blocks: TokenTerm[] = Array(sm.shape[1]! / sx.shape[2]!).fill("zero");
        blocks[at] = "dy"; // dshift = sum over tokens of dy
        blocks[at + 1] = "dy*a"; // dscale = sum over tokens of dy * (the modulation's input)
        const grads = [
          layerNormGradWgsl(sx, dy, eps, m), // dx  [N, T, D]
          tokenTermsWgsl(dy, blocks, { x: sx, mod: m, eps }), // dmod  [N, k*D]
        ];
        if (!affine) return grads;
        // dweight, dbias: sums over all rows of dy * (1 + scale) * LN(x) and dy * (1 + scale).
        const parts = tokenTermsWgsl(dy, ["dy*s*ln", "dy*s"], { x: sx, mod: m, eps }); // [N, 2D]
        const d = sx.shape[2]!;
        grads.push(
          columnSumWgsl(parts as tf.Tensor2D, { width: d }), // [D]
          columnSumWgsl(parts as tf.Tensor2D, { from: d }), // [D]
        );
        parts.dispose();
        return grads;
      },
    };
  });
  gpuModulatedNorms.set(key, op);
  return op;
}
const gpuModulatedNorms = new Map<string, (...x: tf.Tensor[]) => tf.Tensor>();

/**
 * Column block `at` (`d` wide) of a per-sample `[N, k*d]` tensor (an adaLN output's shift, scale
 * or gate), `[N, d]`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { columnBlock } from "./kernels.ts";
 * const g = columnBlock(tf.tensor2d([[1, 2, 3, 4, 5, 6]]), 2, 2); // [[5, 6]]
 * if (g.dataSync().join() !== "5,6") throw new Error("the third block of two columns");
 * ```
 */
export function columnBlock(mod: tf.Tensor, at: number, d: number): tf.Tensor2D {
  return tf.slice(mod, [0, at * d], [mod.shape[0], d]) as tf.Tensor2D;
}

/**
 * `a * (1 + scale) + shift` with `a = layerNorm(x)` (times `affine.weight` plus `affine.bias` when
 * given): the adaLN input of each attention and MLP branch, and the final layer's. `x [N, T, D]`;
 * shift and scale are column blocks `at` and `at + 1` of the adaLN output `mod [N, k*D]`. On webgpu
 * read in place by one WGSL kernel (backward: dx, the gradient of `mod`, and two sums when
 * affine); elsewhere the blocks are sliced out and {@link layerNormFused} then
 * {@link modulateFused} run.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { layerNormModulate } from "./kernels.ts";
 * const mod = tf.tensor2d([[0, 0, 0, 1, 1, 1]]); // shift 0, scale 1
 * const y = layerNormModulate(tf.tensor3d([[[1, 2, 3]]]), mod); // 2 * LN(x): ~[[[-2.45, 0, 2.45]]]
 * if (Math.abs(y.dataSync()[2] - 2.4495) > 1e-3) throw new Error("modulated");
 * ```
 */
export function layerNormModulate(
  x: tf.Tensor3D,
  mod: tf.Tensor2D,
  options: { at?: number; eps?: number; affine?: { weight: tf.Tensor; bias: tf.Tensor } } = {},
): tf.Tensor3D {
  const { at = 0, eps = 1e-6, affine } = options;
  if (onWebGpu()) {
    const op = layerNormModulateGpuOp(eps, at, affine !== undefined);
    const inputs = affine ? [x, mod, affine.weight, affine.bias] : [x, mod];
    return op(...inputs) as tf.Tensor3D;
  }
  const d = x.shape[2];
  const y = layerNormFused(x, eps); // [N, T, D]
  const a = affine ? tf.add(tf.mul(y, affine.weight), affine.bias) : y;
  return modulateFused(a as tf.Tensor3D, columnBlock(mod, at, d), columnBlock(mod, at + 1, d));
}

const modulateOp = fused(
  (x: tf.Tensor, shift: tf.Tensor, scale: tf.Tensor, save: tf.GradSaveFunc) => {
    const [n, d] = shift.shape;
    const scale1 = tf.add(tf.reshape(scale, [n, 1, d]), 1); // [N, 1, D]
    save([x, scale1]);
    return {
      value: tf.add(tf.mul(x, scale1), tf.reshape(shift, [n, 1, d])), // [N, T, D]
      gradFunc: (dy: tf.Tensor, [sx, ss]: tf.Tensor[]) => [
        tf.mul(dy, ss), // dx = dy * (1 + scale)  [N, T, D]
        sumTokens(dy), // dshift = sum over tokens  [N, D]
        sumTokens(dy, sx), // dscale = sum over tokens of dy * x  [N, D]
      ],
    };
  },
);

/**
 * `x * (1 + scale) + shift` with `x [N, T, D]` and per-sample `shift`, `scale` `[N, D]`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { modulateFused } from "./kernels.ts";
 * const y = modulateFused(tf.ones([1, 2, 3]), tf.ones([1, 3]), tf.ones([1, 3])); // every value 3
 * if (y.dataSync().some((v) => v !== 3)) throw new Error("x * (1 + scale) + shift");
 * ```
 */
export function modulateFused(x: tf.Tensor3D, shift: tf.Tensor2D, scale: tf.Tensor2D): tf.Tensor3D {
  return modulateOp(x, shift, scale) as tf.Tensor3D;
}

const attentionCoreOp = fused(
  (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, save: tf.GradSaveFunc) => {
    const scale = 1 / Math.sqrt(q.shape[2] as number);
    const qs = tf.mul(q, scale); // [B, T, hd], the softmax scale folded into q
    const p = tf.softmax(gemm(qs, k, { transposeB: true })); // [B, T, T]
    const o = gemm(p, v); // [B, T, hd]
    save([qs, k, v, p, o]);
    return {
      value: o,
      gradFunc: (dO: tf.Tensor, [sq, sk, sv, sp, so]: tf.Tensor[]) => {
        // Softmax backward: dS = P * (dP - rowsum(dP * P)), and rowsum(dP * P) = rowsum(dO * O).
        const dp = gemm(dO, sv, { transposeB: true }); // [B, T, T]
        const ds = tf.mul(sp, tf.sub(dp, tf.sum(tf.mul(dO, so), -1, true))); // [B, T, T]
        const dq = tf.mul(gemm(ds, sk), scale); // [B, T, hd]
        // The [T, T] operand goes on the left (on XNNPACK transposed once: as the right operand
        // of a product XNNPACK would repack it for every slice, which costs more than the copy).
        const dk = gemm(ds, sq, { transposeA: true }); // dS^T q  [B, T, hd]
        const dv = gemm(sp, dO, { transposeA: true }); // P^T dO  [B, T, hd]
        return [dq, dk, dv];
      },
    };
  },
);

/**
 * Scaled dot-product attention core `softmax(q k^T / sqrt(hd)) v` over `[B, T, hd]` slices, with
 * a hand-written backward that keeps only P (not the logits) and uses plain products throughout.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { attentionCore } from "./kernels.ts";
 * const o = attentionCore(tf.ones([2, 4, 8]), tf.ones([2, 4, 8]), tf.ones([2, 4, 8])); // [2, 4, 8]
 * if (o.dataSync().some((v) => Math.abs(v - 1) > 1e-6)) throw new Error("a mean of ones");
 * ```
 */
export function attentionCore(q: tf.Tensor3D, k: tf.Tensor3D, v: tf.Tensor3D): tf.Tensor3D {
  return attentionCoreOp(q, k, v) as tf.Tensor3D;
}

/**
 * The webgpu attention op (q/k norms included) for one (tokens, heads, eps), its kernels tiled
 * unless `ANTHOS_WGSL=untiled-attention`.
 */
function attentionGpuOp(tokens: number, heads: number, eps: number) {
  const tiled = env.wgsl !== "untiled-attention";
  const key = `${tokens}/${heads}/${eps}/${tiled}`;
  let op = attentionGpuOps.get(key);
  if (!op) {
    const dims = { tokens, heads };
    op = fused((qkv: tf.Tensor, save: tf.GradSaveFunc) => {
      const normed = qkNormWgsl(qkv, heads, eps); // [N*T, 3D]
      const o = attentionWgsl(normed, dims, { tiled }); // [N*T, D]
      save([qkv, normed, o]);
      return {
        value: o,
        gradFunc: (dO: tf.Tensor, [sx, sn, so]: tf.Tensor[]) => [
          tf.tidy(() => qkNormWgsl(sx, heads, eps, attentionGradWgsl(sn, so, dO, dims, { tiled }))), // [N*T, 3D]
        ],
      };
    });
    attentionGpuOps.set(key, op);
  }
  return op;
}
const attentionGpuOps = new Map<string, (...x: tf.Tensor[]) => tf.Tensor>();

/**
 * The attention of a DiT block from its qkv projection: `qkv [N, T, 3D]` (q, k, v side by side,
 * head h at columns `h*hd ...` of each), q and k LayerNormed per head (no affine, `eps`), then
 * `softmax(q k^T / sqrt(hd)) v`, heads merged: `[N, T, D]`. On webgpu two WGSL kernels forward
 * and three backward, with no split, no head transposes and no `[T, T]` map in memory; elsewhere
 * heads are split out and {@link attentionCore} runs.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { attentionQkv } from "./kernels.ts";
 * const o = attentionQkv(tf.randomNormal([2, 4, 24]) as tf.Tensor3D, 2, 1e-6); // [2, 4, 8]
 * if (o.shape.join() !== "2,4,8") throw new Error(`heads merged: ${o.shape}`);
 * ```
 */
export function attentionQkv(qkv: tf.Tensor3D, heads: number, eps: number): tf.Tensor3D {
  const [n, t, d3] = qkv.shape;
  const d = d3 / 3;
  const hd = d / heads;
  if (wgslAttention() && hd <= MAX_HEAD_DIM) {
    const o = attentionGpuOp(t, heads, eps)(tf.reshape(qkv, [n * t, d3])); // [N*T, D]
    return tf.reshape(o, [n, t, d]) as tf.Tensor3D;
  }
  return tf.tidy(() => {
    const [q, k, v] = tf.split(tf.reshape(qkv, [n * t, 3 * d]), 3, 1).map((x, i) => {
      const y = splitHeads(x, n, heads); // [HN, T, hd]
      return i < 2 ? layerNormFused(y, eps) : y;
    });
    const a = attentionCore(q as tf.Tensor3D, k as tf.Tensor3D, v as tf.Tensor3D); // [HN, T, hd]
    return mergeHeads(a, n, heads); // [N, T, D]
  }) as tf.Tensor3D;
}

/**
 * `[N*T, D]` -> `[H*N, T, hd]`: heads split out with one 3D transpose (5D ones are slow on wasm),
 * slices ordered (head, sample).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * import { mergeHeads, splitHeads } from "./kernels.ts";
 * await loadBackend("cpu");
 * const x = tf.randomNormal([2 * 4, 6]); // N = 2 samples of T = 4 tokens, D = 6
 * const h = splitHeads(x, 2, 3); // [6, 4, 2]
 * const back = mergeHeads(h, 2, 3); // [2, 4, 6], x again
 * const same = tf.all(tf.equal(tf.reshape(back, [8, 6]), x)).dataSync()[0];
 * if (h.shape.join() !== "6,4,2" || !same) throw new Error("split and merge are inverses");
 * ```
 */
export function splitHeads(x: tf.Tensor, samples: number, heads: number): tf.Tensor3D {
  const [nt, d] = x.shape;
  return tf.reshape(tf.transpose(tf.reshape(x, [nt, heads, d / heads]), [1, 0, 2]), [
    heads * samples,
    nt / samples,
    d / heads,
  ]); // [HN, T, hd]
}

/** `[H*N, T, hd]` -> `[N, T, D]`: the inverse of {@link splitHeads} (heads merged). */
export function mergeHeads(a: tf.Tensor, samples: number, heads: number): tf.Tensor3D {
  const [hn, t, hd] = a.shape;
  return tf.reshape(tf.transpose(tf.reshape(a, [heads, (hn / heads) * t, hd]), [1, 0, 2]), [
    samples,
    t,
    heads * hd,
  ]); // [N, T, D]
}

const swigluGateOp = fused((a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
  const sig = tf.sigmoid(a);
  const silu = tf.mul(a, sig);
  save([a, b, sig, silu]);
  return {
    value: tf.mul(silu, b),
    // d silu(a) / da = sig * (1 + a * (1 - sig)).
    gradFunc: (dy: tf.Tensor, [sa, sb, ss, sl]: tf.Tensor[]) => {
      const dsilu = tf.mul(ss, tf.add(tf.mul(sa, tf.sub(1, ss)), 1));
      return [tf.mul(tf.mul(dy, sb), dsilu), tf.mul(dy, sl)];
    },
  };
});

/**
 * webgpu: `silu(x @ w1 + b1) * (x @ w2 + b2)` as one product over the packed `[w1 | w2]` and one
 * gate kernel; backward: one packed gate gradient, one `dx` product, one weight-gradient product
 * for both weights (tf ops: two products each way and an add for dx).
 */
const swigluHiddenGpuOp = fused((...args: tf.Tensor[]) => {
  const save = args.pop() as unknown as tf.GradSaveFunc;
  const [x, w1, b1, w2, b2] = args;
  const w12 = tf.concat([w1, w2], 1); // [D, 2H]
  const ab = gemm(x, w12, { bias: tf.concat([b1, b2]) }); // [M, 2H]
  save([x, w12, ab]);
  return {
    value: swigluPackedWgsl(ab), // [M, H]
    gradFunc: (dg: tf.Tensor, [sx, sw, sab]: tf.Tensor[]) => {
      const dab = swigluPackedWgsl(sab, dg) as tf.Tensor2D; // [M, 2H]
      const [dw1, dw2] = weightGradBlocks(sx as tf.Tensor2D, dab, 2); // 2 x [D, H]
      const [db1, db2] = sumRowsBlocks(dab, 2); // 2 x [H]
      const dx = gemm(dab, sw, { transposeB: true }); // [M, D]
      dab.dispose();
      return [dx, dw1, db1, dw2, db2];
    },
  };
});

/**
 * The SwiGLU's hidden activation `silu(x @ w1 + b1) * (x @ w2 + b2)` for `x [..., D]` and
 * `w1`, `w2` `[D, H]` with biases: on webgpu one packed product and one WGSL gate (see
 * swigluHiddenGpuOp); elsewhere two {@link linearBias} products and {@link swigluGate}.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { swigluHidden } from "./kernels.ts";
 * const l = { weight: tf.ones([3, 2]), bias: tf.zeros([2]) };
 * const h = swigluHidden(tf.zeros([4, 3]), l, l); // [4, 2]: silu(0) * 0 = 0
 * if (h.shape.join() !== "4,2" || h.dataSync().some((v) => v !== 0)) throw new Error("zeros");
 * ```
 */
export function swigluHidden(
  x: tf.Tensor,
  w1: { weight: tf.Tensor; bias?: tf.Tensor },
  w2: { weight: tf.Tensor; bias?: tf.Tensor },
): tf.Tensor {
  const [d, h] = w1.weight.shape;
  const lead = x.shape.slice(0, -1);
  const x2 = tf.reshape(x, [-1, d]) as tf.Tensor2D; // [M, D]
  const b1 = w1.bias ?? tf.zeros([h]);
  const b2 = w2.bias ?? tf.zeros([h]);
  const out = onWebGpu() ? swigluHiddenGpuOp(x2, w1.weight, b1, w2.weight, b2) : swigluGate(
    linearBias(x2, w1.weight as tf.Tensor2D, b1 as tf.Tensor1D),
    linearBias(x2, w2.weight as tf.Tensor2D, b2 as tf.Tensor1D),
  );
  return tf.reshape(out, [...lead, h]); // [..., H]
}

/**
 * `silu(a) * b` (the SwiGLU gate).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { swigluGate } from "./kernels.ts";
 * const y = swigluGate(tf.zeros([2, 3]), tf.ones([2, 3])); // every value 0
 * if (y.dataSync().some((v) => v !== 0)) throw new Error("silu(0) = 0");
 * ```
 */
export function swigluGate(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  return swigluGateOp(a, b);
}

/** WGSL: `sg`, the sigmoid of A[i]. */
const SIG = `let sg = ${sigmoidWgsl("A[i]")};`;

const siluGpuOp = fused((x: tf.Tensor, save: tf.GradSaveFunc) => {
  save([x]);
  return {
    value: elementwiseWgsl("silu", { A: x }, "A[i] * sg", { prelude: SIG }),
    gradFunc: (dy: tf.Tensor, [sx]: tf.Tensor[]) => [
      elementwiseWgsl(
        "silu_grad",
        { A: sx, DY: dy },
        "DY[i] * (sg * (A[i] * (1.0 - sg) + 1.0))",
        { prelude: SIG },
      ),
    ],
  };
});

/**
 * SiLU `x * sigmoid(x)`: on webgpu one WGSL kernel each way (tf ops take 2 forward and 6 backward);
 * elsewhere ops.ts's {@link silu}.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { siluFused } from "./kernels.ts";
 * const y = siluFused(tf.tensor1d([0, 1])).dataSync(); // [0, 0.731]
 * if (y[0] !== 0 || Math.abs(y[1] - 0.7311) > 1e-4) throw new Error(String(y));
 * ```
 */
export function siluFused<T extends tf.Tensor>(x: T): T {
  return (onWebGpu() ? siluGpuOp(x) : silu(x)) as T;
}

const gatedResidualOp = fused(
  (x: tf.Tensor, gate: tf.Tensor, h: tf.Tensor, save: tf.GradSaveFunc) => {
    const [n, d] = gate.shape;
    const gate3 = tf.reshape(gate, [n, 1, d]); // [N, 1, D]
    save([gate3, h]);
    return {
      value: tf.add(x, tf.mul(gate3, h)), // [N, T, D]
      gradFunc: (dy: tf.Tensor, [sg, sh]: tf.Tensor[]) => [
        tf.reshape(dy, dy.shape), // dx = dy (as a view)
        sumTokens(dy, sh), // dgate = sum over tokens of dy * h  [N, D]
        tf.mul(dy, sg), // dh = dy * gate  [N, T, D]
      ],
    };
  },
);

/**
 * The gated residual `x + gate * h` with `x`, `h` `[N, T, D]` and a per-sample gate, column block
 * `at` of the adaLN output `mod [N, k*D]` (read in place on webgpu).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { gatedResidual } from "./kernels.ts";
 * const y = gatedResidual(tf.ones([1, 2, 3]), tf.ones([1, 2, 3]), { mod: tf.ones([1, 3]) }); // 2s
 * if (y.dataSync().some((v) => v !== 2)) throw new Error("x + gate * h");
 * ```
 */
export function gatedResidual(
  x: tf.Tensor3D,
  h: tf.Tensor3D,
  gate: { mod: tf.Tensor2D; at?: number },
): tf.Tensor3D {
  const at = gate.at ?? 0;
  if (onWebGpu()) return gatedResidualGpuOp(at)(x, gate.mod, h) as tf.Tensor3D;
  return gatedResidualOp(x, columnBlock(gate.mod, at, x.shape[2]), h) as tf.Tensor3D;
}

/** The webgpu gated residual reading its gate from column block `at` of `mod`. */
function gatedResidualGpuOp(at: number): (...x: tf.Tensor[]) => tf.Tensor {
  let op = gpuResiduals.get(at);
  if (!op) {
    op = fused((x: tf.Tensor, mod: tf.Tensor, h: tf.Tensor, save: tf.GradSaveFunc) => {
      save([mod, h]);
      return {
        value: gateWgsl(x, { mod, at }, h), // x + gate * h  [N, T, D]
        gradFunc: (dy: tf.Tensor, [sm, sh]: tf.Tensor[]) => {
          const blocks: TokenTerm[] = Array(sm.shape[1]! / sh.shape[2]!).fill("zero");
          blocks[at] = "dy*h"; // dgate = sum over tokens of dy * h
          return [
            tf.reshape(dy, dy.shape), // dx = dy (as a view)
            tokenTermsWgsl(dy, blocks, { h: sh }), // dmod  [N, k*D]
            gateWgsl(null, { mod: sm, at }, dy), // dh = gate * dy  [N, T, D]
          ];
        },
      };
    });
    gpuResiduals.set(at, op);
  }
  return op;
}
const gpuResiduals = new Map<number, (...x: tf.Tensor[]) => tf.Tensor>();

/**
 * `mean((pred - target)^2)`, differentiable in `pred` (the target is data: no gradient is made for
 * it). On webgpu one WGSL reduction forward and one elementwise kernel backward (tf ops take 3 and
 * about 6); elsewhere tf ops.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { meanSquaredError } from "./kernels.ts";
 * const l = meanSquaredError(tf.fill([4], 3), tf.ones([4])); // 4
 * if (l.dataSync()[0] !== 4) throw new Error("mean of (3 - 1)^2");
 * ```
 */
export function meanSquaredError(pred: tf.Tensor, target: tf.Tensor): tf.Scalar {
  if (!onWebGpu()) return tf.mean(tf.square(tf.sub(pred, target))) as tf.Scalar;
  const op = fused((p: tf.Tensor, save: tf.GradSaveFunc) => {
    save([p, target]);
    return {
      value: tf.reshape(meanSquaredErrorWgsl(p, target), []), // []
      // d/dp mean((p - t)^2) = dy * 2 (p - t) / n
      gradFunc: (dy: tf.Tensor, [sp, st]: tf.Tensor[]) => [
        elementwiseWgsl(
          "mse_grad",
          { A: sp, B: st, DY: dy },
          "(DY[0] * uniforms.k) * (A[i] - B[i])",
          {
            floats: { k: 2 / sp.size },
          },
        ),
      ],
    };
  });
  return op(pred) as tf.Scalar;
}

/**
 * The straight path's point and velocity, `x_t = (1 - t) * noise + t * data` and
 * `v = data - noise`, for `[N, ...]` data and noise and per-sample `t [N]` (one WGSL kernel each
 * on webgpu).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { straightPath } from "./kernels.ts";
 * const { xt, v } = straightPath(tf.ones([1, 4]), tf.zeros([1, 4]), tf.tensor1d([0.25]));
 * if (xt.dataSync()[0] !== 0.25 || v.dataSync()[0] !== 1) throw new Error("rectified flow");
 * ```
 */
export function straightPath<T extends tf.Tensor>(
  data: T,
  noise: T,
  t: tf.Tensor1D,
): { xt: T; v: T } {
  if (onWebGpu()) {
    return {
      xt: straightPathWgsl("xt", data, noise, t) as T,
      v: straightPathWgsl("v", data, noise, t) as T,
    };
  }
  return tf.tidy(() => {
    const tn = tf.reshape(t, [t.shape[0], ...data.shape.slice(1).map(() => 1)]); // [N, 1, ...]
    return {
      xt: tf.add(tf.mul(tf.sub(1, tn), noise), tf.mul(tn, data)) as T,
      v: tf.sub(data, noise) as T,
    };
  });
}

/**
 * `[cos(a) | sin(a)]` with `a = (t * scale) * f_k` for `t [N]` and `freqs [half]`: the timestep
 * embedding's sinusoids, `[N, 2 * half]` (one WGSL kernel on webgpu, five tf ops elsewhere).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { timestepSinusoids } from "./kernels.ts";
 * const e = timestepSinusoids(tf.tensor1d([0]), new Float32Array([1, 1]), 1000); // [1, 4]
 * if (e.dataSync().join() !== "1,1,0,0") throw new Error("[cos | sin]");
 * ```
 */
export function timestepSinusoids(t: tf.Tensor1D, freqs: Float32Array, scale = 1): tf.Tensor2D {
  return tf.tidy(() => {
    const f = tf.tensor1d(freqs); // [half]
    if (onWebGpu()) return sinusoidsWgsl(t, f, scale) as tf.Tensor2D;
    const ts = scale === 1 ? t : tf.mul(t, scale); // [N]
    const args = tf.mul(tf.reshape(ts, [-1, 1]), tf.reshape(f, [1, -1])); // [N, half]
    return tf.concat([tf.cos(args), tf.sin(args)], 1) as tf.Tensor2D; // [N, 2 * half]
  });
}
