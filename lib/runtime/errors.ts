/**
 * Errors that say which input is missing or unusable, so that a front end can add its own way to
 * make it. Library messages name what a library user can do (a function to call, a file to put
 * somewhere); the tasks (lib/cli/args.ts `runMain`) add the `deno task ...` that makes the same
 * thing from the command line.
 *
 * @module
 */

/** The inputs a library error can name as missing or unusable. */
export type MissingInput =
  /** A weights folder (config.json, model.safetensors, classes.txt) or one of its files. */
  | "weights"
  /** A latent cache (latents + labels in one safetensors file). */
  | "latent-cache"
  /** The Oxford Flowers 102 files. */
  | "oxford"
  /** A training checkpoint. */
  | "checkpoint";

const KEY = Symbol.for("anthos.missingInput");

/**
 * Marks `error` as caused by a missing or unusable `input` and returns it (to `throw`).
 *
 * @example
 * ```ts
 * import { markMissing, missingInput } from "./errors.ts";
 * const e = markMissing(new Error("no latent cache at x"), "latent-cache");
 * if (missingInput(e) !== "latent-cache") throw new Error("mark lost");
 * if (missingInput(new Error("other")) !== undefined) throw new Error("unmarked errors have none");
 * ```
 */
export function markMissing<E extends Error>(error: E, input: MissingInput): E {
  Object.defineProperty(error, KEY, { value: input, enumerable: false, configurable: true });
  return error;
}

/**
 * The input `error` was marked with by {@link markMissing}, if any.
 *
 * @example
 * ```ts
 * import { missingInput } from "./errors.ts";
 * if (missingInput("not an error") !== undefined) throw new Error("only marked errors");
 * ```
 */
export function missingInput(error: unknown): MissingInput | undefined {
  if (typeof error !== "object" || error === null) return undefined;
  return (error as { [KEY]?: MissingInput })[KEY];
}
