// MAT v5 reader: the real Oxford label files, plus files built byte by byte here.
import assert from "node:assert/strict";
import { deflateSync } from "node:zlib";
import { loadMat, MatError, readMat } from "../lib/io/matlab.ts";
import { sharedPath } from "./_shared.ts";

// Expected values computed independently with scipy.io.loadmat on the same files.
Deno.test("loadMat: real imagelabels.mat (compressed) has 8,189 labels 1..102", async () => {
  const p = sharedPath("data/oxford102/imagelabels.mat");
  if (!p) return;
  const vars = await loadMat(p);
  assert.deepEqual([...vars.keys()], ["labels"]);
  const labels = vars.get("labels")!;
  assert.deepEqual(labels.dims, [1, 8189]);
  assert.equal(labels.mxClass, "double");
  assert.deepEqual([...labels.data.slice(0, 3)], [77, 77, 77]);
  assert.deepEqual([...labels.data.slice(-3)], [62, 62, 62]);
  assert.equal(labels.data.reduce((a, b) => a + b, 0), 466705);
});

Deno.test("loadMat: real setid.mat holds trnid/valid/tstid with the official sizes", async () => {
  const p = sharedPath("data/oxford102/setid.mat");
  if (!p) return;
  const vars = await loadMat(p);
  const want = {
    trnid: { n: 1020, sum: 5073294, first: [6765, 6755, 6768], last: [8026, 8036, 8041] },
    valid: { n: 1020, sum: 5056562, first: [6773, 6767, 6739], last: [8028, 8008, 8030] },
    tstid: { n: 6149, sum: 23404099, first: [6734, 6735, 6737], last: [8044, 8045, 8047] },
  };
  assert.deepEqual([...vars.keys()].sort(), Object.keys(want).sort());
  for (const [name, w] of Object.entries(want)) {
    const v = vars.get(name)!;
    assert.deepEqual(v.dims, [1, w.n], name);
    assert.deepEqual([...v.data.slice(0, 3)], w.first, name);
    assert.deepEqual([...v.data.slice(-3)], w.last, name);
    assert.equal(v.data.reduce((a, b) => a + b, 0), w.sum, name);
  }
});

Deno.test("readMat: a truncated real file gives a clear error", async () => {
  const p = sharedPath("data/oxford102/setid.mat");
  if (!p) return;
  const bytes = await Deno.readFile(p);
  for (const cut of [100, 130, 2000, bytes.length - 1]) {
    assert.throws(
      () => readMat(bytes.subarray(0, cut), { source: "setid.mat" }),
      (err: Error) =>
        err instanceof MatError && /setid\.mat/.test(err.message) &&
        /truncated|header/.test(err.message),
      `cut at ${cut}`,
    );
  }
});

// ---- a tiny MAT v5 writer, following the format spec, to cover paths the real files do not ----

/** One tagged data element, padded to 8 bytes; payloads of <= 4 bytes use the small format. */
function element(type: number, payload: Uint8Array, little: boolean, small = true): Uint8Array {
  const view = (b: Uint8Array) => new DataView(b.buffer);
  if (small && payload.length <= 4) {
    const out = new Uint8Array(8);
    view(out).setUint32(0, (payload.length << 16) | type, little);
    out.set(payload, 4);
    return out;
  }
  const out = new Uint8Array(8 + Math.ceil(payload.length / 8) * 8);
  view(out).setUint32(0, type, little);
  view(out).setUint32(4, payload.length, little);
  out.set(payload, 8);
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function u32s(values: number[], little: boolean, type = 6): Uint8Array {
  const b = new Uint8Array(values.length * 4);
  values.forEach((v, i) =>
    type === 5
      ? new DataView(b.buffer).setInt32(i * 4, v, little)
      : new DataView(b.buffer).setUint32(i * 4, v, little)
  );
  return b;
}

/** miMATRIX of class `mxClass` named `name`, with `dims` and an already-encoded real part. */
function matrix(
  name: string,
  mxClass: number,
  dims: number[],
  real: Uint8Array | null,
  little: boolean,
  flags = 0,
): Uint8Array {
  const body = concat([
    element(6, u32s([(flags << 8) | mxClass, 0], little), little), // array flags (miUINT32)
    element(5, u32s(dims, little, 5), little), // dimensions (miINT32)
    element(1, new TextEncoder().encode(name), little), // name (miINT8)
    ...(real ? [real] : []),
  ]);
  return element(14, body, little, false);
}

function header(little: boolean): Uint8Array {
  const h = new Uint8Array(128).fill(0x20);
  h.set(new TextEncoder().encode("MATLAB 5.0 MAT-file, written by anthos tests"), 0);
  h.fill(0, 116, 124); // no subsystem data
  new DataView(h.buffer).setUint16(124, 0x0100, little);
  h.set(new TextEncoder().encode(little ? "IM" : "MI"), 126);
  return h;
}

function syntheticFile(little: boolean): Uint8Array {
  // "a": uint16 class 2x3 [[1,3,5],[2,4,6]] column-major 1..6, stored as miUINT16.
  const a = new Uint8Array(12);
  for (let i = 0; i < 6; i++) new DataView(a.buffer).setUint16(i * 2, i + 1, little);
  // "neg": int8 class stored as miINT8 in the small format (3 bytes).
  const neg = new Uint8Array([0xff, 0x80, 0x7f]);
  // "pi": double scalar stored as miDOUBLE.
  const pi = new Uint8Array(8);
  new DataView(pi.buffer).setFloat64(0, Math.PI, little);
  // "big": double class stored as miUINT32 (MATLAB narrows storage like this).
  return concat([
    header(little),
    matrix("a", 11, [2, 3], element(4, a, little), little),
    matrix("neg", 8, [1, 3], element(1, neg, little), little),
    matrix("pi", 6, [1, 1], element(9, pi, little), little),
    matrix("big", 6, [1, 2], element(6, u32s([4000000000, 7], little), little), little),
  ]);
}

Deno.test("readMat: uncompressed v5, both byte orders, small and padded elements", () => {
  for (const little of [true, false]) {
    const vars = readMat(syntheticFile(little));
    assert.deepEqual([...vars.keys()], ["a", "neg", "pi", "big"]);
    assert.deepEqual(vars.get("a"), {
      dims: [2, 3],
      data: new Float64Array([1, 2, 3, 4, 5, 6]),
      mxClass: "uint16",
    });
    assert.deepEqual([...vars.get("neg")!.data], [-1, -128, 127]);
    assert.equal(vars.get("neg")!.mxClass, "int8");
    assert.deepEqual([...vars.get("pi")!.data], [Math.PI]);
    assert.deepEqual([...vars.get("big")!.data], [4000000000, 7]);
  }
});

Deno.test("readMat: miCOMPRESSED elements inflate to the same variables", () => {
  const plain = syntheticFile(true);
  const body = plain.subarray(128);
  const z = deflateSync(body);
  const tag = new Uint8Array(8);
  new DataView(tag.buffer).setUint32(0, 15, true);
  new DataView(tag.buffer).setUint32(4, z.length, true);
  // Two variables in one compressed element is not what MATLAB writes; wrap each instead.
  const parts: Uint8Array[] = [plain.subarray(0, 128)];
  let pos = 128;
  while (pos < plain.length) {
    const n = new DataView(plain.buffer).getUint32(pos + 4, true) + 8;
    const zz = deflateSync(plain.subarray(pos, pos + n));
    const t = new Uint8Array(8);
    new DataView(t.buffer).setUint32(0, 15, true);
    new DataView(t.buffer).setUint32(4, zz.length, true);
    parts.push(t, new Uint8Array(zz)); // compressed elements are not padded
    pos += n;
  }
  assert.deepEqual(readMat(concat(parts)), readMat(plain));
  // One compressed element holding several variables is rejected clearly.
  assert.throws(() => readMat(concat([plain.subarray(0, 128), tag, new Uint8Array(z)])), /holds 4/);
});

Deno.test("readMat: unsupported classes, complex and non-MAT input give clear errors", () => {
  const little = true;
  const cell = concat([header(little), matrix("c", 1, [1, 1], null, little)]);
  assert.throws(() => readMat(cell), /"c" is a cell array; only real numeric/);
  const sparse = concat([header(little), matrix("s", 5, [2, 2], null, little)]);
  assert.throws(() => readMat(sparse), /"s" is a sparse array/);
  const two = new Uint8Array(16);
  const complex = concat([
    header(little),
    matrix("z", 6, [1, 1], element(9, two.subarray(0, 8), little), little, 0x08),
  ]);
  assert.throws(() => readMat(complex), /"z" is complex/);
  // skipUnsupported keeps the numeric variables of a mixed file.
  const mixed = concat([cell, syntheticFile(true).subarray(128)]);
  assert.deepEqual([...readMat(mixed, { skipUnsupported: true }).keys()], [
    "a",
    "neg",
    "pi",
    "big",
  ]);
  assert.throws(
    () => readMat(new TextEncoder().encode("not a mat file".repeat(20))),
    /not a MATLAB v5/,
  );
  const v73 = header(true);
  v73.set(new TextEncoder().encode("MATLAB 7.3 MAT-file"), 0);
  assert.throws(() => readMat(v73), /7\.3 \(HDF5\)/);
  // A truncated uncompressed file names the element and the missing bytes.
  const full = syntheticFile(true);
  assert.throws(() => readMat(full.subarray(0, full.length - 3)), /truncated.*needs \d+ bytes/);
});
