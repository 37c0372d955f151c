// Assertions for the tests (jsr:@std/assert is unreachable here): node:assert plus the few
// std-style helpers the tests use, with the same names and argument order.
import assertNode from "node:assert/strict";

export function assert(cond: unknown, msg?: string): asserts cond {
  assertNode.ok(cond, msg ?? "assertion failed");
}
export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  if (msg === undefined) assertNode.deepStrictEqual(actual, expected);
  else assertNode.deepStrictEqual(actual, expected, msg);
}
export function assertLess(a: number, b: number, msg?: string): void {
  assertNode.ok(a < b, msg ?? `expected ${a} < ${b}`);
}
export function assertGreater(a: number, b: number, msg?: string): void {
  assertNode.ok(a > b, msg ?? `expected ${a} > ${b}`);
}
// deno-lint-ignore no-explicit-any
type ErrorClass = new (...args: any[]) => Error;

/** Checks a caught error's class and message, and returns it. */
function checkCaught(e: unknown, cls: ErrorClass, includes: string): Error {
  assertNode.ok(e instanceof cls, `expected ${cls.name}, got ${e}`);
  const msg = (e as Error).message;
  assertNode.ok(msg.includes(includes), `"${msg}" lacks "${includes}"`);
  return e as Error;
}

/** Asserts `fn` throws an error of class `cls` whose message includes `includes`. */
export function assertThrows(fn: () => unknown, cls: ErrorClass = Error, includes = ""): Error {
  try {
    fn();
  } catch (e) {
    return checkCaught(e, cls, includes);
  }
  throw new assertNode.AssertionError({ message: `expected ${cls.name} to be thrown` });
}

/** Async version of {@link assertThrows}. */
export async function assertRejects(
  fn: () => Promise<unknown>,
  cls: ErrorClass = Error,
  includes = "",
): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    return checkCaught(e, cls, includes);
  }
  throw new assertNode.AssertionError({ message: `expected ${cls.name} to be rejected` });
}
