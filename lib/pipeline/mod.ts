/**
 * The pipeline: class names in, captioned flower images out.
 *
 * @module
 */

export * from "./pipeline.ts";
export * from "./classes.ts";
