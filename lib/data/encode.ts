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
 * them (each is checked first; a damaged one is encoded again). The cache itself is written
 * atomically at the end and the parts are then removed, so a cache file on disk is always complete.
 *
 * A photo that cannot be read (not an image, truncated, unreadable file) is reported by name and
 * skipped; the cache then holds the other photos, their labels in step, and the run says how many
 * were skipped.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { type Autoencoder, SD_SCALING_FACTOR } from "../autoencoders/autoencoder.ts";
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
  /** Messages worth telling the user (resumed chunks, stale or damaged parts, skipped photos). */
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
  /** Photos that could not be read and are not in the cache (resumed chunks' included). */
  skipped: { path: string; reason: string }[];
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
    version: 2,
    vae: vae.kind,
    dtype,
    flip,
    size,
    chunk,
    items: n,
    fingerprint: await fingerprint(items),
  };
  const reused = await prepareParts(partsDir, manifest, log, { n, chunk, copies });

  let latentShape: [number, number, number] | null = null;
  let done = 0;
  let encoded = 0;
  let reusedChunks = 0;
  const report = (reused = false) => options.onProgress?.(done, n, reused);

  // Decoding JPEGs (sharp, on libuv threads) overlaps with encoding: the next batch is requested
  // before the current one runs through the autoencoder. A photo that fails to read becomes an
  // entry with its reason (never a rejected promise, which would crash the run mid-write).
  const read = (from: number, to: number) =>
    Promise.all(
      items.slice(from, to).map((it, k) =>
        readImageRaw(it.path, { size }).then(
          (raw): PhotoRead => ({ index: from + k, raw }),
          (e): PhotoRead => ({
            index: from + k,
            error: e instanceof Error ? e.message : String(e),
          }),
        )
      ),
    );
  const batches: [number, number][] = [];
  for (let c = 0; c < nChunks; c++) {
    if (reused.has(c)) continue;
    const end = Math.min(n, (c + 1) * chunk);
    for (let s = c * chunk; s < end; s += batch) batches.push([s, Math.min(end, s + batch)]);
  }
  let pending = batches.length ? read(...batches[0]) : null;
  let bi = 0;
  const skipped = new Map<number, string>();

  for (let c = 0; c < nChunks; c++) {
    const start = c * chunk;
    const end = Math.min(n, start + chunk);
    const partPath = `${partsDir}/${partName(c)}`;
    if (reused.has(c)) {
      for (const [i, why] of reused.get(c)!) skipped.set(i, why);
      reusedChunks++;
      done = end;
      report(true);
      continue;
    }
    if (options.signal?.aborted) {
      await pending; // the prefetched batch is not needed any more (it never rejects)
      return {
        complete: false,
        count: 0,
        encoded,
        reusedChunks,
        latentShape: latentShape ?? [0, 0, 0],
        skipped: skippedList(items, skipped),
      };
    }
    const outs: Float32Array[] = [];
    const flips: Float32Array[] = [];
    const index: number[] = [];
    const skippedHere: [number, string][] = [];
    while (bi < batches.length && batches[bi][0] < end) {
      const got = await pending!;
      bi++;
      pending = bi < batches.length ? read(...batches[bi]) : null;
      const ok: RawImage[] = [];
      for (const r of got) {
        if (r.raw) {
          ok.push(r.raw);
          index.push(r.index);
        } else {
          skippedHere.push([r.index, r.error!]);
          skipped.set(r.index, r.error!);
          log(`skipping photo ${items[r.index].path}: ${r.error}`);
        }
      }
      if (ok.length > 0) {
        const { orig, flipped, shape } = await encodeBatch(vae, ok, flip);
        latentShape = shape;
        outs.push(orig);
        if (flipped) flips.push(flipped);
      }
      done += got.length;
      encoded += ok.length;
      report();
    }
    const [h, w, ch] = latentShape ?? [0, 0, 0];
    const m = index.length;
    const data = new Float32Array(copies * m * h * w * ch);
    let off = 0;
    for (const a of [...outs, ...flips]) {
      data.set(a, off);
      off += a.length;
    }
    await writeSafetensors(partPath, {
      latents: { dtype, shape: [copies, m, h, w, ch], data },
      index: { dtype: "I32", shape: [m], data: index },
    }, {
      metadata: {
        chunk: String(c),
        start: String(start),
        end: String(end),
        skipped: JSON.stringify(skippedHere),
      },
    });
  }

  // Assemble: originals of every chunk, then flips of every chunk.
  const parts: { latents: Float32Array; index: Int32Array }[] = [];
  let shape: number[] | null = null;
  for (let c = 0; c < nChunks; c++) {
    const path = `${partsDir}/${partName(c)}`;
    const part = await readPart(path, { c, n, chunk, copies });
    if (typeof part === "string") {
      throw new Error(
        `${path} is damaged (${part}): delete that file and run the same command again; ` +
          `that chunk will be encoded again`,
      );
    }
    if (part.index.length > 0) shape = part.shape;
    parts.push(part);
  }
  const kept = parts.reduce((a, p) => a + p.index.length, 0);
  if (kept === 0 || shape === null) {
    throw new Error(
      `none of the ${n} photo(s) could be read (first: ${
        skippedList(items, skipped)[0]?.reason
      }): ` +
        `check the data folder`,
    );
  }
  const [h, w, ch] = shape as [number, number, number];
  const per = h * w * ch;
  const all = new Float32Array(copies * kept * per);
  const labels = new Int32Array(copies * kept);
  for (let copy = 0; copy < copies; copy++) {
    let at = copy * kept;
    for (const { latents, index } of parts) {
      const m = index.length;
      all.set(latents.subarray(copy * m * per, (copy + 1) * m * per), at * per);
      for (let k = 0; k < m; k++) labels[at + k] = items[index[k]].label;
      at += m;
    }
  }
  await saveLatents(options.out, { latents: all, labels, shape: [copies * kept, h, w, ch] }, {
    dtype,
    metadata: {
      vae: vae.kind,
      scaling_factor: String(scalingFactor(vae)),
      images: String(kept),
      count: String(copies * kept),
      flipped: flip ? "second-half" : "none",
      image_size: String(size),
      ...(skipped.size > 0 ? { skipped: String(skipped.size) } : {}),
      ...options.metadata,
    },
  });
  await Deno.remove(partsDir, { recursive: true });
  return {
    complete: true,
    count: copies * kept,
    encoded,
    reusedChunks,
    latentShape: [h, w, ch],
    skipped: skippedList(items, skipped),
  };
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
  return cfg?.scaling_factor ?? SD_SCALING_FACTOR;
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

/** One photo of a batch: its pixels, or why it could not be read. */
interface PhotoRead {
  index: number;
  raw?: RawImage;
  error?: string;
}

function skippedList(
  items: readonly EncodeItem[],
  skipped: Map<number, string>,
): { path: string; reason: string }[] {
  return [...skipped].sort((a, b) => a[0] - b[0]).map(([i, reason]) => ({
    path: items[i].path,
    reason,
  }));
}

/**
 * Reads and checks one part file: the latents `[copies, m, h, w, c]` of the chunk's readable
 * photos, their item indices (inside the chunk, ascending), and the skipped ones with reasons.
 * Returns what is wrong as a string when the part is damaged.
 */
async function readPart(
  path: string,
  o: { c: number; n: number; chunk: number; copies: number },
): Promise<
  | { latents: Float32Array; index: Int32Array; shape: number[]; skipped: [number, string][] }
  | string
> {
  let file;
  try {
    file = await readSafetensors(path, { what: "latent chunk" });
  } catch (e) {
    // The reader's advice (download the file again) does not apply to a part: drop it.
    return (e as Error).message.replace(/\. The file is corrupt or truncated:.*$/s, "");
  }
  const start = o.c * o.chunk;
  const end = Math.min(o.n, start + o.chunk);
  const t = file.tensors.get("latents");
  const idx = file.tensors.get("index");
  if (!t || !idx || !(idx.data instanceof Int32Array) || !(t.data instanceof Float32Array)) {
    return "it lacks the latents or index tensor";
  }
  let skipped: [number, string][];
  try {
    skipped = JSON.parse(file.metadata.skipped ?? "[]");
  } catch {
    return "its list of skipped photos does not parse";
  }
  const index = idx.data;
  // Every photo of the chunk appears exactly once: encoded (ascending) or skipped.
  const seen = new Set<number>();
  const claim = (i: unknown): boolean =>
    typeof i === "number" && Number.isInteger(i) && i >= start && i < end && !seen.has(i) &&
    seen.add(i) !== undefined;
  if (
    !Array.isArray(skipped) ||
    !index.every((i, k) => (k === 0 || i > index[k - 1]) && claim(i)) ||
    !skipped.every((x) => Array.isArray(x) && typeof x[1] === "string" && claim(x[0])) ||
    seen.size !== end - start
  ) {
    return `its photo indices do not cover ${start}..${end - 1} exactly once`;
  }
  if (t.shape.length !== 5 || t.shape[0] !== o.copies || t.shape[1] !== index.length) {
    return `it holds latents [${t.shape}], expected [${o.copies}, ${index.length}, h, w, c]`;
  }
  return { latents: t.data, index, shape: t.shape.slice(2), skipped };
}

/**
 * Reads the parts folder: returns the chunks already done (with their skipped photos), or clears
 * stale parts. Every existing part is checked here, before any encoding: a damaged one is
 * deleted, so it is encoded again instead of failing the run at the very end.
 */
async function prepareParts(
  dir: string,
  manifest: Record<string, unknown>,
  log: (m: string) => void,
  o: { n: number; chunk: number; copies: number },
): Promise<Map<number, [number, string][]>> {
  const done = new Map<number, [number, string][]>();
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
  const nChunks = Math.ceil(o.n / o.chunk);
  for await (const e of Deno.readDir(dir)) {
    const m = /^chunk_(\d{6})\.safetensors$/.exec(e.name);
    if (!e.isFile || !m) continue;
    const c = Number(m[1]);
    const part = c < nChunks ? await readPart(`${dir}/${e.name}`, { ...o, c }) : "no such chunk";
    if (typeof part === "string") {
      log(`${dir}/${e.name} is damaged (${part}): encoding that chunk again`);
      await Deno.remove(`${dir}/${e.name}`);
      continue;
    }
    done.set(c, part.skipped);
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
