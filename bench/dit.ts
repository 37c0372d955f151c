/**
 * Throughput measurements of DiT-Nano/2 on the active backend — training steps and sampling —
 * and the PyTorch CPU anchor (`shared/bench/bench_torch_cpu.py`) run on the same machine, so the
 * two are compared side by side in one run. The caller picks the backend.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { randomNoise, sample } from "../lib/model/flow.ts";
import { Trainer } from "../lib/training/trainer.ts";
import type { LatentDataset } from "../lib/data/latents.ts";
import { Rng } from "../lib/runtime/rng.ts";
import { countWebGpu, perStep, type WebGpuCounts } from "./webgpu_counters.ts";

/** One training-throughput measurement. */
export interface TrainBenchRow {
  backend: string;
  batch: number;
  microBatch: number;
  /** Timed optimizer steps (after one untimed warm-up step). */
  steps: number;
  msPerStep: number;
  stepsPerSec: number;
  samplesPerSec: number;
  /** webgpu: GPU calls per timed step (the final wait for the GPU excluded). */
  counts?: WebGpuCounts;
}

/**
 * Times full training steps (forward, backward, clipping, AdamW, EMA) of DiT-Nano/2.
 *
 * @example
 * ```ts
 * import { loadBackend } from "../lib/runtime/backend.ts";
 * import { benchTraining } from "./dit.ts";
 * await loadBackend("wasm");
 * const row = await benchTraining(32, { steps: 3 });
 * ```
 */
export async function benchTraining(
  batch: number,
  options: { steps?: number; microBatch?: number; warmup?: number; readEvery?: number } = {},
): Promise<TrainBenchRow> {
  const rng = new Rng(0);
  const data: LatentDataset = {
    latents: tf.tensor4d(rng.normalArray(batch * 32 * 32 * 4), [batch, 32, 32, 4]),
    labels: Int32Array.from({ length: batch }, (_, i) => i % 102),
    metadata: {},
  };
  const trainer = new Trainer({ batchSize: batch, warmupSteps: 0 });
  // The chunk size asked for, as a session setting: the Trainer's own cap on wasm does not apply.
  trainer.microBatch = options.microBatch ?? batch;
  const microBatch = trainer.microBatch;
  // webgpu reads the loss back at this interval (the logging interval of a real run).
  trainer.readEvery = options.readEvery ?? 10;
  try {
    const warmup = options.warmup ?? 1;
    const steps = options.steps ?? 3;
    await trainer.fit(data, { untilStep: warmup });
    await trainer.sync();
    const counter = tf.getBackend() === "webgpu" ? countWebGpu() : null;
    const t0 = performance.now();
    await trainer.fit(data, { untilStep: warmup + steps });
    const counts = counter?.stop();
    await trainer.sync(); // wait for the GPU: the time includes all enqueued work
    const ms = (performance.now() - t0) / steps;
    return {
      backend: tf.getBackend(),
      batch,
      microBatch,
      steps,
      msPerStep: ms,
      stepsPerSec: 1000 / ms,
      samplesPerSec: (batch * 1000) / ms,
      counts: counts && perStep(counts, steps),
    };
  } finally {
    trainer.dispose();
    data.latents.dispose();
  }
}

/** One sampling-throughput measurement. */
export interface SampleBenchRow {
  backend: string;
  /** Images sampled together. */
  batch: number;
  /** Steps actually timed; the per-image time is scaled to `fullSteps` (cost per step is constant). */
  timedSteps: number;
  fullSteps: number;
  /** Seconds per image for a full Heun `fullSteps`, CFG run (latents only). */
  secPerImage: number;
  samplesPerSec: number;
  /** webgpu: GPU calls per Heun step (two CFG evaluations of the doubled batch). */
  counts?: WebGpuCounts;
}

/**
 * Times Heun sampling with CFG 4.0 (two model evaluations of a doubled batch per step) and
 * scales to a full 50-step run.
 *
 * @example
 * ```ts
 * import { loadBackend } from "../lib/runtime/backend.ts";
 * import { benchSampling } from "./dit.ts";
 * await loadBackend("wasm");
 * const row = await benchSampling(8, { timedSteps: 2 });
 * ```
 */
export async function benchSampling(
  batch: number,
  options: { timedSteps?: number; fullSteps?: number } = {},
): Promise<SampleBenchRow> {
  const { DiT } = await import("../lib/model/dit.ts");
  const model = DiT.create({}, { seed: 0 });
  const timedSteps = options.timedSteps ?? 3;
  const fullSteps = options.fullSteps ?? 50;
  const noise = randomNoise(batch, { seed: 0 });
  const y = Array.from({ length: batch }, (_, i) => i % 102);
  try {
    (await sample(model, noise, y, { steps: 1, cfgScale: 4, sampler: "heun" })).dispose(); // warm-up
    const counter = tf.getBackend() === "webgpu" ? countWebGpu() : null;
    const t0 = performance.now();
    // sample() has waited for the last step's values before it returns.
    const z = await sample(model, noise, y, { steps: timedSteps, cfgScale: 4, sampler: "heun" });
    const counts = counter?.stop();
    const sec = (performance.now() - t0) / 1000;
    z.dispose();
    const secPerImage = (sec / batch) * (fullSteps / timedSteps);
    return {
      backend: tf.getBackend(),
      batch,
      timedSteps,
      fullSteps,
      secPerImage,
      samplesPerSec: 1 / secPerImage,
      counts: counts && perStep(counts, timedSteps),
    };
  } finally {
    noise.dispose();
    model.dispose();
  }
}

/** What the PyTorch anchor printed. */
export interface TorchBenchRow {
  version: string;
  threads: number;
  batch: number;
  msPerStep: number;
  samplesPerSec: number;
  /** Seconds per image for Heun 50 with CFG (from its forward timing). */
  secPerImageHeun50: number;
  raw: string;
}

/**
 * Runs `bench_torch_cpu.py` (PyTorch CPU, the same model) and parses its two lines. Needs
 * Debian's `python3-torch` (and `libopenblas0-pthread` for a fast BLAS).
 *
 * @example
 * ```ts
 * import { runTorchAnchor } from "./dit.ts";
 * const torch = await runTorchAnchor("../shared/bench/bench_torch_cpu.py", { batch: 32, threads: 2 });
 * ```
 */
export async function runTorchAnchor(
  script: string,
  options: { batch?: number; threads?: number; python?: string } = {},
): Promise<TorchBenchRow> {
  const batch = options.batch ?? 32;
  const threads = options.threads ?? 2;
  const python = options.python ?? "/usr/bin/python3";
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(python, {
      args: [script, String(batch), String(threads)],
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    throw new Error(
      `cannot run ${python} (${(e as Error).message}): install Debian's PyTorch with ` +
        "`apt-get install -y python3-torch libopenblas0-pthread`",
    );
  }
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(
      `${script} failed: ${new TextDecoder().decode(out.stderr).slice(-800)}\n` +
        "Install Debian's PyTorch: `apt-get install -y python3-torch libopenblas0-pthread`",
    );
  }
  // "torch 2.x threads=2 batch=32: train step 2290 ms = 0.44 it/s = 14.0 samples/s"
  const m1 = text.match(
    /torch (\S+) threads=(\d+) batch=(\d+): train step (\d+) ms = [\d.]+ it\/s = ([\d.]+) samples\/s/,
  );
  const m2 = text.match(/Heun50 ~([\d.]+) s for (\d+) latents/);
  if (!m1 || !m2) throw new Error(`unexpected output of ${script}:\n${text}`);
  return {
    version: m1[1],
    threads: Number(m1[2]),
    batch: Number(m1[3]),
    msPerStep: Number(m1[4]),
    samplesPerSec: Number(m1[5]),
    secPerImageHeun50: Number(m2[1]) / Number(m2[2]),
    raw: text.trim(),
  };
}
