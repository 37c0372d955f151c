/**
 * 8-bit pixels without any platform dependency: the {@link RawImage} type, tensor -> pixels, and
 * the PNG encoder. Plain TypeScript plus the web-standard `CompressionStream`, so the same code
 * runs under Deno and in the browser demo (`lib/io/image.ts` is the Deno side: sharp decoding,
 * resizing and captioned grids).
 *
 * @module
 */

import type * as tf from "@tensorflow/tfjs-core";

/** 8-bit interleaved pixels (row-major, channels last). */
export interface RawImage {
  /** Pixel bytes, `height * width * channels` long. */
  data: Uint8Array;
  /** Width in pixels. */
  width: number;
  /** Height in pixels. */
  height: number;
  /** 1 (gray), 3 (RGB) or 4 (RGBA). */
  channels: number;
}

/**
 * Thrown for input that cannot be read as an image.
 *
 * @example
 * ```ts
 * import { ImageError } from "./pixels.ts";
 * import { readImage } from "./image.ts";
 * try {
 *   await readImage("notes.txt");
 * } catch (e) {
 *   if (e instanceof ImageError) console.error(e.message);
 * }
 * ```
 */
export class ImageError extends Error {
  override name = "ImageError";
}

/**
 * Converts a `[H, W, 3]` (or `[1, H, W, 3]`) float tensor in [0, 1] to 8-bit RGB pixels
 * (values are clipped and rounded; NaN becomes 0).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { tensorToRaw } from "./pixels.ts";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * const raw = await tensorToRaw(tf.ones([4, 4, 3]));
 * if (raw.data.length !== 48 || raw.data.some((v) => v !== 255)) throw new Error("48 x 255");
 * ```
 */
export async function tensorToRaw(image: tf.Tensor): Promise<RawImage> {
  const shape = image.shape;
  const hwc = shape.length === 4 && shape[0] === 1 ? shape.slice(1) : shape;
  if (hwc.length !== 3 || hwc[2] !== 3) {
    throw new ImageError(
      `expected an image tensor of shape [H, W, 3] (or [1, H, W, 3]), got [${shape}]. ` +
        `Pass one image at a time (tf.unstack a batch).`,
    );
  }
  const v = await image.data();
  const data = new Uint8Array(v.length);
  for (let i = 0; i < v.length; i++) {
    const x = Number(v[i]);
    data[i] = Math.round(Math.min(1, Math.max(0, Number.isNaN(x) ? 0 : x)) * 255);
  }
  return { data, width: hwc[1], height: hwc[0], channels: 3 };
}

/**
 * Checks that a pixel buffer matches its size and channel count.
 *
 * @example
 * ```ts
 * import { checkRaw } from "./pixels.ts";
 * checkRaw({ data: new Uint8Array(12), width: 2, height: 2, channels: 3 }); // ok
 * ```
 */
export function checkRaw(r: RawImage): void {
  if (![1, 3, 4].includes(r.channels) || r.data.length !== r.width * r.height * r.channels) {
    throw new ImageError(
      `pixel buffer of ${r.data.length} bytes does not match ${r.width}x${r.height}x${r.channels}`,
    );
  }
}

/**
 * The largest grid image, in pixels: sharp's default input limit (16383 x 16383), which a grid
 * reaches when it is composed. Larger grids fail only when they are drawn, so callers check
 * {@link gridLayout} first.
 */
export const MAX_GRID_PIXELS = 16383 * 16383;

/** Where the tiles of a grid go and how large the grid is (see {@link gridLayout}). */
export interface GridLayout {
  /** Tiles per row. */
  cols: number;
  /** Rows of tiles. */
  rows: number;
  /** Grid width in pixels. */
  width: number;
  /** Grid height in pixels. */
  height: number;
  /** Height of the caption strip under each tile (0 without captions). */
  captionHeight: number;
}

/**
 * The layout of a grid of `count` tiles of `tileWidth` x `tileHeight` pixels: columns (default
 * ceil(sqrt(count)), at most `count`), rows and the total size, padding and captions included.
 * The one place that knows the grid geometry, so a size can be checked before any work.
 *
 * @example
 * ```ts
 * import { gridLayout, MAX_GRID_PIXELS } from "./pixels.ts";
 * const g = gridLayout(4000, { tileWidth: 256, tileHeight: 256, cols: 4000, captions: true });
 * g.width * g.height > MAX_GRID_PIXELS; // true: split it into pages
 * ```
 */
export function gridLayout(
  count: number,
  options: {
    tileWidth: number;
    tileHeight: number;
    cols?: number;
    captions?: boolean;
    pad?: number;
    fontSize?: number;
  },
): GridLayout {
  const cols = Math.max(1, Math.min(count, options.cols ?? Math.ceil(Math.sqrt(count))));
  const rows = Math.ceil(count / cols);
  const pad = options.pad ?? 4;
  const captionHeight = options.captions ? Math.ceil((options.fontSize ?? 14) * 1.5) : 0;
  return {
    cols,
    rows,
    width: pad + cols * (options.tileWidth + pad),
    height: pad + rows * (options.tileHeight + captionHeight + pad),
    captionHeight,
  };
}

/**
 * Encodes 8-bit gray, RGB or RGBA pixels as PNG bytes (8 bits per channel, no filtering, zlib
 * via `CompressionStream("deflate")`). The one PNG writer of the project.
 *
 * @example
 * ```ts
 * import { encodePng } from "./pixels.ts";
 * const png = await encodePng({ data: new Uint8Array(12), width: 2, height: 2, channels: 3 });
 * // png starts with \x89PNG
 * ```
 */
export async function encodePng(image: RawImage): Promise<Uint8Array> {
  checkRaw(image);
  const { width, height, channels } = image;
  const row = width * channels;
  // Each scanline is prefixed by its filter type (0 = none).
  const scan = new Uint8Array(height * (row + 1));
  for (let y = 0; y < height; y++) {
    scan.set(image.data.subarray(y * row, (y + 1) * row), y * (row + 1) + 1);
  }
  const idat = await deflate(scan);
  const ihdr = new Uint8Array(13);
  const v = new DataView(ihdr.buffer);
  v.setUint32(0, width);
  v.setUint32(4, height);
  ihdr[8] = 8; // bit depth
  ihdr[9] = channels === 1 ? 0 : channels === 3 ? 2 : 6; // gray, RGB, RGBA
  const parts = [
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", idat),
    chunk("IEND", new Uint8Array(0)),
  ];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

async function deflate(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream()
    .pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  v.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

let crcTable: Uint32Array | undefined;

function crc32(bytes: Uint8Array): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = crcTable[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
