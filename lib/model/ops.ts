/**
 * Small tensor ops shared by the DiT and the autoencoders.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";

/**
 * SiLU (swish): `x * sigmoid(x)`, elementwise, any shape.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import "@tensorflow/tfjs-backend-cpu";
 * import { silu } from "./ops.ts";
 * await tf.setBackend("cpu");
 * const y = tf.tidy(() => silu(tf.tensor1d([0, 1])).arraySync());
 * if (y[0] !== 0 || Math.abs(y[1] - 1 / (1 + Math.exp(-1))) > 1e-6) throw new Error(String(y));
 * ```
 */
export function silu<T extends tf.Tensor>(x: T): T {
  return tf.mul(x, tf.sigmoid(x));
}
