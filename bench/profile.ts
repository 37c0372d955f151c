/**
 * Where a DiT-Nano/2 training step spends its time, by kernel: tfjs kernels (from `tf.profile`)
 * and the work done outside them (BLAS products through FFI, direct XNNPACK slice products,
 * token sums in JS; from lib/runtime/opstats.ts); the rest is JS and tfjs bookkeeping.
 *
 * Run: `deno run -A bench/profile.ts [--batch 32] [--backend wasm]` (prints a Markdown table).
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { Trainer } from "../lib/training/trainer.ts";
import type { LatentDataset } from "../lib/data/latents.ts";
import { Rng } from "../lib/runtime/rng.ts";
import { startOpStats, stopOpStats } from "../lib/runtime/opstats.ts";

/** One line of a step profile. */
export interface ProfileRow {
  /** Kernel or op name. */
  name: string;
  /** "kernel": a tfjs kernel; "op": work outside tfjs kernels; "rest": the remainder. */
  kind: "kernel" | "op" | "rest";
  /** Milliseconds per step. */
  ms: number;
  /** Calls per step. */
  calls: number;
}

/** A profiled training step. */
export interface StepProfile {
  backend: string;
  batch: number;
  /** Wall time of the profiled steps, per step (profiling adds a little). */
  msPerStep: number;
  /** Rows by time, largest first. */
  rows: ProfileRow[];
}

/**
 * Profiles `steps` full training steps (after one warm-up step) at batch `batch`.
 *
 * @example
 * ```ts
 * import { loadBackend } from "../lib/runtime/backend.ts";
 * import { profileTrainStep } from "./profile.ts";
 * await loadBackend("wasm");
 * const p = await profileTrainStep(32);
 * console.log(p.rows.slice(0, 5));
 * ```
 */
export async function profileTrainStep(
  batch: number,
  options: { steps?: number; microBatch?: number } = {},
): Promise<StepProfile> {
  const steps = options.steps ?? 1;
  const rng = new Rng(0);
  const data: LatentDataset = {
    latents: tf.tensor4d(rng.normalArray(batch * 32 * 32 * 4), [batch, 32, 32, 4]),
    labels: Int32Array.from({ length: batch }, (_, i) => i % 102),
    metadata: {},
  };
  const trainer = new Trainer({
    batchSize: batch,
    microBatch: options.microBatch ?? batch,
    warmupSteps: 0,
  });
  try {
    await trainer.fit(data, { untilStep: 1 });
    const ops = startOpStats();
    let ms = 0;
    const info = await tf.profile(async () => {
      const t0 = performance.now();
      await trainer.fit(data, { untilStep: 1 + steps });
      ms = (performance.now() - t0) / steps;
      return null as unknown as tf.Tensor;
    });
    stopOpStats();
    const backend = tf.getBackend();
    const byName = new Map<string, ProfileRow>();
    for (const k of info.kernels) {
      // customGrad bodies are recorded under their scope's name, around kernels already counted.
      if (tf.getKernel(k.name, backend) == null) continue;
      // Split each kernel by output size: passes over activations vs small per-parameter ones.
      const size = (k.outputShapes[0] ?? []).reduce((a, d) => a * d, 1);
      const name = `${k.name} ${size >= 1 << 20 ? "(>= 1M elements)" : "(< 1M elements)"}`;
      const row = byName.get(name) ?? { name, kind: "kernel", ms: 0, calls: 0 };
      row.ms += Number(k.kernelTimeMs) / steps;
      row.calls += 1 / steps;
      byName.set(name, row);
    }
    const rows = [...byName.values()];
    for (const [name, s] of ops) {
      rows.push({ name, kind: "op", ms: s.ms / steps, calls: s.calls / steps });
    }
    const counted = rows.reduce((t, r) => t + r.ms, 0);
    rows.sort((a, b) => b.ms - a.ms);
    rows.push({ name: "rest (JS, tfjs bookkeeping)", kind: "rest", ms: ms - counted, calls: 0 });
    return { backend, batch, msPerStep: ms, rows };
  } finally {
    trainer.dispose();
    data.latents.dispose();
  }
}

/**
 * A profile as a Markdown table (the top `top` rows, the others summed).
 *
 * @example
 * ```ts
 * import { formatProfile, profileTrainStep } from "./profile.ts";
 * console.log(formatProfile(await profileTrainStep(32)));
 * ```
 */
export function formatProfile(p: StepProfile, options: { top?: number } = {}): string {
  const top = options.top ?? 16;
  const main = p.rows.filter((r) => r.kind !== "rest");
  const shown = main.slice(0, top);
  const others = main.slice(top);
  const rest = p.rows.find((r) => r.kind === "rest")!;
  const pct = (ms: number) => `${((100 * ms) / p.msPerStep).toFixed(1)}%`;
  const lines = [
    `${p.backend}, batch ${p.batch}: ${p.msPerStep.toFixed(0)} ms per step (profiled)`,
    "",
    "| kernel / op | kind | ms per step | share | calls per step |",
    "| --- | --- | --- | --- | --- |",
    ...shown.map((r) =>
      `| ${r.name} | ${r.kind} | ${r.ms.toFixed(1)} | ${pct(r.ms)} | ${Math.round(r.calls)} |`
    ),
  ];
  if (others.length) {
    const ms = others.reduce((t, r) => t + r.ms, 0);
    const calls = others.reduce((t, r) => t + r.calls, 0);
    lines.push(
      `| ${others.length} others | | ${ms.toFixed(1)} | ${pct(ms)} | ${Math.round(calls)} |`,
    );
  }
  lines.push(`| ${rest.name} | | ${rest.ms.toFixed(1)} | ${pct(rest.ms)} | |`);
  return lines.join("\n");
}

if (import.meta.main) {
  const { BACKEND_OPTION, parseCommandLine } = await import("../lib/cli/args.ts");
  const { loadBackend } = await import("../lib/runtime/backend.ts");
  const { values } = parseCommandLine(
    {
      name: "deno run -A bench/profile.ts",
      description: "Profiles one training step of DiT-Nano/2: time per kernel kind.",
      options: {
        batch: { type: "integer", default: 32, description: "batch size" },
        backend: { ...BACKEND_OPTION, default: "wasm" },
        steps: { type: "integer", default: 1, description: "timed steps" },
      },
    } as const,
  );
  const info = await loadBackend(values.backend);
  console.error(`backend: ${JSON.stringify(info)}`);
  const p = await profileTrainStep(values.batch, { steps: values.steps });
  console.log(formatProfile(p));
}
