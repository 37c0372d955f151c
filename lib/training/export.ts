/**
 * Checkpoint -> published weights (the original's `convert_checkpoint`): the EMA weights of a
 * training checkpoint become `model.safetensors` (reference key names, PyTorch layout) and the
 * run's facts become `config.json` (architecture, sampling defaults, the latent space, training
 * provenance), which is everything {@link DiT.load} and the pipeline need.
 *
 * @module
 */

import { DiT, type DiTConfig } from "../model/dit.ts";
import { readSafetensors, serializeSafetensors, type TensorToWrite } from "../io/safetensors.ts";
import { writeFileAtomic } from "../io/fs.ts";
import { defaultWeightsConfig, type WeightsConfig, writeWeightsConfig } from "../model/weights.ts";

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
  const { tensors, metadata } = await readSafetensors(checkpoint, {
    what: "training checkpoint (made by `deno task train`)",
  });
  if (metadata.format !== "anthos-checkpoint") {
    throw new Error(
      `${checkpoint} is not an Anthos training checkpoint (format "${metadata.format}"). ` +
        `Pass the checkpoint.safetensors written by \`deno task train\` (runs/NAME/).`,
    );
  }
  const modelConfig = JSON.parse(metadata.model_config) as DiTConfig;
  const trainConfig = JSON.parse(metadata.train_config) as Record<string, unknown>;
  const step = Number(metadata.step);
  const prefix = options.raw ? "model." : "ema.";
  const picked: Record<string, TensorToWrite> = {};
  for (const [k, t] of tensors) {
    if (k.startsWith(prefix)) {
      picked[k.slice(prefix.length)] = {
        dtype: "F32",
        shape: t.shape,
        data: t.data as Float32Array,
      };
    }
  }
  // Loading through DiT.load checks every key and shape against the architecture.
  const model = await DiT.load(serializeSafetensors(picked), { config: modelConfig });
  const modelPath = `${outDir}/model.safetensors`;
  try {
    await Deno.mkdir(outDir, { recursive: true });
    await model.save(modelPath, {
      metadata: { step: String(step), weights: options.raw ? "raw" : "ema" },
    });
  } finally {
    model.dispose();
  }

  const lat = options.latentMetadata ?? {};
  const d = defaultWeightsConfig();
  const vaeName = lat.vae === "sd-vae-ft-ema" || lat.vae === "taesd" ? lat.vae : undefined;
  const vae = options.vae ?? {
    name: vaeName ?? "taesd",
    scalingFactor: lat.scaling_factor ? Number(lat.scaling_factor) : 0.18215,
  };
  const dataset: Record<string, string> = {};
  for (const k of ["source", "splits", "count", "images", "flipped", "limit"]) {
    if (lat[k] !== undefined) dataset[k] = lat[k];
  }
  const weightsConfig: WeightsConfig = {
    format: "anthos",
    model: modelConfig,
    sampling: { ...d.sampling, ...options.sampling },
    vae,
    training: {
      step,
      steps: trainConfig.steps,
      batchSize: trainConfig.batchSize,
      lr: trainConfig.lr,
      warmupSteps: trainConfig.warmupSteps,
      emaDecay: trainConfig.emaDecay,
      seed: trainConfig.seed,
      modelPreset: trainConfig.model,
      weights: options.raw ? "raw" : "ema",
      dataset,
      ...options.training,
    },
  };
  const configPath = `${outDir}/config.json`;
  await writeWeightsConfig(configPath, weightsConfig);
  let classes: string | null = null;
  if (options.classesFile) {
    classes = `${outDir}/classes.txt`;
    if (await realPath(options.classesFile) !== await realPath(classes)) {
      await writeFileAtomic(classes, await Deno.readFile(options.classesFile));
    }
  }
  return { model: modelPath, config: configPath, classes, step, weightsConfig };
}

async function realPath(p: string): Promise<string | null> {
  try {
    return await Deno.realPath(p);
  } catch {
    return null;
  }
}
