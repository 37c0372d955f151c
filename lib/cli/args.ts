/**
 * Command-line plumbing shared by the deno tasks: a declarative option table that parses
 * `Deno.args` into typed values (kebab-case flags become camelCase keys), generates `--help`
 * text, and turns bad input into an error that names the flag and the fix. {@link runMain} wraps
 * a task's `main` so errors print as one clean line and set the exit code.
 *
 * Flags: `--name value`, `--name=value`, `--flag` / `--no-flag` for booleans, `-x` short aliases,
 * `--` ends the options. Numbers accept `1e-4` and `1_000`.
 *
 * @module
 */

import { editDistance } from "../pipeline/classes.ts";

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
  readonly choices: readonly ["wasm", "cpu", "webgpu", "tensorflow"];
  readonly description: string;
} = {
  type: "string",
  choices: ["wasm", "cpu", "webgpu", "tensorflow"],
  description: "tfjs backend [default: $ANTHOS_BACKEND or wasm]",
};

/**
 * Bad command-line input: the message names the flag and how to fix it.
 *
 * @example
 * ```ts
 * import { CliError } from "./args.ts";
 * throw new CliError("--steps must be a positive integer, got -1");
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
  const byShort = new Map<string, string>();
  for (const [long, o] of Object.entries(spec.options)) {
    values[camelCase(long)] = o.default ?? (o.type === "boolean" ? false : undefined);
    if (o.short) byShort.set(o.short, long);
  }
  let help = false;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      positionals.push(...args.slice(i + 1));
      break;
    }
    if (arg === "--help" || arg === "-h") {
      help = true;
      continue;
    }
    if (!arg.startsWith("-") || arg === "-" || /^-\d/.test(arg)) {
      positionals.push(arg);
      continue;
    }
    let name: string;
    let inline: string | undefined;
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
      inline = eq < 0 ? undefined : arg.slice(eq + 1);
    } else {
      const long = byShort.get(arg.slice(1, 2));
      if (!long) throw unknownFlag(spec, arg);
      name = long;
      inline = arg.length > 2 ? arg.slice(2).replace(/^=/, "") : undefined;
    }
    let o = spec.options[name];
    let negated = false;
    if (!o && name.startsWith("no-") && spec.options[name.slice(3)]?.type === "boolean") {
      name = name.slice(3);
      o = spec.options[name];
      negated = true;
    }
    if (!o) throw unknownFlag(spec, `--${name}`);
    const key = camelCase(name);
    given.add(key);
    if (o.type === "boolean") {
      if (inline === undefined) values[key] = !negated;
      else if (/^(true|1|yes)$/i.test(inline)) values[key] = !negated;
      else if (/^(false|0|no)$/i.test(inline)) values[key] = negated;
      else throw new CliError(`--${name} is a switch: give it alone or as --${name}=true|false`);
      continue;
    }
    let raw = inline;
    if (raw === undefined) {
      if (i + 1 >= args.length) {
        throw new CliError(`--${name} needs a value: --${name} ${placeholder(name, o)}`);
      }
      raw = args[++i];
    }
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
 * Parses `Deno.args` (or `args`); on `--help` prints the help and exits 0. Errors propagate as
 * {@link CliError} (use inside {@link runMain}).
 *
 * @example
 * ```ts
 * import { parseArgs } from "./args.ts";
 * const { values } = parseArgs({
 *   name: "deno task encode",
 *   description: "Encodes the dataset.",
 *   options: { limit: { type: "integer", description: "encode only the first N images" } },
 * });
 * ```
 */
export function parseArgs<const S extends CommandSpec>(
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
    const debug = envFlag("ANTHOS_DEBUG");
    const msg = e instanceof Error ? (debug ? e.stack ?? e.message : e.message) : String(e);
    console.error(`error: ${msg}`);
    code = 1;
  }
  Deno.exit(code);
}

/**
 * True when `ANTHOS_QUICK` is set to a true-ish value: tasks shrink their work to a CI-sized run.
 *
 * @example
 * ```ts
 * import { isQuick } from "./args.ts";
 * const steps = isQuick() ? 4 : 300;
 * ```
 */
export function isQuick(): boolean {
  return envFlag("ANTHOS_QUICK");
}

/**
 * Reads a boolean environment variable (`1`, `true`, `yes`, `on`); false without env access.
 *
 * @example
 * ```ts
 * import { envFlag } from "./args.ts";
 * envFlag("CI");
 * ```
 */
export function envFlag(name: string): boolean {
  let v: string | undefined;
  try {
    v = Deno.env.get(name);
  } catch {
    return false;
  }
  return v !== undefined && /^(1|true|yes|on)$/i.test(v.trim());
}

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
  const name = flag.replace(/^-+/, "");
  const close = Object.keys(spec.options)
    .map((k) => [k, editDistance(k, name)] as const)
    .filter(([, d]) => d <= Math.max(2, Math.floor(name.length / 3)))
    .sort((a, b) => a[1] - b[1])[0];
  const hint = close ? ` Did you mean --${close[0]}?` : "";
  return new CliError(`unknown option ${flag}.${hint} Run ${spec.name} --help for the options.`);
}
