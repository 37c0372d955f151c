/**
 * Training: the Trainer (AdamW, EMA, checkpoints) and exporting a checkpoint as a weights folder.
 *
 * @module
 */

export * from "./trainer.ts";
export * from "./export.ts";
