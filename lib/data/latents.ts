/**
 * The latent cache: a dataset encoded once by the VAE, stored as one safetensors file that the
 * trainer loads onto the backend's device.
 *
 * File layout: `latents` `[L, 32, 32, 4]` (NHWC, F16 or F32, already scaled), `labels` `[L]` I32
 * (class ids 0..101), and `__metadata__` naming the autoencoder, its scaling factor and the source.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { readSafetensors, writeSafetensors } from "../io/safetensors.ts";
import { markMissing } from "../runtime/errors.ts";

/** A latent dataset held on the backend's device. */
export interface LatentDataset {
  /** Scaled latents `[L, H, W, C]`, NHWC float32, on the device. */
  latents: tf.Tensor4D;
  /** Class id of each latent (0..101). */
  labels: Int32Array;
  /** Metadata of the cache file (autoencoder, scaling factor, source). */
  metadata: Record<string, string>;
}

/**
 * Loads a latent cache file onto the current backend.
 *
 * @example
 * ```ts
 * import { loadLatents, saveLatents } from "./latents.ts";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * const path = `${await Deno.makeTempDir()}/latents.safetensors`;
 * const shape: [number, number, number, number] = [2, 32, 32, 4];
 * await saveLatents(path, { latents: new Float32Array(2 * 32 * 32 * 4), labels: Int32Array.of(73, 53), shape });
 * const data = await loadLatents(path);
 * if (data.latents.shape.join() !== "2,32,32,4" || data.labels[1] !== 53) throw new Error("round trip");
 * data.latents.dispose();
 * ```
 */
export async function loadLatents(
  path: string,
  options: { limit?: number } = {},
): Promise<LatentDataset> {
  let file: Awaited<ReturnType<typeof readSafetensors>>;
  try {
    file = await readSafetensors(path, {
      what: "latent cache (make one with encodeDataset() or saveLatents())",
    });
  } catch (e) {
    throw e instanceof Error ? markMissing(e, "latent-cache") : e;
  }
  const { tensors, metadata } = file;
  const lat = tensors.get("latents");
  const lab = tensors.get("labels");
  if (!lat || !lab) {
    throw markMissing(
      new Error(
        `${path} is not an Anthos latent cache: it needs "latents" and "labels" tensors. ` +
          `Create one with encodeDataset() or saveLatents().`,
      ),
      "latent-cache",
    );
  }
  if (lat.shape.length !== 4 || lab.shape.length !== 1 || lab.shape[0] !== lat.shape[0]) {
    throw markMissing(
      new Error(
        `${path}: latents [${lat.shape}] and labels [${lab.shape}] do not match ` +
          `(expected [L, H, W, C] and [L]). Re-create it with encodeDataset().`,
      ),
      "latent-cache",
    );
  }
  const n = Math.min(lat.shape[0], options.limit ?? Infinity);
  const per = lat.shape[1] * lat.shape[2] * lat.shape[3];
  const data = (lat.data as Float32Array).subarray(0, n * per);
  return {
    latents: tf.tensor4d(data, [n, lat.shape[1], lat.shape[2], lat.shape[3]]),
    labels: Int32Array.from((lab.data as Int32Array).subarray(0, n)),
    metadata,
  };
}

/**
 * Writes a latent cache atomically (F16 by default: half the size, ample precision for latents).
 *
 * @example
 * ```ts
 * import { saveLatents } from "./latents.ts";
 * await saveLatents("/tmp/lat.safetensors", {
 *   latents: new Float32Array(2 * 32 * 32 * 4), labels: new Int32Array([0, 1]), shape: [2, 32, 32, 4],
 * }, { metadata: { vae: "taesd" } });
 * ```
 */
export async function saveLatents(
  path: string,
  data: { latents: Float32Array; labels: Int32Array; shape: [number, number, number, number] },
  options: { dtype?: "F16" | "F32"; metadata?: Record<string, string> } = {},
): Promise<void> {
  await writeSafetensors(path, {
    latents: { dtype: options.dtype ?? "F16", shape: data.shape, data: data.latents },
    labels: { dtype: "I32", shape: [data.labels.length], data: data.labels },
  }, { metadata: { format: "anthos-latents", layout: "NHWC", ...options.metadata } });
}
