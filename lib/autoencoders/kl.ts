/**
 * The Stable Diffusion VAE (diffusers `AutoencoderKL`, e.g. stabilityai/sd-vae-ft-ema) in
 * TensorFlow.js, NHWC throughout. Maths, key names and file layout as `AutoencoderKL` in
 * `shared/spec/vae_ref.py`; the channel layout comes from the folder's `config.json`, so any
 * config of this family loads (the published one is {@link SD_VAE_FT_EMA_CONFIG}).
 *
 * Encoder: conv_in, down blocks (ResNet blocks; all but the last end in a downsample that pads
 * right/bottom by 1 and applies a stride-2 3x3 conv), mid block (ResNet, single-head
 * self-attention, ResNet), GroupNorm + SiLU, conv_out to 2 x latent channels, quant_conv (1x1)
 * -> mean and logvar (clamped to [-30, 20]) of a diagonal Gaussian.
 * Decoder: post_quant_conv (1x1), conv_in, mid block, up blocks of layers_per_block + 1 ResNets
 * (all but the last end in nearest x2 upsampling + 3x3 conv), GroupNorm + SiLU, conv_out.
 *
 * Weights load from the diffusers `diffusion_pytorch_model.safetensors`, with the current
 * (`to_q/to_k/to_v/to_out.0`) or legacy (`query/key/value/proj_attn`) attention key names.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import {
  type Autoencoder,
  checkImageBatch,
  checkLatentBatch,
  type EncodeOptions,
  SD_SCALING_FACTOR,
} from "./autoencoder.ts";
import { Rng } from "../runtime/rng.ts";
import { checkFinite, type RawTensor, readSafetensors } from "../io/safetensors.ts";
import { checkStateDict, torchToTf } from "../io/state_dict.ts";
import { silu } from "../model/ops.ts";

/** The config.json fields this implementation reads (diffusers names). */
export interface AutoencoderKLConfig {
  /** Image channels in (3). */
  in_channels: number;
  /** Image channels out (3). */
  out_channels: number;
  /** Latent channels (4). */
  latent_channels: number;
  /** Channels per resolution level, highest resolution first. */
  block_out_channels: number[];
  /** ResNet blocks per encoder level (the decoder has one more). */
  layers_per_block: number;
  /** GroupNorm groups (32). */
  norm_num_groups: number;
  /** Multiplies the posterior to give unit-variance latents (SD_SCALING_FACTOR for SD 1.x). */
  scaling_factor: number;
}

/** The published stabilityai/sd-vae-ft-ema config (`SD_VAE_FT_EMA` in vae_ref.py). */
export const SD_VAE_FT_EMA_CONFIG: Readonly<AutoencoderKLConfig> = Object.freeze({
  in_channels: 3,
  out_channels: 3,
  latent_channels: 4,
  block_out_channels: [128, 256, 512, 512],
  layers_per_block: 2,
  norm_num_groups: 32,
  scaling_factor: SD_SCALING_FACTOR,
});

/** The diagonal Gaussian posterior, NHWC, unscaled. */
export interface Posterior {
  /** `[N, h, w, latent_channels]` mean. */
  mean: tf.Tensor4D;
  /** `[N, h, w, latent_channels]` log variance, clamped to [-30, 20]. */
  logvar: tf.Tensor4D;
}

const EPS = 1e-6; // GroupNorm epsilon of the SD VAE
const ATTN = ["to_q", "to_k", "to_v", "to_out.0"];
const LEGACY: Record<string, string> = {
  query: "to_q",
  key: "to_k",
  value: "to_v",
  proj_attn: "to_out.0",
};

/**
 * The SD VAE. Images are `[N, H, W, 3]` in [0, 1] with H, W multiples of 8 (256 for Anthos),
 * latents `[N, H/8, W/8, 4]`, already multiplied by `scaling_factor`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { AutoencoderKL } from "./kl.ts";
 * const vae = await AutoencoderKL.load("../shared/spec/golden_vae/kl");
 * const lat = vae.encode(tf.zeros([1, 64, 64, 3]));   // [1, 8, 8, 4]
 * const rgb = vae.decode(lat);                        // [1, 64, 64, 3] in [0, 1]
 * vae.dispose();
 * ```
 */
export class AutoencoderKL implements Autoencoder {
  /** Which autoencoder this is. */
  readonly kind = "sd-vae-ft-ema" as const;
  /** The architecture config. */
  readonly config: Readonly<AutoencoderKLConfig>;
  #w: Map<string, tf.Tensor>;

  private constructor(config: AutoencoderKLConfig, weights: Map<string, tf.Tensor>) {
    this.config = config;
    this.#w = weights;
  }

  /**
   * Loads a diffusers AutoencoderKL folder: `config.json` + `diffusion_pytorch_model.safetensors`
   * (or another weight file named by `weights`).
   *
   * @example
   * ```ts
   * import { AutoencoderKL } from "./kl.ts";
   * const vae = await AutoencoderKL.load("../shared/spec/golden_vae/kl");
   * ```
   */
  static async load(dir: string, options: { weights?: string } = {}): Promise<AutoencoderKL> {
    const cfgPath = `${dir}/config.json`;
    let text: string;
    try {
      text = await Deno.readTextFile(cfgPath);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new Error(
          `AutoencoderKL config not found: ${cfgPath}. The folder must hold a diffusers ` +
            `AutoencoderKL (config.json + diffusion_pytorch_model.safetensors).`,
        );
      }
      throw e;
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new Error(`${cfgPath} is not valid JSON (${(e as Error).message}): download it again`);
    }
    const config = parseKLConfig(json, cfgPath);
    const wPath = options.weights ?? `${dir}/diffusion_pytorch_model.safetensors`;
    const { tensors } = await readSafetensors(wPath, { what: "AutoencoderKL weights" });
    checkFinite(tensors, { source: wPath });
    return AutoencoderKL.fromTensors(config, tensors, { source: wPath });
  }

  /**
   * Builds the model from a config and PyTorch-layout tensors (as read from safetensors).
   * Every expected key must be present with its shape, and no other key.
   *
   * @example
   * ```ts
   * import { AutoencoderKL, parseKLConfig } from "./kl.ts";
   * import { readSafetensors } from "../io/safetensors.ts";
   * const dir = "../shared/spec/golden_vae/kl";
   * const cfg = parseKLConfig(JSON.parse(await Deno.readTextFile(`${dir}/config.json`)));
   * const { tensors } = await readSafetensors(`${dir}/diffusion_pytorch_model.safetensors`);
   * const vae = AutoencoderKL.fromTensors(cfg, tensors);
   * ```
   */
  static fromTensors(
    config: AutoencoderKLConfig,
    tensors: Map<string, RawTensor>,
    options: { source?: string } = {},
  ): AutoencoderKL {
    const where = options.source ?? "AutoencoderKL weights";
    const fail = (msg: string): never => {
      throw new Error(
        `${where}: ${msg}. The weights do not match config.json (block_out_channels ` +
          `[${config.block_out_channels}], layers_per_block ${config.layers_per_block}); ` +
          `use the config.json that came with these weights.`,
      );
    };
    const want = klWeightShapes(config);
    const renamed = new Map<string, RawTensor>();
    for (const [k, t] of tensors) {
      // Legacy attention names (query/key/value/proj_attn) -> current ones.
      const m = /^(.*\.attentions\.\d+\.)(query|key|value|proj_attn)(\.(?:weight|bias))$/.exec(k);
      const name = m && want.has(m[1] + LEGACY[m[2]] + m[3]) ? m[1] + LEGACY[m[2]] + m[3] : k;
      if (renamed.has(name)) fail(`key "${k}" given twice (current and legacy attention names)`);
      renamed.set(name, t);
    }
    checkStateDict(renamed, want, {
      what: where,
      // Attention projections may be stored as 1x1 convs [out, in, 1, 1] (older checkpoints).
      alsoAccept: (_k, shape, expected) =>
        expected.length === 2 && shape.join() === [...expected, 1, 1].join(),
      hint: `The weights do not match config.json (block_out_channels ` +
        `[${config.block_out_channels}], layers_per_block ${config.layers_per_block}); ` +
        `use the config.json that came with these weights.`,
    });
    const weights = new Map<string, tf.Tensor>();
    try {
      for (const [k, shape] of want) weights.set(k, torchToTf(renamed.get(k)!, shape));
    } catch (e) {
      weights.forEach((t) => t.dispose());
      throw e;
    }
    return new AutoencoderKL({ ...config }, weights);
  }

  /**
   * A model with random weights (for benchmarks and shape tests): convs and linears
   * U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as PyTorch's default init, biases zero, GroupNorm identity.
   *
   * @example
   * ```ts
   * import { AutoencoderKL, SD_VAE_FT_EMA_CONFIG } from "./kl.ts";
   * const vae = AutoencoderKL.random(SD_VAE_FT_EMA_CONFIG, { seed: 0 });
   * ```
   */
  static random(config: AutoencoderKLConfig, options: { seed?: number } = {}): AutoencoderKL {
    const rng = new Rng(options.seed ?? 0);
    const tensors = new Map<string, RawTensor>();
    for (const [k, shape] of klWeightShapes(config)) {
      const n = shape.reduce((a, b) => a * b, 1);
      let data: Float32Array;
      if (shape.length === 1) {
        data = new Float32Array(n);
        if (/norm.*\.weight$/.test(k)) data.fill(1);
      } else {
        // PyTorch's default conv/linear init: U(-b, b), b = 1 / sqrt(fan_in) (and cheap to draw).
        const b = 1 / Math.sqrt(shape.slice(1).reduce((x, y) => x * y, 1));
        data = rng.uniformArray(n);
        for (let i = 0; i < n; i++) data[i] = (2 * data[i] - 1) * b;
      }
      tensors.set(k, { dtype: "F32", shape, data });
    }
    return AutoencoderKL.fromTensors({ ...config }, tensors, { source: "random weights" });
  }

  /**
   * Images `[N, H, W, 3]` in [0, 1] -> scaled latents `[N, H/8, W/8, C]`: the posterior mean
   * times `scaling_factor`, or with `{ sample: true, seed }` a draw from the posterior.
   *
   * @example
   * ```ts
   * import * as tf from "@tensorflow/tfjs-core";
   * import { AutoencoderKL } from "./kl.ts";
   * const vae = await AutoencoderKL.load("../shared/spec/golden_vae/kl");
   * const z = vae.encode(tf.zeros([1, 64, 64, 3]), { sample: true, seed: 1 });
   * ```
   */
  encode(images: tf.Tensor4D, options: EncodeOptions = {}): tf.Tensor4D {
    if (options.sample && options.seed === undefined) {
      throw new Error("encode({ sample: true }) needs a seed: pass { sample: true, seed }");
    }
    const { mean, logvar } = this.posterior(images);
    return tf.tidy(() => {
      let z: tf.Tensor4D = mean;
      if (options.sample) {
        const eps = tf.tensor(new Rng(options.seed).normalArray(mean.size), mean.shape);
        z = tf.add(mean, tf.mul(tf.exp(tf.mul(logvar, 0.5)), eps)); // mean + std * eps
      }
      const out = tf.mul(z, this.config.scaling_factor) as tf.Tensor4D;
      mean.dispose();
      logvar.dispose();
      return out;
    });
  }

  /**
   * The posterior of images `[N, H, W, 3]` in [0, 1] (fed to the encoder as `image * 2 - 1`):
   * unscaled mean and clamped logvar, NHWC. The caller disposes both.
   *
   * @example
   * ```ts
   * import * as tf from "@tensorflow/tfjs-core";
   * import { AutoencoderKL } from "./kl.ts";
   * const vae = await AutoencoderKL.load("../shared/spec/golden_vae/kl");
   * const { mean, logvar } = vae.posterior(tf.zeros([1, 64, 64, 3]));
   * ```
   */
  posterior(images: tf.Tensor4D): Posterior {
    checkImageBatch(images);
    const [, h, w] = images.shape;
    const f = 2 ** (this.config.block_out_channels.length - 1);
    if (h % f !== 0 || w % f !== 0) {
      throw new Error(
        `the SD VAE needs image sides that are multiples of ${f}, got ${h}x${w}: resize to 256x256`,
      );
    }
    this.#alive();
    const moments = this.#encoder(images); // [N, h, w, 2L]
    return tf.tidy(() => {
      const L = this.config.latent_channels;
      const [mean, logvar] = tf.split(moments, [L, L], 3) as [tf.Tensor4D, tf.Tensor4D];
      moments.dispose();
      return { mean, logvar: tf.clipByValue(logvar, -30, 20) };
    });
  }

  /**
   * Scaled latents `[N, h, w, C]` -> images `[N, 8h, 8w, 3]` in [0, 1]:
   * `clip((decoder(post_quant_conv(l / scaling_factor)) + 1) / 2, 0, 1)`.
   *
   * @example
   * ```ts
   * import * as tf from "@tensorflow/tfjs-core";
   * import { AutoencoderKL } from "./kl.ts";
   * const vae = await AutoencoderKL.load("../shared/spec/golden_vae/kl");
   * const rgb = vae.decode(tf.zeros([1, 8, 8, 4]));
   * ```
   */
  decode(latents: tf.Tensor4D): tf.Tensor4D {
    checkLatentBatch(latents, this.config.latent_channels);
    const z = tf.div(latents, this.config.scaling_factor) as tf.Tensor4D;
    const raw = this.decodeRaw(z);
    z.dispose();
    return tf.tidy(() => {
      const out = tf.clipByValue(tf.div(tf.add(raw, 1), 2), 0, 1) as tf.Tensor4D;
      raw.dispose();
      return out;
    });
  }

  /**
   * The raw decoder output (about [-1, 1]) of *unscaled* latents, as `vae.decode(z)` in
   * vae_ref.py.
   *
   * @example
   * ```ts
   * import * as tf from "@tensorflow/tfjs-core";
   * import { AutoencoderKL } from "./kl.ts";
   * const vae = await AutoencoderKL.load("../shared/spec/golden_vae/kl");
   * const x = vae.decodeRaw(tf.zeros([1, 8, 8, 4])); // [1, 64, 64, 3]
   * ```
   */
  decodeRaw(z: tf.Tensor4D): tf.Tensor4D {
    checkLatentBatch(z, this.config.latent_channels);
    this.#alive();
    return this.#decoder(z);
  }

  /** Frees the weights. */
  dispose(): void {
    this.#w.forEach((t) => t.dispose());
    this.#w.clear();
  }

  // ---------------------------------------------------------------- networks
  // Each stage runs in its own tf.tidy, so a 256x256 pass holds only a few activations at once.

  #encoder(images: tf.Tensor4D): tf.Tensor4D {
    const ch = this.config.block_out_channels;
    let x = tidyStage(images, (im) => this.#conv("encoder.conv_in", tf.sub(tf.mul(im, 2), 1)));
    for (let i = 0; i < ch.length; i++) {
      const p = `encoder.down_blocks.${i}`;
      for (let j = 0; j < this.config.layers_per_block; j++) {
        x = tidyStage(x, (h) => this.#resnet(`${p}.resnets.${j}`, h), true);
      }
      if (i < ch.length - 1) {
        // Pad right and bottom only, then a stride-2 3x3 conv.
        x = tidyStage(x, (h) => this.#conv(`${p}.downsamplers.0.conv`, h, 2), true); // [N, H/2, W/2, C]
      }
    }
    x = this.#mid("encoder.mid_block", x);
    return tidyStage(x, (h) => {
      const out = this.#conv("encoder.conv_out", silu(this.#norm("encoder.conv_norm_out", h)));
      return this.#conv("quant_conv", out); // [N, h, w, 2L]
    }, true);
  }

  #decoder(z: tf.Tensor4D): tf.Tensor4D {
    const ch = this.config.block_out_channels;
    let x = tidyStage(z, (h) => this.#conv("decoder.conv_in", this.#conv("post_quant_conv", h)));
    x = this.#mid("decoder.mid_block", x);
    for (let i = 0; i < ch.length; i++) {
      const p = `decoder.up_blocks.${i}`;
      for (let j = 0; j <= this.config.layers_per_block; j++) {
        x = tidyStage(x, (h) => this.#resnet(`${p}.resnets.${j}`, h), true);
      }
      if (i < ch.length - 1) {
        x = tidyStage(x, (h) => {
          const [, hh, ww] = h.shape;
          const up = tf.image.resizeNearestNeighbor(h, [2 * hh, 2 * ww]); // [N, 2H, 2W, C]
          return this.#conv(`${p}.upsamplers.0.conv`, up);
        }, true);
      }
    }
    return tidyStage(x, (h) => {
      return this.#conv("decoder.conv_out", silu(this.#norm("decoder.conv_norm_out", h)));
    }, true); // [N, H, W, 3]
  }

  #mid(p: string, x: tf.Tensor4D): tf.Tensor4D {
    x = tidyStage(x, (h) => this.#resnet(`${p}.resnets.0`, h), true);
    x = tidyStage(x, (h) => this.#attention(`${p}.attentions.0`, h), true);
    return tidyStage(x, (h) => this.#resnet(`${p}.resnets.1`, h), true);
  }

  #resnet(p: string, x: tf.Tensor4D): tf.Tensor4D {
    let h = this.#conv(`${p}.conv1`, silu(this.#norm(`${p}.norm1`, x)));
    h = this.#conv(`${p}.conv2`, silu(this.#norm(`${p}.norm2`, h)));
    const skip = this.#w.has(`${p}.conv_shortcut.weight`) ? this.#conv(`${p}.conv_shortcut`, x) : x;
    return tf.add(skip, h);
  }

  /** Single-head self-attention over the h*w positions, with a residual. */
  #attention(p: string, x: tf.Tensor4D): tf.Tensor4D {
    const [n, h, w, c] = x.shape;
    const t = tf.reshape(this.#norm(`${p}.group_norm`, x), [n * h * w, c]) as tf.Tensor2D; // [N*HW, C]
    const lin = (name: string, a: tf.Tensor2D): tf.Tensor2D =>
      tf.fused.matMul({
        a,
        b: this.#w.get(`${p}.${name}.weight`) as tf.Tensor2D, // [C_in, C_out]
        bias: this.#w.get(`${p}.${name}.bias`),
      }) as tf.Tensor2D;
    const q = tf.reshape(tf.mul(lin("to_q", t), 1 / Math.sqrt(c)), [n, h * w, c]); // [N, HW, C]
    const k = tf.reshape(lin("to_k", t), [n, h * w, c]);
    const v = tf.reshape(lin("to_v", t), [n, h * w, c]);
    const attn = tf.softmax(tf.matMul(q, k, false, true)); // [N, HW, HW]
    const a = tf.reshape(tf.matMul(attn, v), [n * h * w, c]) as tf.Tensor2D; // [N*HW, C]
    return tf.add(x, tf.reshape(lin("to_out.0", a), [n, h, w, c]));
  }

  /** GroupNorm on NHWC: statistics per (sample, group) over H, W and the group's channels. */
  #norm(p: string, x: tf.Tensor4D): tf.Tensor4D {
    const [n, h, w, c] = x.shape;
    const g = this.config.norm_num_groups;
    const cg = c / g;
    // Per-channel mean and variance with a global average pool (NHWC-native, no transposes,
    // two-pass), then the group variance as the pooled variance of its channels (law of total
    // variance): mean over the group's channels of var_c + (m_c - m_g)^2. Biased, as PyTorch.
    const mc = tf.avgPool(x, [h, w], 1, "valid"); // [N, 1, 1, C]
    const vc = tf.avgPool(tf.squaredDifference(x, mc) as tf.Tensor4D, [h, w], 1, "valid"); // [N, 1, 1, C]
    const mcg = tf.reshape(mc, [n, g, cg]);
    const mg = tf.mean(mcg, 2, true); // [N, G, 1]
    const vg = tf.mean(tf.add(tf.reshape(vc, [n, g, cg]), tf.squaredDifference(mcg, mg)), 2, true);
    // eps inside the sqrt; normalisation and affine folded into y = x*a + b per (sample, channel).
    const gamma = tf.reshape(this.#w.get(`${p}.weight`)!, [1, g, cg]);
    const beta = tf.reshape(this.#w.get(`${p}.bias`)!, [1, g, cg]);
    const a = tf.mul(gamma, tf.rsqrt(tf.add(vg, EPS))); // [N, G, C/G]
    const b = tf.sub(beta, tf.mul(mg, a)); // [N, G, C/G]
    return tf.add(tf.mul(x, tf.reshape(a, [n, 1, 1, c])), tf.reshape(b, [n, 1, 1, c]));
  }

  /** Conv with PyTorch semantics: 3x3 pad 1, 1x1 pad 0, stride-2 pad right/bottom by 1. */
  #conv(p: string, x: tf.Tensor4D, stride: 1 | 2 = 1): tf.Tensor4D {
    const filter = this.#w.get(`${p}.weight`) as tf.Tensor4D; // [kh, kw, Cin, Cout]
    const pad: number | [[number, number], [number, number], [number, number], [number, number]] =
      stride === 2 ? [[0, 0], [0, 1], [0, 1], [0, 0]] : filter.shape[0] === 3 ? 1 : 0;
    return tf.fused.conv2d({ x, filter, strides: stride, pad, bias: this.#w.get(`${p}.bias`) });
  }

  #alive(): void {
    if (this.#w.size === 0) throw new Error("this AutoencoderKL was disposed: load it again");
  }
}

/**
 * Validates a diffusers AutoencoderKL config.json object and returns the fields Anthos uses.
 *
 * @example
 * ```ts
 * import { parseKLConfig } from "./kl.ts";
 * const cfg = parseKLConfig({ block_out_channels: [128, 256, 512, 512], layers_per_block: 2 });
 * ```
 */
export function parseKLConfig(json: unknown, source = "config.json"): AutoencoderKLConfig {
  const bad = (msg: string): never => {
    throw new Error(
      `${source}: ${msg}. Use a diffusers AutoencoderKL config (e.g. sd-vae-ft-ema).`,
    );
  };
  if (typeof json !== "object" || json === null || Array.isArray(json)) bad("not a JSON object");
  const o = json as Record<string, unknown>;
  const int = (k: string, dflt?: number): number => {
    const v = o[k] ?? dflt;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
      return bad(`"${k}" must be a positive integer, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  if (o._class_name !== undefined && o._class_name !== "AutoencoderKL") {
    bad(`_class_name is "${o._class_name}", expected "AutoencoderKL"`);
  }
  const ch = o.block_out_channels;
  if (!Array.isArray(ch) || ch.length < 1 || !ch.every((v) => Number.isInteger(v) && v > 0)) {
    bad(`"block_out_channels" must be a list of positive integers, got ${JSON.stringify(ch)}`);
  }
  if (o.act_fn !== undefined && o.act_fn !== "silu") bad(`act_fn "${o.act_fn}" is not supported`);
  for (
    const [k, want] of [["down_block_types", "DownEncoderBlock2D"], [
      "up_block_types",
      "UpDecoderBlock2D",
    ]]
  ) {
    const v = o[k];
    if (v !== undefined && (!Array.isArray(v) || v.some((b) => b !== want))) {
      bad(`only ${want} blocks are supported in "${k}", got ${JSON.stringify(v)}`);
    }
  }
  if (o.use_quant_conv === false || o.use_post_quant_conv === false) {
    bad("configs without quant_conv / post_quant_conv are not supported");
  }
  if (o.mid_block_add_attention === false) bad("mid blocks without attention are not supported");
  if (o.shift_factor !== undefined && o.shift_factor !== null && o.shift_factor !== 0) {
    bad(`shift_factor ${o.shift_factor} is not supported (SD 1.x-style VAEs only)`);
  }
  const sf = o.scaling_factor ?? SD_SCALING_FACTOR;
  if (typeof sf !== "number" || !(sf > 0)) bad(`"scaling_factor" must be > 0, got ${sf}`);
  const cfg: AutoencoderKLConfig = {
    in_channels: int("in_channels", 3),
    out_channels: int("out_channels", 3),
    latent_channels: int("latent_channels", 4),
    block_out_channels: (ch as number[]).slice(),
    layers_per_block: int("layers_per_block", 1),
    norm_num_groups: int("norm_num_groups", 32),
    scaling_factor: sf as number,
  };
  if (cfg.in_channels !== 3 || cfg.out_channels !== 3) {
    bad(`only RGB autoencoders are supported (in/out_channels 3)`);
  }
  for (const c of cfg.block_out_channels) {
    if (c % cfg.norm_num_groups !== 0) {
      bad(`block_out_channels ${c} is not divisible by norm_num_groups ${cfg.norm_num_groups}`);
    }
  }
  return cfg;
}

/**
 * Every weight key of a config with its PyTorch shape (current attention key names), in a
 * stable order: the state dict a diffusers AutoencoderKL of this config has.
 *
 * @example
 * ```ts
 * import { klWeightShapes, SD_VAE_FT_EMA_CONFIG } from "./kl.ts";
 * const shapes = klWeightShapes(SD_VAE_FT_EMA_CONFIG); // 248 keys
 * shapes.get("encoder.conv_in.weight"); // [128, 3, 3, 3]
 * ```
 */
export function klWeightShapes(cfg: AutoencoderKLConfig): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const conv = (p: string, cin: number, cout: number, k: number) => {
    m.set(`${p}.weight`, [cout, cin, k, k]);
    m.set(`${p}.bias`, [cout]);
  };
  const norm = (p: string, c: number) => {
    m.set(`${p}.weight`, [c]);
    m.set(`${p}.bias`, [c]);
  };
  const resnet = (p: string, cin: number, cout: number) => {
    norm(`${p}.norm1`, cin);
    conv(`${p}.conv1`, cin, cout, 3);
    norm(`${p}.norm2`, cout);
    conv(`${p}.conv2`, cout, cout, 3);
    if (cin !== cout) conv(`${p}.conv_shortcut`, cin, cout, 1);
  };
  const mid = (p: string, c: number) => {
    resnet(`${p}.resnets.0`, c, c);
    norm(`${p}.attentions.0.group_norm`, c);
    for (const a of ATTN) {
      m.set(`${p}.attentions.0.${a}.weight`, [c, c]);
      m.set(`${p}.attentions.0.${a}.bias`, [c]);
    }
    resnet(`${p}.resnets.1`, c, c);
  };
  const ch = cfg.block_out_channels;
  const L = cfg.latent_channels;
  const n = cfg.layers_per_block;
  conv("encoder.conv_in", cfg.in_channels, ch[0], 3);
  for (let i = 0; i < ch.length; i++) {
    for (let j = 0; j < n; j++) {
      resnet(
        `encoder.down_blocks.${i}.resnets.${j}`,
        j === 0 ? ch[Math.max(i - 1, 0)] : ch[i],
        ch[i],
      );
    }
    if (i < ch.length - 1) conv(`encoder.down_blocks.${i}.downsamplers.0.conv`, ch[i], ch[i], 3);
  }
  mid("encoder.mid_block", ch[ch.length - 1]);
  norm("encoder.conv_norm_out", ch[ch.length - 1]);
  conv("encoder.conv_out", ch[ch.length - 1], 2 * L, 3);
  const rc = ch.slice().reverse();
  conv("decoder.conv_in", L, rc[0], 3);
  mid("decoder.mid_block", rc[0]);
  for (let i = 0; i < rc.length; i++) {
    for (let j = 0; j <= n; j++) {
      resnet(
        `decoder.up_blocks.${i}.resnets.${j}`,
        j === 0 ? rc[Math.max(i - 1, 0)] : rc[i],
        rc[i],
      );
    }
    if (i < rc.length - 1) conv(`decoder.up_blocks.${i}.upsamplers.0.conv`, rc[i], rc[i], 3);
  }
  norm("decoder.conv_norm_out", rc[rc.length - 1]);
  conv("decoder.conv_out", rc[rc.length - 1], cfg.out_channels, 3);
  conv("quant_conv", 2 * L, 2 * L, 1);
  conv("post_quant_conv", L, L, 1);
  return m;
}

/** Runs one stage in its own tidy and frees its input unless told to keep it. */
function tidyStage(
  x: tf.Tensor4D,
  fn: (x: tf.Tensor4D) => tf.Tensor4D,
  disposeInput = false,
): tf.Tensor4D {
  const y = tf.tidy(() => fn(x));
  if (disposeInput) x.dispose();
  return y;
}
