/**
 * Throughput of the two autoencoders on the active tfjs backend: encode and decode time per
 * 256x256 image, for `tasks/bench.ts`. The SD VAE runs with random weights in the published
 * sd-vae-ft-ema architecture (timing does not depend on the values); TAESD uses its real weights
 * when a folder is given, else random ones. The caller picks the backend.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { Autoencoder, AutoencoderKind } from "../lib/autoencoders/autoencoder.ts";
import { AutoencoderKL, SD_VAE_FT_EMA_CONFIG } from "../lib/autoencoders/kl.ts";
import { Taesd } from "../lib/autoencoders/taesd.ts";

/** One benchmark result. */
export interface VaeBenchRow {
  /** "taesd" or "sd-vae-ft-ema". */
  model: AutoencoderKind;
  /** "encode" (256x256x3 -> 32x32x4) or "decode" (back). */
  op: "encode" | "decode";
  /** The tfjs backend that ran it. */
  backend: string;
  /** Images per call. */
  batch: number;
  /** Timed calls (after one untimed warm-up call). */
  repeats: number;
  /** Mean wall time per image, ms. */
  msPerImage: number;
  /** Images per second (1000 / msPerImage). */
  imagesPerSec: number;
}

/** Options of {@link benchAutoencoders}. */
export interface BenchVaeOptions {
  /** Which models; default both. */
  models?: AutoencoderKind[];
  /** Folder with the real TAESD weights (else random weights of the same shapes). */
  taesdDir?: string;
  /** Images per call; default 1 for the SD VAE, 4 for TAESD. */
  batch?: Partial<Record<AutoencoderKind, number>>;
  /** Timed calls per measurement; default 1 for the SD VAE (about 10-30 s each on wasm), 3 for TAESD. */
  repeats?: Partial<Record<AutoencoderKind, number>>;
  /** Skip the untimed warm-up call (saves time on the SD VAE; the first call is then included). */
  noWarmup?: boolean;
  /** Called after each row (for progress output). */
  onRow?: (row: VaeBenchRow) => void;
}

/**
 * Times encode and decode per 256x256 image for each autoencoder on the current backend.
 *
 * @example
 * ```ts
 * import { loadBackend } from "../lib/runtime/backend.ts";
 * import { benchAutoencoders } from "./vae.ts";
 * await loadBackend("wasm");
 * const rows = await benchAutoencoders({ models: ["taesd"], taesdDir: "../shared/weights/taesd" });
 * console.table(rows);
 * ```
 */
export async function benchAutoencoders(options: BenchVaeOptions = {}): Promise<VaeBenchRow[]> {
  const rows: VaeBenchRow[] = [];
  for (const model of options.models ?? ["taesd", "sd-vae-ft-ema"]) {
    const vae: Autoencoder = model === "taesd"
      ? (options.taesdDir ? await Taesd.load({ dir: options.taesdDir }) : Taesd.random({ seed: 0 }))
      : AutoencoderKL.random(SD_VAE_FT_EMA_CONFIG, { seed: 0 });
    const batch = options.batch?.[model] ?? (model === "taesd" ? 4 : 1);
    const repeats = options.repeats?.[model] ?? (model === "taesd" ? 3 : 1);
    try {
      const images = tf.tidy(() => {
        // A smooth deterministic test pattern in [0, 1] (timing does not depend on content).
        const r = tf.linspace(0, 1, 256);
        const grid = tf.add(tf.reshape(r, [1, 256, 1, 1]), tf.reshape(r, [1, 1, 256, 1]));
        return tf.tile(
          tf.div(tf.add(grid, tf.reshape(tf.tensor1d([0, 0.3, 0.6]), [1, 1, 1, 3])), 2.6),
          [
            batch,
            1,
            1,
            1,
          ],
        ) as tf.Tensor4D; // [B, 256, 256, 3]
      });
      const latents = vae.encode(images);
      const time = async (fn: () => tf.Tensor): Promise<number> => {
        if (!options.noWarmup) await dataAndDispose(fn());
        const t0 = performance.now();
        for (let i = 0; i < repeats; i++) await dataAndDispose(fn());
        return (performance.now() - t0) / repeats / batch;
      };
      for (const op of ["encode", "decode"] as const) {
        const ms = await time(() => op === "encode" ? vae.encode(images) : vae.decode(latents));
        const row: VaeBenchRow = {
          model,
          op,
          backend: tf.getBackend(),
          batch,
          repeats,
          msPerImage: Math.round(ms * 10) / 10,
          imagesPerSec: Math.round(1e5 / ms) / 100,
        };
        rows.push(row);
        options.onRow?.(row);
      }
      images.dispose();
      latents.dispose();
    } finally {
      vae.dispose();
    }
  }
  return rows;
}

/** Waits for the result (so the time covers the whole computation) and frees it. */
async function dataAndDispose(t: tf.Tensor): Promise<void> {
  await t.data();
  t.dispose();
}
