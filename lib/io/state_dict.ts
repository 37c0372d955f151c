/**
 * Checking a state dict (named tensors, as read from safetensors) against what a model expects,
 * and turning PyTorch weight layouts into TensorFlow.js ones.
 *
 * Every loader follows the same steps (as nanoGPT's `from_pretrained`): build the list of
 * expected keys and shapes, {@link checkStateDict} it against the file (missing, unexpected,
 * wrong shape or dtype: all reported at once, by name), then convert the weights, transposing the
 * ones whose layout differs ({@link torchToTf}, {@link convFilterFromTorch}).
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { RawTensor } from "./safetensors.ts";

/** Options of {@link stateDictProblems} and {@link checkStateDict}. */
export interface CheckStateDictOptions {
  /**
   * Other shapes accepted for a key besides the expected one, e.g. an attention projection stored
   * as a 1x1 conv `[out, in, 1, 1]` where `[out, in]` is expected. Default: none.
   */
  alsoAccept?: (key: string, shape: readonly number[], expected: readonly number[]) => boolean;
  /** Require float data (`Float32Array`, which F16/BF16/F64 widen to). Default true. */
  float?: boolean;
}

/** Options of {@link checkStateDict}. */
export interface StateDictErrorOptions extends CheckStateDictOptions {
  /** The start of the error message: what was being loaded, e.g. `"model.safetensors"`. */
  what?: string;
  /** What the user can do about a mismatch (the end of the message). */
  hint?: string;
  /** How many problems the message lists (default 8; the rest are counted). */
  maxListed?: number;
}

/** A state dict that does not match the model: {@link problems} lists every mismatch. */
export class StateDictError extends Error {
  override name = "StateDictError";
  /** Each mismatch, e.g. `missing key "x" (expected shape [4])`. */
  readonly problems: readonly string[];

  /** Makes the error; `message` should already list the problems. */
  constructor(message: string, problems: readonly string[]) {
    super(message);
    this.problems = problems;
  }
}

/**
 * Every way `tensors` differs from `expected` (key -> PyTorch shape): missing keys, unexpected
 * keys, wrong shapes and (by default) non-float data. Empty when they match.
 *
 * @example
 * ```ts
 * import { stateDictProblems } from "./state_dict.ts";
 * const tensors = new Map([
 *   ["w", { dtype: "F32" as const, shape: [2, 3], data: new Float32Array(6) }],
 *   ["extra", { dtype: "F32" as const, shape: [1], data: new Float32Array(1) }],
 * ]);
 * const expected = new Map([["w", [3, 2]], ["b", [2]]]);
 * const problems = stateDictProblems(tensors, expected);
 * const want = [
 *   'key "w" has shape [2,3], expected [3,2]',
 *   'missing key "b" (expected shape [2])',
 *   'unexpected key "extra"',
 * ];
 * if (JSON.stringify(problems) !== JSON.stringify(want)) throw new Error(String(problems));
 * ```
 */
export function stateDictProblems(
  tensors: ReadonlyMap<string, RawTensor>,
  expected: ReadonlyMap<string, readonly number[]>,
  options: CheckStateDictOptions = {},
): string[] {
  const problems: string[] = [];
  for (const [key, shape] of expected) {
    const t = tensors.get(key);
    if (!t) {
      problems.push(`missing key "${key}" (expected shape [${shape}])`);
    } else if (t.shape.join() !== shape.join() && !options.alsoAccept?.(key, t.shape, shape)) {
      problems.push(`key "${key}" has shape [${t.shape}], expected [${shape}]`);
    } else if ((options.float ?? true) && !(t.data instanceof Float32Array)) {
      problems.push(`key "${key}" has dtype ${t.dtype}, expected a float type`);
    }
  }
  for (const key of tensors.keys()) {
    if (!expected.has(key)) problems.push(`unexpected key "${key}"`);
  }
  return problems;
}

/**
 * Throws a {@link StateDictError} naming every mismatch between `tensors` and `expected` (see
 * {@link stateDictProblems}); returns quietly when they match.
 *
 * @example
 * ```ts
 * import { checkStateDict, StateDictError } from "./state_dict.ts";
 * const tensors = new Map([["w", { dtype: "F32" as const, shape: [2], data: new Float32Array(2) }]]);
 * checkStateDict(tensors, new Map([["w", [2]]])); // matches: no error
 * try {
 *   checkStateDict(tensors, new Map([["w", [3]]]), { what: "toy.safetensors", hint: "Re-export it." });
 *   throw new Error("should have thrown");
 * } catch (e) {
 *   if (!(e instanceof StateDictError)) throw e;
 *   const want = 'toy.safetensors: key "w" has shape [2], expected [3]. Re-export it.';
 *   if (e.message !== want) throw new Error(e.message);
 * }
 * ```
 */
export function checkStateDict(
  tensors: ReadonlyMap<string, RawTensor>,
  expected: ReadonlyMap<string, readonly number[]>,
  options: StateDictErrorOptions = {},
): void {
  const problems = stateDictProblems(tensors, expected, options);
  if (problems.length === 0) return;
  const max = options.maxListed ?? 8;
  const listed = sample(problems, max);
  const counts = count(problems);
  const more = problems.length > listed.length
    ? `; and ${problems.length - listed.length} more (${counts} in all)`
    : "";
  const hint = options.hint ? ` ${options.hint}` : "";
  throw new StateDictError(
    `${options.what ?? "state dict"}: ${listed.join("; ")}${more}.${hint}`,
    problems,
  );
}

const isMissing = (p: string) => p.startsWith("missing key");
const isUnexpected = (p: string) => p.startsWith("unexpected key");

/** Up to `max` problems, taken in turn from each kind, so a wrong file shows both sides. */
function sample(problems: readonly string[], max: number): string[] {
  const kinds = [
    problems.filter((p) => !isMissing(p) && !isUnexpected(p)),
    problems.filter(isMissing),
    problems.filter(isUnexpected),
  ];
  const out: string[] = [];
  for (let i = 0; out.length < Math.min(max, problems.length); i++) {
    for (const k of kinds) if (i < k.length && out.length < max) out.push(k[i]);
  }
  return out;
}

function count(problems: readonly string[]): string {
  const missing = problems.filter(isMissing).length;
  const unexpected = problems.filter(isUnexpected).length;
  const other = problems.length - missing - unexpected;
  return [
    missing && `${missing} missing`,
    unexpected && `${unexpected} unexpected`,
    other && `${other} mis-shaped`,
  ].filter(Boolean).join(", ");
}

/**
 * A PyTorch conv weight `[out, in, kh, kw]` as a TensorFlow.js conv filter `[kh, kw, in, out]`.
 *
 * @example
 * ```ts
 * import { convFilterFromTorch } from "./state_dict.ts";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * // out=2, in=1, 1x1 kernel: torch [[w0], [w1]] -> tf [1, 1, 1, 2] holding [w0, w1]
 * const f = convFilterFromTorch(new Float32Array([5, 7]), [2, 1, 1, 1]);
 * if (f.shape.join() !== "1,1,1,2" || f.dataSync().join() !== "5,7") throw new Error("layout");
 * f.dispose();
 * ```
 */
export function convFilterFromTorch(
  data: Float32Array,
  torchShape: readonly number[],
): tf.Tensor4D {
  if (torchShape.length !== 4) {
    throw new Error(`a conv weight has 4 dimensions [out, in, kh, kw], got [${torchShape}]`);
  }
  const [o, i, kh, kw] = torchShape;
  return tf.tidy(() => tf.transpose(tf.tensor4d(data, [o, i, kh, kw]), [2, 3, 1, 0])); // [kh, kw, in, out]
}

/**
 * One PyTorch weight as a TensorFlow.js tensor of the layout TF ops take, chosen by the rank of
 * `torchShape` (the expected PyTorch shape; the data may be stored with extra unit dimensions,
 * e.g. a linear as a 1x1 conv): rank 1 (bias, norm) as is; rank 2 (Linear `[out, in]`) transposed
 * to `[in, out]`; rank 4 (conv `[out, in, kh, kw]`) to `[kh, kw, in, out]`.
 *
 * @example
 * ```ts
 * import { torchToTf } from "./state_dict.ts";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * // Linear out=2, in=3: [[1, 2, 3], [4, 5, 6]] -> [in, out] = [[1, 4], [2, 5], [3, 6]]
 * const raw = { dtype: "F32" as const, shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, 6]) };
 * const w = torchToTf(raw, [2, 3]);
 * if (w.shape.join() !== "3,2" || w.dataSync().join() !== "1,4,2,5,3,6") throw new Error("layout");
 * w.dispose();
 * ```
 */
export function torchToTf(raw: RawTensor, torchShape: readonly number[]): tf.Tensor {
  if (!(raw.data instanceof Float32Array)) {
    throw new Error(`expected float data, got dtype ${raw.dtype}`);
  }
  const data = raw.data;
  switch (torchShape.length) {
    case 1:
      return tf.tensor1d(data);
    case 2: {
      const [o, i] = torchShape;
      return tf.tidy(() => tf.transpose(tf.tensor2d(data, [o, i]))); // [in, out]
    }
    case 4:
      return convFilterFromTorch(data, torchShape);
    default:
      throw new Error(`no TF layout for a weight of shape [${torchShape}]`);
  }
}
