/**
 * The autoencoder interface Anthos trains and samples through, and (re-exported from
 * lib/model/latent_space.ts) the registry of the autoencoders it knows: name, latent scaling
 * factor, channels, weight files.
 *
 * Both autoencoders map `[N, 256, 256, 3]` images in [0, 1] to *scaled* latents `[N, 32, 32, 4]`
 * (unit-ish variance, the space the DiT models) and back:
 * - "sd-vae-ft-ema" (`AutoencoderKL`): encode = posterior mean * scaling_factor;
 *   decode(l) = clip((decoder(post_quant_conv(l / scaling_factor)) + 1) / 2, 0, 1).
 * - "taesd" (`Taesd`): encode = encoder(image); decode(l) = clip(decoder(l), 0, 1).
 *
 * @module
 */

import type * as tf from "@tensorflow/tfjs-core";
import type { AutoencoderKind } from "../model/latent_space.ts";

// The registry is plain data the model layer needs too (weights/config.json names the latent
// space), so it lives in lib/model/latent_space.ts; this is the same binding, not a copy.
export {
  AUTOENCODER_KINDS,
  type AutoencoderInfo,
  type AutoencoderKind,
  AUTOENCODERS,
  SD_SCALING_FACTOR,
} from "../model/latent_space.ts";

/** Options of {@link Autoencoder.encode}. */
export interface EncodeOptions {
  /** AutoencoderKL only: draw from the posterior instead of taking its mean (needs `seed`). */
  sample?: boolean;
  /** Seed of the posterior draw. */
  seed?: number;
}

/** An image autoencoder: NHWC images in [0, 1] <-> NHWC scaled latents. */
export interface Autoencoder {
  /** Which autoencoder this is. */
  readonly kind: AutoencoderKind;
  /** `[N, 256, 256, 3]` images in [0, 1] -> scaled latents `[N, 32, 32, 4]` (caller disposes). */
  encode(images: tf.Tensor4D, options?: EncodeOptions): tf.Tensor4D;
  /** Scaled latents `[N, 32, 32, 4]` -> images `[N, 256, 256, 3]` clipped to [0, 1]. */
  decode(latents: tf.Tensor4D): tf.Tensor4D;
  /** Frees the weights. */
  dispose(): void;
}

/** A tensor of the wrong shape or dtype was given to an autoencoder. */
export class ShapeError extends Error {
  /** @param message what was expected and what came */
  constructor(message: string) {
    super(message);
    this.name = "ShapeError";
  }
}

/**
 * Checks that `images` is an NHWC float batch of `[N, size, size, 3]`, with an error that names
 * the expected shape. Used by the autoencoders.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { checkImageBatch, ShapeError } from "./autoencoder.ts";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * checkImageBatch(tf.zeros([2, 256, 256, 3]), { size: 256 }); // ok
 * try {
 *   checkImageBatch(tf.zeros([2, 3, 256, 256]), { size: 256 });
 *   throw new Error("should have thrown");
 * } catch (e) {
 *   if (!(e instanceof ShapeError) || !e.message.includes("NCHW")) throw e;
 * }
 * ```
 */
export function checkImageBatch(images: tf.Tensor, options: { size?: number } = {}): void {
  const s = images.shape;
  const size = options.size;
  const want = size ? `[N, ${size}, ${size}, 3]` : "[N, H, W, 3]";
  const hint = s.length === 3
    ? " Add the batch axis with tf.stack([img]) or tf.expandDims(img, 0)."
    : s.length === 4 && s[1] === 3
    ? " This looks like NCHW: images are NHWC (channels last)."
    : "";
  if (s.length !== 4 || s[3] !== 3 || (size !== undefined && (s[1] !== size || s[2] !== size))) {
    throw new ShapeError(
      `expected images of shape ${want} (NHWC, RGB in [0, 1]), got [${s}].${hint}`,
    );
  }
  if (s[0] < 1) throw new ShapeError(`expected at least one image, got an empty batch [${s}]`);
  if (images.dtype !== "float32") {
    throw new ShapeError(`expected float32 images in [0, 1], got ${images.dtype}: divide by 255`);
  }
}

/**
 * Checks a batch of latents for an autoencoder's decoder: `[N, h, w, channels]` float32 (NHWC),
 * with an error that names the expected shape and the fix.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { checkLatentBatch, ShapeError } from "./autoencoder.ts";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * checkLatentBatch(tf.zeros([2, 32, 32, 4]), 4); // ok
 * const bad = (() => {
 *   try {
 *     checkLatentBatch(tf.zeros([2, 32, 32, 3]), 4);
 *   } catch (e) {
 *     return e;
 *   }
 * })();
 * if (!(bad instanceof ShapeError)) throw new Error(`expected a ShapeError, got ${bad}`);
 * ```
 */
export function checkLatentBatch(latents: tf.Tensor, channels: number): void {
  const s = latents.shape;
  if (s.length !== 4 || s[3] !== channels || s[0] < 1) {
    const hint = s.length === 3 ? " Add the batch axis with tf.expandDims(latents, 0)." : "";
    throw new ShapeError(
      `expected latents of shape [N, 32, 32, ${channels}] (NHWC; any h, w), got [${s}].${hint}`,
    );
  }
  if (latents.dtype !== "float32") {
    throw new ShapeError(`expected float32 latents, got ${latents.dtype}`);
  }
}
