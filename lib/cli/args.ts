/**
 * Command-line plumbing shared by the deno tasks: a declarative option table that parses
 * `Deno.args` (tokenized by `parseArgs` of `node:util`) into typed values (kebab-case flags become camelCase keys), generates `--help`
 * text, and turns bad input into an error that names the flag and the fix. {@link runMain} wraps
 * a task's `main` so errors print as one clean line and set the exit code.
 *
 * Flags: `--name value`, `--name=value`, `--flag` / `--no-flag` for booleans, `-x` short aliases,
 * `--` ends the options. Numbers accept `1e-4` and `1_000`.
 *
 * @module
 */

import { parseArgs as nodeParseArgs } from "node:util";
import { BACKENDS } from "../runtime/backend.ts";
import { env, envFlag as runtimeEnvFlag } from "../runtime/env.ts";
import { closestMatch } from "../runtime/text.ts";
import { type MissingInput, missingInput } from "../runtime/errors.ts";

/** The kind of value a flag takes. */
export type OptionType = "string" | "boolean" | "number" | "integer";

/** One flag of a command. */
export interface OptionSpec {
  /** Value kind; `boolean` flags take no value. */
  type: OptionType;
  /** What it does (one line, shown in `--help`). */
  description: string;
  /** One-letter alias, e.g. `"n"` for `-n`. */
  short?: string;
  /** Value when the flag is absent (shown in `--help`). */
  default?: string | number | boolean;
  /** Allowed values (strings only). */
  choices?: readonly string[];
  /** Name of the value in `--help`, e.g. `"DIR"`. */
  placeholder?: string;
}

/** A command: its options, positional arguments and help text. */
export interface CommandSpec {
  /** How it is invoked, e.g. `"deno task train"`. */
  name: string;
  /** What it does (first paragraph of `--help`). */
  description: string;
  /** Flags by their long name in kebab-case (`"batch-size"`). */
  options: Readonly<Record<string, OptionSpec>>;
  /** Positional arguments, in order (shown in `--help`; all optional unless `required`). */
  positionals?: readonly { name: string; description: string; required?: boolean }[];
  /** Example invocations for `--help`. */
  examples?: readonly string[];
  /** Extra text at the end of `--help` (environment variables, notes). */
  epilog?: string;
}

/** `"batch-size"` -> `"batchSize"`. */
export type CamelCase<S extends string> = S extends `${infer A}-${infer B}`
  ? `${A}${Capitalize<CamelCase<B>>}`
  : S;

type ValueOf<O extends OptionSpec> = O["type"] extends "boolean" ? boolean
  : O["type"] extends "number" | "integer" ? number
  : O extends { choices: readonly (infer C)[] } ? C
  : string;

/** Parsed values: camelCase keys; flags without a default may be undefined. */
export type OptionValues<O extends Readonly<Record<string, OptionSpec>>> = {
  -readonly [K in keyof O & string as CamelCase<K>]: O[K] extends { default: unknown }
    ? ValueOf<O[K]>
    : O[K]["type"] extends "boolean" ? boolean
    : ValueOf<O[K]> | undefined;
};

/** What {@link parseCommand} returns. */
export interface ParsedCommand<O extends Readonly<Record<string, OptionSpec>>> {
  /** Flag values by camelCase name. */
  values: OptionValues<O>;
  /** Positional arguments, in order. */
  positionals: string[];
  /** True when `--help`/`-h` was given (the caller prints {@link helpText} and exits 0). */
  help: boolean;
  /** The camelCase names of the flags that were given explicitly. */
  given: Set<string>;
}

/**
 * The `--backend` flag every task shares (parsed as one of the backend names).
 *
 * @example
 * ```ts
 * import { BACKEND_OPTION, parseCommand } from "./args.ts";
 * const spec = { name: "deno task x", description: "x", options: { backend: BACKEND_OPTION } } as const;
 * parseCommand(spec, ["--backend", "webgpu"]).values.backend; // "webgpu"
 * ```
 */
export const BACKEND_OPTION: {
  readonly type: "string";
  readonly choices: typeof BACKENDS;
  readonly description: string;
} = {
  type: "string",
  choices: BACKENDS,
  description: "tfjs backend [default: $ANTHOS_BACKEND or wasm]",
};

/**
 * Bad command-line input: the message names the flag and how to fix it.
 *
 * @example
 * ```ts
 * import { CliError, parseCommand } from "./args.ts";
 * const spec = { name: "x", description: "", options: { steps: { type: "integer", description: "" } } } as const;
 * try {
 *   parseCommand(spec, ["--steps", "1.5"]);
 *   throw new Error("should have thrown");
 * } catch (e) {
 *   if (!(e instanceof CliError) || !e.message.includes("--steps needs a whole number")) throw e;
 * }
 * ```
 */
export class CliError extends Error {
  override name = "CliError";
}

/**
 * Parses arguments against a command's option table.
 *
 * @example
 * ```ts
 * import { parseCommand } from "./args.ts";
 * const spec = {
 *   name: "deno task train",
 *   description: "Trains a model.",
 *   options: {
 *     steps: { type: "integer", description: "optimizer steps", default: 300 },
 *     "batch-size": { type: "integer", description: "global batch" },
 *     resume: { type: "boolean", description: "continue the run" },
 *   },
 * } as const;
 * const { values } = parseCommand(spec, ["--steps", "10", "--resume"]);
 * values.steps; // 10
 * values.batchSize; // undefined
 * values.resume; // true
 * ```
 */
export function parseCommand<const S extends CommandSpec>(
  spec: S,
  args: readonly string[],
): ParsedCommand<S["options"]> {
  const values: Record<string, unknown> = {};
  const given = new Set<string>();
  const positionals: string[] = [];
  // node:util tokenizes (long/short/inline/grouped flags, `--`); types, choices, `--no-x` and
  // "did you mean" are ours, so strict mode is off and every valued flag is a string to it.
  const nodeOptions: Record<string, { type: "string" | "boolean"; short?: string }> = {};
  for (const [long, o] of Object.entries(spec.options)) {
    values[camelCase(long)] = o.default ?? (o.type === "boolean" ? false : undefined);
    nodeOptions[long] = { type: o.type === "boolean" ? "boolean" : "string" };
    if (o.short) nodeOptions[long].short = o.short;
  }
  if (!("help" in nodeOptions)) nodeOptions.help = { type: "boolean", short: "h" };
  const { tokens } = nodeParseArgs({
    args: [...args],
    options: nodeOptions,
    strict: false,
    allowPositionals: true,
    tokens: true,
  });
  let help = false;
  let lastIndex = -1;
  for (const token of tokens) {
    if (token.kind === "option-terminator") continue;
    if (token.kind === "positional") {
      positionals.push(token.value);
      continue;
    }
    if (/^-\d/.test(args[token.index])) {
      // A negative number is a positional, not a group of short flags ("-12" -> "-1", "-2").
      if (token.index !== lastIndex) positionals.push(args[token.index]);
      lastIndex = token.index;
      continue;
    }
    let name = token.name;
    if (name === "help" && !("help" in spec.options)) {
      help = true;
      continue;
    }
    let o = spec.options[name];
    let negated = false;
    if (!o && name.startsWith("no-") && spec.options[name.slice(3)]?.type === "boolean") {
      name = name.slice(3);
      o = spec.options[name];
      negated = true;
    }
    if (!o) throw unknownFlag(spec, token.rawName.startsWith("--") ? `--${name}` : token.rawName);
    const key = camelCase(name);
    given.add(key);
    if (o.type === "boolean") {
      const inline = token.value;
      if (inline === undefined) values[key] = !negated;
      else if (/^(true|1|yes)$/i.test(inline)) values[key] = !negated;
      else if (/^(false|0|no)$/i.test(inline)) values[key] = negated;
      else throw new CliError(`--${name} is a switch: give it alone or as --${name}=true|false`);
      continue;
    }
    let raw = token.value;
    if (raw === undefined) {
      throw new CliError(`--${name} needs a value: --${name} ${placeholder(name, o)}`);
    }
    // `-b=4` is `-b 4`, as `--batch=4` is `--batch 4`.
    if (token.inlineValue && !token.rawName.startsWith("--")) raw = raw.replace(/^=/, "");
    values[key] = convert(name, o, raw);
  }
  const required = (spec.positionals ?? []).filter((p) => p.required);
  if (!help && positionals.length < required.length) {
    throw new CliError(
      `missing ${required[positionals.length].name}: usage: ${usageLine(spec)} ` +
        `(see ${spec.name} --help)`,
    );
  }
  return { values: values as OptionValues<S["options"]>, positionals, help, given };
}

/**
 * The `--help` text of a command: usage, description, positionals, options with defaults and
 * choices, examples and the epilog.
 *
 * @example
 * ```ts
 * import { helpText } from "./args.ts";
 * console.log(helpText({
 *   name: "deno task convert",
 *   description: "Exports a checkpoint.",
 *   options: { out: { type: "string", description: "output folder", default: "weights" } },
 * }));
 * ```
 */
export function helpText(spec: CommandSpec): string {
  const lines = [`Usage: ${usageLine(spec)}`, "", spec.description.trim()];
  const pos = spec.positionals ?? [];
  const rows: [string, string][] = [];
  for (const p of pos) rows.push([p.name, p.description]);
  if (rows.length) lines.push("", "Arguments:", ...table(rows));
  const opts: [string, string][] = [];
  for (const [long, o] of Object.entries(spec.options)) {
    const flag = (o.short ? `-${o.short}, ` : "    ") + `--${long}` +
      (o.type === "boolean" ? "" : ` ${placeholder(long, o)}`);
    let text = o.description;
    if (o.choices) text += ` (${o.choices.join(" | ")})`;
    if (o.default !== undefined && o.default !== false) text += ` [default: ${o.default}]`;
    opts.push([flag, text]);
  }
  opts.push(["-h, --help", "show this help"]);
  lines.push("", "Options:", ...table(opts));
  if (spec.examples?.length) lines.push("", "Examples:", ...spec.examples.map((e) => `  ${e}`));
  if (spec.epilog) lines.push("", spec.epilog.trim());
  return lines.join("\n") + "\n";
}

/**
 * Parses `Deno.args` (or `args`) with {@link parseCommand}; on `--help` prints the help and exits
 * 0. Errors propagate as {@link CliError} (use inside {@link runMain}).
 *
 * @example
 * ```ts
 * import { parseCommandLine } from "./args.ts";
 * const { values } = parseCommandLine({
 *   name: "deno task encode",
 *   description: "Encodes the dataset.",
 *   options: { limit: { type: "integer", description: "encode only the first N images" } },
 * }, ["--limit", "16"]);
 * if (values.limit !== 16) throw new Error(`got ${values.limit}`);
 * ```
 */
export function parseCommandLine<const S extends CommandSpec>(
  spec: S,
  args: readonly string[] = Deno.args,
): ParsedCommand<S["options"]> {
  const parsed = parseCommand(spec, args);
  if (parsed.help) {
    Deno.stdout.writeSync(new TextEncoder().encode(helpText(spec)));
    Deno.exit(0);
  }
  return parsed;
}

/**
 * The old name of {@link parseCommandLine}.
 *
 * @deprecated Use {@link parseCommandLine} (this name clashes with `parseArgs` of `node:util`).
 */
export const parseArgs: typeof parseCommandLine = parseCommandLine;

/**
 * Runs a task's `main`: its return value (default 0) is the exit code; an error prints as
 * `error: message` on stderr (a stack trace only with `ANTHOS_DEBUG=1`) and exits 1.
 *
 * @example
 * ```ts
 * import { runMain } from "./args.ts";
 * if (import.meta.main) runMain(async () => { console.log("hi"); return 0; });
 * ```
 */
export async function runMain(main: () => Promise<number | void>): Promise<never> {
  let code: number;
  try {
    code = (await main()) ?? 0;
  } catch (e) {
    const debug = env.debug;
    const msg = e instanceof Error ? (debug ? e.stack ?? e.message : e.message) : String(e);
    const hint = taskHint(e);
    console.error(`error: ${msg}${hint ? `\nhint: ${hint}` : ""}`);
    code = 1;
  }
  Deno.exit(code);
}

/** The `deno task` that makes each input a library error can name as missing. */
export const TASK_HINTS: Readonly<Record<MissingInput, string>> = Object.freeze({
  "weights": "`deno task train`, then `deno task convert`, make a weights folder " +
    "(config.json, model.safetensors, classes.txt); --repo-dir names the folder that holds weights/.",
  "latent-cache": "`deno task encode` makes a latent cache from the Oxford photos.",
  "oxford": "`deno task encode` downloads Oxford Flowers 102 into $ANTHOS_HOME/oxford102.",
  "checkpoint": "`deno task train` writes runs/NAME/checkpoint.safetensors.",
});

/**
 * The command-line way to make what `error` says is missing (see lib/runtime/errors.ts), if any:
 * library messages name library calls, and {@link runMain} adds this for task users.
 *
 * @example
 * ```ts
 * import { taskHint } from "./args.ts";
 * import { markMissing } from "../runtime/errors.ts";
 * const hint = taskHint(markMissing(new Error("no cache"), "latent-cache"));
 * if (!hint?.includes("deno task encode")) throw new Error(String(hint));
 * if (taskHint(new Error("other")) !== undefined) throw new Error("no hint for other errors");
 * ```
 */
export function taskHint(error: unknown): string | undefined {
  const input = missingInput(error);
  return input ? TASK_HINTS[input] : undefined;
}

/**
 * True when `ANTHOS_QUICK` is set to a true-ish value: tasks shrink their work to a CI-sized run.
 * Same as `env.quick` of lib/runtime/env.ts.
 *
 * @example
 * ```ts
 * import { isQuick } from "./args.ts";
 * const steps = isQuick() ? 4 : 300;
 * ```
 */
export function isQuick(): boolean {
  return env.quick;
}

/**
 * Reads a boolean environment variable (`1`, `true`, `yes`, `on`); false without env access.
 *
 * @deprecated Import `envFlag` (or the `env` object) from lib/runtime/env.ts.
 */
export const envFlag: (name: string) => boolean = runtimeEnvFlag;

/**
 * Splits a comma-separated list (`"train,val"`), trimming and dropping empty items.
 *
 * @example
 * ```ts
 * import { splitList } from "./args.ts";
 * splitList(" train, val ,"); // ["train", "val"]
 * ```
 */
export function splitList(text: string): string[] {
  return text.split(",").map((s) => s.trim()).filter((s) => s !== "");
}

// ---------------------------------------------------------------- internals

function camelCase(s: string): string {
  return s.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

function placeholder(long: string, o: OptionSpec): string {
  if (o.placeholder) return o.placeholder;
  if (o.type === "integer") return "N";
  if (o.type === "number") return "X";
  return long.toUpperCase().replace(/-/g, "_");
}

function convert(name: string, o: OptionSpec, raw: string): string | number {
  if (o.type === "string") {
    if (o.choices && !o.choices.includes(raw)) {
      throw new CliError(`--${name} must be one of ${o.choices.join(", ")}; got "${raw}"`);
    }
    return raw;
  }
  const n = raw.trim() === "" ? NaN : Number(raw.replace(/_/g, ""));
  if (!Number.isFinite(n)) {
    throw new CliError(`--${name} needs a number, got "${raw}" (e.g. --${name} ${example(o)})`);
  }
  if (o.type === "integer" && !Number.isInteger(n)) {
    throw new CliError(
      `--${name} needs a whole number, got "${raw}" (e.g. --${name} ${example(o)})`,
    );
  }
  return n;
}

function example(o: OptionSpec): string {
  return typeof o.default === "number" ? String(o.default) : o.type === "integer" ? "10" : "0.5";
}

function usageLine(spec: CommandSpec): string {
  const pos = (spec.positionals ?? []).map((p) => p.required ? `<${p.name}>` : `[${p.name}]`);
  return [spec.name, ...pos, "[options]"].join(" ");
}

function table(rows: [string, string][]): string[] {
  const w = Math.min(34, Math.max(...rows.map(([a]) => a.length)) + 2);
  return rows.map(([a, b]) =>
    a.length + 2 > w ? `  ${a}\n  ${" ".repeat(w)}${b}` : `  ${a.padEnd(w)}${b}`
  );
}

function unknownFlag(spec: CommandSpec, flag: string): CliError {
  const close = closestMatch(flag.replace(/^-+/, ""), Object.keys(spec.options));
  const hint = close ? ` Did you mean --${close}?` : "";
  return new CliError(`unknown option ${flag}.${hint} Run ${spec.name} --help for the options.`);
}
