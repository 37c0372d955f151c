/**
 * Evaluation during and after training: a held-out slice of the latent cache that never moves,
 * the validation flow-matching loss on a fixed grid of noise and t (also split into 10 t-buckets,
 * to show where along the path the model is weak), and a fixed grid of samples a person can look
 * at. Same model, same data, same backend -> the same numbers to the last digit.
 *
 * **The held-out rule.** Each latent is identified by (group, photo, mirrored):
 * - group: the cache's `splits` metadata (e.g. "train", "test"), else its `source`, else the part's
 *   `name` (file name), else "latents";
 * - photo: the latent's index in its file, folded onto the photo when the file stores mirror images
 *   in its second half (`flipped: "second-half"`, `images: N`: latent i is photo i mod N);
 * - mirrored: true for that second half, and for every latent of a file whose `flipped` says
 *   anything else than "none" / "second-half" (a file of mirror images only).
 *
 * A latent is held out when hash(seed, group, photo) / 2^32 < fraction (default 2%). The decision
 * depends on nothing else, so adding cache files later never moves an earlier latent between train
 * and held-out; a photo and its mirror image always land on the same side (no leak through the
 * mirror); and caches of the same photos made with another autoencoder hold out the same photos.
 *
 * **The validation grid.** Held-out latent number j (in dataset order) is evaluated at K = 10 times
 * t_k = (k + u_k) / K, k = 0..K-1 (one per stratum of (0, 1), `u_k` a seeded jitter), each with
 * its own standard-normal noise; the noise and `u_k` come from `Rng(hash(seed, latent identity,
 * k))`, so a latent's terms do not depend on which other latents are there. Labels are the true
 * classes (no class dropout). The loss is the mean over all (latent, k) of the per-sample MSE
 * between the model's velocity and data - noise, exactly the training objective (x_t and v from
 * {@link flowTargets}).
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { DiT } from "../model/dit.ts";
import { flowTargets, sample, SAMPLE_DEFAULTS, type SamplerName } from "../model/flow.ts";
import type { Autoencoder } from "../autoencoders/autoencoder.ts";
import type { LatentDataset } from "../data/latents.ts";
import { makeGrid } from "../io/image.ts";
import { Rng } from "../runtime/rng.ts";

// ---------------------------------------------------------------- held-out split

/** Share of the photos held out by default (2%). */
export const HELD_OUT_FRACTION = 0.02;

/** Number of t-buckets of {@link validationLoss}: [0, 0.1), [0.1, 0.2), ... [0.9, 1). */
export const T_BUCKETS = 10;

/** One cache file of a (possibly concatenated) latent dataset, in concatenation order. */
export interface LatentPart {
  /** Latents this part contributes to the dataset. */
  count: number;
  /** The file's metadata (`splits`, `source`, `images`, `flipped`, ...). */
  metadata: Record<string, string>;
  /** The file's name; only used when the metadata names neither splits nor source. */
  name?: string;
}

/** A dataset as {@link heldOutSplit} sees it: one file, or several (`parts`) concatenated. */
export type SplitInput =
  | (Pick<LatentDataset, "metadata" | "labels"> & { parts?: readonly LatentPart[] })
  | readonly LatentPart[];

/** Options of {@link heldOutSplit}. */
export interface SplitOptions {
  /** Share of the photos held out, in [0, 1); default {@link HELD_OUT_FRACTION}. */
  fraction?: number;
  /** Seed of the selection; default 0. */
  seed?: number;
}

/** Train and held-out indices into a dataset, and every latent's identity. */
export interface LatentSplit {
  /** Indices of the training latents, ascending. */
  train: Int32Array;
  /** Indices of the held-out latents, ascending. */
  heldOut: Int32Array;
  /** A 32-bit identity of each latent (group, photo, mirrored), for per-latent seeds. */
  keys: Uint32Array;
  /** The fraction used. */
  fraction: number;
  /** The seed used. */
  seed: number;
}

/**
 * Splits a latent dataset into train and held-out indices by the rule of this module: a seeded
 * `fraction` of the photos, decided per photo, stable when files are added.
 *
 * @example
 * ```ts
 * import { heldOutSplit } from "./eval.ts";
 * import { loadLatents } from "../data/latents.ts";
 * const data = await loadLatents("runs/latents-taesd.safetensors");
 * const { train, heldOut } = heldOutSplit(data); // ~98% / ~2% of the indices
 * ```
 */
export function heldOutSplit(data: SplitInput, options: SplitOptions = {}): LatentSplit {
  const fraction = options.fraction ?? HELD_OUT_FRACTION;
  const seed = options.seed ?? 0;
  if (!(fraction >= 0 && fraction < 1)) {
    throw new RangeError(`fraction must be in [0, 1), got ${fraction} (e.g. 0.02 for 2%)`);
  }
  if (!Number.isInteger(seed)) throw new RangeError(`seed must be an integer, got ${seed}`);
  const parts: readonly LatentPart[] = isPartList(data)
    ? data
    : data.parts ?? [{ count: data.labels.length, metadata: data.metadata }];
  for (const part of parts) {
    if (!Number.isInteger(part.count) || part.count < 0) {
      throw new RangeError(`a latent part has count ${part.count}: expected a whole number >= 0`);
    }
  }
  // A dataset loaded with a limit holds a prefix of its parts.
  const total = isPartList(data)
    ? parts.reduce((s, p) => s + p.count, 0)
    : Math.min(data.labels.length, parts.reduce((s, p) => s + p.count, 0));
  if (!isPartList(data) && parts.reduce((s, p) => s + p.count, 0) < data.labels.length) {
    throw new Error(
      `the dataset holds ${data.labels.length} latents but its parts only ` +
        `${parts.reduce((s, p) => s + p.count, 0)}: list every cache file in \`parts\``,
    );
  }
  const keys = new Uint32Array(total);
  const held = new Uint8Array(total);
  const threshold = fraction * 2 ** 32;
  let i = 0;
  for (const part of parts) {
    const group = hashString(partGroup(part));
    const images = Number(part.metadata.images);
    const flipped = (part.metadata.flipped ?? "none").trim();
    const secondHalf = flipped === "second-half" && Number.isInteger(images) && images > 0;
    const allMirrored = flipped !== "none" && flipped !== "second-half" && flipped !== "";
    for (let j = 0; j < part.count && i < total; j++, i++) {
      const photo = secondHalf ? j % images : j;
      const mirrored = secondHalf ? j >= images : allMirrored;
      const photoKey = mix(group, photo);
      keys[i] = mix(photoKey, mirrored ? 1 : 0);
      held[i] = mix(photoKey, seed ^ 0x4e1d) < threshold ? 1 : 0;
    }
  }
  const heldOut: number[] = [];
  const train: number[] = [];
  for (let k = 0; k < total; k++) (held[k] ? heldOut : train).push(k);
  return {
    train: Int32Array.from(train),
    heldOut: Int32Array.from(heldOut),
    keys,
    fraction,
    seed,
  };
}

/**
 * A new dataset holding the latents at `indices` (e.g. a split's `train`), gathered on the
 * device. The caller disposes its `latents`. It carries no `parts`: split the full dataset, then
 * select (a split of a selection would see other identities).
 *
 * @example
 * ```ts
 * import { heldOutSplit, selectLatents } from "./eval.ts";
 * import { loadLatents } from "../data/latents.ts";
 * const data = await loadLatents("runs/latents-taesd.safetensors");
 * const train = selectLatents(data, heldOutSplit(data).train);
 * ```
 */
export function selectLatents(
  data: LatentDataset,
  indices: Int32Array | readonly number[],
): LatentDataset {
  const n = data.labels.length;
  const idx = Int32Array.from(indices);
  const bad = idx.find((i) => i < 0 || i >= n);
  if (bad !== undefined) throw new RangeError(`index ${bad} is outside the dataset (0..${n - 1})`);
  const latents = tf.tidy(() => tf.gather(data.latents, tf.tensor1d(idx, "int32"))); // [M, H, W, C]
  return {
    latents: latents as tf.Tensor4D,
    labels: Int32Array.from(idx, (i) => data.labels[i]),
    metadata: data.metadata,
  };
}

// ---------------------------------------------------------------- validation loss

/** Options of {@link validationLoss}. */
export interface ValidationOptions {
  /** The split to evaluate the held-out part of; default `heldOutSplit(data)`. */
  split?: LatentSplit;
  /** Evaluate these indices instead of a split's held-out set (keys still from `split`). */
  indices?: Int32Array | readonly number[];
  /** Evaluate only the first N held-out latents (a quicker, still fixed, estimate). */
  maxItems?: number;
  /** Times per latent, one per stratum of (0, 1); default 10 (one per t-bucket). */
  tPerItem?: number;
  /** Seed of the noise and t grid; default 0. */
  seed?: number;
  /** Evaluations per model call; default 32. Changing it may change the last digits. */
  batchSize?: number;
  /** Called after each batch with (evaluations done, total). */
  onBatch?: (done: number, total: number) => void;
}

/** What {@link validationLoss} measured. */
export interface ValidationResult {
  /** Mean flow-matching MSE over every (latent, t) of the grid. */
  loss: number;
  /** Mean MSE in each of the {@link T_BUCKETS} t-buckets ([0, 0.1), ...); NaN for an empty one. */
  buckets: number[];
  /** Evaluations in each bucket. */
  counts: number[];
  /** Held-out latents evaluated. */
  items: number;
  /** Evaluations (latents x times). */
  evaluations: number;
}

/**
 * The validation flow-matching loss of `model` on the held-out latents of `data`, over the fixed
 * seeded grid of noise and t described in this module, batched and inside `tf.tidy`.
 *
 * @example
 * ```ts
 * import { validationLoss } from "./eval.ts";
 * import { DiT } from "../model/dit.ts";
 * import { loadLatents } from "../data/latents.ts";
 * const data = await loadLatents("runs/latents-taesd.safetensors");
 * const model = await DiT.load("weights/model.safetensors");
 * const { loss, buckets } = await validationLoss(model, data);
 * console.log(loss.toFixed(6), buckets.map((b) => b.toFixed(4)).join(" "));
 * ```
 */
export async function validationLoss(
  model: DiT,
  data: LatentDataset,
  options: ValidationOptions = {},
): Promise<ValidationResult> {
  const k = options.tPerItem ?? T_BUCKETS;
  const seed = options.seed ?? 0;
  const batchSize = options.batchSize ?? 32;
  positiveInt("tPerItem", k, "e.g. 10, one per t-bucket");
  positiveInt("batchSize", batchSize, "e.g. 32");
  if (!Number.isInteger(seed)) throw new RangeError(`seed must be an integer, got ${seed}`);
  const n = data.labels.length;
  if (data.latents.shape[0] !== n) {
    throw new Error(`the dataset has ${data.latents.shape[0]} latents but ${n} labels`);
  }
  const mc = model.config;
  const [, h, w, c] = data.latents.shape;
  if (h !== mc.inputSize || w !== mc.inputSize || c !== mc.inChannels) {
    throw new Error(
      `the latents are [${h}, ${w}, ${c}] but the model takes ` +
        `[${mc.inputSize}, ${mc.inputSize}, ${mc.inChannels}]: evaluate on a cache made for this ` +
        `model (256x256 photos give 32x32x4 latents)`,
    );
  }
  const split = options.split ?? heldOutSplit(data);
  if (split.keys.length !== n) {
    throw new Error(
      `the split covers ${split.keys.length} latents but the dataset holds ${n}: make the split ` +
        `from this dataset (heldOutSplit(data))`,
    );
  }
  let items = Int32Array.from(options.indices ?? split.heldOut);
  if (options.maxItems !== undefined) {
    positiveInt("maxItems", options.maxItems, "or leave it out to use every held-out latent");
    items = items.slice(0, options.maxItems);
  }
  if (items.length === 0) {
    throw new Error(
      `the held-out slice is empty: ${n} latents at fraction ${split.fraction} hold out none. ` +
        `Evaluate on a larger cache, or split with a larger fraction (heldOutSplit(data, ` +
        `{ fraction }))`,
    );
  }
  const bad = items.find((i) => i < 0 || i >= n);
  if (bad !== undefined) throw new RangeError(`index ${bad} is outside the dataset (0..${n - 1})`);
  const badLabel = items.find((i) => data.labels[i] < 0 || data.labels[i] >= mc.numClasses);
  if (badLabel !== undefined) {
    throw new Error(
      `latent ${badLabel} has label ${data.labels[badLabel]}, outside the model's classes ` +
        `0..${mc.numClasses - 1}`,
    );
  }

  const per = h * w * c;
  const total = items.length * k;
  const sums = new Float64Array(T_BUCKETS);
  const counts = new Array<number>(T_BUCKETS).fill(0);
  for (let start = 0; start < total; start += batchSize) {
    const size = Math.min(batchSize, total - start);
    const idx = new Int32Array(size);
    const y = new Int32Array(size);
    const t = new Float32Array(size);
    const bucket = new Int32Array(size);
    const noise = new Float32Array(size * per);
    for (let b = 0; b < size; b++) {
      const e = start + b;
      const item = items[Math.floor(e / k)];
      const stratum = e % k;
      const g = gridPoint(split.keys[item], stratum, { tPerItem: k, seed, size: per });
      idx[b] = item;
      y[b] = data.labels[item];
      t[b] = g.t;
      bucket[b] = Math.min(T_BUCKETS - 1, Math.floor(g.t * T_BUCKETS));
      noise.set(g.noise, b * per);
    }
    const losses = tf.tidy(() => {
      const clean = tf.gather(data.latents, tf.tensor1d(idx, "int32")) as tf.Tensor4D; // [B, H, W, C]
      const tt = tf.tensor1d(t, "float32"); // [B]
      const { xt, v } = flowTargets(clean, tf.tensor4d(noise, [size, h, w, c]), tt);
      const pred = model.forward(xt, tt, tf.tensor1d(y, "int32")); // [B, H, W, C]
      return tf.mean(tf.square(tf.sub(pred, v)), [1, 2, 3]); // [B]
    });
    const values = await losses.data();
    losses.dispose();
    for (let b = 0; b < size; b++) {
      sums[bucket[b]] += values[b];
      counts[bucket[b]]++;
    }
    options.onBatch?.(start + size, total);
  }
  let sum = 0;
  for (const s of sums) sum += s;
  return {
    loss: sum / total,
    buckets: Array.from(sums, (s, i) => counts[i] ? s / counts[i] : NaN),
    counts,
    items: items.length,
    evaluations: total,
  };
}

/**
 * Point `stratum` of the validation grid of one latent: its time t in stratum
 * [stratum / K, (stratum + 1) / K) and its noise, from the latent's identity key and the seed.
 *
 * @example
 * ```ts
 * import { gridPoint, heldOutSplit } from "./eval.ts";
 * const split = heldOutSplit([{ count: 100, metadata: { splits: "train" } }]);
 * const { t, noise } = gridPoint(split.keys[split.heldOut[0]], 3, { tPerItem: 10, seed: 0 });
 * // t in [0.3, 0.4), noise: 4096 N(0, 1) values
 * ```
 */
export function gridPoint(
  key: number,
  stratum: number,
  options: { tPerItem?: number; seed?: number; size?: number } = {},
): { t: number; noise: Float32Array } {
  const k = options.tPerItem ?? T_BUCKETS;
  const rng = new Rng(mix(mix(key, options.seed ?? 0), stratum ^ 0x7e57));
  const t = (stratum + rng.uniform()) / k;
  return { t, noise: rng.normalArray(options.size ?? 32 * 32 * 4) };
}

// ---------------------------------------------------------------- evaluation grid

/**
 * The classes of the evaluation grid (16 well-known, varied flowers), in grid order:
 * rose, sunflower, daffodil, common dandelion, corn poppy, tiger lily, water lily, lotus,
 * magnolia, foxglove, columbine, bearded iris, oxeye daisy, passion flower, fritillary,
 * bird of paradise.
 */
export const EVAL_CLASSES: readonly number[] = Object.freeze([
  73,
  53,
  41,
  49,
  25,
  5,
  72,
  77,
  86,
  93,
  83,
  67,
  48,
  76,
  22,
  7,
]);

/** Options of {@link evaluationGrid}. */
export interface EvalGridOptions {
  /** Class ids, in grid order; default {@link EVAL_CLASSES}. */
  classes?: readonly number[];
  /** Images per class; default 2. */
  perClass?: number;
  /** Noise seed; default 0. Tile noise depends on (seed, class, copy) only. */
  seed?: number;
  /** Sampling steps; default 50 (the published Heun 50). Fewer is faster for previews. */
  steps?: number;
  /** Guidance scale; default 4.0. */
  cfgScale?: number;
  /** Sampler; default "heun". */
  sampler?: SamplerName;
  /** Class names by id (e.g. `ClassNames.names`) for the captions; else "class N". */
  classNames?: readonly string[];
  /** Scale each image to this many pixels square in the PNG (default: as decoded, 256). */
  tileSize?: number;
  /** Tiles per row; default 4 classes per row (8 tiles at perClass 2). */
  cols?: number;
  /** Images sampled at once; default 16. Neither the noise nor the pixels depend on it. */
  batchSize?: number;
  /** Called after each sampling step of each batch with (done, total). */
  onStep?: (done: number, total: number) => void;
}

/** What {@link evaluationGrid} made. */
export interface EvalGrid {
  /** The grid as PNG bytes. */
  png: Uint8Array;
  /** Caption of each tile (class name), in tile order. */
  captions: string[];
  /** Class id of each tile. */
  classes: number[];
}

/**
 * The fixed evaluation grid: the same classes and noise every time (default 16 classes x 2),
 * sampled with `model` (Heun, CFG 4.0, 50 steps unless told otherwise) and decoded by `vae`.
 *
 * @example
 * ```ts
 * import { evaluationGrid } from "./eval.ts";
 * import { DiT } from "../model/dit.ts";
 * import { loadAutoencoder } from "../autoencoders/load.ts";
 * const model = await DiT.load("weights/model.safetensors");
 * const vae = await loadAutoencoder("taesd", { dir: "../shared/weights/taesd" });
 * const { png } = await evaluationGrid(model, vae, { steps: 20 });
 * await Deno.writeFile("grid.png", png);
 * ```
 */
export async function evaluationGrid(
  model: DiT,
  vae: Autoencoder,
  options: EvalGridOptions = {},
): Promise<EvalGrid> {
  const classes = [...(options.classes ?? EVAL_CLASSES)];
  const perClass = options.perClass ?? 2;
  const seed = options.seed ?? 0;
  const steps = options.steps ?? SAMPLE_DEFAULTS.steps;
  const batchSize = options.batchSize ?? 16;
  positiveInt("perClass", perClass, "e.g. 2");
  positiveInt("steps", steps, `e.g. ${SAMPLE_DEFAULTS.steps}; fewer is faster`);
  positiveInt("batchSize", batchSize, "e.g. 16");
  if (!Number.isInteger(seed)) throw new RangeError(`seed must be an integer, got ${seed}`);
  if (classes.length === 0) throw new RangeError("the grid needs at least one class");
  const nc = model.config.numClasses;
  const badClass = classes.find((id) => !Number.isInteger(id) || id < 0 || id >= nc);
  if (badClass !== undefined) {
    throw new RangeError(`class ${badClass} is not a class id of the model (0..${nc - 1})`);
  }
  const tiles = classes.flatMap((id) => Array.from({ length: perClass }, (_, copy) => [id, copy]));
  const s = model.config.inputSize;
  const ch = model.config.inChannels;
  const per = s * s * ch;
  const batches = Math.ceil(tiles.length / batchSize);
  const images: tf.Tensor3D[] = [];
  try {
    for (let bi = 0; bi < batches; bi++) {
      const part = tiles.slice(bi * batchSize, (bi + 1) * batchSize);
      const values = new Float32Array(part.length * per);
      part.forEach(([id, copy], i) => {
        values.set(new Rng(mix(mix(seed ^ 0x9e1d, id), copy)).normalArray(per), i * per);
      });
      const noise = tf.tensor4d(values, [part.length, s, s, ch]); // [B, s, s, C]
      let z: tf.Tensor4D;
      try {
        z = await sample(model, noise, part.map(([id]) => id), {
          steps,
          cfgScale: options.cfgScale ?? SAMPLE_DEFAULTS.cfgScale,
          sampler: options.sampler ?? SAMPLE_DEFAULTS.sampler,
          onStep: (i) => options.onStep?.(bi * steps + i, batches * steps),
        });
      } finally {
        noise.dispose();
      }
      const rgb = tf.tidy(() => vae.decode(z)); // [B, 8s, 8s, 3]
      z.dispose();
      images.push(...tf.unstack(rgb) as tf.Tensor3D[]);
      rgb.dispose();
    }
    const captions = tiles.map(([id]) => options.classNames?.[id] ?? `class ${id}`);
    const png = await makeGrid(images, {
      cols: options.cols ?? 4 * perClass,
      captions,
      tileSize: options.tileSize,
    });
    return { png, captions, classes: tiles.map(([id]) => id) };
  } finally {
    tf.dispose(images);
  }
}

// ---------------------------------------------------------------- internals

function isPartList(d: SplitInput): d is readonly LatentPart[] {
  return Array.isArray(d);
}

function partGroup(p: LatentPart): string {
  const m = p.metadata;
  if (m.splits?.trim()) return `splits:${m.splits.trim()}`;
  if (m.source?.trim()) return `source:${m.source.trim()}`;
  return `name:${(p.name ?? "latents").replace(/^.*\//, "")}`;
}

/** FNV-1a over the UTF-16 code units of a string, 32 bits. */
function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h >>> 0;
}

/** Mixes a 32-bit value with a counter (murmur3 finalizer): a well-spread 32-bit hash. */
function mix(h: number, v: number): number {
  let x = (h ^ Math.imul((v >>> 0) + 0x9e3779b9, 0x85ebca6b)) >>> 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b) >>> 0;
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

function positiveInt(name: string, v: number, hint: string): void {
  if (!Number.isInteger(v) || v < 1) {
    throw new RangeError(`${name} must be a positive integer, got ${v}: ${hint}`);
  }
}
