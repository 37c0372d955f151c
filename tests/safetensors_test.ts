// safetensors headers: the tensors must tile the data section exactly (as the reference
// implementation requires), and checkFinite names tensors holding NaN or Infinity.
import {
  checkFinite,
  parseSafetensors,
  SafetensorsError,
  serializeSafetensors,
} from "../lib/io/safetensors.ts";
import { assert, assertEquals, assertThrows } from "./_assert.ts";

/** A safetensors file with a hand-written header over `dataLen` bytes of data (0, 1, 2, ...). */
function withHeader(header: Record<string, unknown>, dataLen: number): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + dataLen);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  for (let i = 0; i < dataLen; i++) out[8 + json.length + i] = i;
  return out;
}

const u8 = (begin: number, end: number) => ({
  dtype: "U8",
  shape: [end - begin],
  data_offsets: [begin, end],
});

Deno.test("safetensors: tensors tiling the data section in any header order are read", () => {
  const f = parseSafetensors(withHeader({ b: u8(4, 6), a: u8(0, 4), empty: u8(6, 6) }, 6));
  assertEquals([...f.tensors.keys()], ["b", "a", "empty"]);
  assertEquals(f.tensors.get("a")!.data, new Uint8Array([0, 1, 2, 3]));
  assertEquals(f.tensors.get("b")!.data, new Uint8Array([4, 5]));
  // Our own writer's files pass.
  const bytes = serializeSafetensors({
    w: { dtype: "F32", shape: [2], data: [1, 2] },
    i: { dtype: "I32", shape: [1], data: [7] },
  });
  assertEquals(parseSafetensors(bytes).tensors.get("i")!.data, new Int32Array([7]));
});

Deno.test("safetensors: overlapping data_offsets, gaps and extra bytes are refused by name", () => {
  // "b" reads bytes 2..6, half of them "a"'s: it used to load silently.
  const overlap = assertThrows(
    () => parseSafetensors(withHeader({ a: u8(0, 4), b: u8(2, 6) }, 6), { source: "x.st" }),
    SafetensorsError,
    'tensors "a" (data_offsets [0, 4]) and "b" ([2, 6]) overlap',
  );
  assert(overlap.message.includes("in x.st"), overlap.message);
  // The very same bytes for two tensors.
  assertThrows(
    () => parseSafetensors(withHeader({ a: u8(0, 4), b: u8(0, 4) }, 4)),
    SafetensorsError,
    "overlap",
  );
  assertThrows(
    () => parseSafetensors(withHeader({ a: u8(0, 2), b: u8(4, 6) }, 6)),
    SafetensorsError,
    'bytes 2..4 of the data section belong to no tensor (a gap before "b", after "a")',
  );
  assertThrows(
    () => parseSafetensors(withHeader({ a: u8(1, 3) }, 3)),
    SafetensorsError,
    'bytes 0..1 of the data section belong to no tensor (a gap before "a")',
  );
  assertThrows(
    () => parseSafetensors(withHeader({ a: u8(0, 2) }, 5)),
    SafetensorsError,
    'the data section has 5 bytes but the tensors cover only 2 (3 extra bytes at the end, after "a")',
  );
  assertThrows(
    () =>
      parseSafetensors(withHeader({ a: { dtype: "U8", shape: [2], data_offsets: [-2, 0] } }, 2)),
    SafetensorsError,
    'tensor "a" lacks dtype, shape or data_offsets',
  );
});

Deno.test("checkFinite: names each tensor with NaN/Inf, its count and first index", () => {
  const { tensors } = parseSafetensors(serializeSafetensors({
    ok: { dtype: "F32", shape: [3], data: [0, -1, 3e38] },
    nan: { dtype: "F32", shape: [4], data: [1, NaN, 2, NaN] },
    inf: { dtype: "F16", shape: [2], data: [Infinity, 0] },
    ids: { dtype: "I32", shape: [1], data: [5] },
  }));
  const e = assertThrows(
    () => checkFinite(tensors, { source: "m.safetensors" }),
    SafetensorsError,
    'm.safetensors holds non-finite values: tensor "nan" has 2 NaN/Inf (first: NaN at index 1); ' +
      'tensor "inf" has 1 NaN/Inf (first: Infinity at index 0)',
  );
  assert(!e.message.includes('"ok"'), e.message);
  checkFinite(tensors, { names: ["ok", "ids"] }); // finite: no error
});
