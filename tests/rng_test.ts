// Seeds: the one rule (integers 0 ..= 2^32 - 1) that keeps a seed from silently repeating another.
import { checkSeed, MAX_SEED, Rng } from "../lib/runtime/rng.ts";
import { assert, assertEquals, assertThrows } from "./_assert.ts";

Deno.test("checkSeed: 0 ..= 2^32 - 1 pass; seeds that would alias are refused, naming the flag", () => {
  assertEquals(MAX_SEED, 2 ** 32 - 1);
  for (const s of [0, 1, 42, 2 ** 31, MAX_SEED]) assertEquals(checkSeed(s, "--seed"), s);
  // The generator takes its seed modulo 2^32: these would give the very same numbers as 0 and
  // 2^32 - 1, which is why they are refused instead of accepted.
  assertEquals(new Rng(2 ** 32).normalArray(4), new Rng(0).normalArray(4));
  assertEquals(new Rng(-1).normalArray(4), new Rng(MAX_SEED).normalArray(4));
  for (const s of [2 ** 32, -1, 1.5, NaN, Infinity, 2 ** 53]) {
    const e = assertThrows(() => checkSeed(s, "--seed"), RangeError, "--seed must be an integer");
    assert(e.message.includes("0 to 4294967295"), e.message);
    assert(e.message.includes(`got ${s}`), e.message);
  }
  assertThrows(() => checkSeed("7" as unknown as number), RangeError, "seed must be");
});
