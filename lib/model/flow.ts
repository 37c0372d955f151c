/**
 * Rectified flow: the training objective and the samplers (Euler, Heun), as small as minRF.
 *
 * Convention (MODEL.md): t = 0 is noise, t = 1 is data; x_t = (1 - t) * noise + t * data and the
 * model predicts the velocity v = data - noise. Sampling integrates dx/dt = v from 0 to 1 on the
 * uniform grid t_i = i / steps, with classifier-free guidance on all channels.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { type ClassIds, DEFAULT_CONFIG, type DiT, nullClassId } from "./dit.ts";
import { Rng } from "../runtime/rng.ts";
import { meanSquaredError, straightPath } from "./kernels.ts";

/** A training batch for the flow objective. */
export interface FlowBatch {
  /** Noised latents x_t `[N, H, W, C]`. */
  xt: tf.Tensor4D;
  /** Times `[N]` in (0, 1). */
  t: tf.Tensor1D;
  /** Class ids `[N]` (some replaced by the null id). */
  y: tf.Tensor1D;
  /** Velocity target data - noise `[N, H, W, C]`. */
  v: tf.Tensor4D;
}

/**
 * Draws t ~ logit-normal(0, 1), noise, class dropout, and builds (x_t, t, y, v) from clean
 * latents. Randomness comes from `rng` in a fixed order (t, dropout, noise), so a run reproduces.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { flowBatch } from "./flow.ts";
 * import { Rng } from "../runtime/rng.ts";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * const batch = flowBatch(tf.zeros([2, 32, 32, 4]), { y: [3, 5], rng: new Rng(0), classDropout: 0 });
 * if (batch.y.dataSync().join() !== "3,5") throw new Error("no dropout: the labels as given");
 * if (batch.xt.shape.join() !== "2,32,32,4") throw new Error(String(batch.xt.shape));
 * ```
 */
export function flowBatch(
  data: tf.Tensor4D,
  options: { y: Int32Array | readonly number[]; rng: Rng; classDropout?: number; nullId?: number },
): FlowBatch {
  const [n] = data.shape;
  const { rng } = options;
  const dropout = options.classDropout ?? 0.1;
  const nullId = options.nullId ?? nullClassId(); // the default config's null class (102)
  const t = new Float32Array(n);
  for (let i = 0; i < n; i++) t[i] = 1 / (1 + Math.exp(-rng.normal())); // sigmoid(N(0, 1))
  const labels = Int32Array.from(options.y);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) y[i] = rng.uniform() < dropout ? nullId : labels[i];
  const noiseValues = rng.normalArray(data.size);
  return tf.tidy(() => {
    const noise = tf.tensor(noiseValues, data.shape, "float32") as tf.Tensor4D; // [N, H, W, C]
    const tt = tf.tensor1d(t, "float32");
    const { xt, v } = flowTargets(data, noise, tt);
    return { xt, t: tt, y: tf.tensor1d(y, "int32"), v };
  });
}

/**
 * The point on the straight path and its velocity: x_t = (1 - t) * noise + t * data and
 * v = data - noise (the one place the path is defined; training and validation share it).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { flowTargets } from "./flow.ts";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * const { xt, v } = flowTargets(tf.ones([1, 2, 2, 4]), tf.zeros([1, 2, 2, 4]), tf.tensor1d([0.25]));
 * // x_t = t * data + (1 - t) * noise; v = data - noise
 * if (xt.dataSync()[0] !== 0.25 || v.dataSync()[0] !== 1) throw new Error("rectified flow");
 * ```
 */
export function flowTargets(
  data: tf.Tensor4D,
  noise: tf.Tensor4D,
  t: tf.Tensor1D,
): { xt: tf.Tensor4D; v: tf.Tensor4D } {
  return straightPath(data, noise, t); // [N, H, W, C] each
}

/**
 * Frees a batch's tensors.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { disposeBatch, flowBatch } from "./flow.ts";
 * import { Rng } from "../runtime/rng.ts";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * const before = tf.memory().numTensors;
 * const batch = flowBatch(tf.zeros([2, 32, 32, 4]), { y: [1, 2], rng: new Rng(0) });
 * disposeBatch(batch);
 * if (tf.memory().numTensors !== before + 1) throw new Error("only the input zeros remain");
 * ```
 */
export function disposeBatch(b: FlowBatch): void {
  tf.dispose([b.xt, b.t, b.y, b.v]);
}

/**
 * The flow-matching loss: mean squared error between the model's velocity and the target.
 *
 * @example
 * ```ts
 * import { DiT } from "./dit.ts";
 * import { flowBatch, flowLoss } from "./flow.ts";
 * import { Rng } from "../runtime/rng.ts";
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * const model = DiT.create();
 * const data = tf.randomNormal([2, 32, 32, 4]) as tf.Tensor4D;
 * const loss = flowLoss(model, flowBatch(data, { y: [1, 2], rng: new Rng(1) }));
 * if (loss.rank !== 0 || !(loss.dataSync()[0] > 0)) throw new Error("a positive scalar");
 * ```
 */
export function flowLoss(model: DiT, batch: FlowBatch): tf.Scalar {
  return tf.tidy(() => {
    const pred = model.forward(batch.xt, batch.t, batch.y); // [N, H, W, C]
    return meanSquaredError(pred, batch.v);
  });
}

/** Sampling steps between two waits for the latents (GPU readbacks) in {@link sample}. */
const SYNC_EVERY = 10;

/** Samplers: Euler (1 model evaluation per step) or Heun (2 per step, every step). */
export type SamplerName = "euler" | "heun";

/** Options of {@link sample}. */
export interface SampleOptions {
  /** Integration steps (default 50). */
  steps?: number;
  /** Classifier-free guidance scale (default 4.0; 1.0 = conditional only, no doubled batch). */
  cfgScale?: number;
  /** "heun" (default) or "euler". */
  sampler?: SamplerName;
  /** Called after each step with (step done, total steps). */
  onStep?: (step: number, steps: number) => void;
}

/** Sampling defaults (MODEL.md): Heun, 50 steps, CFG 4.0. */
export const SAMPLE_DEFAULTS: Readonly<Required<Omit<SampleOptions, "onStep">>> = Object.freeze({
  steps: 50,
  cfgScale: 4.0,
  sampler: "heun",
});

/**
 * The accepted classifier-free guidance scales, `[0, 50]`. Why this range: 0 samples the
 * unconditional model, 1 the conditional model alone, and the useful range is about 1..10 (the
 * published model uses 4). Each step adds `scale * (v_cond - v_uncond)`, so large scales blow the
 * latents up: past ~20 the images saturate into noise and past 50 nothing recognisable is left,
 * while a scale like 1e40 overflows float32 into NaN.
 */
export const CFG_SCALE_RANGE: Readonly<{ min: number; max: number }> = Object.freeze({
  min: 0,
  max: 50,
});

/**
 * Checks a classifier-free guidance scale against {@link CFG_SCALE_RANGE}; returns it, or throws a
 * `RangeError` naming `what` (a flag or option name) and the range.
 *
 * @example
 * ```ts
 * import { checkCfgScale } from "./flow.ts";
 * if (checkCfgScale(4, "--cfg-scale") !== 4) throw new Error("4 is the default scale");
 * try {
 *   checkCfgScale(1e40, "--cfg-scale");
 *   throw new Error("should have thrown");
 * } catch (e) {
 *   if (!(e instanceof RangeError) || !e.message.includes("from 0 to 50")) throw e;
 * }
 * ```
 */
export function checkCfgScale(scale: number, what = "cfgScale"): number {
  const { min, max } = CFG_SCALE_RANGE;
  if (typeof scale !== "number" || !(scale >= min && scale <= max)) {
    throw new RangeError(
      `${what} must be a number from ${min} to ${max}, got ${scale}: 1 = no guidance, ` +
        `${SAMPLE_DEFAULTS.cfgScale} = the default, about 1..10 is useful; larger scales ` +
        `saturate the images and overflow to NaN`,
    );
  }
  return scale;
}

/**
 * Integrates dx/dt = v(x, t) from t = 0 (noise) to t = 1 (data). Returns latents `[N, H, W, C]`
 * (the caller disposes them). Heun applies its correction on every step, the last included.
 * Latents that end up NaN or infinite are an error naming the likely cause (the guidance scale or
 * the model's weights), never a result.
 *
 * @example
 * ```ts
 * import { DiT } from "./dit.ts";
 * import { randomNoise, sample } from "./flow.ts";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * const model = DiT.create(); // untrained: shapes only (Heun 50 is the real setting)
 * const noise = randomNoise(2, { seed: 0 });
 * const z = await sample(model, noise, [3, 101], { steps: 1, cfgScale: 4.0, sampler: "euler" });
 * if (z.shape.join() !== "2,32,32,4") throw new Error(String(z.shape));
 * ```
 */
export async function sample(
  model: DiT,
  noise: tf.Tensor4D,
  y: ClassIds,
  options: SampleOptions = {},
): Promise<tf.Tensor4D> {
  const { steps, cfgScale, sampler } = { ...SAMPLE_DEFAULTS, ...options };
  if (!Number.isInteger(steps) || steps < 1) {
    throw new Error(`steps must be a positive integer, got ${steps}`);
  }
  if (sampler !== "euler" && sampler !== "heun") {
    throw new Error(`unknown sampler "${sampler}": use "heun" or "euler"`);
  }
  checkCfgScale(cfgScale);
  const n = noise.shape[0];
  const ids = y instanceof tf.Tensor ? y : tf.tensor1d(Array.from(y as ArrayLike<number>), "int32");
  const velocity = (x: tf.Tensor4D, t: number): tf.Tensor4D => {
    const tt = tf.fill([n], t) as tf.Tensor1D;
    const v = cfgScale === 1
      ? model.forward(x, tt, ids)
      : model.forwardWithCfg(x, tt, ids, { cfgScale });
    tt.dispose();
    return v;
  };
  let x = tf.clone(noise);
  let values: tf.TypedArray | null = null;
  try {
    for (let i = 0; i < steps; i++) {
      const t0 = i / steps;
      const t1 = (i + 1) / steps;
      const dt = t1 - t0;
      const next = tf.tidy(() => {
        const d0 = velocity(x, t0); // [N, H, W, C]
        if (sampler === "euler") return tf.add(x, tf.mul(d0, dt)) as tf.Tensor4D;
        const xp = tf.add(x, tf.mul(d0, dt)) as tf.Tensor4D; // predictor
        return tf.add(x, tf.mul(tf.add(d0, velocity(xp, t1)), dt * 0.5)) as tf.Tensor4D;
      });
      x.dispose();
      x = next;
      options.onStep?.(i + 1, steps);
      // Let the event loop breathe (progress bars, Ctrl-C); every SYNC_EVERY steps and at the end
      // wait for the values too, which keeps GPU queues short (each wait costs >= 10 ms in Deno).
      if ((i + 1) % SYNC_EVERY === 0 || i + 1 === steps) values = await x.data();
      else await new Promise((resolve) => setTimeout(resolve, 0));
    }
    // The last step's read-back is checked once: NaN/Inf latents decode to a black or flat
    // image, which must never pass for a result.
    const bad = countNonFinite(values!);
    if (bad > 0) {
      throw new Error(
        `sampling produced ${bad} NaN/Inf latent value(s) in a batch of ${n}: ` +
          (await nonFiniteCause(model, cfgScale)),
      );
    }
  } catch (e) {
    x.dispose();
    throw e;
  } finally {
    if (!(y instanceof tf.Tensor)) ids.dispose();
  }
  return x;
}

function countNonFinite(values: ArrayLike<number>): number {
  let bad = 0;
  for (let i = 0; i < values.length; i++) if (values[i] - values[i] !== 0) bad++;
  return bad;
}

/** The likely cause of non-finite samples (read back only on this failure path). */
async function nonFiniteCause(model: DiT, cfgScale: number): Promise<string> {
  const broken: string[] = [];
  for (const p of model.namedParams()) {
    if (countNonFinite(await p.variable.data()) > 0) broken.push(p.key);
  }
  if (broken.length > 0) {
    return `the model's weights hold NaN/Inf (${broken.slice(0, 4).join(", ")}` +
      `${broken.length > 4 ? `, and ${broken.length - 4} more` : ""}): they come from a diverged ` +
      `training run or a damaged file; use an earlier checkpoint or export the weights again`;
  }
  return `the guidance scale ${cfgScale} is likely too large for these weights (values overflow); ` +
    `try a smaller one such as ${SAMPLE_DEFAULTS.cfgScale}, or check the weights (a diverged ` +
    `training run gives exploding outputs)`;
}

/**
 * Standard normal noise `[n, 32, 32, 4]` (or the given latent shape) from a seed, generated in
 * TypeScript so every backend gets identical noise.
 *
 * @example
 * ```ts
 * import { randomNoise } from "./flow.ts";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * const noise = randomNoise(4, { seed: 42 });
 * if (noise.shape.join() !== "4,32,32,4") throw new Error(String(noise.shape));
 * ```
 */
export function randomNoise(
  n: number,
  options: { seed?: number; rng?: Rng; shape?: [number, number, number] } = {},
): tf.Tensor4D {
  const { inputSize, inChannels } = DEFAULT_CONFIG;
  const [h, w, c] = options.shape ?? [inputSize, inputSize, inChannels]; // [32, 32, 4]
  const rng = options.rng ?? new Rng(options.seed ?? 0);
  return tf.tensor4d(rng.normalArray(n * h * w * c), [n, h, w, c]);
}

export { nullClassId };
