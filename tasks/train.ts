/**
 * `deno task train`: parses flags, runs lib/training/run.ts (run folder, log, checkpoints, phases,
 * export, ledger), shows progress. Ctrl-C / SIGTERM / `--max-minutes` save a checkpoint first.
 * @module
 */

import { AUTOENCODER_KINDS, type AutoencoderKind } from "../lib/autoencoders/autoencoder.ts";
import { type BackendName, loadBackend } from "../lib/runtime/backend.ts";
import { ClassNames, parseClassSelection } from "../lib/pipeline/classes.ts";
import { BACKEND_OPTION, CliError, isQuick, parseCommandLine, runMain } from "../lib/cli/args.ts";
import { splitList as list } from "../lib/cli/args.ts";
import { stopOnSignals } from "../lib/cli/abort.ts";
import { ProgressBar } from "../lib/cli/progress.ts";
import { TRAIN_PRESETS, WASM_MICRO_BATCH } from "../lib/training/trainer.ts";
import { loadSampleGrid, minutesFromNow, PRESET_CADENCE } from "../lib/training/run.ts";
import { RunChangedError, stopMessage, TrainingRun } from "../lib/training/run.ts";

const int = (description: string) => ({ type: "integer", description }) as const;
const str = (description: string, placeholder?: string) =>
  ({ type: "string", description, placeholder }) as const;
const RECIPES = Object.keys(TRAIN_PRESETS);
const SPEC = {
  name: "deno task train",
  description: "Trains the class-conditional DiT with rectified flow on latent caches made by " +
    "`deno task encode`. Ctrl-C or SIGTERM saves a checkpoint and stops; --resume continues it " +
    "exactly, and with more --data files as a new phase of the same run.",
  options: {
    preset: {
      ...str("the published recipe, or a short CPU run"),
      choices: RECIPES,
      default: "anthos",
    },
    resume: { type: "boolean", description: "continue from <out>/checkpoint.safetensors" },
    data: str("latent caches, comma-separated [default: runs/latents-<vae>.safetensors]", "FILES"),
    out: str("run folder [default: runs/<preset>]", "DIR"),
    export: str("weights folder written at the end [default: <out>/export]", "DIR"),
    "max-minutes": { type: "number", description: "save and stop after this much training" },
    model: str("model preset, e.g. DiT-Nano/2 [default: the preset's]"),
    steps: int("total optimizer steps [default: the preset's]"),
    "batch-size": int("global batch size"),
    "micro-batch": int(
      "largest chunk per forward/backward: memory only, so on --resume for this session " +
        `[the run's; on wasm at most ${WASM_MICRO_BATCH}]`,
    ),
    lr: { type: "number", description: "peak learning rate" },
    warmup: int("linear warmup steps"),
    seed: int("seed of init, data order and noise, 0..4294967295"),
    limit: int("train on the first N latents only"),
    "sample-every": int("sample grid every N steps and at the end, 0 = never [anthos 5000]"),
    "sample-steps": int("Heun steps of the sample grid [anthos 50, smoke 20]"),
    "sample-classes": { ...str("grid classes", "LIST"), default: "0,17,22,46,53,65,73,88" },
    "ckpt-every": int("checkpoint every N steps [anthos 1000, smoke 100]"),
    "log-every": { type: "integer", default: 1, description: "log.jsonl line every N steps" },
    "eval-every": int("validation loss (held-out latents) every N steps, 0 = never [anthos 1000]"),
    backend: BACKEND_OPTION,
    vae: { ...str("grid decoder [default: the cache's]"), choices: AUTOENCODER_KINDS },
    "vae-dir": str("local autoencoder files", "DIR"),
    "repo-dir": { ...str("folder holding weights/classes.txt (captions)", "DIR"), default: "." },
  },
  examples: [
    "deno task train --preset smoke --out runs/smoke",
    "deno task train --preset smoke --out runs/smoke --resume --steps 600",
    "deno task train --resume --out runs/anthos --data a.safetensors,b.safetensors --max-minutes 10",
  ],
  epilog: "Environment: ANTHOS_BACKEND, ANTHOS_HOME, ANTHOS_QUICK=1 (a 4-step run, batch 4).\n" +
    "Exit codes: 0 done or --max-minutes reached (checkpoint saved), 1 error (a non-finite loss " +
    "keeps the last checkpoint), 130 Ctrl-C / 143 SIGTERM (checkpoint saved).",
} as const;

async function main(): Promise<number> {
  const { values: o, given } = parseCommandLine(SPEC);
  const quick = isQuick();
  const deadline = o.maxMinutes === undefined ? undefined : minutesFromNow(o.maxMinutes);
  const backend = await loadBackend(o.backend as BackendName | undefined);
  const vae = o.vae as AutoencoderKind | undefined;
  const fresh = !o.resume;
  const cache = `runs/latents-${vae ?? "taesd"}.safetensors`;
  const data = o.data ? list(o.data) : fresh ? [cache] : undefined;
  const preset = given.has("preset") ? o.preset : undefined;
  const { model, batchSize, microBatch, lr, warmup: warmupSteps, seed, limit } = o;
  const run = await TrainingRun.open(o.out ?? `runs/${o.preset}`, {
    ...{ resume: o.resume, preset: o.preset, data, vae, vaeDir: o.vaeDir },
    fixed: { preset, model, batchSize, lr, warmupSteps, seed, limit },
    microBatch,
    steps: o.steps ?? (quick && fresh ? 4 : undefined),
    overrides: quick && fresh && !given.has("batchSize") ? { batchSize: 4 } : {},
  }).catch((e) => {
    throw new CliError(cliHint(e));
  });
  const { trainer, info } = run;
  if (backend.name === "wasm" && trainer.microBatch > WASM_MICRO_BATCH) {
    console.error(
      `warning: --micro-batch ${trainer.microBatch} may not fit the wasm heap (4 GiB): ` +
        `DiT-Nano/2 at 64 does not finish a step; ${WASM_MICRO_BATCH} is the tested size`,
    );
  }
  const cadence = PRESET_CADENCE[info.preset] ?? PRESET_CADENCE.smoke;
  const evalItems = quick ? 4 : cadence.evalItems;
  const sampleEvery = o.sampleEvery ?? (quick ? trainer.config.steps : cadence.sampleEvery);
  const classesFile = `${o.repoDir}/weights/classes.txt`;
  const names = await ClassNames.load(classesFile).catch(() => null);
  const classes = names
    ? parseClassSelection(o.sampleClasses, names)
    : list(o.sampleClasses).map(Number);
  const grids = sampleEvery > 0
    ? await loadSampleGrid((info.vae ?? run.data.metadata.vae ?? "taesd") as AutoencoderKind, {
      ...{ classes, steps: o.sampleSteps ?? (quick ? 4 : cadence.sampleSteps) },
      captions: classes.map((id) => names?.name(id) ?? `class ${id}`),
      ...{ dir: info.vaeDir, classNames: names?.names },
    }).catch((e) => {
      throw new CliError(`${e.message} (--sample-classes, --vae-dir DIR, or --sample-every 0)`);
    })
    : null;
  console.error(run.describe(backend.name));
  const stop = stopOnSignals({
    onStop: (s) => console.error(`\n${s}: finishing the current step, then saving a checkpoint`),
  });
  const bar = new ProgressBar(trainer.config.steps, { label: "train", start: trainer.step });
  const recent: number[] = [];
  const result = await run.train({
    ...{ ckptEvery: o.ckptEvery ?? cadence.ckptEvery, sampleEvery, logEvery: o.logEvery },
    ...{ evalEvery: o.evalEvery ?? cadence.evalEvery, evalItems },
    ...{ sampleGrid: grids?.grid, signal: stop.signal, deadline },
    onEvent: (m) => bar.log(m),
    onStep: (s) => {
      if (!s.measured) return bar.update(s.step);
      if (recent.push(s.loss) > 50) recent.shift();
      bar.update(s.step, { loss: s.loss, avg: recent.reduce((a, b) => a + b, 0) / recent.length });
    },
  }).finally(() => stop.dispose());
  const message = stopMessage(result, run.folder.dir).replace("resume to", "--resume to");
  bar.log(result.reason === "nonfinite" ? `error: ${message}` : message);
  if (result.reason === "nonfinite" || result.reason === "signal") {
    return result.reason === "nonfinite" ? 1 : stop.exitCode;
  }
  bar.finish();
  const fin = await run.finish({
    ...{ exportDir: o.export, backend, sampleGrid: grids?.evalGrid, result, evalItems },
    classesFile: names ? classesFile : undefined,
  });
  grids?.dispose();
  console.error(fin.summary);
  run.dispose();
  return 0;
}

/** Library errors name library terms; the CLI names its flags. */
function cliHint(e: Error): string {
  const flag = (k: string) => k === "warmupSteps" ? "warmup" : k.replace(/[A-Z]/g, "-$&");
  if (e instanceof RunChangedError) {
    const flags = e.keys.map((k) => "--" + flag(k).toLowerCase());
    return e.message.replace(e.keys.join(", "), flags.join(", "));
  }
  if (e.message.startsWith("no latent cache at")) {
    return `${e.message}. Run \`deno task encode\` first, or pass --data.`;
  }
  return e.message.replace("Resume it,", "Continue it with --resume,");
}

if (import.meta.main) runMain(main);
