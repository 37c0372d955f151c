/**
 * `deno task train`: trains the DiT on a latent cache with progress, a JSON-lines loss log,
 * periodic sample grids from the EMA weights, atomic checkpoints (also on Ctrl-C), bit-exact
 * `--resume`, and an export of the final EMA weights.
 *
 * A run lives in one folder (`--out`, default `runs/<preset>`):
 * `checkpoint.safetensors`, `log.jsonl`, `run.json` (data and VAE of the run), `samples/`,
 * and at the end `export/` (model.safetensors + config.json + classes.txt, a `weights/` folder).
 *
 * @module
 */

import type * as tf from "@tensorflow/tfjs-core";
import { loadAutoencoder } from "../lib/autoencoders/load.ts";
import type { Autoencoder, AutoencoderKind } from "../lib/autoencoders/autoencoder.ts";
import { type BackendName, loadBackend } from "../lib/runtime/backend.ts";
import { ClassNames, parseClassSelection } from "../lib/pipeline/classes.ts";
import { BACKEND_OPTION, CliError, isQuick, parseArgs, runMain } from "../lib/cli/args.ts";
import type { DiT } from "../lib/model/dit.ts";
import { exportCheckpoint } from "../lib/training/export.ts";
import { randomNoise, sample } from "../lib/model/flow.ts";
import { makeGrid } from "../lib/io/image.ts";
import { type LatentDataset, loadLatents } from "../lib/data/latents.ts";
import { formatDuration, ProgressBar } from "../lib/cli/progress.ts";
import {
  NonFiniteLossError,
  type StepInfo,
  TRAIN_PRESETS,
  Trainer,
} from "../lib/training/trainer.ts";
import { exists, writeFileAtomic } from "../lib/io/fs.ts";

const SPEC = {
  name: "deno task train",
  description: "Trains the class-conditional DiT with rectified flow on a latent cache made by " +
    "`deno task encode`. Ctrl-C saves a checkpoint and stops; --resume continues it exactly.",
  options: {
    preset: {
      type: "string",
      choices: Object.keys(TRAIN_PRESETS),
      default: "anthos",
      description: "training recipe: the published run, or a short CPU smoke run",
    },
    resume: { type: "boolean", description: "continue from <out>/checkpoint.safetensors" },
    data: {
      type: "string",
      placeholder: "FILE",
      description: "latent cache [default: runs/latents-<vae>.safetensors, or the run's]",
    },
    out: { type: "string", placeholder: "DIR", description: "run folder [default: runs/<preset>]" },
    model: { type: "string", description: "model preset, e.g. DiT-Nano/2 [default: the preset's]" },
    steps: { type: "integer", description: "total optimizer steps [default: the preset's]" },
    "batch-size": { type: "integer", description: "global batch size" },
    "micro-batch": { type: "integer", description: "largest chunk per forward/backward" },
    lr: { type: "number", description: "peak learning rate" },
    warmup: { type: "integer", description: "linear warmup steps" },
    seed: { type: "integer", description: "seed of init, data order and noise" },
    limit: { type: "integer", description: "train on the first N latents only" },
    "sample-every": {
      type: "integer",
      description: "sample grid every N steps and at the end, 0 = never [anthos 5000, smoke 100]",
    },
    "sample-steps": {
      type: "integer",
      description: "Heun steps of the sample grid [anthos 50, smoke 20; 2 model calls each]",
    },
    "sample-classes": {
      type: "string",
      placeholder: "LIST",
      default: "0,17,22,46,53,65,73,88",
      description: "classes of the sample grid (names or ids)",
    },
    "ckpt-every": {
      type: "integer",
      description: "checkpoint every N steps [anthos 1000, smoke 100]",
    },
    "log-every": { type: "integer", default: 1, description: "log.jsonl line every N steps" },
    backend: BACKEND_OPTION,
    vae: {
      type: "string",
      choices: ["taesd", "sd-vae-ft-ema"],
      description: "autoencoder that decodes the sample grids [default: the cache's]",
    },
    "vae-dir": { type: "string", placeholder: "DIR", description: "local autoencoder files" },
    "repo-dir": {
      type: "string",
      placeholder: "DIR",
      default: ".",
      description: "folder holding weights/classes.txt (grid captions)",
    },
  },
  examples: [
    "deno task train --preset smoke --out runs/smoke",
    "deno task train --preset smoke --out runs/smoke --resume --steps 600",
    "deno task train --data runs/latents-sd-vae-ft-ema.safetensors --vae sd-vae-ft-ema",
  ],
  epilog: "Environment: ANTHOS_BACKEND, ANTHOS_HOME, ANTHOS_QUICK=1 (a 4-step run, batch 4).\n" +
    "Exit codes: 0 done, 1 error (a non-finite loss keeps the last checkpoint), 130 Ctrl-C " +
    "(checkpoint saved).",
} as const;

/** Defaults that depend on the preset. */
const EVERY: Record<string, { sample: number; ckpt: number; sampleSteps: number }> = {
  anthos: { sample: 5000, ckpt: 1000, sampleSteps: 50 },
  // A grid costs 2 x steps forward passes of 2 x 8 latents: keep it short beside 100 steps.
  smoke: { sample: 100, ckpt: 100, sampleSteps: 20 },
};

/** What a run folder remembers between invocations (run.json). */
interface RunInfo {
  data: string;
  vae?: string;
  vaeDir?: string;
  latentMetadata: Record<string, string>;
  preset: string;
  limit?: number;
}

async function main(): Promise<number> {
  const { values: o, given } = parseArgs(SPEC);
  const quick = isQuick();
  const out = (o.out ?? `runs/${o.preset}`).replace(/\/+$/, "");
  const ckptPath = `${out}/checkpoint.safetensors`;
  const runPath = `${out}/run.json`;
  const logPath = `${out}/log.jsonl`;
  const hasCkpt = await exists(ckptPath);

  // --------------------------------------------------------------- run folder and data
  let run: RunInfo | null = null;
  if (o.resume) {
    if (!hasCkpt) {
      throw new CliError(
        `nothing to resume: ${ckptPath} does not exist. Start the run without --resume ` +
          `(or point --out at the run folder).`,
      );
    }
    const fixed = ["preset", "model", "batchSize", "microBatch", "lr", "warmup", "seed", "limit"];
    const bad = fixed.filter((k) => given.has(k));
    if (bad.length) {
      throw new CliError(
        `--resume continues the run exactly as it was configured; ${bad.map(flag).join(", ")} ` +
          `cannot change now. Drop ${bad.length > 1 ? "them" : "it"} (only --steps may grow), ` +
          `or start a new run with another --out.`,
      );
    }
    run = await readRunInfo(runPath);
  } else if (hasCkpt) {
    throw new CliError(
      `${out} already holds a run (${ckptPath}). Continue it with --resume, or choose another ` +
        `--out to start a new one.`,
    );
  }
  const vaeFlag = o.vae ?? run?.vae;
  const dataPath = o.data ?? run?.data ?? `runs/latents-${vaeFlag ?? "taesd"}.safetensors`;
  if (!(await exists(dataPath))) {
    throw new CliError(
      `no latent cache at ${dataPath}. Run \`deno task encode\` first (it writes ` +
        `runs/latents-<vae>.safetensors), or pass --data with the cache to train on.`,
    );
  }

  const backend = await loadBackend(o.backend as BackendName | undefined);
  // A resumed run must see the same data set: its --limit is remembered in run.json.
  const limit = o.resume ? run?.limit : o.limit;
  const data = await loadLatents(dataPath, { limit });

  // --------------------------------------------------------------- trainer
  let trainer: Trainer;
  if (o.resume) {
    trainer = await Trainer.resume(ckptPath, o.steps !== undefined ? { steps: o.steps } : {});
  } else {
    trainer = new Trainer({
      preset: o.preset,
      ...(o.model !== undefined ? { model: o.model } : {}),
      ...(o.steps !== undefined ? { steps: o.steps } : quick ? { steps: 4 } : {}),
      ...(o.batchSize !== undefined ? { batchSize: o.batchSize } : quick ? { batchSize: 4 } : {}),
      ...(o.microBatch !== undefined ? { microBatch: o.microBatch } : {}),
      ...(o.lr !== undefined ? { lr: o.lr } : {}),
      ...(o.warmup !== undefined ? { warmupSteps: o.warmup } : {}),
      ...(o.seed !== undefined ? { seed: o.seed } : {}),
    });
  }
  const mc = trainer.model.config;
  const [, h, w, ch] = data.latents.shape;
  if (h !== mc.inputSize || w !== mc.inputSize || ch !== mc.inChannels) {
    throw new CliError(
      `${dataPath} holds latents [${h}, ${w}, ${ch}] but the model ${trainer.config.model} takes ` +
        `[${mc.inputSize}, ${mc.inputSize}, ${mc.inChannels}]. Use a cache encoded for this ` +
        `model (256x256 photos give 32x32x4), or pick the matching --model.`,
    );
  }
  const badLabel = data.labels.find((l) => l < 0 || l >= mc.numClasses);
  if (badLabel !== undefined) {
    throw new CliError(`${dataPath} has label ${badLabel}, outside 0..${mc.numClasses - 1}`);
  }

  // --------------------------------------------------------------- sampling setup
  const every = EVERY[run?.preset ?? o.preset] ?? EVERY.smoke;
  const total = trainer.config.steps;
  const sampleEvery = o.sampleEvery ?? (quick ? total : every.sample);
  const ckptEvery = o.ckptEvery ?? every.ckpt;
  const sampleSteps = o.sampleSteps ?? (quick ? 4 : every.sampleSteps);
  const names = await loadNames(`${o.repoDir}/weights/classes.txt`);
  const classes = names
    ? parseClassSelection(o.sampleClasses, names)
    : o.sampleClasses.split(",").map(Number);
  if (classes.some((c) => !Number.isInteger(c) || c < 0 || c >= mc.numClasses)) {
    throw new CliError(
      `--sample-classes "${o.sampleClasses}" must name classes 0..${mc.numClasses - 1}` +
        (names ? "" : ` (ids only: ${o.repoDir}/weights/classes.txt is missing)`),
    );
  }
  const vaeName = (vaeFlag ?? data.metadata.vae ?? "taesd") as AutoencoderKind;
  const vaeDir = o.vaeDir ?? run?.vaeDir;
  let vae: Autoencoder | null = null;
  if (sampleEvery > 0) {
    try {
      vae = await loadAutoencoder(vaeName, { dir: vaeDir });
    } catch (e) {
      throw new Error(
        `${(e as Error).message}\n(the ${vaeName} autoencoder decodes the sample grids; pass ` +
          `--vae-dir, or --sample-every 0 to train without them)`,
      );
    }
  }

  // --------------------------------------------------------------- run folder
  await Deno.mkdir(`${out}/samples`, { recursive: true });
  if (!o.resume) {
    run = {
      data: dataPath,
      vae: vaeFlag,
      vaeDir,
      latentMetadata: data.metadata,
      preset: o.preset,
      limit,
    };
    await writeFileAtomic(runPath, JSON.stringify(run, null, 2) + "\n");
    await Deno.remove(logPath).catch(() => {});
  }
  // Lines logged after the checkpoint by a run that was killed would repeat: drop them.
  const timeOffset = await trimLog(logPath, trainer.step);

  console.error(
    `${o.resume ? "resuming" : "training"} ${trainer.config.model} ` +
      `(${trainer.model.paramCount().toLocaleString("en")} params) on ${data.labels.length} ` +
      `latents from ${dataPath}, ${backend.name} backend; step ${trainer.step}/${total}, ` +
      `batch ${trainer.config.batchSize}, lr ${trainer.config.lr} -> ${out}`,
  );

  // --------------------------------------------------------------- the loop
  const stop = new AbortController();
  const onSigint = () => {
    if (stop.signal.aborted) Deno.exit(130); // second Ctrl-C: the last checkpoint stays
    console.error("\nCtrl-C: finishing the current step, then saving a checkpoint ...");
    stop.abort();
  };
  Deno.addSignalListener("SIGINT", onSigint);

  const bar = new ProgressBar(total, { label: "train", start: trainer.step });
  const t0 = performance.now();
  let lastStepAt = t0;
  let savedAt = trainer.step;
  let sampledAt = -1;
  let logBuf = "";
  const recent: number[] = [];
  const flushLog = async () => {
    if (logBuf) await Deno.writeTextFile(logPath, logBuf, { append: true });
    logBuf = "";
  };
  const save = async () => {
    await flushLog();
    await trainer.saveCheckpoint(ckptPath);
    savedAt = trainer.step;
  };
  const grid = async () => {
    const file = `${out}/samples/step_${String(trainer.step).padStart(6, "0")}.png`;
    const s0 = performance.now();
    const png = await sampleGrid(trainer.ema, vae!, classes, {
      steps: sampleSteps,
      names,
    });
    await writeFileAtomic(file, png);
    sampledAt = trainer.step;
    bar.log(
      `step ${trainer.step}: samples -> ${file} (${
        formatDuration((performance.now() - s0) / 1000)
      })`,
    );
  };

  const onStep = async (s: StepInfo) => {
    const now = performance.now();
    const stepSec = (now - lastStepAt) / 1000;
    lastStepAt = now;
    recent.push(s.loss);
    if (recent.length > 50) recent.shift();
    if (s.step % o.logEvery === 0 || s.step === total) {
      logBuf += JSON.stringify({
        step: s.step,
        loss: s.loss,
        gradNorm: s.gradNorm,
        lr: s.lr,
        time: round3(timeOffset + (now - t0) / 1000),
        stepSec: round3(stepSec),
      }) + "\n";
      // Flush often enough that `tail -f log.jsonl` is live, but not a write per fast step.
      if (logBuf.length > 4096 || stepSec > 0.5) await flushLog();
    }
    bar.update(s.step, {
      loss: s.loss,
      avg: recent.reduce((a, b) => a + b, 0) / recent.length,
    });
    if (stop.signal.aborted) return; // saved below
    if (ckptEvery > 0 && s.step % ckptEvery === 0 && s.step < total) await save();
    if (vae && sampleEvery > 0 && s.step % sampleEvery === 0 && s.step < total) await grid();
  };

  try {
    await trainer.fit(data, { onStep, signal: stop.signal });
  } catch (e) {
    await flushLog();
    if (e instanceof NonFiniteLossError) {
      bar.log(`error: ${e.message}`);
      console.error(`the last checkpoint (step ${savedAt}) is kept at ${ckptPath}`);
      return 1;
    }
    throw e;
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
  }

  if (stop.signal.aborted && trainer.step < total) {
    await save();
    bar.log(
      `stopped at step ${trainer.step}: checkpoint saved to ${ckptPath}; continue with --resume`,
    );
    return 130;
  }
  bar.finish();
  if (savedAt !== trainer.step) await save();
  if (vae && sampleEvery > 0 && sampledAt !== trainer.step) await grid();
  vae?.dispose();
  const classesFile = `${o.repoDir}/weights/classes.txt`;
  const exported = await exportCheckpoint(ckptPath, `${out}/export`, {
    latentMetadata: run?.latentMetadata ?? data.metadata,
    ...(vaeFlag ? { vae: { name: vaeName, scalingFactor: vaeScale(data, vaeName) } } : {}),
    training: { preset: run?.preset ?? o.preset, data: dataPath },
    classesFile: names ? classesFile : undefined,
  });
  console.error(
    `done: ${trainer.step} steps; checkpoint ${ckptPath}; weights exported to ${out}/export ` +
      `(model.safetensors, config.json${exported.classes ? ", classes.txt" : ""})`,
  );
  return 0;
}

/** A grid of EMA samples (Heun, CFG 4.0, fixed seed 0), decoded by the VAE, as PNG bytes. */
async function sampleGrid(
  model: DiT,
  vae: Autoencoder,
  classes: number[],
  options: { steps: number; names: ClassNames | null },
): Promise<Uint8Array> {
  const c = model.config;
  const noise = randomNoise(classes.length, {
    seed: 0,
    shape: [c.inputSize, c.inputSize, c.inChannels],
  }); // [N, h, w, c]
  let z: tf.Tensor4D | null = null;
  let rgb: tf.Tensor4D | null = null;
  try {
    z = await sample(model, noise, classes, {
      steps: options.steps,
      cfgScale: 4.0,
      sampler: "heun",
    });
    rgb = vae.decode(z); // [N, 8h, 8w, 3]
    const captions = classes.map((id) => options.names ? options.names.name(id) : `class ${id}`);
    return await makeGrid(rgb, { cols: Math.min(4, classes.length), captions });
  } finally {
    noise.dispose();
    z?.dispose();
    rgb?.dispose();
  }
}

async function readRunInfo(path: string): Promise<RunInfo | null> {
  try {
    return JSON.parse(await Deno.readTextFile(path)) as RunInfo;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new Error(`${path} is damaged (${(e as Error).message}): delete it and pass --data`);
  }
}

/** Keeps the log lines up to `step`; returns the training time logged so far (seconds). */
async function trimLog(path: string, step: number): Promise<number> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    return 0;
  }
  const kept: string[] = [];
  let time = 0;
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    try {
      const rec = JSON.parse(line);
      if (rec.step <= step) {
        kept.push(line);
        time = rec.time ?? time;
      }
    } catch {
      // a torn last line from a kill: drop it
    }
  }
  const out = kept.length ? kept.join("\n") + "\n" : "";
  if (out !== text) await writeFileAtomic(path, out);
  return time;
}

async function loadNames(path: string): Promise<ClassNames | null> {
  try {
    return await ClassNames.load(path);
  } catch {
    return null;
  }
}

function vaeScale(data: LatentDataset, name: string): number {
  const s = Number(data.metadata.scaling_factor);
  return data.metadata.vae === name && s > 0 ? s : 0.18215;
}

function flag(key: string): string {
  return "--" + key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}

if (import.meta.main) runMain(main);
