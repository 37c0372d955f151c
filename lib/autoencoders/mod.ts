/**
 * Autoencoders: the interface and registry, the SD VAE (AutoencoderKL), TAESD, and the loader.
 *
 * @module
 */

export * from "./autoencoder.ts";
export * from "./kl.ts";
export * from "./taesd.ts";
export * from "./load.ts";
