/**
 * The training checkpoint: the one module that knows its layout. Everything else (the trainer,
 * the export, the run folder) writes and reads checkpoints through these functions.
 *
 * A checkpoint is one safetensors file:
 * - `model.<key>`, `ema.<key>`: the raw and EMA weights (reference key names, PyTorch layout, F32);
 * - `adam_m.<key>`, `adam_v.<key>`: the AdamW moments of every trainable parameter, in the layout of
 *   their parameter (F32, or F16 when asked: smaller, but resume is then no longer bit-exact);
 * - `__metadata__`: `format` ("anthos-checkpoint"), `step`, `train_config` and `model_config`
 *   (JSON), `rng` (the seed and step from which all randomness derives) and `data_order` (the
 *   data-order phase: its first step and dataset size).
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { DiT, type DiTConfig, fromTorchLayout, toTorchLayout } from "../model/dit.ts";
import {
  type RawTensor,
  readSafetensors,
  serializeSafetensors,
  type TensorToWrite,
  writeSafetensors,
} from "../io/safetensors.ts";

/** The `format` tag of a training checkpoint. */
export const CHECKPOINT_FORMAT = "anthos-checkpoint";

/** Where a data-order phase starts and how large its dataset is (see `Trainer.batchIndices`). */
export interface DataOrder {
  /** The step at which this order began (0 for the first phase). */
  startStep: number;
  /** Number of training latents the order permutes; `null` until the first step. */
  size: number | null;
}

/** The full resumable state of a training run. */
export interface TrainingState {
  /** Optimizer steps done. */
  step: number;
  /** The training configuration (stored as JSON). */
  trainConfig: Record<string, unknown>;
  /** The trained weights. */
  model: DiT;
  /** Their EMA. */
  ema: DiT;
  /** AdamW first moments, one per `model.trainableVariables()`, in that order and shape. */
  adamM: readonly tf.Tensor[];
  /** AdamW second moments, as `adamM`. */
  adamV: readonly tf.Tensor[];
  /** Seed of all randomness (the step is the other half of the RNG state). */
  seed: number;
  /** The data-order phase. */
  dataOrder: DataOrder;
}

/** Options of {@link writeCheckpoint}. */
export interface WriteCheckpointOptions {
  /**
   * Storage type of the AdamW moments. "F32" (default) resumes bit for bit; "F16" halves their
   * size but rounds them, so a resumed run drifts from an uninterrupted one.
   */
  moments?: "F32" | "F16";
}

/**
 * Writes a checkpoint atomically (temp file + rename).
 *
 * @example
 * ```ts
 * import { writeCheckpoint } from "./checkpoint.ts";
 * import { Trainer } from "./trainer.ts";
 * const trainer = new Trainer({ preset: "smoke", model: "DiT-Pico/2" });
 * await writeCheckpoint("/tmp/anthos-ckpt.safetensors", trainer.state());
 * trainer.dispose();
 * ```
 */
export async function writeCheckpoint(
  path: string,
  state: TrainingState,
  options: WriteCheckpointOptions = {},
): Promise<void> {
  const tensors: Record<string, TensorToWrite> = {};
  for (const [prefix, model] of [["model.", state.model], ["ema.", state.ema]] as const) {
    for (const [k, v] of Object.entries(await model.stateDict())) tensors[prefix + k] = v;
  }
  const named = trainable(state.model);
  if (state.adamM.length !== named.length || state.adamV.length !== named.length) {
    throw new Error(
      `writeCheckpoint: ${state.adamM.length}/${state.adamV.length} moments for ` +
        `${named.length} trainable parameters`,
    );
  }
  for (const [prefix, moments] of [["adam_m.", state.adamM], ["adam_v.", state.adamV]] as const) {
    for (let i = 0; i < named.length; i++) {
      // Moments share their parameter's layout, so they are stored in the same (PyTorch) layout.
      const np = named[i];
      const data = await moments[i].data() as Float32Array;
      tensors[prefix + np.key] = {
        dtype: options.moments ?? "F32",
        shape: np.torchShape,
        data: toTorchLayout(data, np.variable.shape, np.torchShape, np.layout),
      };
    }
  }
  await writeSafetensors(path, tensors, {
    metadata: {
      format: CHECKPOINT_FORMAT,
      step: String(state.step),
      train_config: JSON.stringify(state.trainConfig),
      model_config: JSON.stringify(state.model.config),
      rng: JSON.stringify({ seed: state.seed, step: state.step }),
      data_order: JSON.stringify(state.dataOrder),
    },
  });
}

/** What {@link checkpointInfo} reads from a checkpoint's header. */
export interface CheckpointInfo {
  /** Optimizer steps done. */
  step: number;
  /** The training configuration. */
  trainConfig: Record<string, unknown>;
  /** The architecture. */
  modelConfig: DiTConfig;
  /** The seed of all randomness. */
  seed: number;
  /** The data-order phase. */
  dataOrder: DataOrder;
  /** Storage type of the moments. */
  moments: "F32" | "F16";
}

/**
 * Reads a checkpoint's facts (step, configs, data order) without building any tensor.
 *
 * @example
 * ```ts
 * import { checkpointInfo } from "./checkpoint.ts";
 * const info = await checkpointInfo("runs/smoke/checkpoint.safetensors");
 * info.step; // e.g. 300
 * ```
 */
export async function checkpointInfo(path: string): Promise<CheckpointInfo> {
  return parse(path, await open(path)).info;
}

/**
 * Reads a checkpoint into a {@link TrainingState} on the current backend. The weights are built
 * straight from the file (no random init first); every key and shape is checked.
 *
 * @example
 * ```ts
 * import { readCheckpoint } from "./checkpoint.ts";
 * const state = await readCheckpoint("runs/smoke/checkpoint.safetensors");
 * state.step; // e.g. 300
 * ```
 */
export async function readCheckpoint(path: string): Promise<TrainingState & CheckpointInfo> {
  const { info, tensors } = parse(path, await open(path));
  const model = await buildModel(path, tensors, "model.", info.modelConfig);
  const ema = await buildModel(path, tensors, "ema.", info.modelConfig);
  const named = trainable(model);
  const moments = (prefix: string) =>
    named.map((np) => {
      const t = tensors.get(prefix + np.key);
      if (!t || t.shape.join(",") !== np.torchShape.join(",")) {
        tf.dispose([model, ema].flatMap((m) => m.namedParams().map((p) => p.variable)));
        throw new Error(
          `checkpoint ${path} ${t ? `has a wrong shape [${t.shape}] for` : "lacks"} ` +
            `"${prefix + np.key}": it is incomplete or damaged. Resume from an earlier copy.`,
        );
      }
      const data = fromTorchLayout(
        t.data as Float32Array,
        np.variable.shape,
        np.torchShape,
        np.layout,
      );
      return tf.tensor(data, np.variable.shape, "float32");
    });
  return {
    ...info,
    trainConfig: info.trainConfig,
    model,
    ema,
    adamM: moments("adam_m."),
    adamV: moments("adam_v."),
  };
}

/**
 * The weights to publish from a checkpoint: the EMA (default) or, with `raw`, the raw weights.
 *
 * @example
 * ```ts
 * import { checkpointWeights } from "./checkpoint.ts";
 * const { model, info } = await checkpointWeights("runs/smoke/checkpoint.safetensors");
 * console.log(info.step, model.paramCount());
 * model.dispose();
 * ```
 */
export async function checkpointWeights(
  path: string,
  options: { raw?: boolean } = {},
): Promise<{ model: DiT; info: CheckpointInfo }> {
  const { info, tensors } = parse(path, await open(path));
  const model = await buildModel(path, tensors, options.raw ? "model." : "ema.", info.modelConfig);
  return { model, info };
}

// ---------------------------------------------------------------- internals

async function open(path: string) {
  return await readSafetensors(path, { what: "training checkpoint (made by `Trainer`)" });
}

function parse(
  path: string,
  file: Awaited<ReturnType<typeof open>>,
): { info: CheckpointInfo; tensors: Map<string, RawTensor> } {
  const { metadata: m, tensors } = file;
  if (m.format !== CHECKPOINT_FORMAT) {
    throw new Error(
      `${path} is not an Anthos training checkpoint (format "${m.format}"): pass the ` +
        `checkpoint.safetensors of a training run folder`,
    );
  }
  const json = <T>(key: string, fallback?: T): T => {
    if (m[key] === undefined && fallback !== undefined) return fallback;
    try {
      return JSON.parse(m[key]) as T;
    } catch {
      throw new Error(`${path}: its "${key}" metadata is missing or damaged`);
    }
  };
  const step = Number(m.step);
  if (!Number.isInteger(step) || step < 0) throw new Error(`${path}: bad step "${m.step}"`);
  const trainConfig = json<Record<string, unknown>>("train_config");
  const rng = json<{ seed: number }>("rng", { seed: Number(trainConfig.seed ?? 0) });
  // Checkpoints from before data phases: one order from step 0 over the run's whole dataset.
  const dataOrder = json<DataOrder>("data_order", { startStep: 0, size: null });
  const firstM = [...tensors.keys()].find((k) => k.startsWith("adam_m."));
  return {
    info: {
      step,
      trainConfig,
      modelConfig: json<DiTConfig>("model_config"),
      seed: rng.seed,
      dataOrder,
      moments: firstM && tensors.get(firstM)!.dtype === "F16" ? "F16" : "F32",
    },
    tensors,
  };
}

/** Builds a DiT from the `prefix` tensors; `DiT.load` checks every key and shape. */
async function buildModel(
  path: string,
  tensors: Map<string, RawTensor>,
  prefix: string,
  config: DiTConfig,
): Promise<DiT> {
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
  try {
    return await DiT.load(serializeSafetensors(picked), { config });
  } catch (e) {
    throw new Error(
      `checkpoint ${path}: its "${prefix}*" weights do not fit: ${(e as Error).message}`,
    );
  }
}

function trainable(model: DiT) {
  return model.namedParams().filter((p) => p.key !== "pos_embed");
}

/**
 * Whether a safetensors file is a training checkpoint (as opposed to e.g. model weights).
 *
 * @example
 * ```ts
 * import { isCheckpoint } from "./checkpoint.ts";
 * await isCheckpoint("weights/model.safetensors"); // false
 * ```
 */
export async function isCheckpoint(path: string): Promise<boolean> {
  return (await open(path)).metadata.format === CHECKPOINT_FORMAT;
}
