/**
 * Checkpoint -> published weights (the original's `convert_checkpoint`): the EMA weights of a
 * training checkpoint become `model.safetensors` (reference key names, PyTorch layout) and the
 * run's facts become `config.json` (architecture, sampling defaults, the latent space, training
 * provenance), which is everything {@link DiT.load} and the pipeline need.
 *
 * @module
 */

import { saveWeights, type WeightsConfig } from "../model/weights.ts";
import { type AutoencoderKind, AUTOENCODERS } from "../autoencoders/autoencoder.ts";
import { checkpointWeights } from "./checkpoint.ts";

/** Options of {@link exportCheckpoint}. */
export interface ExportOptions {
  /** The latent space the model was trained in; default: from `latentMetadata`, else TAESD. */
  vae?: WeightsConfig["vae"];
  /** Metadata of the latent cache the run trained on (names the VAE, the dataset, the count). */
  latentMetadata?: Record<string, string>;
  /** Extra training provenance merged into `config.json`'s `training`. */
  training?: Record<string, unknown>;
  /** Sampling defaults; default the published ones (Heun, 50 steps, CFG 4.0). */
  sampling?: Partial<WeightsConfig["sampling"]>;
  /** A `classes.txt` to copy beside the weights (so the folder is a complete `weights/`). */
  classesFile?: string;
  /** Export the raw (non-EMA) weights instead of the EMA; default false. */
  raw?: boolean;
}

/** What {@link exportCheckpoint} wrote. */
export interface ExportResult {
  /** Path of `model.safetensors`. */
  model: string;
  /** Path of `config.json`. */
  config: string;
  /** Path of the copied `classes.txt`, if any. */
  classes: string | null;
  /** The training step of the checkpoint. */
  step: number;
  /** The written config. */
  weightsConfig: WeightsConfig;
}

/**
 * Exports the EMA weights of a training checkpoint into `outDir` (`model.safetensors` +
 * `config.json`), atomically file by file.
 *
 * @example
 * ```ts
 * import { exportCheckpoint } from "./export.ts";
 * const res = await exportCheckpoint("runs/smoke/checkpoint.safetensors", "weights", {
 *   latentMetadata: { vae: "taesd", scaling_factor: "0.18215" },
 * });
 * res.step; // e.g. 300
 * ```
 */
export async function exportCheckpoint(
  checkpoint: string,
  outDir: string,
  options: ExportOptions = {},
): Promise<ExportResult> {
  const { model, info } = await checkpointWeights(checkpoint, { raw: options.raw });
  const tc = info.trainConfig;
  const lat = options.latentMetadata ?? {};
  const vaeName = lat.vae !== undefined && lat.vae in AUTOENCODERS
    ? lat.vae as AutoencoderKind
    : undefined;
  const vae = options.vae ?? {
    name: vaeName ?? "taesd",
    scalingFactor: lat.scaling_factor
      ? Number(lat.scaling_factor)
      : AUTOENCODERS[vaeName ?? "taesd"].scalingFactor,
  };
  const dataset: Record<string, string> = {};
  for (const k of ["source", "splits", "count", "images", "flipped", "limit"]) {
    if (lat[k] !== undefined) dataset[k] = lat[k];
  }
  try {
    const saved = await saveWeights(outDir, model, {
      vae,
      sampling: options.sampling,
      training: {
        step: info.step,
        steps: tc.steps,
        batchSize: tc.batchSize,
        lr: tc.lr,
        warmupSteps: tc.warmupSteps,
        emaDecay: tc.emaDecay,
        seed: tc.seed,
        modelPreset: tc.model,
        weights: options.raw ? "raw" : "ema",
        dataset,
        ...options.training,
      },
      classesFile: options.classesFile,
      metadata: { step: String(info.step), weights: options.raw ? "raw" : "ema" },
    });
    return { ...saved, step: info.step };
  } finally {
    model.dispose();
  }
}
