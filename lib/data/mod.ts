/**
 * Data: Oxford Flowers 102, the latent cache, and encoding a dataset into it.
 *
 * @module
 */

export * from "./oxford.ts";
export * from "./latents.ts";
export * from "./encode.ts";
