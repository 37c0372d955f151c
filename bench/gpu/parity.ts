/**
 * What bench/gpu/check.ts and bench/gpu/dawn.ts compare: the forward pass, the flow loss and
 * every trainable gradient of a model on one batch, read back, and the relative error the golden
 * parity tests use.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs"; // the gradients of the core ops
import type { DiT, NamedParam } from "../../lib/model/dit.ts";
import { type FlowBatch, flowLoss } from "../../lib/model/flow.ts";

/** A model's outputs on one batch, on the host. */
export interface Outputs {
  /** The predicted velocity. */
  v: Float32Array;
  /** The flow loss (one value). */
  loss: Float32Array;
  /** Every trainable parameter's gradient, in our layout, in state-dict order. */
  grads: { param: NamedParam; data: Float32Array }[];
}

/**
 * Forward, loss and gradients of `model` on `batch` on the active backend; no tensor is left.
 *
 * @example
 * ```ts
 * import { loadBackend } from "../../lib/runtime/backend.ts";
 * import { DiT } from "../../lib/model/dit.ts";
 * import { flowBatch } from "../../lib/model/flow.ts";
 * import { Rng } from "../../lib/runtime/rng.ts";
 * import * as tf from "@tensorflow/tfjs-core";
 * import { outputs } from "./parity.ts";
 * await loadBackend("cpu");
 * const rng = new Rng(0);
 * const b = flowBatch(tf.zeros([1, 32, 32, 4]), { y: [3], rng });
 * const o = await outputs(DiT.create(), b); // a fresh model: v = 0
 * if (o.v.some((x) => x !== 0) || o.grads.length !== 84) throw new Error(String(o.grads.length));
 * ```
 */
export async function outputs(model: DiT, batch: FlowBatch): Promise<Outputs> {
  const params = model.namedParams().filter((p) => p.variable.trainable);
  const { value, grads } = tf.variableGrads(
    () => flowLoss(model, batch),
    params.map((p) => p.variable),
  );
  const v = model.forward(batch.xt, batch.t, batch.y);
  try {
    return {
      v: await v.data() as Float32Array,
      loss: await value.data() as Float32Array,
      grads: await Promise.all(
        params.map(async (param) => ({
          param,
          data: await grads[param.variable.name].data() as Float32Array,
        })),
      ),
    };
  } finally {
    tf.dispose([v, value, ...Object.values(grads)]);
  }
}

/**
 * The largest absolute difference over the largest reference value (as tests/_shared.ts's).
 *
 * @example
 * ```ts
 * import { relErr } from "./parity.ts";
 * if (relErr([1, 2.5], [1, 2]) !== 0.25) throw new Error("0.5 / 2");
 * ```
 */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let [num, den] = [0, 1e-30];
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}
