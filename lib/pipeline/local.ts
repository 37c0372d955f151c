/**
 * The Deno side of `AnthosPipeline.load`: reads a model folder from disk (config.json,
 * model.safetensors, classes.txt), starts the backend and loads the autoencoder (from a local
 * folder, the Anthos cache or the hub). `pipeline.ts` imports this on demand so that it stays
 * platform-free for the browser demo.
 *
 * @module
 */

import { loadAutoencoder } from "../autoencoders/load.ts";
import type { Autoencoder } from "../autoencoders/autoencoder.ts";
import { loadBackend } from "../runtime/backend.ts";
import { ClassNames } from "./classes.ts";
import { DiT } from "../model/dit.ts";
import { readWeightsConfig } from "../model/weights.ts";
import { isFile } from "../io/fs.ts";
import type { PipelineLoadOptions, PipelineParts } from "./pipeline.ts";
import { markMissing } from "../runtime/errors.ts";

/**
 * Loads the parts of a pipeline from `repoDir/weights/`. Missing files are reported together,
 * with how to get them.
 *
 * @example
 * ```ts
 * import { loadPipelineParts } from "./local.ts";
 * const parts = await loadPipelineParts({ repoDir: ".", vaeDir: "../shared/weights/taesd" });
 * parts.classes.size; // 102
 * ```
 */
export async function loadPipelineParts(options: PipelineLoadOptions = {}): Promise<PipelineParts> {
  const dir = (options.repoDir ?? ".").replace(/\/+$/, "") || "/";
  const configPath = `${dir}/weights/config.json`;
  const weightsPath = options.weights ?? `${dir}/weights/model.safetensors`;
  const classesPath = `${dir}/weights/classes.txt`;
  const missing: string[] = [];
  for (const p of [configPath, weightsPath, classesPath]) {
    if (!(await isFile(p))) missing.push(p);
  }
  if (missing.length > 0) {
    throw markMissing(
      new Deno.errors.NotFound(
        `no trained model: ${missing.join(", ")} ${missing.length > 1 ? "are" : "is"} missing. ` +
          `Train and export one (a Trainer run, then exportCheckpoint()), or put ` +
          `published weights (config.json, model.safetensors, classes.txt) in ${dir}/weights/ ` +
          `(or pass { repoDir } with the folder that holds weights/).`,
      ),
      "weights",
    );
  }
  if (options.backend) await loadBackend(options.backend);
  const config = await readWeightsConfig(configPath);
  const classes = await ClassNames.load(classesPath);
  if (classes.size !== config.model.numClasses) {
    throw markMissing(
      new Error(
        `${classesPath} lists ${classes.size} classes but ${configPath} says the model has ` +
          `${config.model.numClasses}: they come from different models; export them together ` +
          `with exportCheckpoint()`,
      ),
      "weights",
    );
  }
  const model = await DiT.load(weightsPath, { config: config.model });
  let vae: Autoencoder;
  try {
    vae = await loadAutoencoder(options.vae ?? config.vae.name, { dir: options.vaeDir });
  } catch (e) {
    model.dispose();
    throw e;
  }
  return { model, vae, classes, config };
}
