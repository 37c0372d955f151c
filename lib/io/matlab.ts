/**
 * A small reader for MATLAB v5 (and v6/v7, non-HDF5) `.mat` files: numeric real arrays, which is
 * what the Oxford Flowers 102 label files (`imagelabels.mat`, `setid.mat`) hold.
 *
 * Layout: a 128-byte header (text, subsystem offset, version 0x0100, endian mark "IM"/"MI"),
 * then data elements. Each element has an 8-byte tag (type, byte count) — or a 4-byte "small
 * element" tag when the payload fits in 4 bytes — and is padded to 8 bytes. A variable is an
 * `miMATRIX` element (array flags, dimensions, name, real part), possibly wrapped in an
 * `miCOMPRESSED` element (zlib). Cells, structs, objects, sparse, char and complex arrays are
 * reported as unsupported. (The npm `mat-for-js` package is GPL-licensed and pulls in pako, so
 * this ~200-line reader is our own.)
 *
 * @module
 */

import { inflateSync } from "node:zlib";

/** One numeric variable: MATLAB dimensions and its values as float64, in MATLAB's column-major order. */
export interface MatArray {
  /** MATLAB dimensions, e.g. [1, 8189]. */
  dims: number[];
  /** The values (column-major, as MATLAB stores them), widened to float64. */
  data: Float64Array;
  /** MATLAB class name, e.g. "double" or "uint8". */
  mxClass: string;
}

/** Options of {@link readMat} and {@link loadMat}. */
export interface ReadMatOptions {
  /** A file name for error messages. */
  source?: string;
  /** Skip variables of unsupported classes instead of throwing. */
  skipUnsupported?: boolean;
}

/**
 * Thrown for malformed, truncated or unsupported MAT-file content.
 *
 * @example
 * ```ts
 * import { loadMat, MatError } from "./matlab.ts";
 * try {
 *   await loadMat("broken.mat");
 * } catch (e) {
 *   if (e instanceof MatError) console.error(e.message);
 * }
 * ```
 */
export class MatError extends Error {
  override name = "MatError";
}

// Data types of element tags (the "mi" types of the MAT-file format).
const MI_MATRIX = 14;
const MI_COMPRESSED = 15;
const MI_NAMES: Record<number, string> = {
  1: "miINT8",
  2: "miUINT8",
  3: "miINT16",
  4: "miUINT16",
  5: "miINT32",
  6: "miUINT32",
  7: "miSINGLE",
  9: "miDOUBLE",
  12: "miINT64",
  13: "miUINT64",
  14: "miMATRIX",
  15: "miCOMPRESSED",
  16: "miUTF8",
  17: "miUTF16",
  18: "miUTF32",
};
const MI_SIZE: Record<number, number> = {
  1: 1,
  2: 1,
  3: 2,
  4: 2,
  5: 4,
  6: 4,
  7: 4,
  9: 8,
  12: 8,
  13: 8,
};

// Array classes (the "mx" classes); index = class number.
const MX_NAMES = [
  "unknown",
  "cell",
  "struct",
  "object",
  "char",
  "sparse",
  "double",
  "single",
  "int8",
  "uint8",
  "int16",
  "uint16",
  "int32",
  "uint32",
  "int64",
  "uint64",
];
const MX_NUMERIC_FIRST = 6; // double .. uint64 are the numeric classes
const FLAG_COMPLEX = 0x08;

/**
 * Parses the bytes of a MATLAB v5 `.mat` file into its numeric variables.
 *
 * @example
 * ```ts
 * import { readMat } from "./matlab.ts";
 * // The shared reference folder beside the project holds the official file.
 * const file = new URL("../../../shared/data/oxford102/imagelabels.mat", import.meta.url);
 * const vars = readMat(await Deno.readFile(file));
 * const labels = vars.get("labels")!; // 1-based classes, one per photo
 * if (labels.dims.join() !== "1,8189" || labels.data[0] !== 77) throw new Error(`${labels.dims}`);
 * ```
 */
export function readMat(bytes: Uint8Array, options: ReadMatOptions = {}): Map<string, MatArray> {
  const src = options.source ?? "MAT-file";
  if (bytes.length < 128) {
    throw new MatError(`${src}: only ${bytes.length} bytes, a MAT-file header alone is 128`);
  }
  const text = new TextDecoder("latin1").decode(bytes.subarray(0, 116));
  if (text.startsWith("MATLAB 7.3")) {
    throw new MatError(`${src}: MATLAB 7.3 (HDF5) files are not supported; save with -v7 instead`);
  }
  const mark = String.fromCharCode(bytes[126], bytes[127]);
  if (mark !== "IM" && mark !== "MI") {
    throw new MatError(
      `${src}: not a MATLAB v5 MAT-file (no "IM"/"MI" endian mark at byte 126; ` +
        `v4 files are not supported, save with -v6 or -v7)`,
    );
  }
  const little = mark === "IM";
  const vars = new Map<string, MatArray>();
  for (const el of elements(bytes, 128, little, src)) {
    let inner = el;
    if (el.type === MI_COMPRESSED) {
      let raw: Uint8Array;
      try {
        raw = new Uint8Array(inflateSync(el.data));
      } catch (err) {
        throw new MatError(
          `${src}: compressed element at byte ${el.offset} does not inflate ` +
            `(${(err as Error).message}); the file is truncated or corrupt, download it again`,
        );
      }
      const found = [...elements(raw, 0, little, `${src} (compressed element at ${el.offset})`)];
      if (found.length !== 1) {
        throw new MatError(
          `${src}: compressed element at byte ${el.offset} holds ${found.length} elements, expected 1`,
        );
      }
      inner = found[0];
    }
    if (inner.type !== MI_MATRIX) continue; // e.g. subsystem data; not a variable
    const v = parseMatrix(inner.data, little, `${src} (element at byte ${el.offset})`);
    if (v.error) {
      if (options.skipUnsupported) continue;
      throw new MatError(v.error);
    }
    vars.set(v.name, v.array!);
  }
  return vars;
}

/**
 * Reads a `.mat` file from disk (see {@link readMat}).
 *
 * @example
 * ```ts
 * import { loadMat } from "./matlab.ts";
 * import { fileURLToPath } from "node:url";
 * const path = fileURLToPath(new URL("../../../shared/data/oxford102/setid.mat", import.meta.url));
 * const setid = await loadMat(path);
 * const train = setid.get("trnid")!.data; // one-based image ids
 * if (train.length !== 1020) throw new Error(`expected 1,020 training photos, got ${train.length}`);
 * ```
 */
export async function loadMat(
  path: string,
  options: ReadMatOptions = {},
): Promise<Map<string, MatArray>> {
  return readMat(await Deno.readFile(path), { source: path, ...options });
}

interface Element {
  type: number;
  data: Uint8Array;
  offset: number;
}

/** Walks the data elements of `buf` from `start`, checking every length against the buffer. */
function* elements(
  buf: Uint8Array,
  start: number,
  little: boolean,
  src: string,
): Generator<Element> {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let pos = start;
  while (pos < buf.length) {
    if (pos + 8 > buf.length) {
      throw new MatError(
        `${src}: truncated element tag at byte ${pos} (file ends at ${buf.length})`,
      );
    }
    const first = view.getUint32(pos, little);
    if (first >>> 16 !== 0) {
      // Small data element: 2-byte count, 2-byte type, up to 4 bytes of data in the tag itself.
      const n = first >>> 16;
      if (n > 4) throw new MatError(`${src}: bad small element (${n} bytes) at byte ${pos}`);
      yield { type: first & 0xffff, data: buf.subarray(pos + 4, pos + 4 + n), offset: pos };
      pos += 8;
      continue;
    }
    const n = view.getUint32(pos + 4, little);
    if (pos + 8 + n > buf.length) {
      throw new MatError(
        `${src}: truncated: the ${MI_NAMES[first] ?? `type-${first}`} element at byte ${pos} ` +
          `needs ${n} bytes but the data ends at ${buf.length}; download the file again`,
      );
    }
    yield { type: first, data: buf.subarray(pos + 8, pos + 8 + n), offset: pos };
    // Elements are padded to 8 bytes; compressed ones are not (their count is exact).
    pos += 8 + (first === MI_COMPRESSED ? n : Math.ceil(n / 8) * 8);
  }
}

/** Decodes one miMATRIX payload; unsupported content comes back as an error message. */
function parseMatrix(
  payload: Uint8Array,
  little: boolean,
  where: string,
): { name: string; array?: MatArray; error?: string } {
  const sub = [...elements(payload, 0, little, where)];
  if (sub.length < 3) return { name: "", error: `${where}: miMATRIX with ${sub.length} parts` };
  const [flagsEl, dimsEl, nameEl] = sub;
  const flags = numbers(flagsEl, little, where);
  const mxClass = flags[0] & 0xff;
  const complex = (flags[0] & (FLAG_COMPLEX << 8)) !== 0;
  const dims = Array.from(numbers(dimsEl, little, where));
  const name = new TextDecoder().decode(nameEl.data);
  const className = MX_NAMES[mxClass] ?? `class-${mxClass}`;
  if (mxClass < MX_NUMERIC_FIRST || mxClass >= MX_NAMES.length) {
    return {
      name,
      error: `${where}: variable "${name}" is a ${className} array; only real numeric arrays ` +
        `are supported (convert it in MATLAB/Octave to a double matrix, or pass skipUnsupported)`,
    };
  }
  if (complex) {
    return {
      name,
      error: `${where}: variable "${name}" is complex; only real arrays are supported`,
    };
  }
  if (sub.length < 4) return { name, error: `${where}: variable "${name}" has no data part` };
  const data = numbers(sub[3], little, where);
  const count = dims.reduce((a, b) => a * b, 1);
  if (data.length !== count) {
    return {
      name,
      error: `${where}: variable "${name}" has ${data.length} values for dims [${dims}]`,
    };
  }
  return { name, array: { dims, data, mxClass: className } };
}

/** The values of a numeric element as float64 (64-bit integers beyond 2^53 lose precision). */
function numbers(el: Element, little: boolean, where: string): Float64Array {
  const size = MI_SIZE[el.type];
  if (!size) {
    throw new MatError(
      `${where}: ${MI_NAMES[el.type] ?? `type-${el.type}`} where numbers were expected`,
    );
  }
  if (el.data.length % size !== 0) {
    throw new MatError(`${where}: ${el.data.length} bytes is not a whole number of values`);
  }
  const view = new DataView(el.data.buffer, el.data.byteOffset, el.data.byteLength);
  const out = new Float64Array(el.data.length / size);
  for (let i = 0; i < out.length; i++) {
    const o = i * size;
    switch (el.type) {
      case 1:
        out[i] = view.getInt8(o);
        break;
      case 2:
        out[i] = view.getUint8(o);
        break;
      case 3:
        out[i] = view.getInt16(o, little);
        break;
      case 4:
        out[i] = view.getUint16(o, little);
        break;
      case 5:
        out[i] = view.getInt32(o, little);
        break;
      case 6:
        out[i] = view.getUint32(o, little);
        break;
      case 7:
        out[i] = view.getFloat32(o, little);
        break;
      case 9:
        out[i] = view.getFloat64(o, little);
        break;
      case 12:
        out[i] = Number(view.getBigInt64(o, little));
        break;
      case 13:
        out[i] = Number(view.getBigUint64(o, little));
        break;
    }
  }
  return out;
}
