/**
 * Image input and output: decoding photos into the square float tensors the autoencoders eat, and
 * writing tensors back out as PNG files and captioned grids. All decoding and encoding is done by
 * sharp (libvips), which handles JPEG/PNG/WebP, EXIF orientation, CMYK and grayscale.
 *
 * Pipeline of {@link readImage}: decode -> EXIF auto-orient -> flatten alpha onto white -> sRGB
 * -> center crop to a square (offsets as PIL's `(w - s) // 2`) -> resize to `size` x `size`
 * with a Catmull-Rom cubic filter (sharp's `cubic`, the same kernel as PIL's BICUBIC that the
 * reference pipeline in `make_golden_vae.py` uses; libvips widens the kernel when shrinking, so
 * it is a proper antialiasing filter). On the golden TAESD photo this matches the reference crop
 * to 54.5 dB PSNR (max abs difference 4/255); lanczos3 gives 44.9 dB, mitchell 42.6 dB.
 *
 * Images smaller than the output size are an error by default (an 8x8 icon blown up to 256x256
 * is never what a dataset wants); pass `{ upscale: true }` to allow it.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { Buffer } from "node:buffer";
import type sharp from "sharp";

let sharpModule: Promise<typeof sharp> | undefined;

/**
 * sharp, loaded on first use: importing this module (or mod.ts) neither loads libvips nor needs
 * `--allow-env` (sharp reads environment variables when it loads).
 */
function loadSharp(): Promise<typeof sharp> {
  sharpModule ??= import("sharp").then((m) => m.default);
  return sharpModule;
}
import { writeFileAtomic } from "./fs.ts";
import {
  checkRaw,
  encodePng,
  gridLayout,
  ImageError,
  MAX_GRID_PIXELS,
  type RawImage,
  tensorToRaw,
} from "./pixels.ts";

// Pixels and PNG encoding live in pixels.ts (platform-free, shared with the browser demo).
export { ImageError, type RawImage, tensorToRaw };

/** Options of {@link readImage} and {@link readImageRaw}. */
export interface ReadImageOptions {
  /** Output side in pixels (square); default 256. */
  size?: number;
  /** Allow images whose shorter side is below `size` (they are upscaled); default false. */
  upscale?: boolean;
  /** Resize filter; default "cubic" (Catmull-Rom, as PIL's BICUBIC). */
  kernel?: "cubic" | "lanczos3" | "mitchell" | "linear" | "nearest";
}

/**
 * Decodes an image file or bytes, center-crops it to a square and resizes it to `size` x `size`
 * RGB bytes.
 *
 * @example
 * ```ts
 * import { readImageRaw } from "./image.ts";
 * const { data, width, height } = await readImageRaw("photo.jpg", { size: 256 });
 * // data: Uint8Array of 256 * 256 * 3 RGB bytes
 * ```
 */
export async function readImageRaw(
  pathOrBytes: string | Uint8Array,
  options: ReadImageOptions = {},
): Promise<RawImage> {
  const size = options.size ?? 256;
  if (!Number.isInteger(size) || size < 1) {
    throw new ImageError(`size must be a positive integer, got ${size}`);
  }
  const what = typeof pathOrBytes === "string"
    ? pathOrBytes
    : `image bytes (${pathOrBytes.length} bytes)`;
  const bytes = typeof pathOrBytes === "string" ? await readBytes(pathOrBytes) : pathOrBytes;

  // failOn "truncated" turns a cut-off file into an error instead of a half-grey image.
  const vips = await loadSharp();
  const open = () => vips(bytes, { failOn: "truncated", limitInputPixels: 1 << 28 });
  let meta: sharp.Metadata;
  try {
    meta = await open().metadata();
  } catch (e) {
    throw new ImageError(
      `${what} is not a readable image (${errMsg(e)}). Pass a JPEG, PNG or WebP file.`,
    );
  }
  if (!meta.width || !meta.height) {
    throw new ImageError(`${what} has no pixel size in its header: it is not a usable image.`);
  }
  // EXIF orientations 5-8 swap width and height once the image is auto-oriented.
  const swap = (meta.orientation ?? 1) >= 5;
  const w = swap ? meta.height : meta.width;
  const h = swap ? meta.width : meta.height;
  const side = Math.min(w, h);
  if (side < size && !options.upscale) {
    throw new ImageError(
      `${what} is ${w}x${h}, smaller than the ${size}x${size} output: it would have to be ` +
        `upscaled (blurry). Use a larger image, or pass { upscale: true } to allow it.`,
    );
  }

  let out: { data: Uint8Array; info: sharp.OutputInfo };
  try {
    out = await open()
      .autoOrient() // EXIF orientation first, so the crop is in display coordinates
      .flatten({ background: "#ffffff" }) // transparent pixels become white, alpha is dropped
      .extract({ left: (w - side) >> 1, top: (h - side) >> 1, width: side, height: side })
      .resize(size, size, { kernel: options.kernel ?? "cubic", fit: "fill" })
      .toColourspace("srgb") // CMYK and grayscale become sRGB (3 channels)
      .removeAlpha()
      .raw()
      .toBuffer({ resolveWithObject: true });
  } catch (e) {
    throw new ImageError(
      `could not decode ${what} (${errMsg(e)}): the file is damaged or truncated. ` +
        `Re-download or re-export it.`,
    );
  }
  const { info } = out;
  let data = new Uint8Array(out.data.buffer, out.data.byteOffset, out.data.byteLength);
  if (info.channels === 1) data = grayToRgb(data);
  else if (info.channels !== 3) {
    throw new ImageError(`${what} decoded to ${info.channels} channels, expected 3 (RGB)`);
  }
  return { data, width: info.width, height: info.height, channels: 3 };
}

/**
 * Reads an image as a `[size, size, 3]` float32 tensor in [0, 1] (center crop + resize).
 *
 * @example
 * ```ts
 * import { readImage } from "./image.ts";
 * const img = await readImage("photo.jpg", { size: 256 }); // [256, 256, 3] in [0, 1]
 * img.dispose();
 * ```
 */
export async function readImage(
  pathOrBytes: string | Uint8Array,
  options: ReadImageOptions = {},
): Promise<tf.Tensor3D> {
  const raw = await readImageRaw(pathOrBytes, options);
  return rawToTensor(raw);
}

/**
 * Converts 8-bit RGB pixels to a `[H, W, 3]` float32 tensor in [0, 1].
 *
 * @example
 * ```ts
 * import { rawToTensor } from "./image.ts";
 * const t = rawToTensor({ data: new Uint8Array(12).fill(255), width: 2, height: 2, channels: 3 });
 * ```
 */
export function rawToTensor(raw: RawImage): tf.Tensor3D {
  if (raw.channels !== 3) throw new ImageError(`expected 3 channels, got ${raw.channels}`);
  const f = new Float32Array(raw.data.length);
  for (let i = 0; i < f.length; i++) f[i] = raw.data[i] / 255;
  return tf.tensor3d(f, [raw.height, raw.width, 3]); // [H, W, 3]
}

/**
 * Flips an image (or a batch of images, NHWC) left-right.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { flipHorizontal } from "./image.ts";
 * const flipped = flipHorizontal(tf.zeros([256, 256, 3]) as tf.Tensor3D);
 * ```
 */
export function flipHorizontal<T extends tf.Tensor3D | tf.Tensor4D>(image: T): T {
  if (image.rank !== 3 && image.rank !== 4) {
    throw new ImageError(`flipHorizontal expects [H, W, C] or [N, H, W, C], got [${image.shape}]`);
  }
  return tf.reverse(image, image.rank - 2) as T; // the W axis
}

/**
 * Encodes an image tensor (`[H, W, 3]` in [0, 1]) or 8-bit pixels as PNG bytes.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { toPng } from "./image.ts";
 * const png = await toPng(tf.zeros([8, 8, 3]));
 * ```
 */
export async function toPng(image: tf.Tensor | RawImage): Promise<Uint8Array> {
  const raw = image instanceof tf.Tensor ? await tensorToRaw(image) : image;
  return await encodePng(raw);
}

/**
 * Writes an image tensor or pixels as a PNG file, atomically (temp file + rename).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { writePng } from "./image.ts";
 * await writePng("/tmp/anthos-black.png", tf.zeros([8, 8, 3]));
 * ```
 */
export async function writePng(path: string, image: tf.Tensor | RawImage): Promise<void> {
  await writeFileAtomic(path, await toPng(image));
}

/** Options of {@link makeGrid}. */
export interface GridOptions {
  /** Tiles per row; default ceil(sqrt(count)). */
  cols?: number;
  /** One caption per image, drawn under its tile (e.g. class names). */
  captions?: string[];
  /** Gap between tiles and around the border, in pixels; default 4. */
  pad?: number;
  /** Caption font size in pixels; default 14. */
  fontSize?: number;
  /** Background colour; default white. */
  background?: string;
  /** Scale every tile to this width and height in pixels first (e.g. 128: a grid a quarter the size). */
  tileSize?: number;
}

/** `r` scaled to `size` x `size` (sharp's default Lanczos). */
async function resizeRaw(r: RawImage, size: number): Promise<RawImage> {
  if (r.width === size && r.height === size) return r;
  const vips = await loadSharp();
  const input = Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength);
  const { data, info } = await vips(input, {
    raw: { width: r.width, height: r.height, channels: r.channels as 1 | 3 | 4 },
  }).resize(size, size, { fit: "fill" }).raw().toBuffer({ resolveWithObject: true });
  return {
    width: info.width,
    height: info.height,
    channels: info.channels,
    data: new Uint8Array(data),
  };
}

/**
 * Lays images out in a grid (row-major) and returns it as PNG bytes, with an optional caption
 * under each tile. Tiles may differ in size; each cell is as large as the largest tile.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { makeGrid } from "./image.ts";
 * const imgs = [tf.zeros([64, 64, 3]), tf.ones([64, 64, 3])];
 * const png = await makeGrid(imgs, { cols: 2, captions: ["rose", "sunflower"] });
 * ```
 */
export async function makeGrid(
  images: (tf.Tensor | RawImage)[] | tf.Tensor4D,
  options: GridOptions = {},
): Promise<Uint8Array> {
  const list = images instanceof tf.Tensor ? tf.unstack(images) : images;
  const owned = images instanceof tf.Tensor;
  let raws: RawImage[];
  try {
    raws = await Promise.all(list.map((im) => im instanceof tf.Tensor ? tensorToRaw(im) : im));
  } finally {
    if (owned) (list as tf.Tensor[]).forEach((t) => t.dispose());
  }
  if (raws.length === 0) throw new ImageError("makeGrid needs at least one image");
  raws.forEach(checkRaw);
  if (options.tileSize !== undefined) {
    const size = options.tileSize;
    if (!Number.isInteger(size) || size < 1) {
      throw new ImageError(`makeGrid's tileSize must be a positive integer, got ${size}`);
    }
    raws = await Promise.all(raws.map((r) => resizeRaw(r, size)));
  }
  const captions = options.captions;
  if (captions && captions.length !== raws.length) {
    throw new ImageError(
      `makeGrid got ${captions.length} captions for ${raws.length} images: pass one per image`,
    );
  }
  const n = raws.length;
  const pad = options.pad ?? 4;
  const fontSize = options.fontSize ?? 14;
  const tw = Math.max(...raws.map((r) => r.width));
  const th = Math.max(...raws.map((r) => r.height));
  const { cols, rows, width, height, captionHeight: capH } = gridLayout(n, {
    tileWidth: tw,
    tileHeight: th,
    cols: options.cols,
    captions: captions !== undefined,
    pad,
    fontSize,
  });
  if (width * height > MAX_GRID_PIXELS) {
    throw new ImageError(
      `a grid of ${n} images in ${cols} columns and ${rows} rows would be ${width}x${height} ` +
        `pixels, over the limit of ${MAX_GRID_PIXELS}: split the images over several grids`,
    );
  }

  const layers: sharp.OverlayOptions[] = raws.map((r, i) => ({
    input: Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength),
    raw: { width: r.width, height: r.height, channels: r.channels as 1 | 3 | 4 },
    left: pad + (i % cols) * (tw + pad) + ((tw - r.width) >> 1),
    top: pad + Math.floor(i / cols) * (th + capH + pad),
  }));
  if (captions) {
    // One SVG layer holds every caption; librsvg renders it with the system fonts (DejaVu here).
    const maxChars = Math.max(1, Math.floor(tw / (fontSize * 0.6)));
    const texts = captions.map((c, i) => {
      const x = pad + (i % cols) * (tw + pad) + tw / 2;
      const y = pad + Math.floor(i / cols) * (th + capH + pad) + th + fontSize * 1.15;
      const s = c.length > maxChars ? c.slice(0, maxChars - 1) + "…" : c;
      return `<text x="${x}" y="${y}" text-anchor="middle">${escapeXml(s)}</text>`;
    });
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">` +
      `<g font-family="DejaVu Sans, sans-serif" font-size="${fontSize}" fill="#222">` +
      texts.join("") + `</g></svg>`;
    layers.push({ input: Buffer.from(svg), left: 0, top: 0 });
  }
  const vips = await loadSharp();
  const buf = await vips({
    create: { width, height, channels: 3, background: options.background ?? "#ffffff" },
  }).composite(layers).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return await encodePng({
    data: new Uint8Array(buf.data.buffer, buf.data.byteOffset, buf.data.byteLength),
    width: buf.info.width,
    height: buf.info.height,
    channels: buf.info.channels,
  });
}

function grayToRgb(g: Uint8Array): Uint8Array {
  const out = new Uint8Array(g.length * 3);
  for (let i = 0; i < g.length; i++) out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = g[i];
  return out;
}

async function readBytes(path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new ImageError(`image not found: ${path}. Check the path.`);
    }
    throw e;
  }
}

function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function errMsg(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
