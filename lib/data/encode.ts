/**
 * Dataset -> latent cache: every photo is center-cropped to 256x256, encoded by the autoencoder,
 * and encoded again flipped left-right (the original's augmentation: 8,189 photos give 16,378
 * latents). The result is one file for {@link saveLatents}.
 *
 * Layout of the cache: the first L latents are the photos in item order, the next L their flips
 * in the same order (`latents[L + i]` is the flip of `latents[i]`); labels follow.
 *
 * Encoding the full set takes a while, so it is resumable: finished chunks of images are written
 * atomically into `<out>.parts/` beside a manifest of the settings; a rerun after a kill skips
 * them. The cache itself is written atomically at the end and the parts are then removed, so a
 * cache file on disk is always complete.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { Autoencoder } from "../autoencoders/autoencoder.ts";
import { writeFileAtomic } from "../io/fs.ts";
import { flipHorizontal, type RawImage, rawToTensor, readImageRaw } from "../io/image.ts";
import { saveLatents } from "./latents.ts";
import { readSafetensors, writeSafetensors } from "../io/safetensors.ts";

/** One image to encode. */
export interface EncodeItem {
  /** Path of the photo. */
  path: string;
  /** Class id 0..101. */
  label: number;
}

/** Options of {@link encodeDataset}. */
export interface EncodeDatasetOptions {
  /** The latent cache to write (`.safetensors`). Parts go to `<out>.parts/`. */
  out: string;
  /** Images per autoencoder call (each is encoded with its flip, so 2x this); default 8. */
  batch?: number;
  /** Images per resumable chunk; default 64. */
  chunk?: number;
  /** Storage type of the latents; default "F16". */
  dtype?: "F16" | "F32";
  /** Also encode the horizontal flips; default true. */
  flip?: boolean;
  /** Side of the square crop; default 256. */
  size?: number;
  /** Extra metadata for the cache (vae name, splits, source ...). */
  metadata?: Record<string, string>;
  /**
   * Called after every batch with images done and the total; `reused` is true when the step came
   * from chunks of an earlier run (no encoding time spent).
   */
  onProgress?: (done: number, total: number, reused: boolean) => void;
  /** Messages worth telling the user (resumed chunks, stale parts). */
  onLog?: (message: string) => void;
  /** Stops after the chunk in progress is saved (e.g. Ctrl-C); the run can be resumed later. */
  signal?: AbortSignal;
}

/** What {@link encodeDataset} did. */
export interface EncodeResult {
  /** True when the cache was written; false when stopped by the signal (parts kept). */
  complete: boolean;
  /** Latents in the cache (2x images with flips). */
  count: number;
  /** Images encoded in this call (not counting chunks reused from an earlier run). */
  encoded: number;
  /** Chunks reused from an earlier, interrupted run. */
  reusedChunks: number;
  /** Latent shape `[h, w, c]` of one image. */
  latentShape: [number, number, number];
}

const MANIFEST = "manifest.json";

/**
 * Encodes `items` with `vae` into the latent cache `options.out`, resumably.
 *
 * @example
 * ```ts
 * import { loadAutoencoder } from "../autoencoders/load.ts";
 * import { encodeDataset } from "./encode.ts";
 * import { loadOxford } from "./oxford.ts";
 * const ds = await loadOxford("../shared/data/oxford102", { splits: ["train"] });
 * const vae = await loadAutoencoder("taesd", { dir: "../shared/weights/taesd" });
 * const res = await encodeDataset(ds.items.slice(0, 16), vae, {
 *   out: "runs/latents-taesd.safetensors",
 *   metadata: { vae: "taesd" },
 * });
 * res.count; // 32 (16 photos + their flips)
 * ```
 */
export async function encodeDataset(
  items: readonly EncodeItem[],
  vae: Autoencoder,
  options: EncodeDatasetOptions,
): Promise<EncodeResult> {
  const batch = options.batch ?? 8;
  const chunk = options.chunk ?? 64;
  const dtype = options.dtype ?? "F16";
  const flip = options.flip ?? true;
  const size = options.size ?? 256;
  for (const [k, v] of [["batch", batch], ["chunk", chunk]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`${k} must be a positive integer, got ${v}`);
  }
  if (items.length === 0) {
    throw new Error(
      `nothing to encode: the image list is empty (check the data folder and splits)`,
    );
  }
  const n = items.length;
  const copies = flip ? 2 : 1;
  const partsDir = `${options.out}.parts`;
  const nChunks = Math.ceil(n / chunk);
  const log = options.onLog ?? (() => {});

  // The manifest pins everything that decides the content; parts made otherwise are stale.
  const manifest = {
    format: "anthos-latent-parts",
    version: 1,
    vae: vae.kind,
    dtype,
    flip,
    size,
    chunk,
    items: n,
    fingerprint: await fingerprint(items),
  };
  const reused = await prepareParts(partsDir, manifest, log);

  let latentShape: [number, number, number] | null = null;
  let done = 0;
  let encoded = 0;
  let reusedChunks = 0;
  const report = (reused = false) => options.onProgress?.(done, n, reused);

  // Decoding JPEGs (sharp, on libuv threads) overlaps with encoding: the next batch is requested
  // before the current one runs through the autoencoder.
  const read = (from: number, to: number) =>
    Promise.all(items.slice(from, to).map((it) => readImageRaw(it.path, { size })));
  const batches: [number, number][] = [];
  for (let c = 0; c < nChunks; c++) {
    if (reused.has(c)) continue;
    const end = Math.min(n, (c + 1) * chunk);
    for (let s = c * chunk; s < end; s += batch) batches.push([s, Math.min(end, s + batch)]);
  }
  let pending = batches.length ? read(...batches[0]) : null;
  let bi = 0;

  for (let c = 0; c < nChunks; c++) {
    const start = c * chunk;
    const end = Math.min(n, start + chunk);
    const partPath = `${partsDir}/${partName(c)}`;
    if (reused.has(c)) {
      reusedChunks++;
      done = end;
      report(true);
      continue;
    }
    if (options.signal?.aborted) {
      await pending?.catch(() => {}); // the prefetched batch is not needed any more
      return {
        complete: false,
        count: 0,
        encoded,
        reusedChunks,
        latentShape: latentShape ?? [0, 0, 0],
      };
    }
    const outs: Float32Array[] = [];
    const flips: Float32Array[] = [];
    while (bi < batches.length && batches[bi][0] < end) {
      const raws = await pending!;
      bi++;
      pending = bi < batches.length ? read(...batches[bi]) : null;
      const { orig, flipped, shape } = await encodeBatch(vae, raws, flip);
      latentShape = shape;
      outs.push(orig);
      if (flipped) flips.push(flipped);
      done += raws.length;
      encoded += raws.length;
      report();
    }
    const per = latentShape![0] * latentShape![1] * latentShape![2];
    const m = end - start;
    const data = new Float32Array(copies * m * per);
    let off = 0;
    for (const a of [...outs, ...flips]) {
      data.set(a, off);
      off += a.length;
    }
    await writeSafetensors(partPath, {
      latents: { dtype, shape: [copies, m, ...latentShape!], data },
    }, { metadata: { chunk: String(c), start: String(start), end: String(end) } });
  }

  // Assemble: originals of every chunk, then flips of every chunk.
  const parts: Float32Array[] = [];
  let shape: number[] | null = null;
  for (let c = 0; c < nChunks; c++) {
    const { tensors } = await readSafetensors(`${partsDir}/${partName(c)}`, {
      what: "latent chunk",
    });
    const t = tensors.get("latents")!;
    const m = Math.min(n, (c + 1) * chunk) - c * chunk;
    if (t.shape[0] !== copies || t.shape[1] !== m) {
      throw new Error(
        `${partsDir}/${partName(c)} holds [${t.shape}], expected [${copies}, ${m}, ...]: ` +
          `the parts folder is damaged; delete ${partsDir} and encode again`,
      );
    }
    shape = t.shape.slice(2);
    parts.push(t.data as Float32Array);
  }
  const [h, w, ch] = shape as [number, number, number];
  const per = h * w * ch;
  const all = new Float32Array(copies * n * per);
  for (let copy = 0; copy < copies; copy++) {
    for (let c = 0; c < nChunks; c++) {
      const m = Math.min(n, (c + 1) * chunk) - c * chunk;
      all.set(
        parts[c].subarray(copy * m * per, (copy + 1) * m * per),
        (copy * n + c * chunk) * per,
      );
    }
  }
  const labels = new Int32Array(copies * n);
  for (let copy = 0; copy < copies; copy++) {
    items.forEach((it, i) => labels[copy * n + i] = it.label);
  }
  await saveLatents(options.out, { latents: all, labels, shape: [copies * n, h, w, ch] }, {
    dtype,
    metadata: {
      vae: vae.kind,
      scaling_factor: String(scalingFactor(vae)),
      images: String(n),
      count: String(copies * n),
      flipped: flip ? "second-half" : "none",
      image_size: String(size),
      ...options.metadata,
    },
  });
  await Deno.remove(partsDir, { recursive: true });
  return { complete: true, count: copies * n, encoded, reusedChunks, latentShape: [h, w, ch] };
}

/**
 * The scaling factor that maps the autoencoder's raw latents to the stored ones: the
 * AutoencoderKL config's `scaling_factor`; TAESD's latents already live in the SD space scaled by
 * 0.18215, so that is its value too.
 *
 * @example
 * ```ts
 * import { loadAutoencoder } from "../autoencoders/load.ts";
 * import { scalingFactor } from "./encode.ts";
 * scalingFactor(await loadAutoencoder("taesd", { dir: "../shared/weights/taesd" })); // 0.18215
 * ```
 */
export function scalingFactor(vae: Autoencoder): number {
  const cfg = (vae as { config?: { scaling_factor?: number } }).config;
  return cfg?.scaling_factor ?? 0.18215;
}

// ---------------------------------------------------------------- internals

/** Encodes a batch of photos and (optionally) their flips in one autoencoder call. */
async function encodeBatch(
  vae: Autoencoder,
  raws: RawImage[],
  flip: boolean,
): Promise<{ orig: Float32Array; flipped: Float32Array | null; shape: [number, number, number] }> {
  const b = raws.length;
  const lat = tf.tidy(() => {
    const x = tf.stack(raws.map(rawToTensor)) as tf.Tensor4D; // [B, 256, 256, 3]
    const input = flip ? tf.concat([x, flipHorizontal(x)]) : x; // [2B, 256, 256, 3]
    return vae.encode(input); // [2B, 32, 32, 4]
  });
  const data = await lat.data() as Float32Array;
  const [, h, w, c] = lat.shape;
  lat.dispose();
  const per = h * w * c;
  return {
    orig: data.slice(0, b * per),
    flipped: flip ? data.slice(b * per, 2 * b * per) : null,
    shape: [h, w, c],
  };
}

/** Reads the parts folder: returns the chunks already done, or clears stale parts. */
async function prepareParts(
  dir: string,
  manifest: Record<string, unknown>,
  log: (m: string) => void,
): Promise<Set<number>> {
  const done = new Set<number>();
  const text = JSON.stringify(manifest, null, 2) + "\n";
  let old: string | null = null;
  try {
    old = await Deno.readTextFile(`${dir}/${MANIFEST}`);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (old !== null && old !== text) {
    log(`${dir} holds chunks made with other settings or images: starting over`);
    await Deno.remove(dir, { recursive: true });
    old = null;
  }
  if (old === null) {
    await Deno.mkdir(dir, { recursive: true });
    await writeFileAtomic(`${dir}/${MANIFEST}`, text);
    return done;
  }
  for await (const e of Deno.readDir(dir)) {
    const m = /^chunk_(\d{6})\.safetensors$/.exec(e.name);
    if (e.isFile && m) done.add(Number(m[1]));
  }
  if (done.size) log(`resuming: ${done.size} finished chunk(s) found in ${dir}`);
  return done;
}

function partName(c: number): string {
  return `chunk_${String(c).padStart(6, "0")}.safetensors`;
}

/** SHA-256 over the item list (paths and labels): parts belong to exactly this list. */
async function fingerprint(items: readonly EncodeItem[]): Promise<string> {
  const text = items.map((it) => `${it.path}\t${it.label}`).join("\n");
  const hash = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(hash), (b) => b.toString(16).padStart(2, "0")).join("");
}
