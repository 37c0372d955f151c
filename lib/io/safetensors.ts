/**
 * safetensors reading and writing, the file format of Anthos weights, checkpoints and latent
 * caches, byte-compatible with the Python `safetensors` package.
 *
 * Layout: an 8-byte little-endian header length, a JSON header mapping each tensor name to
 * `{dtype, shape, data_offsets}` (plus an optional `__metadata__` string map), then the raw data.
 * F16 and BF16 are widened to float32 on read; I64 is read into int32 with a range check.
 * Every inconsistency is reported with the tensor name or byte offset and what to do about it.
 *
 * @module
 */

import { writeFileAtomic } from "./fs.ts";

/** Element types Anthos reads. Floats are written as F32 unless asked otherwise. */
export type DType = "F32" | "F16" | "BF16" | "F64" | "I32" | "I64" | "I16" | "I8" | "U8" | "BOOL";

/** A decoded tensor: floats as Float32Array, integers as Int32Array, bytes as Uint8Array. */
export interface RawTensor {
  /** The dtype stored in the file. */
  dtype: DType;
  /** Shape in the file's (PyTorch) order. */
  shape: number[];
  /** The values, widened to float32 / int32. */
  data: Float32Array | Int32Array | Uint8Array;
}

/** What {@link parseSafetensors} returns. */
export interface SafetensorsFile {
  /** Tensors by name, in file order. */
  tensors: Map<string, RawTensor>;
  /** The `__metadata__` string map (empty when absent). */
  metadata: Record<string, string>;
}

const BYTES: Record<DType, number> = {
  F32: 4,
  F16: 2,
  BF16: 2,
  F64: 8,
  I32: 4,
  I64: 8,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/**
 * Thrown for malformed, truncated or inconsistent safetensors data.
 *
 * @example
 * ```ts
 * import { parseSafetensors, SafetensorsError } from "./safetensors.ts";
 * try {
 *   parseSafetensors(new Uint8Array(3));
 * } catch (e) {
 *   if (e instanceof SafetensorsError) console.error(e.message); // "... only 3 bytes ..."
 * }
 * ```
 */
export class SafetensorsError extends Error {
  override name = "SafetensorsError";
}

/**
 * Parses safetensors bytes. `source` (a path) only improves error messages.
 *
 * @example
 * ```ts
 * import { parseSafetensors, serializeSafetensors } from "./safetensors.ts";
 * const bytes = serializeSafetensors({ w: { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) } });
 * const { tensors } = parseSafetensors(bytes);
 * tensors.get("w")!.data; // Float32Array [1, 2]
 * ```
 */
export function parseSafetensors(
  bytes: Uint8Array,
  options: { source?: string } = {},
): SafetensorsFile {
  const where = options.source ? ` in ${options.source}` : "";
  const fail = (msg: string): never => {
    throw new SafetensorsError(
      `Invalid safetensors${where}: ${msg}. The file is corrupt or truncated: ` +
        `download or export it again.`,
    );
  };
  if (bytes.length < 8) fail(`only ${bytes.length} bytes, less than the 8-byte header length`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen > bytes.length - 8) {
    fail(
      `header length ${headerLen} at byte 0 runs past the end of the file (${bytes.length} bytes)`,
    );
  }
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(
      bytes.subarray(8, 8 + headerLen),
    ));
  } catch (e) {
    return fail(
      `the JSON header (bytes 8..${8 + headerLen}) does not parse (${(e as Error).message})`,
    );
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    fail("the header is not a JSON object");
  }
  const dataStart = 8 + headerLen;
  const dataLen = bytes.length - dataStart;
  const entries: { name: string; dtype: DType; shape: number[]; begin: number; end: number }[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") {
      metadata = entry as Record<string, string>;
      continue;
    }
    const e = entry as { dtype?: string; shape?: number[]; data_offsets?: [number, number] };
    if (
      !e || typeof e.dtype !== "string" || !Array.isArray(e.shape) ||
      !Array.isArray(e.data_offsets) || e.data_offsets.length !== 2 ||
      !e.data_offsets.every((v) => Number.isSafeInteger(v) && v >= 0) ||
      !e.shape.every((v) => Number.isSafeInteger(v) && v >= 0)
    ) {
      fail(`tensor "${name}" lacks dtype, shape or data_offsets (two byte offsets >= 0)`);
    }
    const dtype = e.dtype as DType;
    if (!(dtype in BYTES)) fail(`tensor "${name}" has unsupported dtype ${e.dtype}`);
    const [begin, end] = e.data_offsets!;
    const count = e.shape!.reduce((a, b) => a * b, 1);
    if (end - begin !== count * BYTES[dtype]) {
      fail(
        `tensor "${name}" has shape [${e.shape}] (${count * BYTES[dtype]} bytes of ${dtype}) ` +
          `but data_offsets [${begin}, ${end}] span ${end - begin} bytes`,
      );
    }
    if (end > dataLen) {
      fail(
        `tensor "${name}" ends at byte ${
          dataStart + end
        } but the file has only ${bytes.length} bytes`,
      );
    }
    entries.push({ name, dtype, shape: [...e.shape!], begin, end });
  }
  // As in the reference implementation, the tensors must tile the data section exactly: an
  // overlap would let one tensor silently read another's bytes, a gap hides unknown data.
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  for (let i = 0; i < sorted.length; i++) {
    const t = sorted[i];
    if (t.begin < at) {
      fail(
        `tensors "${sorted[i - 1].name}" (data_offsets [${sorted[i - 1].begin}, ` +
          `${sorted[i - 1].end}]) and "${t.name}" ([${t.begin}, ${t.end}]) overlap`,
      );
    }
    if (t.begin > at) {
      fail(
        `bytes ${at}..${t.begin} of the data section belong to no tensor (a gap before ` +
          `"${t.name}"${i > 0 ? `, after "${sorted[i - 1].name}"` : ""})`,
      );
    }
    at = t.end;
  }
  if (at !== dataLen) {
    fail(
      `the data section has ${dataLen} bytes but the tensors cover only ${at} ` +
        `(${dataLen - at} extra bytes at the end${
          sorted.length ? `, after "${sorted[sorted.length - 1].name}"` : ""
        })`,
    );
  }
  const tensors = new Map<string, RawTensor>();
  for (const { name, dtype, shape, begin, end } of entries) {
    const raw = bytes.subarray(dataStart + begin, dataStart + end);
    const count = shape.reduce((a, b) => a * b, 1);
    tensors.set(name, { dtype, shape, data: decode(name, dtype, raw, count) });
  }
  return { tensors, metadata };
}

/**
 * Throws a {@link SafetensorsError} when a float tensor holds NaN or ±Infinity, naming each such
 * tensor, how many bad values it has and where the first one is. Weights with such values turn
 * every result into NaN (a black or flat image) instead of failing, so loaders call this.
 * `names` limits the check (default: every tensor); integer tensors are always finite.
 *
 * @example
 * ```ts
 * import { checkFinite, parseSafetensors, serializeSafetensors } from "./safetensors.ts";
 * const bytes = serializeSafetensors({ w: { dtype: "F32", shape: [2], data: [1, NaN] } });
 * try {
 *   checkFinite(parseSafetensors(bytes).tensors, { source: "w.safetensors" });
 *   throw new Error("should have thrown");
 * } catch (e) {
 *   const want = 'w.safetensors holds non-finite values: tensor "w" has 1 NaN/Inf (first: NaN at index 1)';
 *   if (!(e as Error).message.includes(want)) throw e;
 * }
 * ```
 */
export function checkFinite(
  tensors: ReadonlyMap<string, RawTensor>,
  options: { source?: string; names?: Iterable<string>; advice?: string } = {},
): void {
  const bad: string[] = [];
  let total = 0;
  for (const name of options.names ?? tensors.keys()) {
    const t = tensors.get(name);
    if (!t || !(t.data instanceof Float32Array)) continue;
    const d = t.data;
    let count = 0;
    let first = -1;
    for (let i = 0; i < d.length; i++) {
      // x - x is NaN exactly for NaN and ±Infinity: one subtraction per value, no branches.
      if (d[i] - d[i] !== 0) {
        if (first < 0) first = i;
        count++;
      }
    }
    if (count > 0) {
      total++;
      bad.push(`tensor "${name}" has ${count} NaN/Inf (first: ${d[first]} at index ${first})`);
    }
  }
  if (bad.length === 0) return;
  throw new SafetensorsError(
    `${options.source ?? "the safetensors data"} holds non-finite values: ` +
      `${bad.slice(0, 6).join("; ")}${total > 6 ? `; and ${total - 6} more tensors` : ""}. ` +
      (options.advice ??
        "They would turn every result into NaN: use an earlier checkpoint or export the file again."),
  );
}

function decode(
  name: string,
  dtype: DType,
  raw: Uint8Array,
  n: number,
): Float32Array | Int32Array | Uint8Array {
  // Copy into an aligned buffer: tensor data in a file need not be 4-byte aligned.
  const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  switch (dtype) {
    case "F32": {
      const out = new Float32Array(n);
      new Uint8Array(out.buffer).set(raw);
      return out;
    }
    case "F64": {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = v.getFloat64(i * 8, true);
      return out;
    }
    case "F16": {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = f16ToF32(v.getUint16(i * 2, true));
      return out;
    }
    case "BF16": {
      const out = new Float32Array(n);
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) u[i] = v.getUint16(i * 2, true) << 16;
      return out;
    }
    case "I32": {
      const out = new Int32Array(n);
      new Uint8Array(out.buffer).set(raw);
      return out;
    }
    case "I64": {
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const x = v.getBigInt64(i * 8, true);
        if (x > 2147483647n || x < -2147483648n) {
          throw new SafetensorsError(`tensor "${name}": int64 value ${x} does not fit in int32`);
        }
        out[i] = Number(x);
      }
      return out;
    }
    case "I16": {
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) out[i] = v.getInt16(i * 2, true);
      return out;
    }
    case "I8": {
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) out[i] = v.getInt8(i);
      return out;
    }
    case "U8":
    case "BOOL":
      return raw.slice();
  }
}

/**
 * IEEE half -> float32.
 *
 * @example
 * ```ts
 * import { f16ToF32 } from "./safetensors.ts";
 * f16ToF32(0x3c00); // 1
 * ```
 */
export function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/**
 * float32 -> IEEE half, round to nearest even.
 *
 * @example
 * ```ts
 * import { f32ToF16 } from "./safetensors.ts";
 * f32ToF16(1); // 0x3c00
 * ```
 */
export function f32ToF16(x: number): number {
  f32Scratch[0] = x;
  const b = u32Scratch[0];
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let r = mant >> shift;
    const rem = mant & ((1 << shift) - 1);
    if (rem > half || (rem === half && (r & 1))) r++;
    return sign | r;
  }
  let r = mant >> 13;
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (r & 1))) {
    r++;
    if (r === 0x400) {
      r = 0;
      e++;
      if (e >= 31) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | r;
}

/** A tensor to write: `data` is converted to `dtype` (F32, F16, BF16, I32 or U8). */
export interface TensorToWrite {
  /** Element type in the file. */
  dtype: "F32" | "F16" | "BF16" | "I32" | "I64" | "U8";
  /** Shape as stored (PyTorch order for weights). */
  shape: number[];
  /** Values, row-major. */
  data: ArrayLike<number>;
}

/**
 * Serializes tensors to safetensors bytes (header padded to 8 bytes, as the Python package does).
 *
 * @example
 * ```ts
 * import { serializeSafetensors } from "./safetensors.ts";
 * const bytes = serializeSafetensors(
 *   { w: { dtype: "F32", shape: [1], data: [3] } },
 *   { metadata: { format: "anthos-dit" } },
 * );
 * ```
 */
export function serializeSafetensors(
  tensors: Record<string, TensorToWrite>,
  options: { metadata?: Record<string, string> } = {},
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (options.metadata) header.__metadata__ = options.metadata;
  let offset = 0;
  const entries = Object.entries(tensors);
  for (const [name, t] of entries) {
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) {
      throw new SafetensorsError(
        `tensor "${name}": shape [${t.shape}] needs ${count} values but ${t.data.length} were given`,
      );
    }
    const n = count * BYTES[t.dtype];
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + n] };
    offset += n;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((json.length) % 8)) % 8);
  const head = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + head.length + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(head.length), true);
  out.set(head, 8);
  let p = 8 + head.length;
  for (const [, t] of entries) {
    const d = t.data;
    const n = d.length;
    switch (t.dtype) {
      case "F32":
        if (d instanceof Float32Array) out.set(new Uint8Array(d.buffer, d.byteOffset, n * 4), p);
        else for (let i = 0; i < n; i++) view.setFloat32(p + i * 4, d[i], true);
        break;
      case "F16":
        for (let i = 0; i < n; i++) view.setUint16(p + i * 2, f32ToF16(d[i]), true);
        break;
      case "BF16":
        for (let i = 0; i < n; i++) {
          f32Scratch[0] = d[i];
          const b = u32Scratch[0];
          // Round to nearest even on the dropped 16 bits.
          view.setUint16(p + i * 2, ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff, true);
        }
        break;
      case "I32":
        for (let i = 0; i < n; i++) view.setInt32(p + i * 4, d[i], true);
        break;
      case "I64":
        for (let i = 0; i < n; i++) view.setBigInt64(p + i * 8, BigInt(d[i]), true);
        break;
      case "U8":
        for (let i = 0; i < n; i++) out[p + i] = d[i];
        break;
    }
    p += n * BYTES[t.dtype];
  }
  return out;
}

/**
 * Reads and parses a safetensors file, with a clear error when it is missing.
 *
 * @example
 * ```ts
 * import { readSafetensors, writeSafetensors } from "./safetensors.ts";
 * const path = `${await Deno.makeTempDir()}/x.safetensors`;
 * await writeSafetensors(path, { w: { dtype: "F32", shape: [2], data: [1, 2] } }, { metadata: { a: "b" } });
 * const { tensors, metadata } = await readSafetensors(path);
 * if (tensors.get("w")!.data[1] !== 2 || metadata.a !== "b") throw new Error("round trip");
 * const missing = await readSafetensors(`${path}.nope`).then(() => null, (e) => e);
 * if (!(missing instanceof Deno.errors.NotFound)) throw new Error(`expected NotFound, got ${missing}`);
 * ```
 */
export async function readSafetensors(
  pathOrBytes: string | Uint8Array,
  options: { what?: string } = {},
): Promise<SafetensorsFile> {
  if (typeof pathOrBytes !== "string") return parseSafetensors(pathOrBytes);
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(pathOrBytes);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Deno.errors.NotFound(
        `${options.what ?? "safetensors file"} not found: ${pathOrBytes}. ` +
          `Check the path, or create the file first (see the README).`,
      );
    }
    throw e;
  }
  return parseSafetensors(bytes, { source: pathOrBytes });
}

/**
 * Serializes and writes tensors atomically (temp file + rename), so a crash never leaves a
 * half-written file in place of a good one.
 *
 * @example
 * ```ts
 * import { writeSafetensors } from "./safetensors.ts";
 * await writeSafetensors("/tmp/anthos-w.safetensors", {
 *   w: { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) },
 * });
 * ```
 */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, TensorToWrite>,
  options: { metadata?: Record<string, string> } = {},
): Promise<void> {
  await writeFileAtomic(path, serializeSafetensors(tensors, options));
}
