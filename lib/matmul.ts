/**
 * Matrix products with gradients that stay on the fast path of every backend.
 *
 * Why this file exists: on the `wasm` backend only a plain `[M, K] @ [K, N]` product runs through
 * XNNPACK (about 20 GFLOP/s on one core); a product with a transposed operand, or a batched
 * product, falls back to a naive loop (about 2 GFLOP/s). tfjs's own matMul gradient uses exactly
 * those transposed forms. Here the gradients materialise transposes explicitly (a cheap copy) and
 * batched products run slice by slice, so forward and backward are plain products throughout.
 * On other backends (`webgpu`, `cpu`, `tensorflow`) tfjs's kernels are used as they are.
 * The maths is unchanged: `matmul(a, b)` is `a @ b` to float32 rounding.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";

/** Whether products should be split into plain 2D XNNPACK products (the wasm backend). */
function plainOnly(): boolean {
  return tf.getBackend() === "wasm";
}

/** Swaps the last two axes (materialised). */
function transposeLast(x: tf.Tensor): tf.Tensor {
  const r = x.rank;
  const perm = [...Array(r).keys()];
  [perm[r - 2], perm[r - 1]] = [perm[r - 1], perm[r - 2]];
  return tf.transpose(x, perm);
}

/** Plain product without custom gradients: 2D or batched 3D, no transposes. */
function rawMatmul(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  if (a.rank === 2 || !plainOnly()) return tf.matMul(a as tf.Tensor3D, b as tf.Tensor3D);
  // Batched on wasm: one XNNPACK product per slice. Slices are cut from the data in JS because
  // wasm's Slice/Unpack kernels copy at a few hundred MB/s, slower than the products themselves.
  const [nb, m, k] = a.shape as [number, number, number];
  const n = b.shape[2] as number;
  const ad = a.dataSync() as Float32Array;
  const bd = b.dataSync() as Float32Array;
  const out = new Float32Array(nb * m * n);
  for (let i = 0; i < nb; i++) {
    const ai = tf.tensor2d(ad.subarray(i * m * k, (i + 1) * m * k), [m, k]);
    const bi = tf.tensor2d(bd.subarray(i * k * n, (i + 1) * k * n), [k, n]);
    const oi = tf.matMul(ai, bi); // [M, N]
    out.set(oi.dataSync() as Float32Array, i * m * n);
    tf.dispose([ai, bi, oi]);
  }
  return tf.tensor3d(out, [nb, m, n]);
}

const customMatmul = tf.customGrad(((a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
  save([a, b]);
  return {
    value: rawMatmul(a, b),
    // d(a@b)/da = dy @ b^T, d(a@b)/db = a^T @ dy, both as plain products.
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [sa, sb] = saved;
      return [rawMatmul(dy, transposeLast(sb)), rawMatmul(transposeLast(sa), dy)];
    },
  };
  // tfjs types customGrad's callback with a rest parameter; ours takes (a, b, save).
  // deno-lint-ignore no-explicit-any
}) as any);

/**
 * `a @ b` for `[M, K] @ [K, N]` or batched `[B, M, K] @ [B, K, N]`, differentiable, with the
 * fastest plain-product form on the current backend.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { matmul } from "./matmul.ts";
 * const c = matmul(tf.ones([2, 3]), tf.ones([3, 4])); // [2, 4], every value 3
 * ```
 */
export function matmul<T extends tf.Tensor>(a: T, b: tf.Tensor): T {
  if (!plainOnly()) return tf.matMul(a as tf.Tensor3D, b as tf.Tensor3D) as unknown as T;
  return customMatmul(a, b) as T;
}
