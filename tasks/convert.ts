/**
 * `deno task convert`: a training checkpoint's EMA weights -> a `weights/` folder
 * (model.safetensors + config.json), the original's convert_checkpoint.
 *
 * @module
 */

import { type BackendName, loadBackend } from "../lib/runtime/backend.ts";
import { BACKEND_OPTION, parseCommandLine, runMain } from "../lib/cli/args.ts";
import { dirname } from "node:path";
import { exportCheckpoint } from "../lib/training/export.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import { RunFolder } from "../lib/training/run.ts";
import { checkpointInfo } from "../lib/training/checkpoint.ts";
import { AUTOENCODER_KINDS, AUTOENCODERS } from "../lib/autoencoders/autoencoder.ts";

const SPEC = {
  name: "deno task convert",
  description: "Exports the EMA weights of a training checkpoint as model.safetensors (reference " +
    "key names) plus config.json (architecture, sampling defaults, latent space, provenance).",
  options: {
    checkpoint: {
      type: "string",
      placeholder: "FILE",
      default: "runs/anthos/checkpoint.safetensors",
      description: "checkpoint written by `deno task train`",
    },
    out: { type: "string", placeholder: "DIR", default: "weights", description: "output folder" },
    latents: {
      type: "string",
      placeholder: "FILE",
      description: "latent cache the run trained on (names the VAE) [default: from the run's " +
        "run.json]",
    },
    vae: {
      type: "string",
      choices: AUTOENCODER_KINDS,
      description: "latent space of the model [default: the cache's]",
    },
    raw: { type: "boolean", description: "export the raw weights instead of the EMA" },
    "repo-dir": {
      type: "string",
      placeholder: "DIR",
      default: ".",
      description: "folder holding weights/classes.txt (copied beside the export)",
    },
    backend: BACKEND_OPTION,
  },
  examples: [
    "deno task convert --checkpoint runs/smoke/checkpoint.safetensors --out weights",
  ],
} as const;

async function main(): Promise<number> {
  const { values: o } = parseCommandLine(SPEC);
  await loadBackend(o.backend as BackendName | undefined);
  const folder = new RunFolder(dirname(o.checkpoint));
  const run = await folder.readInfo().catch(() => null);
  const latentMetadata = o.latents
    ? (await readSafetensors(o.latents, { what: "latent cache" })).metadata
    : run?.latentMetadata;
  // The run's record (data, phases, device, validation) goes into config.json as train's does.
  const { step, trainConfig } = await checkpointInfo(o.checkpoint);
  const training = run
    ? await folder.provenance(run, {
      step,
      batchSize: Number(trainConfig.batchSize),
    })
    : null;
  const vae = o.vae ?? latentMetadata?.vae;
  if (!vae) {
    console.error(
      `warning: the latent space of ${o.checkpoint} is unknown (no run.json beside it): ` +
        `config.json says taesd. Pass --latents FILE or --vae NAME to be sure.`,
    );
  }
  const classesFile = `${o.repoDir}/weights/classes.txt`;
  const hasClasses = await Deno.stat(classesFile).then(() => true, () => false);
  const res = await exportCheckpoint(o.checkpoint, o.out, {
    latentMetadata,
    ...(o.vae
      ? {
        vae: {
          name: o.vae as keyof typeof AUTOENCODERS,
          scalingFactor: latentMetadata?.vae === o.vae && Number(latentMetadata?.scaling_factor) > 0
            ? Number(latentMetadata.scaling_factor)
            : AUTOENCODERS[o.vae as keyof typeof AUTOENCODERS].scalingFactor,
        },
      }
      : {}),
    ...(training ? { training } : {}),
    raw: o.raw,
    classesFile: hasClasses ? classesFile : undefined,
  });
  console.error(
    `exported step ${res.step} (${o.raw ? "raw" : "EMA"} weights, ${res.weightsConfig.vae.name} ` +
      `latents) -> ${res.model}, ${res.config}${res.classes ? `, ${res.classes}` : ""}`,
  );
  return 0;
}

if (import.meta.main) runMain(main);
