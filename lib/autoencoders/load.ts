/**
 * {@link loadAutoencoder}, which finds an autoencoder's weights: a local folder, the Anthos cache, or (for the SD VAE) the Hugging
 * Face hub on first use.
 *
 * Both autoencoders map `[N, 256, 256, 3]` images in [0, 1] to *scaled* latents `[N, 32, 32, 4]`
 * (unit-ish variance, the space the DiT models) and back:
 * - "sd-vae-ft-ema" ({@link AutoencoderKL}): encode = posterior mean * scaling_factor;
 *   decode(l) = clip((decoder(post_quant_conv(l / scaling_factor)) + 1) / 2, 0, 1).
 * - "taesd" ({@link Taesd}): encode = encoder(image); decode(l) = clip(decoder(l), 0, 1).
 *
 * @module
 */

import { exists } from "../io/fs.ts";
import { env } from "../runtime/env.ts";
import { type Autoencoder, type AutoencoderKind, AUTOENCODERS } from "./autoencoder.ts";
import { AutoencoderKL } from "./kl.ts";
import { anthosHome, downloadFile, sharedTaesdDir } from "../io/download.ts";
import { Taesd } from "./taesd.ts";

/** Options of {@link loadAutoencoder}. */
export interface LoadAutoencoderOptions {
  /**
   * Local folder with the files: for "taesd" `taesd_encoder.safetensors` +
   * `taesd_decoder.safetensors`; for "sd-vae-ft-ema" a diffusers AutoencoderKL folder
   * (`config.json` + `diffusion_pytorch_model.safetensors`). Without it the cache is used.
   */
  dir?: string;
  /** Hub base URL; default `$ANTHOS_HF_ENDPOINT`, else https://huggingface.co. */
  endpoint?: string;
  /** Download progress of the SD VAE files (bytes so far, total if known). */
  onProgress?: (file: string, done: number, total: number | null) => void;
}

/** Hub repository of the SD VAE. */
export const SD_VAE_REPO: string = AUTOENCODERS["sd-vae-ft-ema"].hubRepo;
const SD_VAE_FILES = AUTOENCODERS["sd-vae-ft-ema"].files;
const TAESD_FILES = AUTOENCODERS["taesd"].files;

/**
 * Loads an autoencoder. With `dir` the files are read from there. Without it, "sd-vae-ft-ema"
 * comes from `${anthosHome()}/hub/stabilityai/sd-vae-ft-ema`, downloaded from the hub on first
 * use (about 335 MB); "taesd" comes from `${anthosHome()}/taesd` or the shared reference folder
 * (`$ANTHOS_SHARED/weights/taesd`, else `../shared/weights/taesd` beside a checkout), which hold the two
 * weight files (nothing is downloaded).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadAutoencoder } from "./load.ts";
 * const vae = await loadAutoencoder("taesd", { dir: "../shared/weights/taesd" });
 * const lat = vae.encode(tf.zeros([1, 256, 256, 3])); // [1, 32, 32, 4]
 * const rgb = vae.decode(lat);                         // [1, 256, 256, 3]
 * vae.dispose();
 * ```
 */
export async function loadAutoencoder(
  kind: AutoencoderKind,
  options: LoadAutoencoderOptions = {},
): Promise<Autoencoder> {
  if (kind === "taesd") return await Taesd.load({ dir: options.dir ?? await taesdCacheDir() });
  if (kind === "sd-vae-ft-ema") {
    return await AutoencoderKL.load(options.dir ?? await fetchSdVae(options));
  }
  throw new Error(
    `unknown autoencoder "${kind}": use "taesd" (fast, small) or "sd-vae-ft-ema" (the SD VAE)`,
  );
}

/** Where TAESD's files are looked for, in order: the Anthos cache, then {@link sharedTaesdDir}. */
function taesdDirs(): string[] {
  const shared = sharedTaesdDir();
  return shared ? [`${anthosHome()}/taesd`, shared] : [`${anthosHome()}/taesd`];
}

/** The first folder of {@link taesdDirs} that holds both files, or an error saying where to put them. */
async function taesdCacheDir(): Promise<string> {
  const dirs = taesdDirs();
  for (const dir of dirs) {
    const found = await Promise.all(TAESD_FILES.map((f) => exists(`${dir}/${f}`)));
    if (found.every(Boolean)) return dir;
  }
  throw new Error(
    `TAESD weights not found: ${TAESD_FILES.join(" and ")} are in none of ${dirs.join(", ")}. ` +
      `Put them in ${dirs[0]} (from https://github.com/madebyollin/taesd; in this workplace ` +
      `../shared/weights/taesd has them), or pass { dir } / --vae-dir with the folder that ` +
      `holds them.`,
  );
}

/** Downloads (once) the SD VAE files into the cache and returns the folder. */
async function fetchSdVae(options: LoadAutoencoderOptions): Promise<string> {
  const endpoint = (options.endpoint ?? env.hfEndpoint ??
    "https://huggingface.co").replace(/\/+$/, "");
  const dir = `${anthosHome()}/hub/${SD_VAE_REPO}`;
  for (const f of SD_VAE_FILES) {
    const url = `${endpoint}/${SD_VAE_REPO}/resolve/main/${f}`;
    await downloadFile(url, `${dir}/${f}`, {
      onProgress: options.onProgress && ((done, total) => options.onProgress!(f, done, total)),
      manualHint: `download ${SD_VAE_FILES.join(" and ")} from ` +
        `https://huggingface.co/${SD_VAE_REPO}/tree/main by hand and put them in ${dir} ` +
        `(or pass { dir } / --vae-dir with a folder holding them)`,
    });
  }
  return dir;
}
