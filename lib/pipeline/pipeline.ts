/**
 * `AnthosPipeline`: class names in, flower images out. It reads a published model folder
 * (`weights/config.json`, `weights/model.safetensors`, `weights/classes.txt`), loads the
 * autoencoder the model was trained with, and turns a class selection into 256x256 RGB images:
 * seeded noise -> {@link sample} (Heun/Euler with CFG) -> autoencoder decode -> 8-bit pixels.
 *
 * Reproducibility: image `i` of a request (class-major order: every image of the first class,
 * then the second, ...) starts from noise drawn by `Rng(imageSeed(seed, i))`, so a request's
 * images do not depend on `batchSize`, and the first images of a larger request equal those of a
 * smaller one with the same seed.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import type { Autoencoder, AutoencoderKind } from "../autoencoders/autoencoder.ts";
import type { BackendName } from "../runtime/backend.ts";
import { type ClassNames, parseClassSelection } from "./classes.ts";
import type { DiT } from "../model/dit.ts";
import { checkCfgScale, sample, type SamplerName } from "../model/flow.ts";
import {
  encodePng,
  type GridLayout,
  gridLayout,
  type RawImage,
  tensorToRaw,
} from "../io/pixels.ts";
import { writeFileAtomic } from "../io/fs.ts";
import { checkSeed, deriveSeed, IMAGE_NOISE_STREAM, Rng } from "../runtime/rng.ts";
import { type ModelStatus, modelStatus, type WeightsConfig } from "../model/weights.ts";
import { markMissing } from "../runtime/errors.ts";

// This module runs unchanged in the browser demo (web/): it imports nothing that needs Deno or
// sharp. The Deno-only parts (reading a model folder, sharp grids) are imported on demand, and the
// browser bundle leaves them out (lib/web/bundle.ts).

/** Options of {@link AnthosPipeline.load}. */
export interface PipelineLoadOptions {
  /** Folder holding `weights/` (config.json, model.safetensors, classes.txt); default ".". */
  repoDir?: string;
  /** Start and activate this tfjs backend first; default: keep the current backend. */
  backend?: BackendName;
  /** Autoencoder to decode with; default the one in config.json ("taesd" = fast previews). */
  vae?: AutoencoderKind;
  /** Local folder with the autoencoder's files (else the Anthos cache / the hub). */
  vaeDir?: string;
  /** Model weights file instead of `weights/model.safetensors`. */
  weights?: string;
}

/** The loaded parts of a pipeline (see {@link AnthosPipeline.fromParts}). */
export interface PipelineParts {
  /** The denoising model. */
  model: DiT;
  /** The autoencoder to decode with (a decode-only TAESD is enough). */
  vae: Autoencoder;
  /** The class vocabulary. */
  classes: ClassNames;
  /** `weights/config.json`. */
  config: WeightsConfig;
}

/** Progress of {@link AnthosPipeline.generate}. */
export interface GenerateProgress {
  /** Work units done: one per sampling step of each batch, plus one per batch decode. */
  done: number;
  /** Work units in the whole request. */
  total: number;
  /** Images finished (decoded) so far. */
  images: number;
  /** Images in the request. */
  totalImages: number;
  /** What just finished. */
  phase: "sample" | "decode";
}

/** Options of {@link AnthosPipeline.generate}. */
export interface GenerateOptions {
  /** Images per selected class (default 1). */
  nPerClass?: number;
  /** Seed of the noise, an integer in 0 ..= 2^32 - 1 (default 0). */
  seed?: number;
  /** Sampling steps (default from config.json, 50 for the published model). */
  steps?: number;
  /** Classifier-free guidance scale, 0..50 (default from config.json, 4.0). */
  cfgScale?: number;
  /** "heun" or "euler" (default from config.json, "heun"). */
  sampler?: SamplerName;
  /** Images sampled together (default 16); results do not depend on it. */
  batchSize?: number;
  /** Images decoded together (default 4); bounds the autoencoder's memory. */
  decodeBatchSize?: number;
  /** Called after every sampling step and every decode. */
  onProgress?: (progress: GenerateProgress) => void;
  /**
   * Called (and awaited) with each image as soon as it is decoded, in request order: save images
   * as they come, so a long request keeps what it made even if it stops early.
   */
  onImage?: (image: GeneratedImage) => void | Promise<void>;
  /** Return the images (default true); `false` keeps memory flat when `onImage` saves them. */
  keepImages?: boolean;
}

/** Options of {@link AnthosPipeline.grid}. */
export interface PipelineGridOptions {
  /** Tiles per row (default ceil(sqrt(n))). */
  cols?: number;
  /** Captions under the tiles: `true` (default) = class names, `false` = none, or your own. */
  captions?: boolean | string[];
}

/**
 * One generated image: 256x256 RGB pixels and where they came from.
 *
 * @example
 * ```ts
 * import { AnthosPipeline } from "./pipeline.ts";
 * const pipe = await AnthosPipeline.load({ repoDir: "." });
 * const [img] = await pipe.generate("rose", { seed: 1 });
 * console.log(img.className, img.width, img.height); // "rose" 256 256
 * await img.save("rose.png");
 * ```
 */
export class GeneratedImage implements RawImage {
  /** Class id (0-based, as in classes.txt). */
  readonly classId: number;
  /** Class name from classes.txt. */
  readonly className: string;
  /** Position in the request (the noise stream it was drawn from). */
  readonly index: number;
  /** The request's seed. */
  readonly seed: number;
  /** Width in pixels. */
  readonly width: number;
  /** Height in pixels. */
  readonly height: number;
  /** Channels: always 3 (RGB). */
  readonly channels = 3;
  /** Interleaved RGB bytes, row-major, `width * height * 3` long. */
  readonly pixels: Uint8Array;

  /** Wraps decoded pixels (the pipeline makes these; you rarely need to). */
  constructor(
    raw: RawImage,
    meta: { classId: number; className: string; index: number; seed: number },
  ) {
    if (raw.channels !== 3) throw new Error(`expected RGB pixels, got ${raw.channels} channels`);
    this.pixels = raw.data;
    this.width = raw.width;
    this.height = raw.height;
    this.classId = meta.classId;
    this.className = meta.className;
    this.index = meta.index;
    this.seed = meta.seed;
  }

  /** The pixels (the {@link RawImage} view, for image helpers). */
  get data(): Uint8Array {
    return this.pixels;
  }

  /**
   * PNG bytes of the image.
   *
   * @example
   * ```ts
   * import { AnthosPipeline } from "./pipeline.ts";
   * const pipe = await AnthosPipeline.load();
   * const [img] = await pipe.generate(73);
   * const png = await img.png(); // Uint8Array starting with \x89PNG
   * ```
   */
  png(): Promise<Uint8Array> {
    return encodePng(this);
  }

  /**
   * Writes the image as a PNG file, atomically (a crash never leaves half a file).
   *
   * @example
   * ```ts
   * import { AnthosPipeline } from "./pipeline.ts";
   * const pipe = await AnthosPipeline.load();
   * const [img] = await pipe.generate("sunflower");
   * await img.save("sunflower.png");
   * ```
   */
  async save(path: string): Promise<void> {
    await writeFileAtomic(path, await this.png());
  }

  /** Jupyter's display protocol (Deno kernel): the image shows itself when it is a cell's value. */
  async [Symbol.for("Jupyter.display")](): Promise<Record<string, string>> {
    return {
      "image/png": toBase64(await this.png()),
      "text/plain": `${this.className} (class ${this.classId}, seed ${this.seed}, #${this.index})`,
    };
  }
}

/**
 * The text-to-image pipeline of a trained Anthos model.
 *
 * @example
 * ```ts
 * import { AnthosPipeline } from "./pipeline.ts";
 * const pipe = await AnthosPipeline.load({ repoDir: ".", backend: "wasm" });
 * const images = await pipe.generate("rose,sunflower,daffodil", { nPerClass: 2, seed: 42 });
 * await Deno.writeFile("grid.png", await pipe.grid(images, { cols: 2 }));
 * pipe.dispose();
 * ```
 */
export class AnthosPipeline {
  /** The denoising model. */
  readonly model: DiT;
  /** The autoencoder used for decoding. */
  readonly vae: Autoencoder;
  /** The class vocabulary (`weights/classes.txt`). */
  readonly classes: ClassNames;
  /** `weights/config.json` (architecture, sampling defaults, latent space). */
  readonly config: WeightsConfig;

  /**
   * How far the training behind these weights got (null when config.json does not say): an
   * early checkpoint of a run samples fine, but its images are not flowers yet.
   *
   * @example
   * ```ts
   * import { AnthosPipeline } from "./pipeline.ts";
   * const pipe = await AnthosPipeline.load();
   * console.log(pipe.status?.text ?? "weights without training provenance");
   * ```
   */
  get status(): ModelStatus | null {
    return modelStatus(this.config);
  }

  private constructor(model: DiT, vae: Autoencoder, classes: ClassNames, config: WeightsConfig) {
    this.model = model;
    this.vae = vae;
    this.classes = classes;
    this.config = config;
  }

  /**
   * Loads the model, its class names and the autoencoder from `repoDir/weights/`. Missing files
   * are reported together, with how to get them.
   *
   * @example
   * ```ts
   * import { AnthosPipeline } from "./pipeline.ts";
   * const pipe = await AnthosPipeline.load({ repoDir: ".", vae: "taesd", vaeDir: "../shared/weights/taesd" });
   * ```
   */
  static async load(options: PipelineLoadOptions = {}): Promise<AnthosPipeline> {
    const { loadPipelineParts } = await import("./local.ts");
    return AnthosPipeline.fromParts(await loadPipelineParts(options));
  }

  /**
   * A pipeline from parts already loaded: no file access, so it works anywhere (the browser demo
   * fetches the files and builds the parts with `parseWeightsConfig`, `ClassNames.parse`,
   * `DiT.load(bytes)` and `Taesd.load({ decoder })`). Checks that the parts belong together.
   *
   * @example
   * ```ts
   * import { AnthosPipeline } from "./pipeline.ts";
   * import { ClassNames } from "./classes.ts";
   * import { DiT } from "../model/dit.ts";
   * import { Taesd } from "../autoencoders/taesd.ts";
   * import { parseWeightsConfig } from "../model/weights.ts";
   * const config = parseWeightsConfig(await (await fetch("/weights/config.json")).text());
   * const pipe = AnthosPipeline.fromParts({
   *   config,
   *   classes: ClassNames.parse(await (await fetch("/weights/classes.txt")).text()),
   *   model: await DiT.load(new Uint8Array(await (await fetch("/weights/model.safetensors")).arrayBuffer()), { config: config.model }),
   *   vae: await Taesd.load({ decoder: new Uint8Array(await (await fetch("/vae/taesd_decoder.safetensors")).arrayBuffer()) }),
   * });
   * ```
   */
  static fromParts(parts: PipelineParts): AnthosPipeline {
    const { model, vae, classes, config } = parts;
    if (classes.size !== config.model.numClasses || model.config.numClasses !== classes.size) {
      throw markMissing(
        new Error(
          `${classes.source} lists ${classes.size} classes but the model config says ` +
            `${config.model.numClasses} (the weights have ${model.config.numClasses}): they come ` +
            `from different models; export them together with exportCheckpoint()`,
        ),
        "weights",
      );
    }
    return new AnthosPipeline(model, vae, classes, config);
  }

  /**
   * Class ids of a selection: "all", a comma-separated string of names/ids, an array, or one id.
   *
   * @example
   * ```ts
   * import { AnthosPipeline } from "./pipeline.ts";
   * const pipe = await AnthosPipeline.load();
   * pipe.classIds(" Rose, SUNFLOWER ,42"); // [73, 53, 42]
   * ```
   */
  classIds(classes: string | number | readonly (string | number)[]): number[] {
    return parseClassSelection(classes, this.classes);
  }

  /**
   * Generates `nPerClass` images of every selected class, in class-major order. Same seed and
   * options -> the same images, whatever `batchSize`.
   *
   * @example
   * ```ts
   * import { AnthosPipeline } from "./pipeline.ts";
   * const pipe = await AnthosPipeline.load();
   * const all = await pipe.generate("all", { seed: 0 }); // 102 images
   * const one = await pipe.generate(73, { steps: 100, cfgScale: 2.5, sampler: "euler", seed: 7 });
   * ```
   */
  async generate(
    classes: string | number | readonly (string | number)[],
    options: GenerateOptions = {},
  ): Promise<GeneratedImage[]> {
    const o = this.#resolve(options);
    const ids = this.classIds(classes).flatMap((id) => Array<number>(o.nPerClass).fill(id));
    const n = ids.length;
    const batches = Math.ceil(n / o.batchSize);
    const total = batches * (o.steps + 1);
    let done = 0;
    let made = 0;
    const out: GeneratedImage[] = [];
    const { inputSize, inChannels } = this.model.config;
    const [h, w, c] = [inputSize, inputSize, inChannels];
    for (let start = 0; start < n; start += o.batchSize) {
      const end = Math.min(n, start + o.batchSize);
      const noiseValues = new Float32Array((end - start) * h * w * c);
      for (let i = start; i < end; i++) {
        const rng = new Rng(imageSeed(o.seed, i));
        noiseValues.set(rng.normalArray(h * w * c), (i - start) * h * w * c);
      }
      const noise = tf.tensor4d(noiseValues, [end - start, h, w, c]); // [B, 32, 32, 4]
      let latents: tf.Tensor4D;
      try {
        latents = await sample(this.model, noise, ids.slice(start, end), {
          steps: o.steps,
          cfgScale: o.cfgScale,
          sampler: o.sampler,
          onStep: () => {
            done++;
            o.onProgress?.({ done, total, images: made, totalImages: n, phase: "sample" });
          },
        });
      } finally {
        noise.dispose();
      }
      try {
        for (let d = 0; d < end - start; d += o.decodeBatchSize) {
          const size = Math.min(o.decodeBatchSize, end - start - d);
          const rgb = tf.tidy(() =>
            this.vae.decode(tf.slice(latents, [d, 0, 0, 0], [size, -1, -1, -1]))
          ); // [b, 256, 256, 3]
          const tiles = tf.unstack(rgb); // b x [256, 256, 3]
          rgb.dispose();
          try {
            for (const tile of tiles) {
              const i = made++; // index in the request
              const image = new GeneratedImage(await tensorToRaw(tile), {
                classId: ids[i],
                className: this.classes.name(ids[i]),
                index: i,
                seed: o.seed,
              });
              if (o.keepImages) out.push(image);
              await o.onImage?.(image);
            }
          } finally {
            tf.dispose(tiles);
          }
        }
      } finally {
        latents.dispose();
      }
      done++;
      o.onProgress?.({ done, total, images: made, totalImages: n, phase: "decode" });
    }
    return out;
  }

  /**
   * Lays images out as one PNG grid, captioned with their class names.
   *
   * @example
   * ```ts
   * import { AnthosPipeline } from "./pipeline.ts";
   * const pipe = await AnthosPipeline.load();
   * const images = await pipe.generate("rose,tulip", { nPerClass: 3 });
   * await Deno.writeFile("grid.png", await pipe.grid(images, { cols: 3 }));
   * ```
   */
  async grid(images: readonly RawImage[], options: PipelineGridOptions = {}): Promise<Uint8Array> {
    const { makeGrid } = await import("../io/image.ts"); // sharp: Deno only
    const captions = options.captions ?? true;
    return await makeGrid([...images], {
      cols: options.cols,
      captions: captions === true
        ? images.map((im, i) => im instanceof GeneratedImage ? im.className : `#${i}`)
        : captions === false
        ? undefined
        : captions,
    });
  }

  /**
   * The layout and pixel size of the grid {@link AnthosPipeline.grid} would make of `count`
   * images, known before generating any: check it against {@link MAX_GRID_PIXELS} up front.
   *
   * @example
   * ```ts
   * import { AnthosPipeline } from "./pipeline.ts";
   * import { MAX_GRID_PIXELS } from "../io/pixels.ts";
   * const pipe = await AnthosPipeline.load();
   * const g = pipe.gridSize(4000, { cols: 4000 });
   * if (g.width * g.height > MAX_GRID_PIXELS) console.log("too large for one grid: use pages");
   * ```
   */
  gridSize(count: number, options: PipelineGridOptions = {}): GridLayout {
    // The autoencoders decode each latent pixel to an 8x8 block of image pixels.
    const side = this.model.config.inputSize * 8;
    return gridLayout(count, {
      tileWidth: side,
      tileHeight: side,
      cols: options.cols,
      captions: options.captions !== false,
    });
  }

  /** Frees the model's and the autoencoder's weights. */
  dispose(): void {
    this.model.dispose();
    this.vae.dispose();
  }

  #resolve(
    options: GenerateOptions,
  ): Required<Omit<GenerateOptions, "onProgress" | "onImage">> & {
    onProgress?: GenerateOptions["onProgress"];
    onImage?: GenerateOptions["onImage"];
  } {
    const d = this.config.sampling;
    const o = {
      nPerClass: options.nPerClass ?? 1,
      seed: options.seed ?? 0,
      steps: options.steps ?? d.steps,
      cfgScale: options.cfgScale ?? d.cfgScale,
      sampler: options.sampler ?? d.sampler,
      batchSize: options.batchSize ?? 16,
      decodeBatchSize: options.decodeBatchSize ?? 4,
      onProgress: options.onProgress,
      onImage: options.onImage,
      keepImages: options.keepImages ?? true,
    };
    const positiveInt = (name: string, v: number, hint: string) => {
      if (!Number.isInteger(v) || v < 1) {
        throw new RangeError(`${name} must be a positive integer, got ${v}: ${hint}`);
      }
    };
    positiveInt("nPerClass", o.nPerClass, "ask for at least one image per class");
    positiveInt("steps", o.steps, `use e.g. ${d.steps} (the model's default); fewer is faster`);
    positiveInt("batchSize", o.batchSize, "use e.g. 16 (larger uses more memory)");
    positiveInt("decodeBatchSize", o.decodeBatchSize, "use e.g. 4");
    checkSeed(o.seed, "seed");
    checkCfgScale(o.cfgScale, "cfgScale");
    if (o.sampler !== "heun" && o.sampler !== "euler") {
      throw new RangeError(`unknown sampler "${o.sampler}": use "heun" or "euler"`);
    }
    return o;
  }
}

/**
 * The noise seed of image `index` of a request with seed `seed` (a 32-bit hash of both), so each
 * image has its own stream whatever the batching.
 *
 * @example
 * ```ts
 * import { imageSeed } from "./pipeline.ts";
 * import { checkSeed, Rng } from "../runtime/rng.ts";
 * const noise = new Rng(imageSeed(42, 0)).normalArray(32 * 32 * 4); // image 0 of seed 42
 * ```
 */
export function imageSeed(seed: number, index: number): number {
  return deriveSeed(seed, IMAGE_NOISE_STREAM, index);
}

function toBase64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}
