/**
 * The latent spaces a model can be trained in: the registry of the autoencoders Anthos knows
 * (name, latent scaling factor, latent channels, weight files, hub repository). The one place
 * that knows these constants; lib/autoencoders/ re-exports it beside the implementations, and
 * `weights/config.json` names its latent space with these names.
 *
 * @example
 * ```ts
 * import { AUTOENCODER_KINDS, AUTOENCODERS, SD_SCALING_FACTOR } from "./latent_space.ts";
 * if (AUTOENCODERS["sd-vae-ft-ema"].scalingFactor !== SD_SCALING_FACTOR) throw new Error("SD");
 * if (AUTOENCODER_KINDS.join() !== "taesd,sd-vae-ft-ema") throw new Error(String(AUTOENCODER_KINDS));
 * ```
 *
 * @module
 */

/** What the registry knows of one autoencoder. */
export interface AutoencoderInfo {
  /** The name used by flags, configs and latent-cache metadata. */
  readonly name: string;
  /** One line for `--help` and docs. */
  readonly description: string;
  /**
   * The latent scaling factor: SD-VAE posterior * factor = the latents the DiT models. TAESD
   * outputs that scaled space directly, so its factor is the SD VAE's as well.
   */
  readonly scalingFactor: number;
  /** Latent channels. */
  readonly latentChannels: number;
  /** The weight files a local folder must hold. */
  readonly files: readonly string[];
  /** Hub repository the files come from, if they can be downloaded. */
  readonly hubRepo?: string;
}

/** SD 1.x's latent scaling factor (`vae.config.scaling_factor`). */
export const SD_SCALING_FACTOR = 0.18215;

/** The autoencoders Anthos knows, by name. */
export const AUTOENCODERS = {
  "taesd": {
    name: "taesd",
    description: "TAESD, the tiny distilled SD VAE (fast; previews and small runs)",
    scalingFactor: SD_SCALING_FACTOR,
    latentChannels: 4,
    files: ["taesd_encoder.safetensors", "taesd_decoder.safetensors"],
  },
  "sd-vae-ft-ema": {
    name: "sd-vae-ft-ema",
    description: "the Stable Diffusion VAE stabilityai/sd-vae-ft-ema (the published model's)",
    scalingFactor: SD_SCALING_FACTOR,
    latentChannels: 4,
    files: ["config.json", "diffusion_pytorch_model.safetensors"],
    hubRepo: "stabilityai/sd-vae-ft-ema",
  },
} as const satisfies Record<string, AutoencoderInfo>;

/** The autoencoders Anthos knows. */
export type AutoencoderKind = keyof typeof AUTOENCODERS;

/** Every {@link AutoencoderKind}, for flag choices and validation. */
export const AUTOENCODER_KINDS: readonly AutoencoderKind[] = Object.keys(
  AUTOENCODERS,
) as AutoencoderKind[];
