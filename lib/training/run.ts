/**
 * A training run on disk: the one owner of the run folder, `run.json`, the `log.jsonl` format and
 * the training ledger, and the loop that ties trainer, checkpoints, logs and sample grids together
 * (used by `deno task train` and notebook 02 alike).
 *
 * A run folder holds:
 * - `checkpoint.safetensors`: the latest resumable state (see `checkpoint.ts`);
 * - `run.json`: what the run trains on ({@link RunInfo}), with one entry per data phase;
 * - `log.jsonl`: one JSON line per logged step ({@link LogRecord});
 * - `ledger.jsonl`: one JSON line per session ("slot") that trained it ({@link LedgerEntry});
 * - `samples/step_NNNNNN.png`: sample grids from the EMA weights;
 * - `export/` (or another folder): the exported weights (`model.safetensors`, `config.json`,
 *   `classes.txt`, `samples.png`).
 *
 * @module
 */

import type * as tf from "@tensorflow/tfjs-core";
import {
  type Autoencoder,
  type AutoencoderKind,
  AUTOENCODERS,
} from "../autoencoders/autoencoder.ts";
import type { DiT } from "../model/dit.ts";
import { deviceName } from "../runtime/backend.ts";
import { randomNoise, sample } from "../model/flow.ts";
import { makeGrid } from "../io/image.ts";
import { loadAutoencoder } from "../autoencoders/load.ts";
import { exists, removeStaleTemps, writeFileAtomic } from "../io/fs.ts";
import type { LatentDataset } from "../data/latents.ts";
import { NonFiniteLossError, type StepInfo, type TrainConfig, Trainer } from "./trainer.ts";
import { type JoinedLatents, loadLatentFiles } from "./data.ts";
import { checkpointInfo } from "./checkpoint.ts";
import { exportCheckpoint } from "./export.ts";
import {
  evaluationGrid,
  HELD_OUT_FRACTION,
  heldOutSplit,
  type LatentSplit,
  selectLatents,
  validationLoss,
} from "./eval.ts";

// ---------------------------------------------------------------- cadence

/** How often a preset checkpoints, samples and logs, and how long its sample grids sample. */
export interface Cadence {
  /** Checkpoint every N steps. */
  ckptEvery: number;
  /** Sample grid every N steps (0 = never). */
  sampleEvery: number;
  /** Heun steps of a sample grid. */
  sampleSteps: number;
  /** Validation loss every N steps (0 = never). */
  evalEvery: number;
  /** Held-out latents each validation uses (0 = all; fewer is quicker, still a fixed set). */
  evalItems: number;
}

/** Default cadence of each training preset (flags override it). */
export const PRESET_CADENCE: Readonly<Record<string, Cadence>> = Object.freeze({
  anthos: { ckptEvery: 1000, sampleEvery: 5000, sampleSteps: 50, evalEvery: 1000, evalItems: 0 },
  // A grid costs 2 x steps forward passes of 2 x 8 latents: keep it short beside 300 steps.
  smoke: { ckptEvery: 100, sampleEvery: 100, sampleSteps: 20, evalEvery: 100, evalItems: 32 },
});

// ---------------------------------------------------------------- run.json

/** One data phase of a run: from `startStep` on, it trains on `data`. */
export interface Phase {
  /** 0 for the first phase. */
  index: number;
  /** The step at which the phase began. */
  startStep: number;
  /** Latent cache files, in order. */
  data: string[];
  /** Latents trained on in this phase. */
  trainCount: number;
  /** Latents held out for validation in this phase. */
  heldOutCount?: number;
  /** When the phase began (ISO date). */
  started: string;
}

/** What a run folder remembers between sessions (`run.json`). */
export interface RunInfo {
  /** Training preset of the run. */
  preset: string;
  /** Latent cache files of the current phase. */
  data: string[];
  /** Autoencoder of the sample grids, if chosen. */
  vae?: string;
  /** Local autoencoder files, if given. */
  vaeDir?: string;
  /** Metadata of the first cache (names the VAE and scaling factor). */
  latentMetadata: Record<string, string>;
  /** Train on the first N latents only. */
  limit?: number;
  /** Share of the photos held out for validation (eval.ts's rule; default 2%). */
  heldOutFraction?: number;
  /** The data phases, oldest first. */
  phases: Phase[];
}

/** One line of `log.jsonl`. */
export interface LogRecord {
  /** Steps done. */
  step: number;
  /** Training loss of the step's batch. */
  loss: number;
  /** Gradient norm before clipping. */
  gradNorm?: number;
  /** Learning rate of the step. */
  lr?: number;
  /** Training seconds since the run began (all sessions). */
  time?: number;
  /** Seconds the step took. */
  stepSec?: number;
  /** Validation loss of the raw weights after this step, when measured. */
  valLoss?: number;
  /** Validation loss per t-bucket, when measured. */
  valBuckets?: number[];
}

/** One line of the training ledger (`ledger.jsonl`): a session that trained the run. */
export interface LedgerEntry {
  /** 1 for the first session. */
  slot: number;
  /** When the session ended (ISO date). */
  date: string;
  /** tfjs backend. */
  backend: string;
  /** The GPU adapter, or "cpu". */
  device: string;
  /** Data phase index. */
  phase: number;
  /** Step at the start of the session. */
  stepsFrom: number;
  /** Step at the end. */
  stepsTo: number;
  /** Training throughput of the session. */
  stepsPerSec: number;
  /** Seconds of training. */
  seconds: number;
  /** Validation loss of the EMA weights at the end, if measured. */
  valLoss: number | null;
  /** Why the session ended. */
  stop: StopReason;
}

/** The file names of a run folder. */
export class RunFolder {
  /** The folder. */
  readonly dir: string;
  /** The resumable state. */
  readonly checkpoint: string;
  /** `run.json`. */
  readonly info: string;
  /** `log.jsonl`. */
  readonly log: string;
  /** `ledger.jsonl`. */
  readonly ledger: string;
  /** Sample grids. */
  readonly samples: string;

  /** The file names of the run folder `dir` (nothing is read or made). */
  constructor(dir: string) {
    this.dir = dir.replace(/\/+$/, "") || ".";
    this.checkpoint = `${this.dir}/checkpoint.safetensors`;
    this.info = `${this.dir}/run.json`;
    this.log = `${this.dir}/log.jsonl`;
    this.ledger = `${this.dir}/ledger.jsonl`;
    this.samples = `${this.dir}/samples`;
  }

  /** The sample grid of step `step`. */
  sampleFile(step: number): string {
    return `${this.samples}/step_${String(step).padStart(6, "0")}.png`;
  }

  /** Reads `run.json` (older single-file runs are read as one phase); null when absent. */
  async readInfo(): Promise<RunInfo | null> {
    let raw: Record<string, unknown>;
    try {
      raw = JSON.parse(await Deno.readTextFile(this.info));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return null;
      throw new Error(
        `${this.info} is damaged (${(e as Error).message}): delete it and name the data again`,
      );
    }
    const data = typeof raw.data === "string" ? [raw.data] : (raw.data as string[]) ?? [];
    const phases = (raw.phases as Phase[] | undefined) ??
      [{ index: 0, startStep: 0, data, trainCount: 0, started: "" }];
    return { ...(raw as unknown as RunInfo), data, phases };
  }

  /** Writes `run.json` atomically. */
  async writeInfo(info: RunInfo): Promise<void> {
    await writeFileAtomic(this.info, JSON.stringify(info, null, 2) + "\n");
  }

  /**
   * The provenance of the run's state at `step` as recorded on disk (`info` = its `run.json`, the
   * ledger line that ended at `step`, the log's validation at `step`), for exporting a checkpoint
   * after the session that wrote it, e.g. one trained on a GPU machine and copied here.
   */
  async provenance(
    info: RunInfo,
    at: { step: number; batchSize: number },
  ): Promise<TrainingProvenance> {
    const { step, batchSize } = at;
    const slot = (await readLedger(this.ledger)).findLast((l) => l.stepsTo === step);
    const logged = (await readLog(this.log)).findLast((r) => r.step === step && r.valBuckets);
    return trainingProvenance(info, {
      step,
      batchSize,
      backend: slot?.backend ?? null,
      device: slot?.device ?? null,
      valLoss: slot?.valLoss ?? logged?.valLoss ?? null,
      valBuckets: logged?.valBuckets ?? null,
      run: this.dir,
    });
  }
}

/** `config.json`'s `training` provenance, beyond the recipe that the export writes itself. */
export interface TrainingProvenance extends Record<string, unknown> {
  preset: string;
  data: string[];
  samplesSeen: number;
  phase: number;
  phases: { startStep: number; data: string[] }[];
  backend: string | null;
  device: string | null;
  valLoss: number | null;
  valBuckets: number[] | null;
  heldOutFraction: number;
  run: string;
}

/** What a session knows beyond `run.json`: where the run stands and what measured it. */
interface SessionFacts {
  step: number;
  batchSize: number;
  backend: string | null;
  device: string | null;
  valLoss: number | null;
  valBuckets: number[] | null;
  run: string;
}

/** The one place that lays out the provenance (the live session and a later export share it). */
function trainingProvenance(info: RunInfo, s: SessionFacts): TrainingProvenance {
  const phase = info.phases.findLast((p) => p.startStep <= s.step) ?? info.phases[0];
  return {
    preset: info.preset,
    data: info.data,
    samplesSeen: s.step * s.batchSize,
    phase: phase?.index ?? 0,
    phases: info.phases.map((p) => ({ startStep: p.startStep, data: p.data })),
    backend: s.backend,
    device: s.device,
    valLoss: s.valLoss,
    valBuckets: s.valBuckets,
    heldOutFraction: info.heldOutFraction ?? HELD_OUT_FRACTION,
    run: s.run,
  };
}

// ---------------------------------------------------------------- log.jsonl

/**
 * Reads a `log.jsonl` training log; blank lines and a line torn by a kill are skipped.
 *
 * @example
 * ```ts
 * import { readLog } from "./run.ts";
 * const lines = await readLog("runs/smoke/log.jsonl");
 * console.log(lines.at(-1)?.loss);
 * ```
 */
export async function readLog(path: string): Promise<LogRecord[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  return parseLog(text);
}

function parseLog(text: string): LogRecord[] {
  const out: LogRecord[] = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    try {
      const v = JSON.parse(line);
      if (typeof v.step === "number" && typeof v.loss === "number") out.push(v);
    } catch {
      // a line cut short by a killed run
    }
  }
  return out;
}

/** Appends records to `log.jsonl`, buffered so that fast steps do not cost a write each. */
export class TrainingLog {
  /** The log file. */
  readonly path: string;
  /** Training seconds logged before this session (the `time` of the last kept line). */
  readonly timeOffset: number;
  #buf = "";

  private constructor(path: string, timeOffset: number) {
    this.path = path;
    this.timeOffset = timeOffset;
  }

  /**
   * Opens a log for appending. Lines after `step` (logged by a session killed before its next
   * checkpoint) are dropped, since those steps will run again; `fresh` empties the log.
   */
  static async open(
    path: string,
    options: { step: number; fresh?: boolean },
  ): Promise<TrainingLog> {
    let text = "";
    try {
      text = options.fresh ? "" : await Deno.readTextFile(path);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    const kept = parseLog(text).filter((r) => r.step <= options.step);
    const out = kept.map((r) => JSON.stringify(r) + "\n").join("");
    if (out !== text || options.fresh) await writeFileAtomic(path, out);
    return new TrainingLog(path, kept.at(-1)?.time ?? 0);
  }

  /** Adds a record (written at the next {@link flush}, or now when the buffer is large). */
  async append(record: LogRecord, options: { flush?: boolean } = {}): Promise<void> {
    this.#buf += JSON.stringify(record) + "\n";
    if (options.flush || this.#buf.length > 4096) await this.flush();
  }

  /** Writes the buffered records. */
  async flush(): Promise<void> {
    if (!this.#buf) return;
    const buf = this.#buf;
    this.#buf = "";
    await Deno.writeTextFile(this.path, buf, { append: true });
  }
}

/**
 * Reads the training ledger of a run (one entry per session).
 *
 * @example
 * ```ts
 * import { readLedger } from "./run.ts";
 * for (const e of await readLedger("runs/anthos/ledger.jsonl")) console.log(e.slot, e.stepsTo);
 * ```
 */
export async function readLedger(path: string): Promise<LedgerEntry[]> {
  try {
    return (await Deno.readTextFile(path)).split("\n").filter((l) => l.trim()).map((l) =>
      JSON.parse(l)
    );
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw new Error(`${path} is damaged (${(e as Error).message}): fix or remove the bad line`);
  }
}

// ---------------------------------------------------------------- the run

/** A setting given to a resumed run that differs from the run's own. */
export class RunChangedError extends Error {
  /** The error's name. */
  override name = "RunChangedError";
  /** The settings that differ (keys of {@link OpenRunOptions}' `fixed`). */
  readonly keys: string[];

  /** An error naming the changed settings `keys` of the run in `dir`. */
  constructor(keys: string[], dir: string) {
    super(
      `a resumed run continues exactly as it was configured; ${keys.join(", ")} cannot change ` +
        `now. Drop ${keys.length > 1 ? "them" : "it"} (only steps may grow), or start a new run ` +
        `in another folder than ${dir}.`,
    );
    this.keys = keys;
  }
}

/** Settings fixed for the life of a run. */
export interface FixedSettings {
  /** Training preset. */
  preset?: string;
  /** Model preset. */
  model?: string;
  /** Global batch. */
  batchSize?: number;
  /** Peak learning rate. */
  lr?: number;
  /** Warmup steps. */
  warmupSteps?: number;
  /** Seed. */
  seed?: number;
  /** Latent limit. */
  limit?: number;
}

/** Options of {@link TrainingRun.open}. */
export interface OpenRunOptions {
  /** Continue the run in the folder (it must hold a checkpoint). */
  resume?: boolean;
  /** Training preset of a new run (default "anthos"). */
  preset?: string;
  /** Latent caches; default: the run's own (resume). More files on resume start a new phase. */
  data?: string[];
  /** Settings given by the user: on resume they must equal the run's. */
  fixed?: FixedSettings;
  /**
   * Largest chunk per forward/backward: a new run's own, and this session's on a resume (it sets
   * memory, not the maths: {@link Trainer.microBatch}), so it is not one of the fixed settings.
   */
  microBatch?: number;
  /** Total steps (may grow on resume). */
  steps?: number;
  /** Other overrides of the preset for a new run. */
  overrides?: Partial<TrainConfig>;
  /** Autoencoder of the sample grids, remembered in run.json. */
  vae?: string;
  /** Local autoencoder files, remembered in run.json. */
  vaeDir?: string;
  /** A new run's held-out share of the photos (default eval.ts's 2%); kept for its life. */
  heldOutFraction?: number;
}

/** Why a training session ended. */
export type StopReason = "done" | "time" | "signal" | "nonfinite";

/** Options of {@link TrainingRun.train}. */
export interface TrainLoopOptions {
  /** Checkpoint every N steps (0 = only at the end). */
  ckptEvery?: number;
  /** Sample grid every N steps (needs `sampleGrid`; 0 = never). */
  sampleEvery?: number;
  /** A log line every N steps (default 1). */
  logEvery?: number;
  /** Validation loss of the raw weights every N steps, logged beside the loss (0 = never). */
  evalEvery?: number;
  /** Held-out latents per validation (default all). */
  evalItems?: number;
  /** Stop, with a checkpoint, at the first step that ends after this time (`Date.now()` ms). */
  deadline?: number;
  /** Stop, with a checkpoint, after the current step once this aborts. */
  signal?: AbortSignal;
  /** Makes a sample grid (PNG) from the EMA weights. */
  sampleGrid?: (ema: DiT) => Promise<Uint8Array>;
  /** Storage of the checkpoint's AdamW moments (default F32, bit-exact resume). */
  moments?: "F32" | "F16";
  /** Called after every step (after its log record is made). */
  onStep?: (info: StepInfo, record: LogRecord) => void | Promise<void>;
  /** Messages worth showing (checkpoints, grids, stops). */
  onEvent?: (message: string) => void;
}

/** What {@link TrainingRun.train} did. */
export interface LoopResult {
  /** Why it stopped. */
  reason: StopReason;
  /** Step at the start. */
  fromStep: number;
  /** Step at the end. */
  step: number;
  /** Step of the checkpoint on disk, or null when none was ever written. */
  savedAt: number | null;
  /** Seconds of training. */
  seconds: number;
  /** The non-finite loss error, when that stopped it. */
  error?: NonFiniteLossError;
}

/** Options of {@link TrainingRun.finish}. */
export interface FinishOptions {
  /** Where the weights folder goes (default `<run>/export`). */
  exportDir?: string;
  /** The backend and device, for the provenance and the ledger. */
  backend: { name: string; adapter?: string; webgpu?: string };
  /** A `classes.txt` to copy into the weights folder. */
  classesFile?: string;
  /** Makes the `samples.png` of the weights folder from the EMA weights. */
  sampleGrid?: (ema: DiT) => Promise<Uint8Array>;
  /** Measure the validation loss of the EMA weights (default true when latents are held out). */
  evaluate?: boolean;
  /** Held-out latents it uses (default all). */
  evalItems?: number;
  /** The session's result (ledger line). */
  result: LoopResult;
}

/** What {@link TrainingRun.finish} wrote. */
export interface FinishResult {
  /** The weights folder. */
  exportDir: string;
  /** Validation loss of the EMA weights, if measured. */
  valLoss: number | null;
  /** The ledger line. */
  ledger: LedgerEntry;
  /** Whether a classes.txt was copied. */
  classes: boolean;
  /** Path of samples.png, if made. */
  samples: string | null;
  /** One line: throughput, where the weights went, the ledger. */
  summary: string;
}

/**
 * A training run: its folder, its data, its trainer. Open one, train, finish (export + ledger).
 *
 * @example
 * ```ts
 * import { TrainingRun } from "./run.ts";
 * const run = await TrainingRun.open("runs/smoke", {
 *   preset: "smoke",
 *   data: ["runs/latents-taesd.safetensors"],
 * });
 * const result = await run.train({ ckptEvery: 100 });
 * await run.finish({ backend: { name: "wasm" }, result });
 * run.dispose();
 * ```
 */
export class TrainingRun {
  /** The folder's file names. */
  readonly folder: RunFolder;
  /** The run's `run.json`. */
  readonly info: RunInfo;
  /** The trainer (restored on resume). */
  readonly trainer: Trainer;
  /** All latents of the run's files. */
  readonly data: JoinedLatents;
  /** The latents trained on. */
  readonly trainSet: LatentDataset;
  /** Whether the run continued from a checkpoint. */
  readonly resumed: boolean;
  /** Whether this session began a new data phase. */
  readonly newPhase: boolean;
  /** Stale temp files removed when the run opened. */
  readonly removedTemps: string[];
  /** Which latents of {@link data} are trained on and which are held out. */
  readonly split: LatentSplit;

  private constructor(fields: {
    folder: RunFolder;
    info: RunInfo;
    trainer: Trainer;
    data: JoinedLatents;
    train: LatentDataset;
    resumed: boolean;
    newPhase: boolean;
    removedTemps: string[];
    split: LatentSplit;
  }) {
    this.folder = fields.folder;
    this.info = fields.info;
    this.trainer = fields.trainer;
    this.data = fields.data;
    this.trainSet = fields.train;
    this.resumed = fields.resumed;
    this.newPhase = fields.newPhase;
    this.removedTemps = fields.removedTemps;
    this.split = fields.split;
  }

  /** Opens a new run in `dir`, or resumes the one there. */
  static async open(dir: string, options: OpenRunOptions = {}): Promise<TrainingRun> {
    const folder = new RunFolder(dir);
    const removedTemps = await removeStaleTemps(folder.dir);
    const hasCkpt = await exists(folder.checkpoint);
    let info: RunInfo | null = null;
    const fixed = options.fixed ?? {};
    if (options.resume) {
      if (!hasCkpt) {
        throw new Error(
          `nothing to resume: ${folder.checkpoint} does not exist. Start the run without ` +
            `resuming (or point at the run folder).`,
        );
      }
      info = await folder.readInfo();
      const ck = await checkpointInfo(folder.checkpoint);
      const stored: Record<string, unknown> = {
        ...ck.trainConfig,
        preset: info?.preset,
        limit: info?.limit,
      };
      // A setting equal to the run's own is not a change (the documented resume command
      // repeats --preset).
      const changed = Object.entries(fixed)
        .filter(([k, v]) => v !== undefined && stored[k] !== v).map(([k]) => k);
      if (changed.length) throw new RunChangedError(changed, folder.dir);
    } else if (hasCkpt) {
      throw new Error(
        `${folder.dir} already holds a run (${folder.checkpoint}). Resume it, or choose another ` +
          `folder to start a new one.`,
      );
    }

    const files = options.data ?? info?.data;
    if (!files?.length) {
      throw new Error(`no latent cache given for the run in ${folder.dir}: name the data files`);
    }
    for (const f of files) {
      if (!(await exists(f))) throw new Deno.errors.NotFound(`no latent cache at ${f}`);
    }
    let newPhase = false;
    if (info && files.join(",") !== info.data.join(",")) {
      const kept = info.data.every((f, i) => files[i] === f);
      if (!kept) {
        throw new Error(
          `a resumed run can only add data: it trains on ${info.data.join(", ")}, so list those ` +
            `first (in that order) and the new files after them`,
        );
      }
      newPhase = true;
    }
    const limit = options.resume ? info?.limit : fixed.limit;
    const data = await loadLatentFiles(files, { limit });
    let trainer: Trainer | null = null;
    let train: LatentDataset | null = null;
    let split: LatentSplit;
    try {
      if (options.resume) {
        trainer = await Trainer.resume(
          folder.checkpoint,
          options.steps !== undefined ? { steps: options.steps } : {},
        );
      } else {
        trainer = new Trainer({
          preset: options.preset,
          ...options.overrides,
          ...(options.steps !== undefined ? { steps: options.steps } : {}),
          ...defined({
            model: fixed.model,
            batchSize: fixed.batchSize,
            microBatch: options.microBatch,
            lr: fixed.lr,
            warmupSteps: fixed.warmupSteps,
            seed: fixed.seed,
          }),
        });
      }
      // Asked for: this session's chunk size, even above wasm's default cap.
      if (options.microBatch !== undefined) trainer.microBatch = options.microBatch;
      checkLatents(trainer, data, files);
      // The held-out slice (eval.ts's rule: per photo, stable when files are added) never trains.
      const fraction = info ? info.heldOutFraction : options.heldOutFraction;
      split = heldOutSplit(data, fraction !== undefined ? { fraction } : {});
      train = split.heldOut.length ? selectLatents(data, split.train) : data;
      if (newPhase) trainer.beginPhase(train.labels.length);
      const preset = info?.preset ?? options.preset ?? "anthos";
      const phases = info?.phases ?? [];
      if (!info || newPhase) {
        phases.push({
          index: phases.length,
          startStep: trainer.step,
          data: files,
          trainCount: train.labels.length,
          heldOutCount: split.heldOut.length,
          started: new Date().toISOString(),
        });
      }
      const next: RunInfo = {
        preset,
        data: files,
        vae: options.vae ?? info?.vae,
        vaeDir: options.vaeDir ?? info?.vaeDir,
        latentMetadata: info?.latentMetadata ?? data.metadata,
        limit,
        heldOutFraction: split.fraction,
        phases,
      };
      await Deno.mkdir(folder.samples, { recursive: true });
      if (!info || newPhase || !options.resume) await folder.writeInfo(next);
      return new TrainingRun({
        folder,
        info: next,
        trainer,
        data,
        train,
        resumed: !!options.resume,
        newPhase,
        removedTemps,
        split,
      });
    } catch (e) {
      trainer?.dispose();
      if (train && train !== data) train.latents.dispose();
      data.latents.dispose();
      throw e;
    }
  }

  /** One line saying what this session trains, on what, from which step. */
  describe(backend: string): string {
    const t = this.trainer;
    const phase = this.newPhase ? ` (new phase ${this.phase.index})` : "";
    return `${this.resumed ? "resuming" : "training"} ${t.config.model} ` +
      `(${t.model.paramCount().toLocaleString("en")} params) on ${this.trainSet.labels.length} ` +
      `latents (${this.split.heldOut.length} more held out) from ${
        this.info.data.join(", ")
      }${phase}, ${backend} backend; step ${t.step}/` +
      `${t.config.steps}, batch ${t.config.batchSize}${
        t.microBatch < t.config.batchSize ? ` in chunks of ${t.microBatch}` : ""
      }, lr ${t.config.lr} -> ${this.folder.dir}` +
      this.removedTemps.map((f) => `\nremoved a stale temp file of a killed run: ${f}`).join("");
  }

  /**
   * The validation loss of `model` on the held-out latents (eval.ts's fixed grid of noise and t),
   * or null when nothing is held out.
   */
  async validate(
    model: DiT,
    options: { maxItems?: number } = {},
  ): Promise<{ loss: number; buckets: number[] } | null> {
    if (this.split.heldOut.length === 0) return null;
    const maxItems = options.maxItems || undefined;
    const r = await validationLoss(model, this.data, { split: this.split, maxItems });
    return { loss: r.loss, buckets: r.buckets };
  }

  /** The data phase this session trains in. */
  get phase(): Phase {
    return this.info.phases.at(-1)!;
  }

  /**
   * Trains until the configured steps, a deadline, a signal or a non-finite loss; checkpoints
   * on the way and at every stop (a non-finite loss keeps the last good checkpoint).
   */
  async train(options: TrainLoopOptions = {}): Promise<LoopResult> {
    const trainer = this.trainer;
    const total = trainer.config.steps;
    const fromStep = trainer.step;
    const log = await TrainingLog.open(this.folder.log, { step: fromStep, fresh: !this.resumed });
    const logEvery = options.logEvery ?? 1;
    const ckptEvery = options.ckptEvery ?? 0;
    const evalEvery = this.split.heldOut.length ? options.evalEvery ?? 0 : 0;
    const sampleEvery = options.sampleGrid ? options.sampleEvery ?? 0 : 0;
    trainer.readEvery = Math.max(1, logEvery);
    let savedAt: number | null = this.resumed ? fromStep : null;
    const t0 = performance.now();
    let last = t0;
    const save = async () => {
      await log.flush();
      await trainer.saveCheckpoint(this.folder.checkpoint, { moments: options.moments });
      savedAt = trainer.step;
    };
    const grid = async () => {
      const file = this.folder.sampleFile(trainer.step);
      const s0 = performance.now();
      await writeFileAtomic(file, await options.sampleGrid!(trainer.ema));
      options.onEvent?.(
        `step ${trainer.step}: samples -> ${file} (${
          ((performance.now() - s0) / 1000).toFixed(1)
        } s)`,
      );
    };
    let reason: StopReason = "done";
    let error: NonFiniteLossError | undefined;
    const timeUp = () => options.deadline !== undefined && Date.now() >= options.deadline;
    try {
      while (trainer.step < total) {
        if (options.signal?.aborted) {
          reason = "signal";
          break;
        }
        let s = await trainer.trainStep(this.trainSet);
        // webgpu reads the loss back every `readEvery` steps only; the last step is always read.
        if (!s.measured && s.step >= total) s = (await trainer.sync()) ?? s;
        const now = performance.now();
        const record: LogRecord = {
          step: s.step,
          loss: s.loss,
          gradNorm: s.gradNorm,
          lr: s.lr,
          time: round3(log.timeOffset + (now - t0) / 1000),
          stepSec: round3((now - last) / 1000),
        };
        last = now;
        const evalNow = evalEvery > 0 && (s.step % evalEvery === 0 || s.step === total);
        if (evalNow) {
          const v = await this.validate(trainer.model, { maxItems: options.evalItems });
          record.valLoss = v!.loss;
          record.valBuckets = v!.buckets;
        }
        if (s.measured && (s.step % logEvery === 0 || s.step === total || evalNow)) {
          // Flush often enough that `tail -f log.jsonl` is live, but not a write per fast step.
          await log.append(record, { flush: record.stepSec! > 0.5 || evalNow });
        }
        await options.onStep?.(s, record);
        if (s.step >= total) break;
        if (options.signal?.aborted) {
          reason = "signal";
          break;
        }
        if (timeUp()) {
          reason = "time";
          break;
        }
        if (ckptEvery > 0 && s.step % ckptEvery === 0) await save();
        if (sampleEvery > 0 && s.step % sampleEvery === 0) await grid();
      }
    } catch (e) {
      await log.flush();
      if (!(e instanceof NonFiniteLossError)) throw e;
      reason = "nonfinite";
      error = e;
    }
    await log.flush();
    if (reason !== "nonfinite" && savedAt !== trainer.step) await save();
    if (reason === "done" && sampleEvery > 0) await grid();
    const seconds = (performance.now() - t0) / 1000;
    return { reason, fromStep, step: trainer.step, savedAt, seconds, error };
  }

  /**
   * After a session: exports the EMA weights (with provenance in config.json and a samples.png),
   * and adds a line to the ledger.
   */
  async finish(options: FinishOptions): Promise<FinishResult> {
    const { result, backend } = options;
    const trainer = this.trainer;
    const exportDir = options.exportDir ?? `${this.folder.dir}/export`;
    const val = options.evaluate === false
      ? null
      : await this.validate(trainer.ema, { maxItems: options.evalItems });
    const meta = this.info.latentMetadata;
    const vaeName = (this.info.vae ?? meta.vae ?? "taesd") as AutoencoderKind;
    const known = AUTOENCODERS[vaeName];
    const scale = Number(meta.scaling_factor);
    const device = deviceName(backend);
    const exported = await exportCheckpoint(this.folder.checkpoint, exportDir, {
      latentMetadata: meta,
      ...(known
        ? {
          vae: {
            name: vaeName,
            scalingFactor: meta.vae === vaeName && scale > 0 ? scale : known.scalingFactor,
          },
        }
        : {}),
      training: {
        ...trainingProvenance(this.info, {
          step: trainer.step,
          batchSize: trainer.config.batchSize,
          backend: backend.name,
          device,
          valLoss: val?.loss ?? null,
          valBuckets: val?.buckets ?? null,
          run: this.folder.dir,
        }),
        phase: this.phase.index,
        heldOutFraction: this.split.fraction,
      },
      classesFile: options.classesFile,
    });
    const slots = await readLedger(this.folder.ledger);
    const steps = result.step - result.fromStep;
    const ledger: LedgerEntry = {
      slot: slots.length + 1,
      date: new Date().toISOString(),
      backend: backend.name,
      device,
      phase: this.phase.index,
      stepsFrom: result.fromStep,
      stepsTo: result.step,
      stepsPerSec: result.seconds > 0 ? round3(steps / result.seconds) : 0,
      seconds: round3(result.seconds),
      valLoss: val?.loss ?? null,
      stop: result.reason,
    };
    await Deno.writeTextFile(this.folder.ledger, JSON.stringify(ledger) + "\n", { append: true });
    // The grid last: it is the slow part, and the slot is on record without it.
    let samples: string | null = null;
    if (options.sampleGrid) {
      samples = `${exportDir}/samples.png`;
      await writeFileAtomic(samples, await options.sampleGrid(trainer.ema));
    }
    const files = ["model.safetensors", "config.json"];
    if (exported.classes) files.push("classes.txt");
    if (samples) files.push("samples.png");
    const summary = `${round3(result.seconds)} s of training at ${ledger.stepsPerSec} steps/s` +
      (val ? `, validation loss ${val.loss.toFixed(5)}` : "") +
      `; weights exported to ${exportDir} (${files.join(", ")}); ledger ${this.folder.ledger}`;
    return {
      exportDir,
      valLoss: val?.loss ?? null,
      ledger,
      classes: !!exported.classes,
      samples,
      summary,
    };
  }

  /** Frees the trainer and the data. */
  dispose(): void {
    this.trainer.dispose();
    if (this.trainSet !== this.data) this.trainSet.latents.dispose();
    this.data.latents.dispose();
  }
}

/**
 * A deadline `minutes` from now (for {@link TrainLoopOptions.deadline}); the time limit must be a
 * positive number of minutes (the clock starts when this is called).
 *
 * @example
 * ```ts
 * import { minutesFromNow } from "./run.ts";
 * const deadline = minutesFromNow(10); // stop after 10 minutes of this session
 * ```
 */
export function minutesFromNow(minutes: number): number {
  if (!(minutes > 0) || !Number.isFinite(minutes)) {
    throw new RangeError(`the time limit must be a positive number of minutes, got ${minutes}`);
  }
  return Date.now() + minutes * 60_000;
}

/**
 * What a session's end means, in one message: where the checkpoint is, or that none exists yet.
 *
 * @example
 * ```ts
 * import { stopMessage } from "./run.ts";
 * stopMessage({ reason: "time", fromStep: 0, step: 40, savedAt: 40, seconds: 60 }, "runs/a");
 * ```
 */
export function stopMessage(result: LoopResult, dir: string): string {
  const ckpt = new RunFolder(dir).checkpoint;
  switch (result.reason) {
    case "nonfinite":
      return `${result.error?.message}
` + (result.savedAt === null
        ? `no checkpoint was written yet (${ckpt} does not exist): the run starts over next time`
        : `the last checkpoint (step ${result.savedAt}) is kept at ${ckpt}`);
    case "signal":
      return `stopped at step ${result.step}: checkpoint saved to ${ckpt}; resume to continue`;
    case "time":
      return `time limit reached at step ${result.step}: checkpoint saved to ${ckpt}; resume ` +
        `to continue`;
    case "done":
      return `done: ${result.step} steps; checkpoint ${ckpt}`;
  }
}

/** What {@link loadSampleGrid} returns. */
export interface SampleGrids {
  /** The run's sample grid (its classes, noise seed 0). */
  grid: (ema: DiT) => Promise<Uint8Array>;
  /** The fixed evaluation grid of eval.ts (16 classes x 2), for a weights folder's samples.png. */
  evalGrid: (ema: DiT) => Promise<Uint8Array>;
  /** Frees the autoencoder. */
  dispose: () => void;
}

/**
 * Loads the autoencoder that decodes a run's sample grids and returns grid makers over it.
 *
 * @example
 * ```ts
 * import { loadSampleGrid } from "./run.ts";
 * import { DiT } from "../model/dit.ts";
 * const grids = await loadSampleGrid("taesd", { classes: [0, 17], steps: 2, dir: "../shared/weights/taesd" });
 * const png = await grids.grid(DiT.create());
 * grids.dispose();
 * ```
 */
export async function loadSampleGrid(
  vae: AutoencoderKind,
  options: {
    classes: readonly number[];
    steps: number;
    captions?: readonly string[];
    dir?: string;
    /** Class names by id, for the evaluation grid's captions. */
    classNames?: readonly string[];
  },
): Promise<SampleGrids> {
  const bad = options.classes.find((c) => !Number.isInteger(c) || c < 0);
  if (bad !== undefined || options.classes.length === 0) {
    throw new RangeError(`sample grid classes must be class ids 0, 1, ..., got ${options.classes}`);
  }
  let ae: Autoencoder;
  try {
    ae = await loadAutoencoder(vae, { dir: options.dir });
  } catch (e) {
    throw new Error(
      `${(e as Error).message}\n(the ${vae} autoencoder decodes the sample grids: give its ` +
        `folder, or train without sample grids)`,
    );
  }
  return {
    grid: (ema) => sampleGrid(ema, ae, options),
    evalGrid: async (ema) =>
      (await evaluationGrid(ema, ae, { steps: options.steps, classNames: options.classNames }))
        .png,
    dispose: () => ae.dispose(),
  };
}

/**
 * A grid of EMA samples (Heun, CFG 4.0, noise seed 0), decoded by `vae`, as PNG bytes.
 *
 * @example
 * ```ts
 * import { sampleGrid } from "./run.ts";
 * import { DiT } from "../model/dit.ts";
 * import { loadAutoencoder } from "../autoencoders/load.ts";
 * const vae = await loadAutoencoder("taesd", { dir: "../shared/weights/taesd" });
 * const png = await sampleGrid(DiT.create(), vae, { classes: [0, 17], steps: 2 });
 * ```
 */
export async function sampleGrid(
  model: DiT,
  vae: Autoencoder,
  options: { classes: readonly number[]; steps: number; captions?: readonly string[] },
): Promise<Uint8Array> {
  const c = model.config;
  const { classes } = options;
  const noise = randomNoise(classes.length, {
    seed: 0,
    shape: [c.inputSize, c.inputSize, c.inChannels],
  }); // [N, h, w, c]
  let z: tf.Tensor4D | null = null;
  let rgb: tf.Tensor4D | null = null;
  try {
    z = await sample(model, noise, [...classes], {
      steps: options.steps,
      cfgScale: 4.0,
      sampler: "heun",
    });
    rgb = vae.decode(z); // [N, 8h, 8w, 3]
    const captions = options.captions ? [...options.captions] : classes.map((id) => `class ${id}`);
    return await makeGrid(rgb, { cols: Math.min(4, classes.length), captions });
  } finally {
    noise.dispose();
    z?.dispose();
    rgb?.dispose();
  }
}

function checkLatents(trainer: Trainer, data: LatentDataset, files: string[]): void {
  const mc = trainer.model.config;
  const [, h, w, ch] = data.latents.shape;
  if (h !== mc.inputSize || w !== mc.inputSize || ch !== mc.inChannels) {
    throw new Error(
      `${files.join(", ")} hold latents [${h}, ${w}, ${ch}] but the model ` +
        `${trainer.config.model} takes [${mc.inputSize}, ${mc.inputSize}, ${mc.inChannels}]. ` +
        `Use a cache encoded for this model (256x256 photos give 32x32x4), or the matching model.`,
    );
  }
  const bad = data.labels.find((l) => l < 0 || l >= mc.numClasses);
  if (bad !== undefined) {
    throw new Error(`${files.join(", ")} hold label ${bad}, outside 0..${mc.numClasses - 1}`);
  }
}

function defined<T extends Record<string, unknown>>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}
