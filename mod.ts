/**
 * Anthos: class-conditional latent flow matching for the 102 Oxford flowers, in TypeScript.
 *
 * A DiT-Nano/2 (983,808 parameters) trained with rectified flow on Stable Diffusion VAE latents,
 * sampled with Heun (50 steps) and classifier-free guidance 4.0; on TensorFlow.js (`wasm` by
 * default, `webgpu`, `cpu`, or native `tensorflow`).
 *
 * @example Generate flowers
 * ```ts
 * import { AnthosPipeline } from "jsr:@glint/anthos";
 * const pipe = await AnthosPipeline.load({ repoDir: ".", backend: "wasm" });
 * const images = await pipe.generate("rose,sunflower", { nPerClass: 2, seed: 42 });
 * await images[0].save("rose.png");
 * ```
 *
 * @example Train on a latent cache
 * ```ts
 * import { loadBackend, loadLatents, Trainer } from "jsr:@glint/anthos";
 * await loadBackend("wasm");
 * const data = await loadLatents("runs/latents-taesd.safetensors");
 * const trainer = new Trainer({ preset: "smoke" });
 * await trainer.fit(data, { onStep: (s) => console.log(s.step, s.loss) });
 * ```
 *
 * @module
 */

export {
  availableBackends,
  type BackendInfo,
  type BackendName,
  BACKENDS,
  isWasmBackend,
  loadBackend,
  type LoadBackendOptions,
  type WebGpuEntry,
  webgpuEntryPoint,
} from "./lib/runtime/backend.ts";
export {
  AnthosPipeline,
  GeneratedImage,
  type GenerateOptions,
  type GenerateProgress,
  type PipelineGridOptions,
  type PipelineLoadOptions,
  type PipelineParts,
} from "./lib/pipeline/pipeline.ts";
export {
  type BlockParams,
  type ClassIds,
  DEFAULT_CONFIG,
  DiT,
  type DiTConfig,
  ditForward,
  type DiTParams,
  forwardMacs,
  type Layout,
  type Linear,
  type NamedParam,
  nullClassId,
  PRESETS,
} from "./lib/model/dit.ts";
export {
  CFG_SCALE_RANGE,
  checkCfgScale,
  disposeBatch,
  type FlowBatch,
  flowBatch,
  flowLoss,
  flowTargets,
  randomNoise,
  sample,
  SAMPLE_DEFAULTS,
  type SampleOptions,
  type SamplerName,
} from "./lib/model/flow.ts";
export {
  learningRate,
  NonFiniteLossError,
  type StepInfo,
  TRAIN_PRESETS,
  type TrainConfig,
  Trainer,
} from "./lib/training/trainer.ts";
export {
  EVAL_CLASSES,
  type EvalGrid,
  type EvalGridOptions,
  evaluationGrid,
  gridPoint,
  HELD_OUT_FRACTION,
  heldOutSplit,
  type LatentPart,
  type LatentSplit,
  selectLatents,
  type SplitInput,
  type SplitOptions,
  T_BUCKETS,
  validationLoss,
  type ValidationOptions,
  type ValidationResult,
} from "./lib/training/eval.ts";
export { type LatentDataset, loadLatents, saveLatents } from "./lib/data/latents.ts";
export {
  encodeDataset,
  type EncodeDatasetOptions,
  type EncodeItem,
  type EncodeResult,
} from "./lib/data/encode.ts";
export { exportCheckpoint, type ExportOptions, type ExportResult } from "./lib/training/export.ts";
export * from "./lib/training/checkpoint.ts";
export * from "./lib/training/data.ts";
export * from "./lib/training/run.ts";
export {
  type Autoencoder,
  AUTOENCODER_KINDS,
  type AutoencoderInfo,
  type AutoencoderKind,
  AUTOENCODERS,
  checkImageBatch,
  checkLatentBatch,
  type EncodeOptions,
  SD_SCALING_FACTOR,
  ShapeError,
} from "./lib/autoencoders/autoencoder.ts";
export { loadAutoencoder, type LoadAutoencoderOptions } from "./lib/autoencoders/load.ts";
export {
  flipHorizontal,
  type GridOptions,
  makeGrid,
  type RawImage,
  readImage,
  type ReadImageOptions,
  toPng,
  writePng,
} from "./lib/io/image.ts";
export { type GridLayout, gridLayout, MAX_GRID_PIXELS } from "./lib/io/pixels.ts";
export { checkWritable } from "./lib/io/fs.ts";
export { ClassNames, parseClassSelection } from "./lib/pipeline/classes.ts";
export {
  loadOxford,
  type OxfordDataset,
  type OxfordItem,
  type OxfordSplit,
} from "./lib/data/oxford.ts";
export {
  checkFinite,
  type DType,
  type RawTensor,
  readSafetensors,
  type SafetensorsFile,
  type TensorToWrite,
  writeSafetensors,
} from "./lib/io/safetensors.ts";
export {
  checkSeed,
  deriveSeed,
  IMAGE_NOISE_STREAM,
  MAX_SEED,
  Rng,
  type RngState,
} from "./lib/runtime/rng.ts";
export { type AnthosEnv, env, ENV_VARS } from "./lib/runtime/env.ts";
export {
  checkStateDict,
  type CheckStateDictOptions,
  StateDictError,
  type StateDictErrorOptions,
  stateDictProblems,
} from "./lib/io/state_dict.ts";
export { readWeightsConfig, type WeightsConfig } from "./lib/model/weights.ts";
