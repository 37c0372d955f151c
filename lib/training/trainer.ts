/**
 * The trainer: rectified-flow training of a DiT exactly as the published recipe (MODEL.md):
 * logit-normal t, class dropout 0.1, AdamW (0.9, 0.95, eps 1e-8, wd 0), lr 1e-4 with a 1,000-step
 * linear warmup, global-norm clipping 1.0, EMA 0.9999 — with checkpoints that resume bit for bit.
 *
 * The latent set lives on the backend's device; each step gathers its batch there from a seeded
 * per-epoch permutation (the original's "GPU latent loader"). All randomness of step k comes
 * from `Rng(seed, k)`, so a run is a pure function of (seed, data, step) and resuming only needs
 * the step number and the saved weights, EMA and optimizer moments.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { DiT, type DiTConfig, nullClassId, PRESETS } from "../model/dit.ts";
import { disposeBatch, type FlowBatch, flowBatch, flowLoss } from "../model/flow.ts";
import type { LatentDataset } from "../data/latents.ts";
import { checkSeed, deriveSeed, Rng } from "../runtime/rng.ts";
import {
  type DataOrder,
  readCheckpoint,
  type TrainingState,
  writeCheckpoint,
  type WriteCheckpointOptions,
} from "./checkpoint.ts";
import { adamwOnHeap } from "./adamw_heap.ts";
import { DeviceAdamW, deviceAdamWSupported } from "./optimizer_webgpu.ts";

// ---------------------------------------------------------------- configuration

/** Training hyper-parameters. Defaults are the published Anthos run. */
export interface TrainConfig {
  /** Model preset name from {@link PRESETS}. */
  model: string;
  /** Global batch size. */
  batchSize: number;
  /** Largest chunk run through the model at once; gradients are accumulated over chunks. */
  microBatch: number;
  /** Total optimizer steps. */
  steps: number;
  /** Peak learning rate. */
  lr: number;
  /** Linear warmup length in steps (lr rises from 0). */
  warmupSteps: number;
  /** AdamW betas. */
  betas: [number, number];
  /** AdamW epsilon. */
  eps: number;
  /** AdamW decoupled weight decay. */
  weightDecay: number;
  /** Clip gradients to this global L2 norm. */
  gradClip: number;
  /** EMA decay of the trainable weights. */
  emaDecay: number;
  /** Probability of replacing a label with the null class. */
  classDropout: number;
  /** Seed of everything random (init, data order, t, noise, dropout). */
  seed: number;
}

/**
 * The largest micro-batch a {@link Trainer} runs on the wasm backend unless told otherwise: its
 * heap is one 4 GiB WebAssembly memory, and a DiT-Nano/2 pass over 64 samples does not finish
 * (measured 2026-11-27: no step in 150 s, where one at 32 takes 13 s and at 40 16 s, first step
 * included); so the `anthos` run (micro-batch 256, made for GPUs) trains on wasm in chunks of 32.
 */
export const WASM_MICRO_BATCH = 32;

/** Named training presets: `anthos` (the published run) and `smoke` (a short CPU run). */
export const TRAIN_PRESETS: Readonly<Record<string, TrainConfig>> = Object.freeze({
  anthos: {
    model: "DiT-Nano/2",
    batchSize: 256,
    microBatch: 256,
    steps: 120_000,
    lr: 1e-4,
    warmupSteps: 1_000,
    betas: [0.9, 0.95],
    eps: 1e-8,
    weightDecay: 0,
    gradClip: 1.0,
    emaDecay: 0.9999,
    classDropout: 0.1,
    seed: 0,
  },
  // A few hundred steps at small batch: shows the loss falling on a CPU in minutes.
  smoke: {
    model: "DiT-Nano/2",
    batchSize: 16,
    microBatch: 16,
    steps: 300,
    lr: 1e-3,
    warmupSteps: 30,
    betas: [0.9, 0.95],
    eps: 1e-8,
    weightDecay: 0,
    gradClip: 1.0,
    emaDecay: 0.99,
    classDropout: 0.1,
    seed: 0,
  },
});

/** What one step reports. */
export interface StepInfo {
  /** Steps done so far (1 after the first update). */
  step: number;
  /** Mean loss of the batch. */
  loss: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  /** Learning rate used for this update. */
  lr: number;
  /**
   * Whether `loss` and `gradNorm` were read from the device at this step. On webgpu they are
   * read every {@link Trainer.readEvery} steps only (NaN in between); elsewhere always.
   */
  measured: boolean;
}

/**
 * Learning rate for the update that makes step `step` (1-based): linear warmup, then constant.
 *
 * @example
 * ```ts
 * import { learningRate } from "./trainer.ts";
 * learningRate(500, { lr: 1e-4, warmupSteps: 1000 }); // 5e-5
 * ```
 */
export function learningRate(
  step: number,
  config: Pick<TrainConfig, "lr" | "warmupSteps">,
): number {
  return config.warmupSteps > 0 ? config.lr * Math.min(1, step / config.warmupSteps) : config.lr;
}

/**
 * A non-finite loss: training stops and the last checkpoint stays as it was.
 *
 * @example
 * ```ts
 * import { NonFiniteLossError, Trainer } from "./trainer.ts";
 * import { loadLatents } from "../data/latents.ts";
 * try {
 *   await new Trainer({ preset: "smoke" }).fit(await loadLatents("runs/latents.safetensors"));
 * } catch (e) {
 *   if (e instanceof NonFiniteLossError) console.error(e.message);
 * }
 * ```
 */
export class NonFiniteLossError extends Error {
  /** The error's name. */
  override name = "NonFiniteLossError";
}

// ---------------------------------------------------------------- trainer

/**
 * Trains a DiT on a latent dataset with AdamW, clipping, warmup and EMA.
 *
 * @example
 * ```ts
 * import { Trainer } from "./trainer.ts";
 * import { loadLatents } from "../data/latents.ts";
 * const data = await loadLatents("runs/latents.safetensors");
 * const trainer = new Trainer({ preset: "smoke", steps: 100 });
 * await trainer.fit(data, { onStep: (s) => console.log(s.step, s.loss) });
 * await trainer.ema.save("weights/model.safetensors");
 * ```
 */
export class Trainer {
  /** The resolved configuration. */
  readonly config: TrainConfig;
  /** The model being trained. */
  readonly model: DiT;
  /** EMA of the model's trainable weights (its position table is the model's). */
  readonly ema: DiT;
  /** Updates done so far. */
  step = 0;
  /**
   * webgpu: read the loss and gradient norm back every this many steps (each readback waits for
   * the GPU, ≥ 10 ms in Deno). Set it to the logging interval. Other backends read every step.
   */
  readEvery = 1;
  /**
   * This session's largest chunk per forward/backward: `config.microBatch`, but at most
   * {@link WASM_MICRO_BATCH} on the wasm backend unless set. It sets memory only (the chunks'
   * gradients are summed: results agree to float rounding, not bit for bit), so a resumed run may
   * use another without changing the run; a run made for a GPU (micro-batch 256) trains on wasm in
   * chunks of 32 and keeps its own. Not saved.
   */
  get microBatch(): number {
    if (this.#microBatch !== undefined) return this.#microBatch;
    const mb = this.config.microBatch;
    return tf.getBackend() === "wasm" ? Math.min(mb, WASM_MICRO_BATCH) : mb;
  }
  set microBatch(n: number) {
    if (!Number.isInteger(n) || n < 1) {
      throw new Error(`microBatch must be a positive integer, got ${n}`);
    }
    this.#microBatch = n;
  }
  #microBatch: number | undefined;
  #device: DeviceAdamW | null | undefined;
  #lastLr: [number, number] = [0, 0]; // [step, lr] of the latest device step
  /** Where the current data order began and over how many latents (see {@link batchIndices}). */
  dataOrder: DataOrder = { startStep: 0, size: null };
  #m: tf.Variable[];
  #v: tf.Variable[];
  #vars: tf.Variable[];
  #emaVars: tf.Variable[];

  /** Creates a trainer; `preset` picks the base ("anthos" by default), the rest overrides it. */
  constructor(
    options: Partial<TrainConfig> & {
      preset?: string;
      modelConfig?: Partial<DiTConfig>;
      /** Start from these weights instead of a fresh init (the trainer takes ownership). */
      init?: DiT;
      /**
       * Continue from this state (see {@link Trainer.resume}); the trainer takes ownership of
       * its models and moments. Its configuration is the base the other options override.
       */
      restore?: TrainingState;
    } = {},
  ) {
    const { preset = "anthos", modelConfig, init, restore, ...rest } = options;
    const base = restore ? restore.trainConfig as unknown as TrainConfig : TRAIN_PRESETS[preset];
    if (!base) {
      throw new Error(
        `unknown training preset "${preset}": use one of ${Object.keys(TRAIN_PRESETS).join(", ")}`,
      );
    }
    const config: TrainConfig = { ...base, ...rest };
    if (options.batchSize !== undefined && options.microBatch === undefined) {
      config.microBatch = Math.min(base.microBatch, config.batchSize);
    }
    validate(config);
    this.config = config;
    const arch = PRESETS[config.model];
    if (!arch && !restore) {
      throw new Error(
        `unknown model preset "${config.model}": use one of ${Object.keys(PRESETS).join(", ")}`,
      );
    }
    if (restore) {
      this.model = restore.model;
      this.ema = restore.ema;
      this.step = restore.step;
      this.dataOrder = { ...restore.dataOrder };
    } else {
      this.model = init ?? DiT.create({ ...arch, ...modelConfig }, { seed: config.seed });
      this.ema = this.model.clone();
    }
    this.#vars = this.model.trainableVariables();
    this.#emaVars = this.ema.trainableVariables();
    const moments = (from: readonly tf.Tensor[] | undefined) =>
      this.#vars.map((v, i) => {
        const init = from?.[i] ?? tf.zerosLike(v);
        const out = tf.variable(init, false);
        init.dispose();
        return out;
      });
    this.#m = moments(restore?.adamM);
    this.#v = moments(restore?.adamV);
  }

  /**
   * Starts a new data-order phase at the current step over `size` latents (more data arrived):
   * from here on, batches are drawn from permutations of the new set.
   */
  beginPhase(size: number): void {
    this.dataOrder = { startStep: this.step, size };
  }

  /**
   * The data indices of step `step` (0-based): consecutive slices of a stream of per-epoch
   * permutations, each drawn from the seed, the epoch number and the phase's first step alone.
   */
  batchIndices(step: number, datasetSize: number): Int32Array {
    const b = this.config.batchSize;
    const start = this.dataOrder.startStep;
    // Phase 0 keeps the original stream; a later phase gets its own (new data, new order).
    const seed = start === 0 ? this.config.seed : deriveSeed(this.config.seed, 0xda7a, start);
    const out = new Int32Array(b);
    let perm: Int32Array | null = null;
    let permEpoch = -1;
    for (let i = 0; i < b; i++) {
      const g = (step - start) * b + i;
      const epoch = Math.floor(g / datasetSize);
      if (epoch !== permEpoch) {
        perm = new Rng(deriveSeed(seed, 0x5eed, epoch)).permutation(datasetSize);
        permEpoch = epoch;
      }
      out[i] = perm![g % datasetSize];
    }
    return out;
  }

  /**
   * Runs one optimizer step on a batch drawn from `data`. Throws {@link NonFiniteLossError} on a
   * NaN/Inf loss before any weight changes.
   */
  async trainStep(data: LatentDataset): Promise<StepInfo> {
    const c = this.config;
    const n = data.latents.shape[0];
    if (this.dataOrder.size === null) this.dataOrder.size = n;
    if (n !== this.dataOrder.size) {
      throw new Error(
        `the training set has ${n} latents, but this run's data order was drawn over ` +
          `${this.dataOrder.size} (since step ${this.dataOrder.startStep}): resume on the same ` +
          `data, or call beginPhase(${n}) to start a new phase on the new set`,
      );
    }
    const idx = this.batchIndices(this.step, n);
    const rng = new Rng(deriveSeed(c.seed, 0x7a11, this.step));
    const labels = Int32Array.from(idx, (i) => data.labels[i]);
    const clean = tf.tidy(() => tf.gather(data.latents, tf.tensor1d(idx, "int32"))); // [B, H, W, C]
    const batch = flowBatch(clean, {
      y: labels,
      rng,
      classDropout: c.classDropout,
      nullId: nullClassId(this.model.config),
    });
    clean.dispose();
    try {
      return await this.stepOnBatch(batch);
    } finally {
      disposeBatch(batch);
    }
  }

  /**
   * One optimizer step on a prepared batch (x_t, t, y, v): loss, gradients (accumulated over
   * micro-batches), clipping, AdamW, EMA. `lr` overrides the schedule. The batch stays owned by
   * the caller.
   */
  async stepOnBatch(batch: FlowBatch, options: { lr?: number } = {}): Promise<StepInfo> {
    const device = this.#deviceOptimizer();
    const { loss, lossTensor, grads } = await this.#lossAndGrads(batch, device !== null);
    try {
      if (device) {
        // webgpu: clipping, AdamW and EMA in three dispatches; no readback in between reads.
        const lr = options.lr ?? learningRate(this.step + 1, this.config);
        device.step(grads, lossTensor!, { step: this.step + 1, lr });
        this.#lastLr = [this.step + 1, lr];
        this.step++;
        if (this.step % this.readEvery === 0) return (await this.sync())!;
        return { step: this.step, loss: NaN, gradNorm: NaN, lr, measured: false };
      }
      if (!Number.isFinite(loss)) {
        throw new NonFiniteLossError(
          `loss is ${loss} at step ${this.step + 1}: training stopped, weights unchanged ` +
            `(the last checkpoint is intact). Lower the learning rate or check the latents.`,
        );
      }
      const lr = options.lr ?? learningRate(this.step + 1, this.config);
      const gradNorm = await this.#applyAdamW(grads, lr);
      this.step++;
      return { step: this.step, loss, gradNorm, lr, measured: true };
    } finally {
      tf.dispose(lossTensor ? [lossTensor, ...grads] : grads);
    }
  }

  /**
   * webgpu: reads what the device recorded since the last read (one readback) and returns the
   * latest step's info; throws {@link NonFiniteLossError} if a step had a non-finite loss or
   * gradient norm (the weights are then those before that step, and `step` is set back to it).
   * Other backends: null (every step was already read).
   */
  async sync(): Promise<StepInfo | null> {
    if (!this.#device) return null;
    const { records, firstBadStep } = await this.#device.read();
    if (firstBadStep > 0) {
      const bad = records.find((r) => r.step === firstBadStep);
      this.step = firstBadStep - 1;
      throw new NonFiniteLossError(
        `loss is ${bad ? bad.loss : "not finite"} at step ${firstBadStep} (gradient norm ` +
          `${bad ? bad.gradNorm : "?"}): training stopped, weights unchanged since step ` +
          `${firstBadStep - 1} (the last checkpoint is intact). Lower the learning rate or ` +
          `check the latents.`,
      );
    }
    const last = records.at(-1);
    if (!last) return null;
    const lr = last.step === this.#lastLr[0]
      ? this.#lastLr[1]
      : learningRate(last.step, this.config);
    return { step: last.step, loss: last.loss, gradNorm: last.gradNorm, lr, measured: true };
  }

  /** The device optimizer on webgpu (made on first use), else null. */
  #deviceOptimizer(): DeviceAdamW | null {
    if (this.#device === undefined) {
      this.#device = deviceAdamWSupported()
        ? new DeviceAdamW(
          { params: this.#vars, m: this.#m, v: this.#v, ema: this.#emaVars },
          this.config,
        )
        : null;
    }
    return this.#device;
  }

  /** Loss and summed gradients over micro-batches (each chunk's mean weighted by its share). */
  async #lossAndGrads(
    batch: FlowBatch,
    onDevice = false,
  ): Promise<{ loss: number; lossTensor?: tf.Tensor; grads: tf.Tensor[] }> {
    const b = batch.xt.shape[0];
    const mb = Math.min(this.microBatch, b);
    let grads: tf.Tensor[] | null = null;
    let loss = 0;
    let lossTensor: tf.Tensor | undefined;
    for (let start = 0; start < b; start += mb) {
      const size = Math.min(mb, b - start);
      const chunk: FlowBatch = b === size ? batch : tf.tidy(() => ({
        xt: tf.slice(batch.xt, [start, 0, 0, 0], [size, -1, -1, -1]),
        t: tf.slice(batch.t, [start], [size]),
        y: tf.slice(batch.y, [start], [size]),
        v: tf.slice(batch.v, [start, 0, 0, 0], [size, -1, -1, -1]),
      }));
      const weight = size / b;
      const { value, grads: g } = tf.variableGrads(
        () => tf.mul(flowLoss(this.model, chunk), weight) as tf.Scalar,
        this.#vars,
      );
      if (onDevice) { // summed on the device, read later
        if (lossTensor) {
          const sum = tf.add(lossTensor, value);
          tf.dispose([lossTensor, value]);
          lossTensor = sum;
        } else lossTensor = value;
      } else {
        loss += (await value.data())[0];
        value.dispose();
      }
      const list = this.#vars.map((v) => g[v.name]);
      if (grads === null) grads = list;
      else {
        const sum: tf.Tensor[] = grads.map((acc, i) => tf.add(acc, list[i]));
        tf.dispose([...grads, ...list]);
        grads = sum;
      }
      if (chunk !== batch) disposeBatch(chunk);
    }
    return { loss, lossTensor, grads: grads! };
  }

  /** Clip to the global norm, AdamW update (torch's formulation), EMA update. Returns the norm. */
  async #applyAdamW(grads: tf.Tensor[], lr: number): Promise<number> {
    const c = this.config;
    const [b1, b2] = c.betas;
    const t = this.step + 1;
    // wasm: the whole update in one pass over the heap (same maths, see adamw_heap.ts).
    const onHeap = adamwOnHeap(
      { params: this.#vars, m: this.#m, v: this.#v, ema: this.#emaVars },
      grads,
      { ...c, lr, t },
    );
    if (onHeap !== null) return onHeap;
    const normT = tf.tidy(() => tf.sqrt(tf.addN(grads.map((g) => tf.sum(tf.square(g))))));
    const gradNorm = (await normT.data())[0];
    normT.dispose();
    // torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6)).
    const clip = Math.min(1, c.gradClip / (gradNorm + 1e-6));
    const stepSize = lr / (1 - b1 ** t);
    const bc2Sqrt = Math.sqrt(1 - b2 ** t);
    tf.tidy(() => {
      this.#vars.forEach((p, i) => {
        const g = clip < 1 ? tf.mul(grads[i], clip) : grads[i];
        const m = tf.add(this.#m[i], tf.mul(tf.sub(g, this.#m[i]), 1 - b1)); // m.lerp_(g, 1 - b1)
        const v = tf.add(tf.mul(this.#v[i], b2), tf.mul(tf.square(g), 1 - b2));
        const denom = tf.add(tf.div(tf.sqrt(v), bc2Sqrt), c.eps);
        const decayed = c.weightDecay ? tf.mul(p, 1 - lr * c.weightDecay) : p;
        p.assign(tf.sub(decayed, tf.mul(tf.div(m, denom), stepSize)));
        this.#m[i].assign(m);
        this.#v[i].assign(v);
        const e = this.#emaVars[i];
        e.assign(tf.add(e, tf.mul(tf.sub(p, e), 1 - c.emaDecay))); // ema.lerp_(p, 1 - decay)
      });
    });
    return gradNorm;
  }

  /**
   * Trains until `config.steps` (or `options.untilStep`), calling `onStep` after every update.
   * `onStep` may return a promise (e.g. to write a checkpoint); it is awaited.
   */
  async fit(
    data: LatentDataset,
    options: {
      untilStep?: number;
      onStep?: (info: StepInfo) => void | Promise<void>;
      signal?: AbortSignal;
    } = {},
  ): Promise<StepInfo | null> {
    const until = options.untilStep ?? this.config.steps;
    let last: StepInfo | null = null;
    while (this.step < until && !options.signal?.aborted) {
      last = await this.trainStep(data);
      await options.onStep?.(last);
    }
    return last;
  }

  /** The full resumable state (shares this trainer's tensors: do not dispose them). */
  state(): TrainingState {
    return {
      step: this.step,
      trainConfig: { ...this.config },
      model: this.model,
      ema: this.ema,
      adamM: this.#m,
      adamV: this.#v,
      seed: this.config.seed,
      dataOrder: { ...this.dataOrder },
    };
  }

  /**
   * Writes a checkpoint atomically (see `checkpoint.ts` for its layout): weights, EMA, AdamW
   * moments, the step, the configuration, the RNG state and the data order.
   */
  async saveCheckpoint(path: string, options: WriteCheckpointOptions = {}): Promise<void> {
    await this.sync(); // webgpu: a non-finite step throws here, before anything is written
    await writeCheckpoint(path, this.state(), options);
  }

  /**
   * Restores a trainer from a checkpoint written by {@link Trainer.saveCheckpoint}; training
   * then continues on exactly the trajectory of an uninterrupted run. The weights are built from
   * the file directly (nothing is randomly initialised first). `overrides` may change e.g. `steps`.
   */
  static async resume(path: string, overrides: Partial<TrainConfig> = {}): Promise<Trainer> {
    const state = await readCheckpoint(path);
    try {
      return new Trainer({ ...overrides, restore: state });
    } catch (e) {
      tf.dispose([state.model, state.ema].flatMap((m) => m.namedParams().map((p) => p.variable)));
      tf.dispose([...state.adamM, ...state.adamV]);
      throw e;
    }
  }

  /** Frees the model, EMA and optimizer state. */
  dispose(): void {
    this.model.dispose();
    this.ema.dispose();
    tf.dispose([...this.#m, ...this.#v]);
    this.#device?.dispose();
  }
}

function validate(c: TrainConfig): void {
  const positiveInt = ["batchSize", "microBatch", "steps"] as const;
  for (const k of positiveInt) {
    if (!Number.isInteger(c[k]) || c[k] < 1) {
      throw new Error(`${k} must be a positive integer, got ${c[k]}`);
    }
  }
  if (!(c.lr > 0)) throw new Error(`lr must be positive, got ${c.lr}`);
  if (!(c.classDropout >= 0 && c.classDropout < 1)) {
    throw new Error(`classDropout must be in [0, 1), got ${c.classDropout}`);
  }
  if (!(c.emaDecay >= 0 && c.emaDecay < 1)) {
    throw new Error(`emaDecay must be in [0, 1), got ${c.emaDecay}`);
  }
  checkSeed(c.seed, "seed");
}
