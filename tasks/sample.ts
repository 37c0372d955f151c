/**
 * `deno task sample`: class names in, one captioned grid PNG out.
 *
 * @module
 */

import type { AutoencoderKind } from "../lib/autoencoders/autoencoder.ts";
import { type BackendName, defaultBackendName } from "../lib/runtime/backend.ts";
import { BACKEND_OPTION, CliError, parseArgs, runMain } from "../lib/cli/args.ts";
import { checkCfgScale, type SamplerName } from "../lib/model/flow.ts";
import { AnthosPipeline } from "../lib/pipeline/pipeline.ts";
import { formatDuration, ProgressBar } from "../lib/cli/progress.ts";
import { writeFileAtomic } from "../lib/io/fs.ts";
import { checkSeed } from "../lib/runtime/rng.ts";

const SPEC = {
  name: "deno task sample",
  description: "Generates flowers of the given classes with the model in <repo-dir>/weights/ " +
    "(config.json, model.safetensors, classes.txt) and writes them as one PNG grid, each tile " +
    "captioned with its class name. Same seed and options -> the same PNG.",
  positionals: [{
    name: "classes",
    description: 'class names and/or ids 0..101, comma-separated ("rose,sunflower,42"), ' +
      'or "all" [default: all]',
  }],
  options: {
    "n-per-class": { type: "integer", short: "n", default: 1, description: "images per class" },
    seed: {
      type: "integer",
      short: "s",
      default: 0,
      description: "noise seed, 0..4294967295 (2^32 - 1)",
    },
    out: {
      type: "string",
      short: "o",
      placeholder: "FILE",
      default: "samples.png",
      description: "grid PNG to write",
    },
    steps: { type: "integer", description: "sampling steps [default: config.json, 50]" },
    "cfg-scale": {
      type: "number",
      description: "classifier-free guidance scale, 0..50 (1 = none, 1..10 useful; larger " +
        "saturates and overflows to NaN) [default: config.json, 4.0]",
    },
    sampler: {
      type: "string",
      choices: ["heun", "euler"],
      description: "ODE sampler [default: config.json, heun]",
    },
    cols: {
      type: "integer",
      description: "tiles per row [default: n-per-class if > 1 (one row per class), else square]",
    },
    "batch-size": { type: "integer", default: 16, description: "images sampled at once" },
    "repo-dir": {
      type: "string",
      placeholder: "DIR",
      default: ".",
      description: "folder holding weights/",
    },
    backend: BACKEND_OPTION,
    vae: {
      type: "string",
      choices: ["taesd", "sd-vae-ft-ema"],
      description: "autoencoder for decoding; taesd = fast preview [default: config.json]",
    },
    "vae-dir": {
      type: "string",
      placeholder: "DIR",
      description: "local autoencoder files (else the $ANTHOS_HOME cache / the hub)",
    },
    quiet: { type: "boolean", short: "q", description: "no progress bar" },
  },
  examples: [
    'deno task sample "rose,sunflower,daffodil" --n-per-class 2 --seed 42 --out out.png',
    "deno task sample all --steps 25 --sampler euler --out all.png",
    'deno task sample "73, 53" --cfg-scale 2.5 --vae taesd --vae-dir ../shared/weights/taesd',
    "deno task sample rose -n 8 --cols 4 --backend webgpu --repo-dir ../anthos-release",
  ],
  epilog: "Class names are forgiving (case, spaces, hyphens); a typo gets the closest names.\n" +
    "Environment: ANTHOS_BACKEND, ANTHOS_HOME (autoencoder cache), ANTHOS_DEBUG=1 (stack traces).",
} as const;

async function main(): Promise<number> {
  const { values: o, positionals } = parseArgs(SPEC);
  if (positionals.length > 1) {
    throw new Error(
      `expected one class list, got ${positionals.length} arguments (${positionals.join(" ")}): ` +
        `separate classes with commas and quote the list, e.g. "rose,sweet pea"`,
    );
  }
  for (
    const [flag, v] of [["n-per-class", o.nPerClass], ["steps", o.steps], [
      "batch-size",
      o.batchSize,
    ], ["cols", o.cols]] as const
  ) {
    if (v !== undefined && v < 1) throw new CliError(`--${flag} must be at least 1, got ${v}`);
  }
  checkSeed(o.seed, "--seed");
  if (o.cfgScale !== undefined) checkCfgScale(o.cfgScale, "--cfg-scale");
  const classes = positionals[0] ?? "all";
  const t0 = performance.now();
  const pipe = await AnthosPipeline.load({
    repoDir: o.repoDir,
    backend: (o.backend as BackendName | undefined) ?? defaultBackendName(),
    vae: o.vae as AutoencoderKind | undefined,
    vaeDir: o.vaeDir,
  });
  const ids = pipe.classIds(classes); // fail on a bad class before any work
  const n = ids.length * o.nPerClass;
  const bar = o.quiet ? null : new ProgressBar(n, { label: "sample", unit: "img" });
  const t1 = performance.now();
  const images = await pipe.generate(ids, {
    nPerClass: o.nPerClass,
    seed: o.seed,
    steps: o.steps,
    cfgScale: o.cfgScale,
    sampler: o.sampler as SamplerName | undefined,
    batchSize: o.batchSize,
    // Fractional images keep the bar moving during a batch's sampling steps.
    onProgress: (p) => bar?.update(Math.round((p.done / p.total) * n * 100) / 100),
  });
  bar?.finish();
  const cols = o.cols ?? (o.nPerClass > 1 ? o.nPerClass : undefined);
  await writeFileAtomic(o.out, await pipe.grid(images, { cols }));
  pipe.dispose();
  const secs = (performance.now() - t1) / 1000;
  console.error(
    `wrote ${o.out}: ${images.length} image(s) of ${ids.length} class(es) in ` +
      `${formatDuration(secs)} (${(secs / images.length).toFixed(2)} s/image, load ` +
      `${((t1 - t0) / 1000).toFixed(1)} s)`,
  );
  return 0;
}

if (import.meta.main) runMain(main);
