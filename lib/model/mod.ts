/**
 * The model: DiT-Nano/2 (parameters, forward), rectified-flow loss and samplers, the weights
 * folder's config. Loads neither sharp nor the pipeline.
 *
 * @module
 */

export * from "./dit.ts";
export * from "./flow.ts";
export * from "./weights.ts";
export * from "./ops.ts";
export * from "./latent_space.ts";
