/**
 * Runtime: tfjs backend choice, the environment configuration, seeded random numbers.
 *
 * @module
 */

export * from "./backend.ts";
export * from "./env.ts";
export * from "./rng.ts";
export * from "./text.ts";
