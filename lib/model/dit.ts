/**
 * DiT-Nano/2: the diffusion transformer of Anthos, in one file (as facebookresearch/DiT
 * `models.py`): configuration and presets, the sin-cos position table, the embedders, the block,
 * the final layer, unpatchify, and weight loading/saving with the reference PyTorch key names.
 *
 * `../shared/spec/dit_ref.py` is normative; names here mirror it (`xEmbedder` = `x_embedder`,
 * `adaLNModulation` = `adaLN_modulation`, ...) so the two can be read side by side.
 * Parameters are a typed tree of `tf.Variable`; {@link ditForward} is a pure function of them.
 * Latents are NHWC float32 `[N, 32, 32, 4]`; t in [0, 1] (0 = noise, 1 = data); class ids 0..101,
 * with 102 as the null (unconditional) id.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
// tfjs-core ships no gradient functions in its Node bundle; the union package registers them
// (into the global registry shared with tfjs-core), so training works on every backend.
import "@tensorflow/tfjs";
import { matmul } from "./matmul.ts";
import { isWasmBackend } from "../runtime/backend.ts";
import {
  attentionCore,
  attentionQkv,
  columnBlock,
  gatedResidual,
  layerNormFused,
  layerNormModulate,
  linearBias,
  linearNoBias,
  mergeHeads,
  modulateFused,
  siluFused,
  splitHeads,
  swigluHidden,
  timestepSinusoids,
  wgslAttention,
} from "./kernels.ts";
import { Rng } from "../runtime/rng.ts";
import {
  checkFinite,
  readSafetensors,
  type TensorToWrite,
  writeSafetensors,
} from "../io/safetensors.ts";
import { checkStateDict } from "../io/state_dict.ts";

// ---------------------------------------------------------------- configuration

/** Architecture of a DiT. The defaults are the published DiT-Nano/2. */
export interface DiTConfig {
  /** Latent side length (latents are `inputSize x inputSize`). */
  inputSize: number;
  /** Latent channels. */
  inChannels: number;
  /** Patch side length: tokens = (inputSize / patchSize)^2. */
  patchSize: number;
  /** Transformer width D. */
  hiddenSize: number;
  /** Number of DiT blocks. */
  depth: number;
  /** Attention heads (head dim = hiddenSize / numHeads). */
  numHeads: number;
  /** SwiGLU hidden width = hiddenSize * mlpRatio. */
  mlpRatio: number;
  /** Number of real classes; id `numClasses` is the null class. */
  numClasses: number;
}

/** Named architectures. `DiT-Nano/2` is Anthos (983,808 parameters). */
export const PRESETS: Readonly<Record<string, DiTConfig>> = Object.freeze({
  "DiT-Nano/2": {
    inputSize: 32,
    inChannels: 4,
    patchSize: 2,
    hiddenSize: 96,
    depth: 6,
    numHeads: 4,
    mlpRatio: 2,
    numClasses: 102,
  },
  // A tiny variant for fast tests of code paths that do not depend on the size.
  "DiT-Pico/2": {
    inputSize: 8,
    inChannels: 4,
    patchSize: 2,
    hiddenSize: 32,
    depth: 2,
    numHeads: 2,
    mlpRatio: 2,
    numClasses: 102,
  },
});

/** The published Anthos architecture (DiT-Nano/2). */
export const DEFAULT_CONFIG: Readonly<DiTConfig> = PRESETS["DiT-Nano/2"];

/**
 * Id of the null (unconditional) class used for classifier-free guidance.
 *
 * @example
 * ```ts
 * import { nullClassId } from "./dit.ts";
 * if (nullClassId() !== 102) throw new Error("the 102 flowers are 0..101; 102 is the null class");
 * ```
 */
export function nullClassId(config: DiTConfig = DEFAULT_CONFIG): number {
  return config.numClasses;
}

/**
 * Multiply-adds of one forward pass of one sample, as the DiT paper's "Gflops" count them: the
 * products of every linear layer (per token: patch embedding, qkv, attention projection, SwiGLU,
 * final projection; per sample: timestep MLP, adaLN) and of attention (`q k^T` and `p v`: 2 T^2 D
 * per block); lookups and elementwise work are not counted. A training step costs ~3x the forward
 * (the backward takes two products per forward one), so with B samples: `6 * B * forwardMacs()`
 * floating-point operations.
 *
 * @example
 * ```ts
 * import { forwardMacs } from "./dit.ts";
 * const macs = forwardMacs(); // DiT-Nano/2: 218,225,664 (0.22 G multiply-adds per sample)
 * const tflopPerStep = (6 * 256 * macs) / 1e12; // batch 256: 0.335 TFLOP per training step
 * if (Math.abs(tflopPerStep - 0.335) > 1e-3) throw new Error(String(tflopPerStep));
 * ```
 */
export function forwardMacs(config: Partial<DiTConfig> = {}): number {
  const c = resolveConfig(config);
  const D = c.hiddenSize;
  const H = Math.round(D * c.mlpRatio);
  const tokens = (c.inputSize / c.patchSize) ** 2;
  const patch = c.patchSize * c.patchSize * c.inChannels;
  const perToken = patch * D + c.depth * (3 * D * D + D * D + 3 * D * H) + D * patch;
  const perSample = 256 * D + D * D + c.depth * D * 6 * D + D * 2 * D;
  const attention = c.depth * 2 * tokens * tokens * D;
  return tokens * perToken + perSample + attention;
}

function resolveConfig(config: Partial<DiTConfig> = {}): DiTConfig {
  const c = { ...DEFAULT_CONFIG, ...config };
  if (c.inputSize % c.patchSize !== 0) {
    throw new Error(`inputSize ${c.inputSize} is not a multiple of patchSize ${c.patchSize}`);
  }
  if (c.hiddenSize % c.numHeads !== 0 || (c.hiddenSize / 2) % 2 !== 0) {
    throw new Error(
      `hiddenSize ${c.hiddenSize} must divide by numHeads ${c.numHeads} and by 4 (sin-cos table)`,
    );
  }
  return c;
}

// ---------------------------------------------------------------- parameter tree

/** A linear layer; `weight` is `[in, out]` (PyTorch stores `[out, in]`). */
export interface Linear {
  /** `[in, out]`. */
  weight: tf.Variable;
  /** `[out]`, absent for bias-free layers. */
  bias?: tf.Variable;
}

/** One DiT block's parameters. */
export interface BlockParams {
  /** Self-attention: qkv `[D, 3D]` and output projection `[D, D]`. */
  attn: { qkv: Linear; proj: Linear };
  /** SwiGLU: w3(silu(w1 x) * w2 x). */
  mlp: { w1: Linear; w2: Linear; w3: Linear };
  /** SiLU(c) -> shift/scale/gate for attention and MLP, `[D, 6D]`. */
  adaLNModulation: Linear;
}

/** The whole parameter tree. `posEmbed` is frozen (not trainable). */
export interface DiTParams {
  /** Patch embedding as a matrix `[p*p*C, D]`, rows ordered (patch row, patch col, channel). */
  xEmbedder: { proj: Linear };
  /** Timestep MLP: Linear(256, D) -> SiLU -> Linear(D, D) (`t_embedder.mlp.0` / `.2`). */
  tEmbedder: { mlp0: Linear; mlp2: Linear };
  /** Class table `[numClasses + 1, D]`; the last row is the null class. */
  yEmbedder: { embeddingTable: tf.Variable };
  /** Frozen 2D sin-cos position table `[1, T, D]`. */
  posEmbed: tf.Variable;
  /** The DiT blocks. */
  blocks: BlockParams[];
  /** Affine LayerNorm, adaLN modulation and the projection to patches. */
  finalLayer: {
    normFinal: { weight: tf.Variable; bias: tf.Variable };
    adaLNModulation: Linear;
    linear: Linear;
  };
}

/** How a parameter is laid out in the PyTorch state dict relative to ours. */
export type Layout = "linear" | "conv" | "plain";

/** One parameter with its reference key name, PyTorch shape and layout rule. */
export interface NamedParam {
  /** State-dict key of `dit_ref.py`, e.g. `blocks.0.attn.qkv.weight`. */
  key: string;
  /** The variable, in our layout. */
  variable: tf.Variable;
  /** Shape in the PyTorch state dict. */
  torchShape: number[];
  /** How our layout maps to PyTorch's. */
  layout: Layout;
}

/**
 * Every parameter with its reference (`dit_ref.py`) state-dict key, in state-dict order.
 *
 * @example
 * ```ts
 * import { DiT, namedParams } from "./dit.ts";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * const model = DiT.create();
 * const first = namedParams(model.params, model.config)[0].key;
 * if (first !== "pos_embed") throw new Error(first);
 * model.dispose();
 * ```
 */
export function namedParams(params: DiTParams, config: DiTConfig): NamedParam[] {
  const c = config;
  const p = c.patchSize;
  const out: NamedParam[] = [];
  const lin = (key: string, l: Linear) => {
    const [i, o] = l.weight.shape;
    out.push({ key: `${key}.weight`, variable: l.weight, torchShape: [o, i], layout: "linear" });
    if (l.bias) {
      out.push({ key: `${key}.bias`, variable: l.bias, torchShape: [o], layout: "plain" });
    }
  };
  const plain = (key: string, v: tf.Variable) =>
    out.push({ key, variable: v, torchShape: [...v.shape], layout: "plain" });
  plain("pos_embed", params.posEmbed);
  out.push({
    key: "x_embedder.proj.weight",
    variable: params.xEmbedder.proj.weight,
    torchShape: [c.hiddenSize, c.inChannels, p, p],
    layout: "conv",
  });
  plain("x_embedder.proj.bias", params.xEmbedder.proj.bias!);
  lin("t_embedder.mlp.0", params.tEmbedder.mlp0);
  lin("t_embedder.mlp.2", params.tEmbedder.mlp2);
  plain("y_embedder.embedding_table.weight", params.yEmbedder.embeddingTable);
  params.blocks.forEach((b, i) => {
    lin(`blocks.${i}.attn.qkv`, b.attn.qkv);
    lin(`blocks.${i}.attn.proj`, b.attn.proj);
    lin(`blocks.${i}.mlp.w1`, b.mlp.w1);
    lin(`blocks.${i}.mlp.w2`, b.mlp.w2);
    lin(`blocks.${i}.mlp.w3`, b.mlp.w3);
    lin(`blocks.${i}.adaLN_modulation.1`, b.adaLNModulation);
  });
  plain("final_layer.norm_final.weight", params.finalLayer.normFinal.weight);
  plain("final_layer.norm_final.bias", params.finalLayer.normFinal.bias);
  lin("final_layer.adaLN_modulation.1", params.finalLayer.adaLNModulation);
  lin("final_layer.linear", params.finalLayer.linear);
  return out;
}

/** Values for every parameter, in our layout, produced by `init(key, ourShape, torchShape)`. */
type Initializer = (key: string, shape: number[], torchShape: number[]) => Float32Array | tf.Tensor;

/** Builds the parameter tree with values from `init` (used by create and load alike). */
function buildParams(c: DiTConfig, init: Initializer): DiTParams {
  const D = c.hiddenSize;
  const H = Math.round(D * c.mlpRatio);
  const P = c.patchSize * c.patchSize * c.inChannels;
  const v = (key: string, shape: number[], torchShape: number[], trainable = true) => {
    const value = init(key, shape, torchShape);
    const t = value instanceof tf.Tensor ? value : tf.tensor(value, shape, "float32");
    const variable = tf.variable(t, trainable);
    t.dispose();
    return variable;
  };
  const lin = (key: string, i: number, o: number, bias = true): Linear => ({
    weight: v(`${key}.weight`, [i, o], [o, i]),
    bias: bias ? v(`${key}.bias`, [o], [o]) : undefined,
  });
  const grid = c.inputSize / c.patchSize;
  return {
    xEmbedder: {
      proj: {
        weight: v("x_embedder.proj.weight", [P, D], [D, c.inChannels, c.patchSize, c.patchSize]),
        bias: v("x_embedder.proj.bias", [D], [D]),
      },
    },
    tEmbedder: { mlp0: lin("t_embedder.mlp.0", 256, D), mlp2: lin("t_embedder.mlp.2", D, D) },
    yEmbedder: {
      embeddingTable: v("y_embedder.embedding_table.weight", [c.numClasses + 1, D], [
        c.numClasses + 1,
        D,
      ]),
    },
    posEmbed: v("pos_embed", [1, grid * grid, D], [1, grid * grid, D], false),
    blocks: Array.from({ length: c.depth }, (_, i) => ({
      attn: {
        qkv: lin(`blocks.${i}.attn.qkv`, D, 3 * D),
        proj: lin(`blocks.${i}.attn.proj`, D, D),
      },
      mlp: {
        w1: lin(`blocks.${i}.mlp.w1`, D, H),
        w2: lin(`blocks.${i}.mlp.w2`, D, H),
        w3: lin(`blocks.${i}.mlp.w3`, H, D),
      },
      adaLNModulation: lin(`blocks.${i}.adaLN_modulation.1`, D, 6 * D),
    })),
    finalLayer: {
      normFinal: {
        weight: v("final_layer.norm_final.weight", [D], [D]),
        bias: v("final_layer.norm_final.bias", [D], [D]),
      },
      adaLNModulation: lin("final_layer.adaLN_modulation.1", D, 2 * D),
      linear: lin("final_layer.linear", D, P, false),
    },
  };
}

// ---------------------------------------------------------------- position table and t embedding

/**
 * The frozen 2D sin-cos position table `[grid*grid, dim]` (DiT/MAE): token r = (i, j) with
 * i = r / grid (row), j = r % grid (column); the first dim/2 channels encode j, the last i;
 * each half is [sin(pos*omega) | cos(pos*omega)], omega_k = 1 / 10000^(k / (dim/4)).
 * Computed in float64 and rounded once, as the reference does.
 *
 * @example
 * ```ts
 * import { sincos2d } from "./dit.ts";
 * const table = sincos2d(96, 16); // 256 positions x 96 dims
 * if (table.length !== 256 * 96) throw new Error(String(table.length));
 * ```
 */
export function sincos2d(dim: number, grid: number): Float32Array {
  const out = new Float32Array(grid * grid * dim);
  const q = dim / 4;
  for (let i = 0; i < grid; i++) {
    for (let j = 0; j < grid; j++) {
      const row = (i * grid + j) * dim;
      for (let k = 0; k < q; k++) {
        const omega = 1 / 10000 ** (k / q);
        out[row + k] = Math.sin(j * omega);
        out[row + q + k] = Math.cos(j * omega);
        out[row + 2 * q + k] = Math.sin(i * omega);
        out[row + 3 * q + k] = Math.cos(i * omega);
      }
    }
  }
  return out;
}

/** Frequencies f_k = exp(-ln(10000) k / half), k < half, rounded to float32 as torch does. */
function timestepFreqs(dim: number): Float32Array {
  const half = dim / 2;
  const f = new Float32Array(half);
  // torch computes this in float32: exp(fl32(-ln(1e4)) * fl32(k) / half).
  const negLog = Math.fround(-Math.log(10000));
  for (let k = 0; k < half; k++) f[k] = Math.exp(Math.fround(Math.fround(negLog * k) / half));
  return f;
}

/**
 * Sinusoidal embedding of t (scaled by `options.scale` first; the DiT passes t in [0, 1] with
 * scale 1000): `[N] -> [N, dim]` = [cos | sin].
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { timestepEmbedding } from "./dit.ts";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * const e = timestepEmbedding(tf.tensor1d([0, 500, 1000]));
 * if (e.shape.join() !== "3,256") throw new Error(String(e.shape));
 * ```
 */
export function timestepEmbedding(
  t: tf.Tensor1D,
  dim = 256,
  options: { scale?: number } = {},
): tf.Tensor2D {
  return timestepSinusoids(t, timestepFreqs(dim), options.scale); // [N, dim]
}

// ---------------------------------------------------------------- layers

/**
 * Whether the layers take kernels.ts's closed-form gradients: on wasm they make fewer passes over
 * memory, on webgpu fewer dispatches (1,637 -> 393 per training step of DiT-Nano/2 with the WGSL
 * kernels of kernels_webgpu.ts).
 */
function fusedLayers(): boolean {
  return isWasmBackend() || tf.getBackend() === "webgpu";
}

/** `x @ W + b` on the last axis, for any leading shape. */
function linear(x: tf.Tensor, l: Linear): tf.Tensor {
  const [i, o] = l.weight.shape;
  const lead = x.shape.slice(0, -1);
  const x2 = tf.reshape(x, [-1, i]) as tf.Tensor2D; // [M, in]
  if (l.bias && fusedLayers()) {
    return tf.reshape(linearBias(x2, l.weight as tf.Tensor2D, l.bias as tf.Tensor1D), [...lead, o]);
  }
  // On webgpu a bias-free linear too gets a deterministic weight gradient (linearNoBias).
  const xw = tf.getBackend() === "webgpu"
    ? linearNoBias(x2, l.weight as tf.Tensor2D)
    : matmul(x2, l.weight); // [M, out]
  const y = l.bias ? tf.add(xw, l.bias) : xw;
  return tf.reshape(y, [...lead, o]);
}

/** LayerNorm over the last axis without affine parameters (biased variance, as torch). */
function layerNorm(x: tf.Tensor, eps = 1e-6): tf.Tensor {
  if (fusedLayers()) return layerNormFused(x, eps);
  const { mean, variance } = tf.moments(x, -1, true);
  return tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps)));
}

/** x * (1 + scale) + shift, with per-sample shift/scale `[N, D]` broadcast over tokens. */
function modulate(x: tf.Tensor, shift: tf.Tensor, scale: tf.Tensor): tf.Tensor {
  if (fusedLayers()) {
    return modulateFused(x as tf.Tensor3D, shift as tf.Tensor2D, scale as tf.Tensor2D);
  }
  const [n, d] = shift.shape;
  return tf.add(tf.mul(x, tf.add(tf.reshape(scale, [n, 1, d]), 1)), tf.reshape(shift, [n, 1, d]));
}

/** Multi-head self-attention with LayerNorm on q and k (no affine). x: [N, T, D]. */
function attention(x: tf.Tensor, p: BlockParams["attn"], heads: number): tf.Tensor {
  const [n, t, d] = x.shape;
  const hd = d / heads;
  if (wgslAttention()) {
    // One qkv product read in place by the WGSL q/k norms and attention (kernels.ts attentionQkv).
    const qkv = linear(x, p.qkv); // [N, T, 3D]
    return linear(attentionQkv(qkv as tf.Tensor3D, heads, 1e-6), p.proj);
  }
  // q, k and v as three [D, D] products (the qkv weight's column blocks; on XNNPACK three narrow
  // products beat one wide one), each split into heads with a 3D transpose (5D ones are slow on
  // wasm): [N*T, H, hd] -> [H, N*T, hd] = [H*N, T, hd], slices ordered (head, sample).
  const x2 = tf.reshape(x, [n * t, d]); // [NT, D]
  const ws = tf.split(p.qkv.weight, 3, 1); // 3 x [D, D]
  const bs = tf.split(p.qkv.bias!, 3); // 3 x [D]
  const [q0, k0, v] = [0, 1, 2].map((i) => {
    const y = fusedLayers()
      ? linearBias(x2 as tf.Tensor2D, ws[i] as tf.Tensor2D, bs[i] as tf.Tensor1D)
      : tf.add(matmul(x2, ws[i]), bs[i]); // [NT, D]
    return splitHeads(y, n, heads); // [HN, T, hd]
  });
  const q = layerNorm(q0);
  const k = layerNorm(k0);
  let a: tf.Tensor; // [HN, T, hd]
  if (fusedLayers()) {
    a = attentionCore(q as tf.Tensor3D, k as tf.Tensor3D, v as tf.Tensor3D);
  } else {
    // k is transposed once here so both products are plain (see matmul.ts).
    const logits = tf.mul(matmul(q, tf.transpose(k, [0, 2, 1])), 1 / Math.sqrt(hd)); // [HN, T, T]
    a = matmul(tf.softmax(logits), v); // [HN, T, hd]
  }
  return linear(mergeHeads(a, n, heads), p.proj); // [N, T, D] in
}

/** SwiGLU: w3(silu(w1 x) * w2 x). */
function swiglu(x: tf.Tensor, p: BlockParams["mlp"]): tf.Tensor {
  if (fusedLayers()) return linear(swigluHidden(x, p.w1, p.w2), p.w3); // [N, T, D]
  const a = linear(x, p.w1); // [N, T, H]
  const b = linear(x, p.w2); // [N, T, H]
  return linear(tf.mul(tf.mul(a, tf.sigmoid(a)), b), p.w3); // [N, T, D]
}

/** One DiT block with adaLN-Zero conditioning. x: [N, T, D], sc = silu(c): [N, D]. */
function ditBlock(x: tf.Tensor, sc: tf.Tensor, p: BlockParams, heads: number): tf.Tensor {
  // [N, 6D]: shift, scale and gate of the attention branch, then of the MLP's (read by block).
  const mod = linear(sc, p.adaLNModulation);
  const h = attention(normModulate(x, mod, 0), p.attn, heads); // [N, T, D]
  x = residual(x, mod, 2, h);
  const m = swiglu(normModulate(x, mod, 3), p.mlp); // [N, T, D]
  return residual(x, mod, 5, m);
}

/**
 * modulate(layerNorm(x), shift, scale) with shift and scale blocks `at` and `at + 1` of the adaLN
 * output `mod`, LayerNorm's affine first when given: the input of each branch and of the final
 * projection (one kernel on webgpu).
 */
function normModulate(
  x: tf.Tensor,
  mod: tf.Tensor,
  at: number,
  affine?: { weight: tf.Tensor; bias: tf.Tensor },
): tf.Tensor {
  if (fusedLayers()) {
    return layerNormModulate(x as tf.Tensor3D, mod as tf.Tensor2D, { at, eps: 1e-6, affine });
  }
  const d = x.shape[2]!;
  const y = layerNorm(x);
  const a = affine ? tf.add(tf.mul(y, affine.weight), affine.bias) : y;
  return modulate(a, columnBlock(mod, at, d), columnBlock(mod, at + 1, d));
}

/** x + gate * h, with a per-sample gate (block `at` of `mod`) broadcast over tokens. */
function residual(x: tf.Tensor, mod: tf.Tensor, at: number, h: tf.Tensor): tf.Tensor {
  if (fusedLayers()) {
    return gatedResidual(x as tf.Tensor3D, h as tf.Tensor3D, { mod: mod as tf.Tensor2D, at });
  }
  const [n, , d] = x.shape;
  return tf.add(x, tf.mul(tf.reshape(columnBlock(mod, at, d!), [n, 1, d!]), h));
}

/** Final layer: affine LayerNorm, modulation, projection to p*p*C values per token. */
function finalLayer(x: tf.Tensor, sc: tf.Tensor, p: DiTParams["finalLayer"]): tf.Tensor {
  const mod = linear(sc, p.adaLNModulation); // [N, 2D]: shift, scale
  return linear(normModulate(x, mod, 0, p.normFinal), p.linear); // [N, T, p*p*C]
}

/**
 * `[N, H, W, C]` latents -> `[N, T, p*p*C]` patches in row-major token order.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { patchify } from "./dit.ts";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * const tokens = patchify(tf.zeros([2, 32, 32, 4]), 2);
 * if (tokens.shape.join() !== "2,256,16") throw new Error(String(tokens.shape));
 * ```
 */
export function patchify(x: tf.Tensor4D, p: number): tf.Tensor3D {
  const [n, h, w, ch] = x.shape;
  const g = h / p;
  const gw = w / p;
  const blocks = tf.transpose(tf.reshape(x, [n, g, p, gw, p, ch]), [0, 1, 3, 2, 4, 5]); // [N, g, g, p, p, C]
  return tf.reshape(blocks, [n, g * gw, p * p * ch]); // [N, T, p*p*C]
}

/**
 * `[N, T, p*p*C]` -> `[N, H, W, C]`; each token's values are ordered (patch row, patch col, C).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { patchify, unpatchify } from "./dit.ts";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * const x = tf.randomNormal([2, 32, 32, 4]) as tf.Tensor4D;
 * const back = unpatchify(patchify(x, 2), 2, 4); // the exact inverse
 * if (back.shape.join() !== "2,32,32,4") throw new Error(String(back.shape));
 * if (tf.max(tf.abs(tf.sub(back, x))).dataSync()[0] !== 0) throw new Error("not the inverse");
 * ```
 */
export function unpatchify(x: tf.Tensor, p: number, ch: number): tf.Tensor4D {
  const [n, t] = x.shape;
  const g = Math.round(Math.sqrt(t));
  const rows = tf.transpose(tf.reshape(x, [n, g, g, p, p, ch]), [0, 1, 3, 2, 4, 5]); // [N, g, p, g, p, C]
  return tf.reshape(rows, [n, g * p, g * p, ch]); // [N, H, W, C]
}

// ---------------------------------------------------------------- forward

/**
 * The DiT forward pass as a pure function of the parameters.
 * x: `[N, H, W, C]` float32, t: `[N]` in [0, 1], y: `[N]` int32 -> velocity `[N, H, W, C]`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { DiT, ditForward } from "./dit.ts";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * const model = DiT.create();
 * const x = tf.zeros([1, 32, 32, 4]) as tf.Tensor4D;
 * const v = ditForward(model.params, model.config, x, tf.tensor1d([0.5]), tf.tensor1d([3], "int32"));
 * if (v.shape.join() !== "1,32,32,4") throw new Error(String(v.shape));
 * ```
 */
export function ditForward(
  params: DiTParams,
  config: DiTConfig,
  x: tf.Tensor4D,
  t: tf.Tensor1D,
  y: tf.Tensor1D,
): tf.Tensor4D {
  return tf.tidy(() => {
    const p = config.patchSize;
    // Patch embedding = a 2x2 stride-2 conv, written as patchify + matmul (same maths, one GEMM).
    let h = tf.add(linear(patchify(x, p), params.xEmbedder.proj), params.posEmbed); // [N, T, D]
    const tEmb = linear(
      siluFused(linear(timestepEmbedding(t, 256, { scale: 1000 }), params.tEmbedder.mlp0)),
      params.tEmbedder.mlp2,
    ); // [N, D]
    // Embedding lookup as one-hot @ table: exact, and its gradient is a matmul on every backend
    // (gather's gradient needs UnsortedSegmentSum, which the wasm backend lacks).
    const oneHot = tf.oneHot(y, config.numClasses + 1); // [N, K+1]
    const c = tf.add(tEmb, matmul(tf.cast(oneHot, "float32"), params.yEmbedder.embeddingTable)); // [N, D]
    // adaLN_modulation = Sequential(SiLU, Linear) in every block: silu(c) made once for all.
    const sc = siluFused(c); // [N, D]
    for (const block of params.blocks) h = ditBlock(h, sc, block, config.numHeads);
    return unpatchify(finalLayer(h, sc, params.finalLayer), p, config.inChannels); // [N, H, W, C]
  });
}

// ---------------------------------------------------------------- the model

/** Inputs accepted for class ids: an int32 tensor, or plain numbers. */
export type ClassIds = tf.Tensor1D | Int32Array | readonly number[];

/**
 * A DiT with its parameters: create, load, run, save.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { DiT } from "./dit.ts";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * const model = DiT.create(); // adaLN-Zero init: outputs exactly zero
 * if (model.paramCount() !== 983808) throw new Error(String(model.paramCount()));
 * const x = tf.randomNormal([2, 32, 32, 4]) as tf.Tensor4D;
 * const v = model.forward(x, tf.tensor1d([0.1, 0.9]), tf.tensor1d([0, 102], "int32"));
 * if (tf.max(tf.abs(v)).dataSync()[0] !== 0) throw new Error("adaLN-Zero starts at zero");
 * const path = `${await Deno.makeTempDir()}/model.safetensors`;
 * await model.save(path);
 * const again = await DiT.load(path);
 * if (again.paramCount() !== model.paramCount()) throw new Error("round trip");
 * ```
 */
export class DiT {
  /** The architecture. */
  readonly config: DiTConfig;
  /** The parameter tree. */
  readonly params: DiTParams;

  private constructor(config: DiTConfig, params: DiTParams) {
    this.config = config;
    this.params = params;
  }

  /**
   * A freshly initialised model (adaLN-Zero: outputs exactly zero). Linears Xavier-uniform,
   * biases 0, class table N(0, 0.02), modulation and final linears 0; seeded.
   */
  static create(config: Partial<DiTConfig> = {}, options: { seed?: number } = {}): DiT {
    const c = resolveConfig(config);
    const rng = new Rng(options.seed ?? 0);
    const grid = c.inputSize / c.patchSize;
    const init: Initializer = (key, shape, torchShape) => {
      const n = shape.reduce((a, b) => a * b, 1);
      const out = new Float32Array(n);
      if (key === "pos_embed") return sincos2d(c.hiddenSize, grid);
      if (key === "final_layer.norm_final.weight") return out.fill(1);
      if (key.includes("adaLN_modulation") || key === "final_layer.linear.weight") return out;
      if (key === "y_embedder.embedding_table.weight") {
        for (let i = 0; i < n; i++) out[i] = 0.02 * rng.normal();
        return out;
      }
      if (key.endsWith(".weight")) {
        // Xavier-uniform on the PyTorch [out, in...] view (fan_in = product of the rest).
        const fanOut = torchShape[0];
        const fanIn = n / fanOut;
        const a = Math.sqrt(6 / (fanIn + fanOut));
        for (let i = 0; i < n; i++) out[i] = (2 * rng.uniform() - 1) * a;
      }
      return out;
    };
    return new DiT(c, buildParams(c, init));
  }

  /**
   * Loads weights from a safetensors file (path or bytes) with the reference key names and
   * PyTorch layouts. The architecture comes from `config` (default DiT-Nano/2). Missing, extra or
   * mis-shaped keys, and tensors holding NaN or Infinity, are reported by name.
   */
  static async load(
    source: string | Uint8Array,
    options: { config?: Partial<DiTConfig> } = {},
  ): Promise<DiT> {
    const c = resolveConfig(options.config);
    const { tensors } = await readSafetensors(source, { what: "DiT weights" });
    const where = typeof source === "string" ? source : "the given bytes";
    // Check names and shapes against a zero-filled skeleton before touching any value.
    const expected = new Map<string, number[]>();
    const skeleton = new DiT(
      c,
      buildParams(c, (_k, s) => new Float32Array(s.reduce((a, b) => a * b, 1))),
    );
    for (const np of namedParams(skeleton.params, c)) expected.set(np.key, np.torchShape);
    skeleton.dispose();
    checkStateDict(tensors, expected, {
      what: `${where} does not hold DiT weights for this architecture ` +
        `(${c.depth} blocks, width ${c.hiddenSize})`,
      hint: "Pass the matching config, or export the weights with exportCheckpoint().",
    });
    // NaN/Inf weights would give black or flat images with no error: refuse them by name.
    checkFinite(tensors, {
      source: where,
      names: expected.keys(),
      advice: "A model with such weights only makes NaN (black or flat images): they come from " +
        "a diverged training run or a damaged file. Export an earlier checkpoint with " +
        "exportCheckpoint(), or download the weights again.",
    });
    const init: Initializer = (key, shape, torchShape) =>
      fromTorchLayout(tensors.get(key)!.data as Float32Array, shape, torchShape, layoutOf(key));
    return new DiT(c, buildParams(c, init));
  }

  /** Runs the model: x `[N, H, W, C]`, t `[N]` in [0, 1], y `[N]` class ids -> `[N, H, W, C]`. */
  forward(x: tf.Tensor4D, t: tf.Tensor1D | readonly number[], y: ClassIds): tf.Tensor4D {
    return tf.tidy(() => {
      const [xx, tt, yy] = this.#checkInputs(x, t, y);
      return ditForward(this.params, this.config, xx, tt, yy);
    });
  }

  /**
   * Classifier-free guidance on all channels, cond and uncond in one doubled batch:
   * v = v_u + scale * (v_c - v_u).
   */
  forwardWithCfg(
    x: tf.Tensor4D,
    t: tf.Tensor1D | readonly number[],
    y: ClassIds,
    options: { cfgScale: number },
  ): tf.Tensor4D {
    return tf.tidy(() => {
      const [xx, tt, yy] = this.#checkInputs(x, t, y);
      const n = xx.shape[0];
      const out = ditForward(
        this.params,
        this.config,
        tf.concat([xx, xx]),
        tf.concat([tt, tt]),
        tf.concat([yy, tf.fill([n], nullClassId(this.config), "int32")]),
      ); // [2N, H, W, C]
      const [vc, vu] = tf.split(out, 2, 0);
      return tf.add(vu, tf.mul(tf.sub(vc, vu), options.cfgScale)) as tf.Tensor4D;
    });
  }

  #checkInputs(
    x: tf.Tensor4D,
    t: tf.Tensor1D | readonly number[],
    y: ClassIds,
  ): [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D] {
    const c = this.config;
    const want = `[N, ${c.inputSize}, ${c.inputSize}, ${c.inChannels}]`;
    if (
      x.rank !== 4 || x.shape[1] !== c.inputSize || x.shape[2] !== c.inputSize ||
      x.shape[3] !== c.inChannels
    ) {
      throw new Error(
        `latents have shape [${x.shape}], expected ${want} (NHWC float32). ` +
          `Latents from an NCHW source need x.transpose([0, 2, 3, 1]).`,
      );
    }
    const n = x.shape[0];
    const tt = Array.isArray(t) ? tf.tensor1d(t as number[], "float32") : t as tf.Tensor1D;
    if (tt.rank !== 1 || tt.shape[0] !== n) {
      throw new Error(`t has shape [${tt.shape}], expected [${n}] (one time in [0, 1] per latent)`);
    }
    let yy: tf.Tensor1D;
    if (y instanceof tf.Tensor) {
      yy = y.dtype === "int32" ? y : tf.cast(y, "int32");
    } else {
      const ids = Array.from(y as ArrayLike<number>);
      const bad = ids.find((v) => !Number.isInteger(v) || v < 0 || v > c.numClasses);
      if (bad !== undefined) {
        throw new Error(
          `class id ${bad} is out of range: use 0..${c.numClasses - 1}, or ${c.numClasses} ` +
            `for the unconditional (null) class`,
        );
      }
      yy = tf.tensor1d(ids, "int32");
    }
    if (yy.rank !== 1 || yy.shape[0] !== n) {
      throw new Error(`y has shape [${yy.shape}], expected [${n}] (one class id per latent)`);
    }
    return [x, tt.dtype === "float32" ? tt : tf.cast(tt, "float32"), yy];
  }

  /** Number of parameters, the frozen position table included (983,808 for DiT-Nano/2). */
  paramCount(): number {
    return namedParams(this.params, this.config).reduce((a, p) => a + p.variable.size, 0);
  }

  /** The trainable variables, in state-dict order (the position table excluded). */
  trainableVariables(): tf.Variable[] {
    return namedParams(this.params, this.config).filter((p) => p.key !== "pos_embed")
      .map((p) => p.variable);
  }

  /** Every parameter with its reference key name. */
  namedParams(): NamedParam[] {
    return namedParams(this.params, this.config);
  }

  /** The state dict in PyTorch layout, ready for {@link writeSafetensors}. */
  async stateDict(): Promise<Record<string, TensorToWrite>> {
    const out: Record<string, TensorToWrite> = {};
    for (const p of this.namedParams()) {
      const data = await p.variable.data() as Float32Array;
      out[p.key] = {
        dtype: "F32",
        shape: p.torchShape,
        data: toTorchLayout(data, p.variable.shape, p.torchShape, p.layout),
      };
    }
    return out;
  }

  /** Writes the weights as safetensors (reference keys, PyTorch layout), atomically. */
  async save(path: string, options: { metadata?: Record<string, string> } = {}): Promise<void> {
    await writeSafetensors(path, await this.stateDict(), {
      metadata: { format: "anthos-dit", ...options.metadata },
    });
  }

  /** A deep copy with its own variables (used for the EMA). */
  clone(): DiT {
    const src = new Map(this.namedParams().map((p) => [p.key, p.variable]));
    // tf.clone keeps the copy on the device (no read-back, which webgpu only does async).
    const params = buildParams(this.config, (key) => tf.clone(src.get(key)!));
    return new DiT(this.config, params);
  }

  /** Frees every variable. */
  dispose(): void {
    for (const p of this.namedParams()) p.variable.dispose();
  }
}

function layoutOf(key: string): Layout {
  if (key === "x_embedder.proj.weight") return "conv";
  if (key.endsWith(".weight") && !key.includes("norm") && !key.includes("embedding_table")) {
    return "linear";
  }
  return "plain";
}

/**
 * Calls `f(ours, torch)` with each element's flat index in our layout and in PyTorch's.
 * Linear: torch `[out, in]` <-> ours `[in, out]`; conv: torch `[out, C, kh, kw]` <-> ours
 * `[(kh, kw, C), out]` (the patchify matrix).
 */
function forEachLayoutPair(
  torchShape: number[],
  layout: "linear" | "conv",
  f: (ours: number, torch: number) => void,
): void {
  if (layout === "linear") {
    const [o, i] = torchShape;
    for (let r = 0; r < o; r++) for (let k = 0; k < i; k++) f(k * o + r, r * i + k);
    return;
  }
  const [o, ch, kh, kw] = torchShape;
  for (let r = 0; r < o; r++) {
    for (let c = 0; c < ch; c++) {
      for (let a = 0; a < kh; a++) {
        for (let b = 0; b < kw; b++) {
          f(
            ((a * kw + b) * ch + c) * o + r,
            ((r * ch + c) * kh + a) * kw + b,
          );
        }
      }
    }
  }
}

/**
 * PyTorch layout -> ours. Linear [out, in] -> [in, out]; conv [out, C, kh, kw] -> [(kh, kw, C), out].
 *
 * @example
 * ```ts
 * import { fromTorchLayout } from "./dit.ts";
 * // A PyTorch Linear weight [out=2, in=3] becomes our [in=3, out=2].
 * const ours = fromTorchLayout(new Float32Array([1, 2, 3, 4, 5, 6]), [3, 2], [2, 3], "linear");
 * if (ours.join() !== "1,4,2,5,3,6") throw new Error(ours.join());
 * ```
 */
export function fromTorchLayout(
  src: Float32Array,
  _shape: number[],
  torchShape: number[],
  layout: Layout,
): Float32Array {
  if (layout === "plain") return src;
  const out = new Float32Array(src.length);
  forEachLayoutPair(torchShape, layout, (ours, torch) => out[ours] = src[torch]);
  return out;
}

/**
 * Ours -> PyTorch layout (inverse of {@link fromTorchLayout}).
 *
 * @example
 * ```ts
 * import { toTorchLayout } from "./dit.ts";
 * const torch = toTorchLayout(new Float32Array([1, 4, 2, 5, 3, 6]), [3, 2], [2, 3], "linear");
 * if (torch.join() !== "1,2,3,4,5,6") throw new Error(torch.join());
 * ```
 */
export function toTorchLayout(
  src: Float32Array,
  _shape: number[],
  torchShape: number[],
  layout: Layout,
): Float32Array {
  if (layout === "plain") return src;
  const out = new Float32Array(src.length);
  forEachLayoutPair(torchShape, layout, (ours, torch) => out[torch] = src[ours]);
  return out;
}
