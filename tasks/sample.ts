/**
 * `deno task sample`: class names in, one captioned grid PNG out (or grid pages, or one PNG per
 * image). The output path and the grid size are checked before any sampling.
 *
 * @module
 */

import { AUTOENCODER_KINDS, type AutoencoderKind } from "../lib/autoencoders/autoencoder.ts";
import { type BackendName, defaultBackendName } from "../lib/runtime/backend.ts";
import { BACKEND_OPTION, CliError, parseCommandLine, runMain } from "../lib/cli/args.ts";
import { checkCfgScale, type SamplerName } from "../lib/model/flow.ts";
import { AnthosPipeline, type GeneratedImage } from "../lib/pipeline/pipeline.ts";
import { formatDuration, ProgressBar } from "../lib/cli/progress.ts";
import { checkWritable, writeFileAtomic } from "../lib/io/fs.ts";
import { MAX_GRID_PIXELS } from "../lib/io/pixels.ts";
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
      description: "grid PNG to write [default: samples.png]",
    },
    "per-page": {
      type: "integer",
      description: "split the grid into pages of N images, FILE-01.png, FILE-02.png, ..., " +
        "each written as soon as it is full (for requests too large for one grid)",
    },
    "out-dir": {
      type: "string",
      placeholder: "DIR",
      description: "write one PNG per image (01-rose.png, 02-rose.png, ...) as each is made, " +
        "instead of a grid",
    },
    steps: { type: "integer", description: "sampling steps [default: config.json, 50]" },
    "cfg-scale": {
      type: "number",
      description: "classifier-free guidance scale, 0..50 (1 = none, about 1..10 useful; larger " +
        "scales saturate the images) [default: config.json, 4.0]",
    },
    sampler: {
      type: "string",
      choices: ["heun", "euler"],
      description: "ODE sampler [default: config.json, heun]",
    },
    cols: {
      type: "integer",
      description: "tiles per row [default: n-per-class if 2..32 (one row per class), else square]",
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
      choices: AUTOENCODER_KINDS,
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
    "deno task sample all -n 40 --per-page 200 --out all.png   # all-01.png .. all-21.png",
    "deno task sample rose -n 4000 --out-dir roses/",
  ],
  epilog: "Class names are forgiving (case, spaces, hyphens); a typo gets the closest names.\n" +
    `One grid holds at most ${MAX_GRID_PIXELS} pixels (about 3600 captioned tiles); the size ` +
    "and the output path are checked before any sampling.\n" +
    "Environment: ANTHOS_BACKEND, ANTHOS_HOME (autoencoder cache), ANTHOS_DEBUG=1 (stack traces).",
} as const;

async function main(): Promise<number> {
  const { values: o, positionals } = parseCommandLine(SPEC);
  if (positionals.length > 1) {
    throw new Error(
      `expected one class list, got ${positionals.length} arguments (${positionals.join(" ")}): ` +
        `separate classes with commas and quote the list, e.g. "rose,sweet pea"`,
    );
  }
  for (
    const [flag, v] of [
      ["n-per-class", o.nPerClass],
      ["steps", o.steps],
      ["batch-size", o.batchSize],
      ["cols", o.cols],
      ["per-page", o.perPage],
    ] as const
  ) {
    if (v !== undefined && v < 1) throw new CliError(`--${flag} must be at least 1, got ${v}`);
  }
  checkSeed(o.seed, "--seed");
  if (o.cfgScale !== undefined) checkCfgScale(o.cfgScale, "--cfg-scale");
  if (o.outDir !== undefined && (o.out !== undefined || o.perPage !== undefined)) {
    throw new CliError(
      "--out-dir writes one PNG per image, --out (and --per-page) a grid: give one of them",
    );
  }
  const out = o.out ?? "samples.png";
  // Before any work: a path that cannot be written would only fail after hours of sampling.
  if (o.outDir !== undefined) await checkWritable(o.outDir, { what: "--out-dir", dir: true });
  else await checkWritable(out, { what: "--out" });
  const classes = positionals[0] ?? "all";
  const t0 = performance.now();
  const pipe = await AnthosPipeline.load({
    repoDir: o.repoDir,
    backend: (o.backend as BackendName | undefined) ?? defaultBackendName(),
    vae: o.vae as AutoencoderKind | undefined,
    vaeDir: o.vaeDir,
  });
  try {
    const ids = pipe.classIds(classes); // fail on a bad class before any work
    if (pipe.status && !pipe.status.complete && !o.quiet) {
      console.error(`note: ${o.repoDir}/weights/ is an ${pipe.status.text}.`);
    }
    const n = ids.length * o.nPerClass;
    const perPage = Math.min(o.perPage ?? n, n);
    const pages = Math.ceil(n / perPage);
    // One row per class when that row is a sensible width, else a square grid.
    const cols = o.cols ?? (o.nPerClass > 1 && o.nPerClass <= 32 ? o.nPerClass : undefined);
    if (o.outDir === undefined) checkGridSize(pipe, n, perPage, cols);
    const files: string[] = [];
    const saver = imageSaver(pipe, { out, outDir: o.outDir, n, perPage, cols, files });
    const bar = o.quiet ? null : new ProgressBar(n, { label: "sample", unit: "img" });
    const t1 = performance.now();
    try {
      await pipe.generate(ids, {
        nPerClass: o.nPerClass,
        seed: o.seed,
        steps: o.steps,
        cfgScale: o.cfgScale,
        sampler: o.sampler as SamplerName | undefined,
        batchSize: o.batchSize,
        // Images are saved as they come (per-image files, full pages), never held back.
        keepImages: false,
        onImage: saver.add,
        // Fractional images keep the bar moving during a batch's sampling steps.
        onProgress: (p) => bar?.update(Math.round((p.done / p.total) * n * 100) / 100),
      });
    } catch (e) {
      bar?.finish();
      // Keep what was made before the failure: the open page (or the one grid) is written.
      const kept = await saver.flush(true).then(
        () => files.length ? `; kept what was made before it: ${files.join(", ")}` : "",
        (e2) => `; saving the images made before it failed too (${(e2 as Error).message})`,
      );
      if (e instanceof Error) e.message += kept;
      throw e;
    }
    bar?.finish();
    await saver.flush();
    const secs = (performance.now() - t1) / 1000;
    const where = o.outDir !== undefined
      ? `${files.length} PNG(s) in ${o.outDir}`
      : pages > 1
      ? `${pages} grid pages, ${files[0]} .. ${files[files.length - 1]}`
      : out;
    console.error(
      `wrote ${where}: ${n} image(s) of ${ids.length} class(es) in ` +
        `${formatDuration(secs)} (${(secs / n).toFixed(2)} s/image, load ` +
        `${((t1 - t0) / 1000).toFixed(1)} s)`,
    );
  } finally {
    pipe.dispose();
  }
  return 0;
}

/** Refuses, before any sampling, a grid (page) too large to be drawn, with the ways out. */
function checkGridSize(
  pipe: AnthosPipeline,
  n: number,
  perPage: number,
  cols: number | undefined,
): void {
  const g = pipe.gridSize(perPage, { cols });
  if (g.width * g.height <= MAX_GRID_PIXELS) return;
  const what = perPage === n ? `one grid of ${n} images` : `a page of ${perPage} images`;
  const rowFits = pipe.gridSize(g.cols, { cols: g.cols });
  const fix = rowFits.width * rowFits.height > MAX_GRID_PIXELS
    ? `use fewer --cols (one row of ${g.cols} tiles is already too large)`
    : `split it with --per-page ${
      g.cols * Math.max(1, Math.floor(256 / g.cols))
    } (pages written as they fill)`;
  throw new CliError(
    `${what} in ${g.cols} columns would be ${g.width}x${g.height} pixels, over the ` +
      `${MAX_GRID_PIXELS}-pixel limit of a PNG grid: ${fix}, or write one PNG per image with ` +
      `--out-dir DIR`,
  );
}

/**
 * Saves images as the pipeline makes them: per-image files at once, or grid pages as soon as
 * each is full; `flush` writes the last (or only) page, and after a failure (`partial`) the
 * images made so far (a cut-short single grid goes to FILE-partial.png).
 */
function imageSaver(
  pipe: AnthosPipeline,
  o: { out: string; outDir?: string; n: number; perPage: number; cols?: number; files: string[] },
): {
  add: (image: GeneratedImage) => Promise<void>;
  flush: (partial?: boolean) => Promise<void>;
} {
  const digits = (k: number) => Math.max(2, String(k).length);
  if (o.outDir !== undefined) {
    const dir = o.outDir.replace(/\/+$/, "") || "/";
    return {
      add: async (image) => {
        const slug = image.className.toLowerCase().replace(/[^a-z0-9]+/g, "-")
          .replace(/^-|-$/g, "");
        const path = `${dir}/${String(image.index + 1).padStart(digits(o.n), "0")}-${slug}.png`;
        await image.save(path);
        o.files.push(path);
      },
      flush: () => Promise.resolve(),
    };
  }
  const pages = Math.ceil(o.n / o.perPage);
  let page: GeneratedImage[] = [];
  const stem = o.out.replace(/\.png$/i, "");
  const write = async (partial = false) => {
    if (page.length === 0) return;
    const number = Math.floor(page[0].index / o.perPage) + 1;
    // A grid cut short by a failure goes beside the requested file, never over it.
    const path = pages > 1
      ? `${stem}-${String(number).padStart(digits(pages), "0")}.png`
      : partial
      ? `${stem}-partial.png`
      : o.out;
    const images = page;
    page = [];
    await writeGrid(pipe, images, path, o.cols);
    o.files.push(path);
  };
  return {
    add: async (image) => {
      page.push(image);
      if (page.length === o.perPage) await write();
    },
    flush: write,
  };
}

/** Writes a grid; if that fails, the images are saved one by one so that none is lost. */
async function writeGrid(
  pipe: AnthosPipeline,
  images: GeneratedImage[],
  path: string,
  cols: number | undefined,
): Promise<void> {
  try {
    await writeFileAtomic(path, await pipe.grid(images, { cols }));
  } catch (e) {
    const dir = `${path.replace(/\.png$/i, "")}-images`;
    let kept = `saved the ${images.length} image(s) one by one in ${dir}/`;
    try {
      for (const im of images) await im.save(`${dir}/${String(im.index + 1).padStart(4, "0")}.png`);
    } catch (e2) {
      kept = `saving them one by one in ${dir}/ failed too (${(e2 as Error).message})`;
    }
    throw new Error(`could not write the grid ${path} (${(e as Error).message}); ${kept}`);
  }
}

if (import.meta.main) runMain(main);
