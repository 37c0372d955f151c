// The shared task helpers: argument parsing (types, defaults, errors that name the fix), help
// text, and the progress bar in both terminal and plain-line modes (with a fake clock).
import { assert, assertEquals, assertThrows } from "./_assert.ts";
import {
  BACKEND_OPTION,
  CliError,
  helpText,
  parseArgs,
  parseCommand,
  parseCommandLine,
  splitList,
} from "../lib/cli/args.ts";
import { BACKENDS } from "../lib/runtime/backend.ts";
import { formatDuration, ProgressBar } from "../lib/cli/progress.ts";

const SPEC = {
  name: "deno task demo",
  description: "A demo command.",
  positionals: [{ name: "classes", description: "what to draw" }],
  options: {
    steps: { type: "integer", default: 50, description: "steps" },
    "batch-size": { type: "integer", short: "b", description: "batch" },
    lr: { type: "number", description: "learning rate" },
    vae: {
      type: "string",
      choices: ["taesd", "sd-vae-ft-ema"],
      default: "taesd",
      description: "vae",
    },
    resume: { type: "boolean", description: "resume" },
    flip: { type: "boolean", default: true, description: "flip" },
  },
  examples: ["deno task demo rose --steps 10"],
} as const;

Deno.test("parseCommand: typed values, camelCase keys, defaults, forms of flags", () => {
  const p = parseCommand(SPEC, ["rose,tulip", "--steps=10", "-b", "8", "--lr", "1e-4", "--resume"]);
  assertEquals(p.positionals, ["rose,tulip"]);
  assertEquals(p.values, {
    steps: 10,
    batchSize: 8,
    lr: 1e-4,
    vae: "taesd",
    resume: true,
    flip: true,
  });
  assertEquals([...p.given].sort(), ["batchSize", "lr", "resume", "steps"]);
  assertEquals(p.help, false);
  const q = parseCommand(SPEC, ["--no-flip", "--steps", "1_000", "-b4", "--", "--not-a-flag"]);
  assertEquals([q.values.flip, q.values.steps, q.values.batchSize], [false, 1000, 4]);
  assertEquals(q.positionals, ["--not-a-flag"]);
  assertEquals(parseCommand(SPEC, ["-h"]).help, true);
});

Deno.test("parseCommand: bad input names the flag and the fix", () => {
  assertThrows(() => parseCommand(SPEC, ["--stpes", "3"]), CliError, "Did you mean --steps?");
  assertThrows(() => parseCommand(SPEC, ["--steps", "1.5"]), CliError, "whole number");
  assertThrows(() => parseCommand(SPEC, ["--lr", "fast"]), CliError, "needs a number");
  assertThrows(() => parseCommand(SPEC, ["--steps"]), CliError, "needs a value");
  assertThrows(() => parseCommand(SPEC, ["--vae", "kl"]), CliError, "one of taesd, sd-vae-ft-ema");
  const req = { ...SPEC, positionals: [{ name: "classes", description: "", required: true }] };
  assertThrows(() => parseCommand(req, []), CliError, "missing classes");
});

Deno.test("parseCommand: the other forms node:util tokenizes", () => {
  // Short flag with attached or "=" value; a value that starts with "-"; repeated flags: last wins.
  const p = parseCommand(SPEC, ["-b=4", "--lr", "-0.5", "--steps", "3", "--steps=7"]);
  assertEquals([p.values.batchSize, p.values.lr, p.values.steps], [4, -0.5, 7]);
  // Negative numbers are positionals, not short-flag groups.
  assertEquals(parseCommand(SPEC, ["-12", "-3.5"]).positionals, ["-12", "-3.5"]);
  // Switches with an explicit value; --no-x negates; -h after other flags.
  const q = parseCommand(SPEC, ["--flip=false", "--resume=yes", "--no-resume", "-h"]);
  assertEquals([q.values.flip, q.values.resume, q.help], [false, false, true]);
  assertEquals(parseCommand(SPEC, ["--no-flip=false"]).values.flip, true);
  assertThrows(() => parseCommand(SPEC, ["--flip=maybe"]), CliError, "is a switch");
  // Unknown short flags and `--no-` on a valued flag are named.
  assertThrows(() => parseCommand(SPEC, ["-x"]), CliError, "unknown option -x.");
  assertThrows(() => parseCommand(SPEC, ["--no-steps"]), CliError, "unknown option --no-steps");
  assertThrows(
    () => parseCommand(SPEC, ["--batchsize", "2"]),
    CliError,
    "Did you mean --batch-size?",
  );
  const far = assertThrows(
    () => parseCommand(SPEC, ["--zzzzzz"]),
    CliError,
    "--help for the options",
  );
  assert(!far.message.includes("Did you mean"), far.message);
  // The backend flag offers exactly the backend list.
  const spec = { name: "t", description: "", options: { backend: BACKEND_OPTION } } as const;
  assertEquals(BACKEND_OPTION.choices, BACKENDS);
  assertEquals(parseCommand(spec, ["--backend", "cpu"]).values.backend, "cpu");
  assertThrows(() => parseCommand(spec, ["--backend", "gpu"]), CliError, "one of wasm, cpu");
});

Deno.test("parseCommandLine parses Deno.args-style input; parseArgs is its old name", () => {
  assertEquals(parseCommandLine(SPEC, ["--steps", "5"]).values.steps, 5);
  assertEquals(parseArgs, parseCommandLine);
});

Deno.test("parseCommandLine: --help prints the help text and exits 0 (subprocess)", async () => {
  const root = new URL("..", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${root}tasks/bench.ts`, "--help"],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
  assert(text.startsWith("Usage: deno task bench [options]"), text);
  assert(text.includes("--micro-batch N") && text.includes("[default: 32,256]"), text);
  const bad = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${root}tasks/sample.ts`, "--vae", "kl"],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(bad.code, 1);
  assert(
    new TextDecoder().decode(bad.stderr).includes("--vae must be one of taesd, sd-vae-ft-ema"),
    new TextDecoder().decode(bad.stderr),
  );
});

Deno.test("helpText lists every option with defaults and choices", () => {
  const text = helpText(SPEC);
  assert(text.startsWith("Usage: deno task demo [classes] [options]"), text);
  for (const s of ["--steps N", "-b, --batch-size N", "[default: 50]", "(taesd | sd-vae-ft-ema)"]) {
    assert(text.includes(s), `help lacks "${s}":\n${text}`);
  }
  assert(text.includes("deno task demo rose --steps 10"));
  assertEquals(splitList(" train, val ,"), ["train", "val"]);
});

Deno.test("ProgressBar: rate, ETA and fields; plain lines are throttled", () => {
  let now = 0;
  const lines: string[] = [];
  const bar = new ProgressBar(100, {
    label: "train",
    start: 20,
    tty: false,
    intervalMs: 10_000,
    now: () => now,
    write: (s) => lines.push(s),
  });
  now = 1000;
  bar.update(22, { loss: 0.123456 }); // first update prints
  now = 2000;
  bar.update(24); // throttled
  assertEquals(lines.length, 1);
  assertEquals(bar.rate(), 2); // 4 steps in 2 s, the 20 done before excluded
  assertEquals(bar.eta(), 38);
  assert(lines[0].includes("train 22/100 (22.0%)"), lines[0]);
  assert(lines[0].includes("loss 0.1235"), lines[0]);
  now = 12_000;
  bar.update(44);
  assertEquals(lines.length, 2);
  now = 20_000;
  bar.update(100);
  bar.finish(); // no repeated line
  assertEquals(lines.length, 3);
  assert(lines[2].includes("100/100") && lines[2].includes("took 20s"), lines[2]);
});

Deno.test("ProgressBar: terminal mode redraws one line and logs above it", () => {
  let now = 0;
  let out = "";
  const bar = new ProgressBar(10, { tty: true, now: () => now, write: (s) => out += s, width: 10 });
  now = 500;
  bar.update(5);
  assert(out.includes("\r\x1b[2K[#####-----] 5/10"), JSON.stringify(out));
  bar.log("saved checkpoint");
  assert(out.includes("saved checkpoint\n"));
  bar.finish();
  assert(out.endsWith("\n"));
  assertEquals(formatDuration(185), "3m05s");
  assertEquals(formatDuration(7500), "2h05m");
});

Deno.test("ProgressBar.skip: reused work does not inflate the rate", () => {
  let now = 0;
  const bar = new ProgressBar(100, { tty: false, now: () => now, write: () => {} });
  bar.skip(50);
  now = 10_000;
  bar.update(60);
  assertEquals(bar.done, 60);
  assertEquals(bar.rate(), 1); // 10 units in 10 s
  assertEquals(bar.eta(), 40);
  assertEquals(bar.doneThisRun, 10);
});
