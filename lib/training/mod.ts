/**
 * Training: the Trainer (AdamW, EMA), its checkpoints, training runs (run folder, log, phases,
 * ledger) and exporting a checkpoint as a weights folder.
 *
 * @module
 */

export * from "./trainer.ts";
export * from "./export.ts";
export * from "./checkpoint.ts";
export * from "./data.ts";
export * from "./run.ts";
