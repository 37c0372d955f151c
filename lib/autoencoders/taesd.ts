/**
 * TAESD, the tiny autoencoder for Stable Diffusion 1.x latents (Ollin Boer Bohan, MIT licence):
 * a 1.2M-parameter conv net per side that maps 256x256 RGB in [0, 1] to the *scaled* SD latent
 * space (about sd_vae_latent * 0.18215) and back. Fast enough for previews and small runs.
 *
 * Maths as `TAESD` in `shared/spec/vae_ref.py`. Weight keys are the layer indices of the
 * PyTorch `nn.Sequential` (`taesd_encoder.safetensors` 0..14, `taesd_decoder.safetensors` 1..19).
 * Every conv is 3x3 with PyTorch `padding=1`, also the stride-2 ones: that is padding 1 on every
 * side, which TensorFlow's "same" is not for stride 2 (it pads only right/bottom), so convs pass
 * an explicit pad of 1.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { type Autoencoder, checkImageBatch, checkLatentBatch } from "./autoencoder.ts";
import { Rng } from "../runtime/rng.ts";
import { checkFinite, type RawTensor, readSafetensors } from "../io/safetensors.ts";
import { checkStateDict, torchToTf } from "../io/state_dict.ts";

/** One layer of the sequential encoder/decoder, by its index key in the weight file. */
type Layer =
  | {
    op: "conv";
    key: string;
    cin: number;
    cout: number;
    stride: 1 | 2;
    bias: boolean;
    relu: boolean;
  }
  | { op: "block"; key: string }
  | { op: "up" }
  | { op: "clamp" };

const conv = (
  key: number,
  cin: number,
  cout: number,
  o: { stride?: 1 | 2; bias?: boolean; relu?: boolean } = {},
): Layer => ({
  op: "conv",
  key: String(key),
  cin,
  cout,
  stride: o.stride ?? 1,
  bias: o.bias ?? true,
  relu: o.relu ?? false,
});
const block = (key: number): Layer => ({ op: "block", key: String(key) });
const s2 = { stride: 2, bias: false } as const;

/** Encoder: conv, Block, then 3 x (stride-2 conv, 3 Blocks), conv to 4 latent channels. */
const ENCODER: Layer[] = [
  conv(0, 3, 64),
  block(1),
  conv(2, 64, 64, s2),
  block(3),
  block(4),
  block(5),
  conv(6, 64, 64, s2),
  block(7),
  block(8),
  block(9),
  conv(10, 64, 64, s2),
  block(11),
  block(12),
  block(13),
  conv(14, 64, 4),
];

/** Decoder: clamp, conv + ReLU, then 3 x (3 Blocks, upsample, conv), Block, conv to RGB. */
const DECODER: Layer[] = [
  { op: "clamp" },
  conv(1, 4, 64, { relu: true }), // index 2 is the ReLU
  block(3),
  block(4),
  block(5),
  { op: "up" },
  conv(7, 64, 64, { bias: false }),
  block(8),
  block(9),
  block(10),
  { op: "up" },
  conv(12, 64, 64, { bias: false }),
  block(13),
  block(14),
  block(15),
  { op: "up" },
  conv(17, 64, 64, { bias: false }),
  block(18),
  conv(19, 64, 3),
];

/**
 * Where the weights come from: a folder, or the files' bytes. `{ decoder }` alone gives a
 * decode-only TAESD (what sampling needs; the browser demo downloads just the decoder).
 */
export interface TaesdSource {
  /** Folder holding `taesd_encoder.safetensors` and `taesd_decoder.safetensors`. */
  dir?: string;
  /** Encoder file bytes (instead of `dir`). */
  encoder?: Uint8Array;
  /** Decoder file bytes (instead of `dir`). */
  decoder?: Uint8Array;
}

/**
 * The TAESD autoencoder. `encode` maps `[N, H, W, 3]` images in [0, 1] (H, W multiples of 8)
 * to scaled latents `[N, H/8, W/8, 4]`; `decode` maps latents back to images clipped to [0, 1].
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { Taesd } from "./taesd.ts";
 * const vae = await Taesd.load({ dir: "../shared/weights/taesd" });
 * const lat = vae.encode(tf.zeros([1, 256, 256, 3])); // [1, 32, 32, 4]
 * const rgb = vae.decode(lat);                         // [1, 256, 256, 3]
 * vae.dispose();
 * ```
 */
export class Taesd implements Autoencoder {
  /** Which autoencoder this is. */
  readonly kind = "taesd" as const;
  /** Latent channels (4). */
  readonly latentChannels = 4;
  #w: Map<string, tf.Tensor>;

  private constructor(weights: Map<string, tf.Tensor>) {
    this.#w = weights;
  }

  /**
   * Loads the two safetensors files (BF16, F16 or F32), checking every key and shape.
   *
   * @example
   * ```ts
   * import { Taesd } from "./taesd.ts";
   * const vae = await Taesd.load({ dir: "../shared/weights/taesd" });
   * ```
   */
  static async load(source: TaesdSource): Promise<Taesd> {
    const file = (part: "encoder" | "decoder") => {
      const bytes = source[part];
      if (bytes) return { bytes, name: `taesd_${part}` };
      if (!source.dir) {
        throw new Error(
          `Taesd.load needs { dir } (folder with taesd_encoder/decoder.safetensors) or both ` +
            `{ encoder, decoder } byte arrays`,
        );
      }
      return { bytes: `${source.dir}/taesd_${part}.safetensors`, name: `taesd_${part}` };
    };
    const weights = new Map<string, tf.Tensor>();
    const decodeOnly = source.decoder !== undefined && !source.encoder && !source.dir;
    try {
      for (const [part, layers] of [["encoder", ENCODER], ["decoder", DECODER]] as const) {
        if (part === "encoder" && decodeOnly) continue;
        const f = file(part);
        const where = typeof f.bytes === "string" ? f.bytes : `${f.name} bytes`;
        const { tensors } = await readSafetensors(f.bytes, { what: `TAESD ${part} weights` });
        checkFinite(tensors, { source: where });
        for (const [k, t] of takeWeights(tensors, layers, where)) weights.set(`${part}.${k}`, t);
      }
    } catch (e) {
      weights.forEach((t) => t.dispose());
      throw e;
    }
    return new Taesd(weights);
  }

  /**
   * A TAESD with random weights (N(0, 1/fan_in), zero biases), for benchmarks and shape tests.
   *
   * @example
   * ```ts
   * import { Taesd } from "./taesd.ts";
   * const vae = Taesd.random({ seed: 0 });
   * ```
   */
  static random(options: { seed?: number } = {}): Taesd {
    const rng = new Rng(options.seed ?? 0);
    const weights = new Map<string, tf.Tensor>();
    for (const [part, layers] of [["encoder", ENCODER], ["decoder", DECODER]] as const) {
      const tensors = new Map<string, RawTensor>();
      for (const [k, shape] of layerShapes(layers)) {
        const n = shape.reduce((a, b) => a * b, 1);
        const std = 1 / Math.sqrt(n / shape[0]);
        const data = shape.length === 1
          ? new Float32Array(n)
          : rng.normalArray(n).map((v) => v * std);
        tensors.set(k, { dtype: "F32", shape, data });
      }
      for (const [k, t] of takeWeights(tensors, layers, "random")) weights.set(`${part}.${k}`, t);
    }
    return new Taesd(weights);
  }

  /**
   * Images `[N, H, W, 3]` in [0, 1] -> scaled latents `[N, H/8, W/8, 4]`.
   *
   * @example
   * ```ts
   * import * as tf from "@tensorflow/tfjs-core";
   * import { Taesd } from "./taesd.ts";
   * const vae = await Taesd.load({ dir: "../shared/weights/taesd" });
   * const lat = vae.encode(tf.zeros([1, 256, 256, 3]));
   * ```
   */
  encode(images: tf.Tensor4D): tf.Tensor4D {
    checkImageBatch(images);
    const [, h, w] = images.shape;
    if (h % 8 !== 0 || w % 8 !== 0) {
      throw new Error(
        `TAESD needs image sides that are multiples of 8, got ${h}x${w}: resize to 256x256`,
      );
    }
    if (this.#w.size > 0 && !this.#w.has("encoder.0.weight")) {
      throw new Error(
        "this TAESD was loaded decode-only ({ decoder } bytes): load it with { dir } or " +
          "{ encoder, decoder } to encode images",
      );
    }
    return tf.tidy(() => this.#run(images, ENCODER, "encoder"));
  }

  /**
   * Scaled latents `[N, h, w, 4]` -> images `[N, 8h, 8w, 3]` clipped to [0, 1].
   *
   * @example
   * ```ts
   * import * as tf from "@tensorflow/tfjs-core";
   * import { Taesd } from "./taesd.ts";
   * const vae = await Taesd.load({ dir: "../shared/weights/taesd" });
   * const rgb = vae.decode(tf.zeros([1, 32, 32, 4]));
   * ```
   */
  decode(latents: tf.Tensor4D): tf.Tensor4D {
    checkLatentBatch(latents, 4);
    return tf.tidy(() => tf.clipByValue(this.decodeRaw(latents), 0, 1));
  }

  /**
   * The decoder's raw output (before clipping), as in the golden file.
   *
   * @example
   * ```ts
   * import * as tf from "@tensorflow/tfjs-core";
   * import { Taesd } from "./taesd.ts";
   * const vae = await Taesd.load({ dir: "../shared/weights/taesd" });
   * const raw = vae.decodeRaw(tf.zeros([1, 32, 32, 4]));
   * ```
   */
  decodeRaw(latents: tf.Tensor4D): tf.Tensor4D {
    checkLatentBatch(latents, 4);
    return tf.tidy(() => this.#run(latents, DECODER, "decoder"));
  }

  /** Frees the weights. */
  dispose(): void {
    this.#w.forEach((t) => t.dispose());
    this.#w.clear();
  }

  #run(x: tf.Tensor4D, layers: Layer[], part: string): tf.Tensor4D {
    if (this.#w.size === 0) throw new Error("this TAESD was disposed: load it again");
    const w = (k: string) => this.#w.get(`${part}.${k}`)!;
    for (const l of layers) {
      if (l.op === "clamp") x = tf.mul(tf.tanh(tf.div(x, 3)), 3); // soft clamp to (-3, 3)
      else if (l.op === "up") {
        const [, h, wd] = x.shape;
        x = tf.image.resizeNearestNeighbor(x, [2 * h, 2 * wd]); // [N, 2H, 2W, C]
      } else if (l.op === "conv") {
        x = conv3x3(
          x,
          w(`${l.key}.weight`),
          l.bias ? w(`${l.key}.bias`) : undefined,
          l.stride,
          l.relu,
        );
      } else {
        // Block: conv ReLU conv ReLU conv, identity skip, ReLU.
        const c = (i: number, relu: boolean, h: tf.Tensor4D) =>
          conv3x3(h, w(`${l.key}.conv.${i}.weight`), w(`${l.key}.conv.${i}.bias`), 1, relu);
        const h = c(4, false, c(2, true, c(0, true, x)));
        x = tf.relu(tf.add(h, x));
      }
    }
    return x;
  }
}

/** 3x3 conv with PyTorch padding=1 on every side (also for stride 2). */
function conv3x3(
  x: tf.Tensor4D,
  filter: tf.Tensor,
  bias: tf.Tensor | undefined,
  stride: 1 | 2,
  relu: boolean,
): tf.Tensor4D {
  return tf.fused.conv2d({
    x,
    filter: filter as tf.Tensor4D, // [3, 3, Cin, Cout]
    strides: stride,
    pad: 1,
    bias,
    activation: relu ? "relu" : "linear",
  }); // [N, H/stride, W/stride, Cout]
}

/** Takes exactly the weights `layers` needs from a file (no more, no less), in TF layout. */
function takeWeights(
  tensors: Map<string, RawTensor>,
  layers: Layer[],
  where: string,
): Map<string, tf.Tensor> {
  const want = layerShapes(layers);
  checkStateDict(tensors, want, {
    what: where,
    hint: "Use the original TAESD weights (taesd_*.safetensors).",
  });
  const out = new Map<string, tf.Tensor>();
  try {
    for (const [k, shape] of want) out.set(k, torchToTf(tensors.get(k)!, shape));
  } catch (e) {
    out.forEach((t) => t.dispose());
    throw e;
  }
  return out;
}

/** Every weight key `layers` needs, with its PyTorch shape. */
function layerShapes(layers: Layer[]): Map<string, number[]> {
  const want = new Map<string, number[]>();
  for (const l of layers) {
    if (l.op === "conv") {
      want.set(`${l.key}.weight`, [l.cout, l.cin, 3, 3]);
      if (l.bias) want.set(`${l.key}.bias`, [l.cout]);
    } else if (l.op === "block") {
      for (const i of [0, 2, 4]) {
        want.set(`${l.key}.conv.${i}.weight`, [64, 64, 3, 3]);
        want.set(`${l.key}.conv.${i}.bias`, [64]);
      }
    }
  }
  return want;
}
