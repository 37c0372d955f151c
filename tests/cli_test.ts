// The shared task helpers: argument parsing (types, defaults, errors that name the fix), help
// text, and the progress bar in both terminal and plain-line modes (with a fake clock).
import { assert, assertEquals, assertThrows } from "./_assert.ts";
import { CliError, helpText, parseCommand, splitList } from "../lib/cli/args.ts";
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
