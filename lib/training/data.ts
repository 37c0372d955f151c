/**
 * The data of a training run: one or more latent caches, checked to share one latent space and
 * shape, joined in the order given. Each file is remembered as a part (its count and metadata),
 * which is what the held-out split needs to stay put when files are added later.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { type LatentDataset, loadLatents } from "../data/latents.ts";

/** One cache file of a joined dataset, in joining order. */
export interface DataPart {
  /** The file. */
  path: string;
  /** Latents it contributes. */
  count: number;
  /** Its metadata (`vae`, `splits`, `source`, `images`, `flipped`, ...). */
  metadata: Record<string, string>;
  /** Its file name. */
  name: string;
}

/** Several latent caches joined into one dataset (on the device). */
export interface JoinedLatents extends LatentDataset {
  /** The files, in order. */
  parts: DataPart[];
}

/**
 * Loads several latent caches as one dataset, in the order given. They must hold latents of one
 * autoencoder and one shape. `limit` keeps the first N latents of the joined set.
 *
 * @example
 * ```ts
 * import { loadLatentFiles } from "./data.ts";
 * const data = await loadLatentFiles(["runs/latents-taesd.safetensors"]);
 * console.log(data.labels.length, data.parts.map((p) => p.count));
 * ```
 */
export async function loadLatentFiles(
  paths: readonly string[],
  options: { limit?: number } = {},
): Promise<JoinedLatents> {
  if (paths.length === 0) throw new Error("no latent cache given: pass at least one file");
  if (new Set(paths).size !== paths.length) {
    throw new Error(`a latent cache is listed twice: ${paths.join(", ")}`);
  }
  let left = options.limit ?? Infinity;
  const loaded: LatentDataset[] = [];
  const parts: DataPart[] = [];
  try {
    for (const path of paths) {
      if (left <= 0) break;
      const d = await loadLatents(path, { limit: left });
      loaded.push(d);
      left -= d.labels.length;
      const first = loaded[0];
      const [shape, shape0] = [d.latents.shape.slice(1), first.latents.shape.slice(1)];
      if (shape.join(",") !== shape0.join(",") || d.metadata.vae !== first.metadata.vae) {
        throw new Error(
          `${path} holds ${d.metadata.vae ?? "unknown"} latents [${shape}], but ${paths[0]} ` +
            `holds ${first.metadata.vae ?? "unknown"} latents [${shape0}]: a run trains in one ` +
            `latent space; pass caches made by the same autoencoder`,
        );
      }
      parts.push({
        path,
        count: d.labels.length,
        metadata: d.metadata,
        name: path.split("/").pop()!,
      });
    }
    const latents = loaded.length === 1
      ? loaded[0].latents
      : tf.concat(loaded.map((d) => d.latents), 0) as tf.Tensor4D; // [L, H, W, C]
    if (loaded.length > 1) tf.dispose(loaded.map((d) => d.latents));
    const labels = new Int32Array(parts.reduce((a, p) => a + p.count, 0));
    let at = 0;
    for (const d of loaded) {
      labels.set(d.labels, at);
      at += d.labels.length;
    }
    return { latents, labels, metadata: { ...loaded[0].metadata }, parts };
  } catch (e) {
    tf.dispose(loaded.map((d) => d.latents));
    throw e;
  }
}
