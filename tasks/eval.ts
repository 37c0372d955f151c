/**
 * `deno task eval`: the validation flow-matching loss of a model (a `weights/` folder or a training
 * checkpoint) on the held-out slice of the latent caches, with its 10 t-buckets, and the fixed
 * evaluation grid as a PNG. Same model, data and backend -> the same digits.
 *
 * @module
 */

import { loadAutoencoder } from "../lib/autoencoders/load.ts";
import type { AutoencoderKind } from "../lib/autoencoders/autoencoder.ts";
import { type BackendName, loadBackend } from "../lib/runtime/backend.ts";
import { BACKEND_OPTION, CliError, parseCommandLine, runMain, splitList } from "../lib/cli/args.ts";
import { AUTOENCODER_KINDS } from "../lib/autoencoders/autoencoder.ts";
import { ClassNames, parseClassSelection } from "../lib/pipeline/classes.ts";
import { DiT } from "../lib/model/dit.ts";
import { readWeightsConfig } from "../lib/model/weights.ts";
import { checkpointWeights, isCheckpoint } from "../lib/training/checkpoint.ts";
import { RunFolder } from "../lib/training/run.ts";
import { loadLatentFiles } from "../lib/training/data.ts";
import {
  evaluationGrid,
  HELD_OUT_FRACTION,
  heldOutSplit,
  T_BUCKETS,
  validationLoss,
} from "../lib/training/eval.ts";
import { formatDuration, ProgressBar } from "../lib/cli/progress.ts";
import { exists, writeFileAtomic } from "../lib/io/fs.ts";

const SPEC = {
  name: "deno task eval",
  description: "Evaluates a model: the validation flow-matching loss on the held-out slice of " +
    "the latent caches (a fixed 2% of the photos, decided per photo, never trained on) over a " +
    "fixed seeded grid of noise and t, with the loss in 10 t-buckets (t = 0 is noise, 1 is " +
    "data); and, with --grid, the fixed evaluation grid (16 classes x 2, the same noise every " +
    "time) as a PNG. Same model, data and backend -> the same digits.",
  positionals: [{
    name: "model",
    description: "a weights folder (config.json + model.safetensors) or a training checkpoint " +
      "(runs/NAME/checkpoint.safetensors) [default: weights]",
  }],
  options: {
    data: {
      type: "string",
      placeholder: "FILES",
      description: "latent caches, comma-separated, in the run's order [default: the run's " +
        "(run.json beside a checkpoint, config.json's training.data), else " +
        "runs/latents-<vae>.safetensors]",
    },
    grid: { type: "string", placeholder: "FILE", description: "write the evaluation grid PNG" },
    "grid-steps": {
      type: "integer",
      description: "Heun steps of the grid [default: config.json, 50]; fewer is faster",
    },
    "grid-tile": {
      type: "integer",
      description: "tile size of the grid in pixels [default: as decoded, 256]; 128 makes a grid " +
        "a quarter the size (weights/samples.png)",
    },
    "grid-classes": {
      type: "string",
      placeholder: "LIST",
      description: "classes of the grid, names or ids [default: the fixed 16 of EVAL_CLASSES]",
    },
    loss: { type: "boolean", default: true, description: "measure the loss; --no-loss: grid only" },
    "max-items": {
      type: "integer",
      description: "evaluate only the first N held-out latents (a quicker fixed estimate)",
    },
    "t-per-item": { type: "integer", default: 10, description: "times per held-out latent" },
    fraction: {
      type: "number",
      description: "share of the photos held out [default: the run's, else 0.02]; more than the " +
        "run's would count trained photos",
    },
    seed: { type: "integer", default: 0, description: "seed of the noise and t grid" },
    "batch-size": { type: "integer", default: 32, description: "evaluations per model call" },
    raw: { type: "boolean", description: "checkpoint: the raw weights instead of the EMA" },
    json: { type: "boolean", description: "print the result as one JSON line" },
    vae: {
      type: "string",
      choices: AUTOENCODER_KINDS,
      description: "autoencoder of the grid [default: the model's latent space]",
    },
    "vae-dir": { type: "string", placeholder: "DIR", description: "local autoencoder files" },
    "repo-dir": {
      type: "string",
      placeholder: "DIR",
      default: ".",
      description: "folder holding weights/classes.txt (grid captions)",
    },
    backend: BACKEND_OPTION,
    quiet: { type: "boolean", short: "q", description: "no progress bar" },
  },
  examples: [
    "deno task eval --data runs/latents-taesd.safetensors --grid eval.png",
    "deno task eval runs/anthos/checkpoint.safetensors --data " +
    "runs/latents-taesd.safetensors,../shared/data/latents/oxford102-test-taesd.safetensors",
    "deno task eval weights --no-loss --grid weights/samples.png --grid-tile 128 --vae-dir ../shared/weights/taesd",
  ],
  epilog: "Pass the caches the model was trained on, in the same order: the held-out photos are " +
    "those the trainer left out.\nEnvironment: ANTHOS_BACKEND, ANTHOS_HOME, ANTHOS_DEBUG=1.",
} as const;

/** A model to evaluate and what is known about it. */
interface Loaded {
  model: DiT;
  /** What it is, for the report. */
  label: string;
  /** Its latent space, if known. */
  vae?: string;
  /** Grid steps from config.json. */
  steps?: number;
  /** The latent caches it trained on, if recorded. */
  data?: string[];
  /** The run's held-out share, if recorded. */
  fraction?: number;
}

async function main(): Promise<number> {
  const { values: o, positionals } = parseCommandLine(SPEC);
  if (!o.loss && !o.grid) {
    throw new CliError("nothing to do: --no-loss needs --grid FILE");
  }
  if (o.fraction !== undefined && !(o.fraction > 0 && o.fraction < 1)) {
    throw new CliError(`--fraction must be in (0, 1), got ${o.fraction} (e.g. 0.02 for 2%)`);
  }
  for (const [flag, v] of [["t-per-item", o.tPerItem], ["batch-size", o.batchSize]] as const) {
    if (v < 1) throw new CliError(`--${flag} must be at least 1, got ${v}`);
  }
  if (o.maxItems !== undefined && o.maxItems < 1) {
    throw new CliError(`--max-items must be at least 1, got ${o.maxItems}`);
  }
  if (o.gridTile !== undefined && o.gridTile < 1) {
    throw new CliError(`--grid-tile must be at least 1 pixel, got ${o.gridTile}`);
  }
  if (o.gridSteps !== undefined && o.gridSteps < 1) {
    throw new CliError(`--grid-steps must be at least 1, got ${o.gridSteps}`);
  }
  const source = (positionals[0] ?? `${o.repoDir}/weights`).replace(/\/+$/, "") || "/";
  // Cheap checks first: a wrong path fails before the backend starts.
  await checkSource(source, { raw: o.raw });
  if (o.data !== undefined) await checkData(splitList(o.data), { given: true });
  const backend = await loadBackend(o.backend as BackendName | undefined);
  const loaded = await loadModel(source, { raw: o.raw });
  const { model } = loaded;
  try {
    const out: Record<string, unknown> = { model: loaded.label, backend: backend.name };
    if (o.loss) {
      const paths = o.data
        ? splitList(o.data)
        : loaded.data ?? [`runs/latents-${loaded.vae ?? "taesd"}.safetensors`];
      await checkData(paths, { given: o.data !== undefined });
      // Joined in the order given; each file is one part of the held-out split.
      const data = await loadLatentFiles(paths);
      // The run's share by default: its held-out photos are exactly those below it (a larger
      // share would add photos the model trained on; a smaller one evaluates a subset).
      const fraction = o.fraction ?? loaded.fraction ?? HELD_OUT_FRACTION;
      if (loaded.fraction !== undefined && fraction > loaded.fraction) {
        console.error(
          `warning: --fraction ${fraction} is more than the run's ${loaded.fraction}: some of ` +
            `these "held-out" photos were trained on`,
        );
      }
      try {
        if (loaded.vae && data.metadata.vae && data.metadata.vae !== loaded.vae) {
          throw new CliError(
            `${loaded.label} works in ${loaded.vae} latents but ${paths[0]} holds ` +
              `${data.metadata.vae} latents: evaluate on a cache of the model's latent space`,
          );
        }
        const split = heldOutSplit(data, { fraction });
        const items = Math.min(split.heldOut.length, o.maxItems ?? Infinity);
        const bar = o.quiet || o.json
          ? null
          : new ProgressBar(items * o.tPerItem, { label: "eval", unit: "eval" });
        const t0 = performance.now();
        const res = await validationLoss(model, data, {
          split,
          maxItems: o.maxItems,
          tPerItem: o.tPerItem,
          seed: o.seed,
          batchSize: o.batchSize,
          onBatch: (done) => bar?.update(done),
        });
        bar?.finish();
        const secs = (performance.now() - t0) / 1000;
        Object.assign(out, {
          valLoss: res.loss,
          valBuckets: res.buckets,
          bucketCounts: res.counts,
          heldOut: res.items,
          evaluations: res.evaluations,
          latents: data.labels.length,
          data: paths,
          fraction,
          seed: o.seed,
          seconds: Math.round(secs * 10) / 10,
        });
        if (!o.json) {
          console.log(
            `validation loss ${res.loss.toFixed(6)}  (${loaded.label}; ${res.items} held-out ` +
              `latents of ${data.labels.length} x ${o.tPerItem} t = ${res.evaluations} ` +
              `evaluations, held-out share ${fraction}, seed ${o.seed}, ${backend.name}, ` +
              `${formatDuration(secs)})`,
          );
          console.log(bucketTable(res.buckets, res.counts));
        }
      } finally {
        data.latents.dispose();
      }
    }
    if (o.grid) {
      const names = await loadNames(`${o.repoDir}/weights/classes.txt`);
      const classes = o.gridClasses === undefined
        ? undefined
        : names
        ? parseClassSelection(o.gridClasses, names)
        : splitList(o.gridClasses).map(Number);
      const vaeName = (o.vae ?? loaded.vae ?? "taesd") as AutoencoderKind;
      const vae = await loadAutoencoder(vaeName, { dir: o.vaeDir });
      const steps = o.gridSteps ?? loaded.steps ?? 50;
      const t0 = performance.now();
      try {
        let bar: ProgressBar | null = null;
        const grid = await evaluationGrid(model, vae, {
          steps,
          tileSize: o.gridTile,
          classes,
          classNames: names?.names,
          onStep: (done, total) => {
            if (o.quiet || o.json) return;
            bar ??= new ProgressBar(total, { label: "grid", unit: "step" });
            bar.update(done);
          },
        });
        (bar as ProgressBar | null)?.finish();
        await writeFileAtomic(o.grid, grid.png);
        out.grid = o.grid;
        if (!o.json) {
          console.error(
            `wrote ${o.grid}: ${grid.classes.length} images (${steps} Heun steps, ${vaeName}) in ` +
              formatDuration((performance.now() - t0) / 1000),
          );
        }
      } finally {
        vae.dispose();
      }
    }
    if (o.json) console.log(JSON.stringify(out));
  } finally {
    model.dispose();
  }
  return 0;
}

/** The 10 t-buckets as a two-row table. */
function bucketTable(buckets: number[], counts: number[]): string {
  const head = ["t-bucket"];
  const row = ["loss"];
  for (let i = 0; i < T_BUCKETS; i++) {
    head.push(`${(i / T_BUCKETS).toFixed(1)}-${((i + 1) / T_BUCKETS).toFixed(1)}`);
    row.push(counts[i] ? buckets[i].toFixed(4) : "-");
  }
  const w = Math.max(...head.map((s) => s.length), ...row.map((s) => s.length)) + 1;
  return [head, row].map((r) => r.map((s) => s.padStart(w)).join("")).join("\n");
}

/** Fails with the fix when `source` is no model: missing, or a folder without the weights. */
async function checkSource(source: string, options: { raw: boolean }): Promise<void> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(source);
  } catch {
    throw new CliError(
      `no model at ${source}: pass a weights folder (config.json + model.safetensors) or a ` +
        `training checkpoint (runs/NAME/checkpoint.safetensors from \`deno task train\`)`,
    );
  }
  if (stat.isDirectory) {
    const missing = [];
    for (const f of ["model.safetensors", "config.json"]) {
      if (!(await exists(`${source}/${f}`))) missing.push(f);
    }
    if (missing.length) {
      throw new CliError(
        `no trained model in ${source}/: ${missing.join(" and ")} ${
          missing.length > 1 ? "are" : "is"
        } missing (weights/ ships only classes.txt until the flagship run exports its weights). ` +
          `Train one with \`deno task train\` and evaluate its checkpoint ` +
          `(deno task eval runs/NAME/checkpoint.safetensors), export it into a folder with ` +
          `\`deno task convert --checkpoint ... --out DIR\`, or copy published weights into ` +
          `${source}/.`,
      );
    }
    if (options.raw) throw new CliError("--raw applies to checkpoints, not to a weights folder");
  }
}

/** A weights folder, a checkpoint, or a bare model.safetensors (config.json beside it). */
async function loadModel(source: string, options: { raw: boolean }): Promise<Loaded> {
  await checkSource(source, options);
  if ((await Deno.stat(source)).isDirectory) {
    const config = await readWeightsConfig(`${source}/config.json`);
    const model = await DiT.load(`${source}/model.safetensors`, { config: config.model });
    const step = config.training?.step;
    return {
      model,
      label: `${source}/` + (step !== undefined ? ` (step ${step})` : ""),
      vae: config.vae.name,
      steps: config.sampling.steps,
      ...recorded(config.training),
    };
  }
  if (!(await isCheckpoint(source))) {
    if (options.raw) throw new CliError("--raw applies to checkpoints, not to model weights");
    const dir = source.includes("/") ? source.replace(/\/[^/]*$/, "") : ".";
    const config = await readWeightsConfig(`${dir}/config.json`);
    return {
      model: await DiT.load(source, { config: config.model }),
      label: source,
      vae: config.vae.name,
      steps: config.sampling.steps,
    };
  }
  const { model, info } = await checkpointWeights(source, { raw: options.raw });
  const dir = source.includes("/") ? source.replace(/\/[^/]*$/, "") : ".";
  // No run.json (or a damaged one): the cache's metadata decides the VAE.
  const run = await new RunFolder(dir).readInfo().catch(() => null);
  return {
    model,
    label: `${source} (step ${info.step}, ${options.raw ? "raw" : "EMA"})`,
    vae: run?.latentMetadata?.vae,
    ...recorded({ data: run?.data, heldOutFraction: run?.heldOutFraction }),
  };
}

/** The data files and held-out share a run recorded (run.json, config.json's training). */
function recorded(training?: Record<string, unknown>): { data?: string[]; fraction?: number } {
  const out: { data?: string[]; fraction?: number } = {};
  const data = training?.data;
  if (Array.isArray(data) && data.length && data.every((d) => typeof d === "string")) {
    out.data = data;
  }
  const f = training?.heldOutFraction;
  if (typeof f === "number" && f > 0 && f < 1) out.fraction = f;
  return out;
}

/** Fails with the fix when a cache is missing or listed twice. */
async function checkData(paths: string[], options: { given: boolean }): Promise<void> {
  if (paths.length === 0) throw new CliError("--data needs at least one latent cache file");
  if (new Set(paths).size !== paths.length) {
    throw new CliError(`a latent cache is listed twice in --data: ${paths.join(", ")}`);
  }
  for (const p of paths) {
    if (!(await exists(p))) {
      throw new CliError(
        `no latent cache at ${p}. ` +
          (options.given
            ? "Check the path (--data takes comma-separated cache files)."
            : "Make one with `deno task encode`, or pass --data with the caches the model " +
              "trained on."),
      );
    }
  }
}

async function loadNames(path: string): Promise<ClassNames | null> {
  try {
    return await ClassNames.load(path);
  } catch {
    return null; // captions fall back to "class N"
  }
}

if (import.meta.main) runMain(main);
