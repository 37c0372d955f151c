/**
 * The GPU job's guard before it trains the flagship run (stage 3b): the same batch's forward
 * pass, loss and every gradient of the shipped weights (`weights/model.safetensors`, in the
 * checkout) on webgpu and on wasm (the machine's CPU). A kernel that misbehaves only on this GPU
 * (a shader the driver miscompiles, a command buffer dropped by a validation error, which throws
 * nothing) would otherwise train the run into garbage and overwrite its checkpoint. The GPU
 * machine has no shared golden vectors, so wasm is the reference. Within the golden parity tests'
 * 1e-4 (relative to the largest value) it says "ok"; up to 1e-2 "loose" (a GPU's faster exp or
 * inverseSqrt can land there: SwiftShader gives 2e-4), and the job still trains; beyond, or not
 * finite, "FAILED" with exit code 1, and the job does not train.
 *
 * Usage: deno run -A bench/gpu/check.ts [weights=weights/model.safetensors] [batch=4]
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { type BackendName, loadBackend } from "../../lib/runtime/backend.ts";
import { DiT } from "../../lib/model/dit.ts";
import { flowBatch } from "../../lib/model/flow.ts";
import { Rng } from "../../lib/runtime/rng.ts";
import { outputs, relErr } from "./parity.ts";

const path = Deno.args[0] ?? "weights/model.safetensors";
const batch = Number(Deno.args[1] ?? 4);
/** The golden parity tests' tolerance, and where disagreement means broken kernels. */
const TOLERANCE = 1e-4;
const BROKEN = 1e-2;

/** Forward, loss and every gradient of the weights on one seeded batch on `backend`. */
async function lossAndGrads(backend: BackendName): Promise<Float32Array[]> {
  await loadBackend(backend);
  const model = await DiT.load(path);
  const rng = new Rng(7);
  const data = tf.tensor4d(rng.normalArray(batch * 32 * 32 * 4), [batch, 32, 32, 4]);
  const y = Int32Array.from({ length: batch }, (_, i) => (i * 37) % 102);
  const b = flowBatch(data, { y, rng });
  const o = await outputs(model, b);
  tf.dispose([data, b.xt, b.t, b.y, b.v]);
  model.dispose();
  return [o.v, o.loss, ...o.grads.map((g) => g.data)];
}

const want = await lossAndGrads("wasm");
const got = await lossAndGrads("webgpu");
const errs = got.map((g, k) => relErr(g, want[k]));
const worstGrad = Math.max(...errs.slice(2));
const worst = Math.max(...errs.map((e) => Number.isFinite(e) ? e : Infinity));
const verdict = worst < TOLERANCE
  ? "ok"
  : worst < BROKEN
  ? `loose (above the tests' ${TOLERANCE}, below ${BROKEN}: trains)`
  : `FAILED (at or above ${BROKEN}: broken kernels, no training)`;
console.log(
  `RESULT check webgpu vs wasm (${path}, batch ${batch}, ANTHOS_WGSL=` +
    `${Deno.env.get("ANTHOS_WGSL") ?? "default"}): forward ${errs[0].toExponential(2)}, loss ` +
    `${errs[1].toExponential(2)}, worst gradient ${worstGrad.toExponential(2)}: ${verdict}`,
);
if (worst >= BROKEN) Deno.exit(1);
