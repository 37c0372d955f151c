/**
 * WGSL kernels for the webgpu backend: the row-wise and elementwise layers of DiT-Nano/2 (LayerNorm
 * with or without modulation, the SwiGLU gate, the gated residual) and the token sums their
 * gradients need, each one GPU dispatch where tf ops take 3 to 15. kernels.ts wires them into its
 * closed-form-gradient layers when the backend is webgpu; the maths is that of kernels.ts's tf-op
 * versions (sums run in order in f32, so results agree to float rounding, not bit for bit).
 *
 * Each kernel is a tfjs-webgpu program run through the backend's own `runWebGPUProgram`, so it
 * shares tfjs's command encoder, buffers and pipeline cache. Shapes travel as uniforms: one
 * compiled pipeline per kernel variant, whatever the batch.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";

/** The part of tfjs-webgpu 4.22's backend that runs a program. */
interface WebGpuProgramRunner {
  runWebGPUProgram(
    program: unknown,
    inputs: tf.TensorInfo[],
    dtype: "float32",
    uniforms?: { type: "int32" | "float32"; data: number[] }[],
  ): tf.TensorInfo;
}

const WORKGROUP = 64;

/**
 * Runs `body` once per thread index `i` in `0..threads-1` (WGSL, f32), with `inputs` bound as
 * read-only arrays under `names` and the result written to `result[...]` of shape `outShape`.
 * `ints` become `i32` uniforms and `floats` `f32` ones, read as `uniforms.<name>`.
 */
function runKernel(
  key: string,
  inputs: { [name: string]: tf.Tensor },
  outShape: number[],
  threads: number,
  body: string,
  ints: { [name: string]: number } = {},
  floats: { [name: string]: number } = {},
): tf.Tensor {
  const backend = tf.backend() as unknown as WebGpuProgramRunner;
  const names = Object.keys(inputs);
  const all = { threads, ...ints };
  const program = {
    variableNames: names,
    outputShape: outShape,
    shaderKey: `anthos_${key}`,
    dispatchLayout: { x: outShape.map((_, i) => i) },
    dispatch: [Math.ceil(threads / WORKGROUP), 1, 1],
    workgroupSize: [WORKGROUP, 1, 1],
    uniforms: Object.keys(all).map((n) => `${n} : i32, `).join("") +
      Object.keys(floats).map((n) => `${n} : f32, `).join(""),
    getUserCode: () => `
      fn main(i : i32) {
        if (i >= uniforms.threads) { return; }
        ${body}
      }`,
  };
  const uniforms = [
    ...Object.values(all).map((v) => ({ type: "int32" as const, data: [v] })),
    ...Object.values(floats).map((v) => ({ type: "float32" as const, data: [v] })),
  ];
  const info = backend.runWebGPUProgram(program, Object.values(inputs), "float32", uniforms);
  return tf.engine().makeTensorFromTensorInfo(info);
}

/** Rows of the last axis: `[..., D]` -> (rows, D). */
function rowsOf(x: tf.Tensor): [number, number] {
  const d = x.shape[x.rank - 1];
  return [x.size / d, d];
}

/**
 * LayerNorm over the last axis (no affine; biased variance, as torch), optionally followed by the
 * per-sample modulation `y * (1 + scale) + shift` (`x [N, T, D]`, `shift`, `scale` `[N, D]`). One
 * thread per row.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * import { layerNormWgsl } from "./kernels_webgpu.ts";
 * await loadBackend("webgpu");
 * const y = layerNormWgsl(tf.tensor2d([[1, 2, 3]]), 1e-6); // ~[[-1.22, 0, 1.22]]
 * if (Math.abs((await y.data())[2] - 1.2247) > 1e-3) throw new Error("normalised");
 * ```
 */
export function layerNormWgsl(
  x: tf.Tensor,
  eps: number,
  mod?: { shift: tf.Tensor; scale: tf.Tensor },
): tf.Tensor {
  const [rows, d] = rowsOf(x);
  const t = mod ? x.shape[x.rank - 2] : 1;
  const inputs: { [name: string]: tf.Tensor } = mod
    ? { X: x, Shift: mod.shift, Scale: mod.scale }
    : { X: x };
  return runKernel(
    mod ? "layernorm_mod" : "layernorm",
    inputs,
    x.shape,
    rows,
    lnForward(mod ? "y * (1.0 + Scale[m + j]) + Shift[m + j]" : "y"),
    { d, t },
    { eps },
  );
}

/** WGSL: `base`, `mean` and `rstd` of row `row` of `array` (two passes, in order, f32). */
const rowStats = (array: string, row: string) => `
      let base = ${row} * uniforms.d;
      var s = 0.0;
      for (var j = 0; j < uniforms.d; j++) { s += ${array}[base + j]; }
      let mean = s / f32(uniforms.d);
      var v = 0.0;
      for (var j = 0; j < uniforms.d; j++) { let c = ${array}[base + j] - mean; v += c * c; }
      let rstd = inverseSqrt(v / f32(uniforms.d) + uniforms.eps);`;

/** WGSL: `base`, `mean` and `rstd` of row `i` of `X`. */
const ROW_STATS = rowStats("X", "i");

/**
 * WGSL: row `i` of `X` normalised (`y`), each value written as `out` (in terms of `y`, `j` and
 * `m`, this sample's row of `[N, D]` per-sample inputs when `uniforms.t` is set).
 */
const lnForward = (out: string) =>
  `${ROW_STATS}
      let m = (i / uniforms.t) * uniforms.d;
      for (var j = 0; j < uniforms.d; j++) {
        let y = (X[base + j] - mean) * rstd;
        result[base + j] = ${out};
      }`;

/**
 * WGSL: the input gradient of row `i` for the upstream gradient `g` of its normalised values (`g`
 * in terms of `j`, `base` and `m`): `dx = rstd * (g - mean(g) - y * mean(g * y))`.
 */
const lnBackward = (g: string) =>
  `${ROW_STATS}
      let m = (i / uniforms.t) * uniforms.d;
      var sg = 0.0;
      var sgy = 0.0;
      for (var j = 0; j < uniforms.d; j++) {
        let gj = ${g};
        sg += gj;
        sgy += gj * (X[base + j] - mean) * rstd;
      }
      let mg = sg / f32(uniforms.d);
      let mgy = sgy / f32(uniforms.d);
      for (var j = 0; j < uniforms.d; j++) {
        let y = (X[base + j] - mean) * rstd;
        result[base + j] = rstd * (${g} - mg - y * mgy);
      }`;

/**
 * The input gradient of {@link layerNormWgsl}: with `g = dy` (or `dy * (1 + scale)` when
 * modulated) and `y` the normalised row, `dx = rstd * (g - mean(g) - y * mean(g * y))`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * import { layerNormGradWgsl } from "./kernels_webgpu.ts";
 * await loadBackend("webgpu");
 * const dx = layerNormGradWgsl(tf.tensor2d([[1, 2, 3]]), tf.ones([1, 3]), 1e-6);
 * // a constant upstream gradient moves no normalised value: dx = 0
 * if ((await dx.data()).some((v) => Math.abs(v) > 1e-6)) throw new Error("dx = 0");
 * ```
 */
export function layerNormGradWgsl(
  x: tf.Tensor,
  dy: tf.Tensor,
  eps: number,
  scale?: tf.Tensor,
): tf.Tensor {
  const [rows, d] = rowsOf(x);
  const t = scale ? x.shape[x.rank - 2] : 1;
  const g = (j: string) =>
    scale ? `(DY[base + ${j}] * (1.0 + Scale[m + ${j}]))` : `DY[base + ${j}]`; // the upstream gradient of y
  return runKernel(
    scale ? "layernorm_mod_grad" : "layernorm_grad",
    scale ? { X: x, DY: dy, Scale: scale } : { X: x, DY: dy },
    x.shape,
    rows,
    lnBackward(g("j")),
    { d, t },
    { eps },
  );
}

/**
 * Sums over the token axis of `[N, T, D]` into `[N, D]`, one thread per (sample, channel):
 * `sum_t a` (`kind` "plain"), `sum_t a * b` ("product") or `sum_t a * layerNorm(b)` ("normed",
 * the modulation scale's gradient; `eps` is LayerNorm's).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * import { tokenSumWgsl } from "./kernels_webgpu.ts";
 * await loadBackend("webgpu");
 * const s = tokenSumWgsl(tf.ones([2, 5, 3]), null, "plain"); // [2, 3], every value 5
 * if ((await s.data()).some((v) => v !== 5)) throw new Error("sum over 5 tokens");
 * ```
 */
export function tokenSumWgsl(
  a: tf.Tensor,
  b: tf.Tensor | null,
  kind: "plain" | "product" | "normed",
  eps = 0,
): tf.Tensor2D {
  const [n, t, d] = a.shape;
  const term = kind === "plain"
    ? "A[k]"
    : kind === "product"
    ? "A[k] * B[k]"
    : "A[k] * (B[k] - mean) * rstd";
  // "normed": the row's statistics, recomputed per token (rows are D = 96 floats, cached).
  const stats = kind !== "normed" ? "" : rowStats("B", "row");
  return runKernel(
    `tokensum_${kind}`,
    b ? { A: a, B: b } : { A: a },
    [n, d],
    n * d,
    `
      let smp = i / uniforms.d;
      let c = i % uniforms.d;
      var acc = 0.0;
      for (var tok = 0; tok < uniforms.t; tok++) {
        let row = smp * uniforms.t + tok;${stats}
        let k = row * uniforms.d + c;
        acc += ${term};
      }
      result[i] = acc;`,
    { d, t },
    { eps },
  ) as tf.Tensor2D;
}

/** Elementwise over same-shaped inputs: `expr` in terms of `A[i]`, `B[i]`, ... *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * import { elementwiseWgsl } from "./kernels_webgpu.ts";
 * await loadBackend("webgpu");
 * const y = elementwiseWgsl("double", { A: tf.ones([4]) }, "2.0 * A[i]");
 * if ((await y.data()).some((v) => v !== 2)) throw new Error("every value 2");
 * ```
 */
export function elementwiseWgsl(
  key: string,
  inputs: { [name: string]: tf.Tensor },
  expr: string,
  prelude = "",
): tf.Tensor {
  const first = Object.values(inputs)[0];
  return runKernel(
    `ew_${key}`,
    inputs,
    first.shape,
    first.size,
    `${prelude}
      result[i] = ${expr};`,
  );
}

/**
 * `x + gate * h` with a per-sample `gate [N, D]` over `x`, `h` `[N, T, D]` (or, without `x`,
 * `gate * h`): the gated residual's forward and its `h` gradient.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * import { gateWgsl } from "./kernels_webgpu.ts";
 * await loadBackend("webgpu");
 * const y = gateWgsl(tf.ones([1, 2, 3]), tf.ones([1, 3]), tf.ones([1, 2, 3])); // x + gate * h
 * if ((await y.data()).some((v) => v !== 2)) throw new Error("every value 2");
 * ```
 */
export function gateWgsl(x: tf.Tensor | null, gate: tf.Tensor, h: tf.Tensor): tf.Tensor {
  const [, t, d] = h.shape;
  const g = "G[(i / (uniforms.t * uniforms.d)) * uniforms.d + i % uniforms.d]";
  return runKernel(
    x ? "gate_residual" : "gate",
    x ? { X: x, G: gate, H: h } : { G: gate, H: h },
    h.shape,
    h.size,
    `result[i] = ${x ? "X[i] + " : ""}${g} * H[i];`,
    { t, d },
  );
}

/**
 * Column sums of `x [R, C]` over `slices` equal runs of rows: `[slices, C]`, or `[C]` when
 * `slices` is 1. One thread per (slice, column), rows added in order.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * import { columnSumWgsl } from "./kernels_webgpu.ts";
 * await loadBackend("webgpu");
 * const s = columnSumWgsl(tf.ones([8, 3]) as tf.Tensor2D, 2); // [2, 3]: two slices of 4 rows
 * if ((await s.data()).some((v) => v !== 4)) throw new Error("every value 4");
 * ```
 */
export function columnSumWgsl(x: tf.Tensor2D, slices = 1): tf.Tensor {
  const [r, c] = x.shape;
  const rows = r / slices;
  return runKernel(
    "colsum",
    { X: x },
    slices === 1 ? [c] : [slices, c],
    slices * c,
    `
      let s = i / uniforms.c;
      let col = i % uniforms.c;
      var acc = 0.0;
      for (var k = 0; k < uniforms.rows; k++) { acc += X[(s * uniforms.rows + k) * uniforms.c + col]; }
      result[i] = acc;`,
    { c, rows },
  );
}

/** The largest head dimension the attention kernels take (their per-thread accumulators, hd long). */
export const MAX_HEAD_DIM = 64;

/**
 * WGSL shared by the attention kernels, over the packed `qkv [N*T, 3D]` of the qkv projection
 * (q, k, v at column offsets 0, D, 2D; head h at `h*hd ...` within each): thread `i` is
 * (sample, head, token) with the token fastest; `head0` = this (sample, head)'s q in token 0,
 * `row` = its q in this token (`+ uniforms.d`: k, `+ 2 * uniforms.d`: v; tokens `rs` = 3D apart),
 * `orow` = this token's head in the `[N*T, D]` output.
 */
const ATTN_INDEX = `
      let tok = i % uniforms.t;
      let nh = i / uniforms.t;
      let hh = nh % uniforms.h;
      let n = nh / uniforms.h;
      let head0 = n * uniforms.t * uniforms.rs + hh * uniforms.hd;
      let row = head0 + tok * uniforms.rs;
      let orow = (n * uniforms.t + tok) * uniforms.d + hh * uniforms.hd;`;

/** WGSL: `s`, the scaled score of the q at `qr` and the k of the token at `kr` (q * scale first, as tf). */
const SCORE = (qr: string, kr: string) => `
        var s = 0.0;
        for (var c = 0; c < uniforms.hd; c++) {
          s += (QKV[${qr} + c] * uniforms.scale) * QKV[${kr} + uniforms.d + c];
        }`;

/** WGSL: `mx`, the largest score of this thread's query row (the softmax's first pass). */
const ROW_MAX = `
      var mx = -3.402823e38;
      for (var j = 0; j < uniforms.t; j++) {${SCORE("row", "head0 + j * uniforms.rs")}
        mx = max(mx, s);
      }`;

/** The uniforms of the attention kernels for `qkv [N*T, 3D]`. */
function attentionUniforms(qkv: tf.Tensor, dims: { tokens: number; heads: number }) {
  const rs = qkv.shape[qkv.rank - 1];
  const d = rs / 3;
  const hd = d / dims.heads;
  return {
    threads: (qkv.size / rs) * dims.heads,
    ints: { t: dims.tokens, h: dims.heads, hd, d, rs },
    floats: { scale: 1 / Math.sqrt(hd) },
  };
}

/**
 * LayerNorm (no affine, as torch) of each head's q and k in the packed `qkv [N*T, 3D]`, v passed
 * through: rows of `hd` values, one thread each. With `dy`, the input gradient instead (v's
 * gradient passes through).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * import { qkNormWgsl } from "./kernels_webgpu.ts";
 * await loadBackend("webgpu");
 * const qkv = tf.randomNormal([4, 3 * 8]); // 4 tokens, D = 8 as 2 heads of 4
 * const y = qkNormWgsl(qkv, 2, 1e-6); // q and k normalised per head, v as it was
 * const [a, b] = [await y.data(), await qkv.data()];
 * if (a[16] !== b[16]) throw new Error("v passes through");
 * ```
 */
export function qkNormWgsl(qkv: tf.Tensor, heads: number, eps: number, dy?: tf.Tensor): tf.Tensor {
  const hd = qkv.shape[qkv.rank - 1] / 3 / heads;
  const rows = qkv.size / hd;
  const pass = dy ? "DY" : "X";
  return runKernel(
    dy ? "qknorm_grad" : "qknorm",
    dy ? { X: qkv, DY: dy } : { X: qkv },
    qkv.shape,
    rows,
    `
      if ((i % (3 * uniforms.h)) / uniforms.h == 2) { // a head of v
        for (var j = 0; j < uniforms.d; j++) { result[i * uniforms.d + j] = ${pass}[i * uniforms.d + j]; }
        return;
      }${dy ? lnBackward("DY[base + j]") : lnForward("y")}`,
    { d: hd, h: heads, t: 1 },
    { eps },
  );
}

/**
 * Scaled dot-product attention `softmax(q k^T * scale) v` per (sample, head) on the packed
 * `qkv [N*T, 3D]`: no head transposes, no `[T, T]` map in memory. One thread per (sample, head,
 * query) runs two passes over the keys: the max, then the exponentials summed and accumulated with
 * the values (normalised at the end). Result `[N*T, D]`, heads merged.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * import { attentionWgsl } from "./kernels_webgpu.ts";
 * await loadBackend("webgpu");
 * const o = attentionWgsl(tf.ones([2 * 4, 3 * 8]), { tokens: 4, heads: 2 }); // [8, 8]
 * if ((await o.data()).some((v) => Math.abs(v - 1) > 1e-6)) throw new Error("a mean of ones");
 * ```
 */
export function attentionWgsl(
  qkv: tf.Tensor,
  dims: { tokens: number; heads: number },
): tf.Tensor {
  const { threads, ints, floats } = attentionUniforms(qkv, dims);
  return runKernel(
    `attention_hd${ints.hd}`, // the accumulators are hd long: one pipeline per head size
    { QKV: qkv },
    [qkv.size / ints.rs, ints.d],
    threads,
    `${ATTN_INDEX}
${ROW_MAX}
      var sum = 0.0;
      var acc : array<f32, ${ints.hd}>;
      for (var j = 0; j < uniforms.t; j++) {
        let kr = head0 + j * uniforms.rs;${SCORE("row", "kr")}
        let e = exp(s - mx);
        sum += e;
        for (var c = 0; c < uniforms.hd; c++) { acc[c] += e * QKV[kr + 2 * uniforms.d + c]; }
      }
      for (var c = 0; c < uniforms.hd; c++) { result[orow + c] = acc[c] / sum; }`,
    ints,
    floats,
  );
}

/**
 * The gradient of {@link attentionWgsl} with respect to `qkv`, for the output `o` and its gradient
 * `dO` (`[N*T, D]`): the softmax statistics of each query row (max, sum, `delta = dO . o`) in one
 * kernel, then one thread per (sample, head, token) computes that token's `dq` (over the keys) and
 * its `dk`, `dv` (over the queries) from scores recomputed on the fly, into the packed
 * `[N*T, 3D]`. With `P` the attention and `dS = P * (dO v^T - delta)`: `dq = dS k * scale`,
 * `dk = dS^T (q * scale)`, `dv = P^T dO`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * import { attentionGradWgsl, attentionWgsl } from "./kernels_webgpu.ts";
 * await loadBackend("webgpu");
 * const qkv = tf.ones([4, 3 * 8]);
 * const o = attentionWgsl(qkv, { tokens: 4, heads: 2 });
 * const g = attentionGradWgsl(qkv, o, tf.ones([4, 8]), { tokens: 4, heads: 2 }); // [4, 24]
 * if (g.shape.join() !== "4,24") throw new Error(String(g.shape));
 * ```
 */
export function attentionGradWgsl(
  qkv: tf.Tensor,
  o: tf.Tensor,
  dO: tf.Tensor,
  dims: { tokens: number; heads: number },
): tf.Tensor {
  const { threads, ints, floats } = attentionUniforms(qkv, dims);
  const stats = runKernel(
    "attention_stats",
    { QKV: qkv, O: o, DO: dO },
    [threads, 3],
    threads,
    `${ATTN_INDEX}
${ROW_MAX}
      var sum = 0.0;
      for (var j = 0; j < uniforms.t; j++) {${SCORE("row", "head0 + j * uniforms.rs")}
        sum += exp(s - mx);
      }
      var delta = 0.0;
      for (var c = 0; c < uniforms.hd; c++) { delta += DO[orow + c] * O[orow + c]; }
      result[i * 3] = mx;
      result[i * 3 + 1] = sum;
      result[i * 3 + 2] = delta;`,
    ints,
    floats,
  );
  // P and dS of query (q row `qr`, dO row `qo`, statistics `si`) and key (token row `kr`).
  const pds = (qr: string, qo: string, si: string, kr: string) =>
    `${SCORE(qr, kr)}
        let si = ${si};
        let p = exp(s - St[si * 3]) / St[si * 3 + 1];
        var dp = 0.0;
        for (var c = 0; c < uniforms.hd; c++) { dp += DO[${qo} + c] * QKV[${kr} + 2 * uniforms.d + c]; }
        let ds = p * (dp - St[si * 3 + 2]);`;
  const grad = runKernel(
    `attention_grad_hd${ints.hd}`,
    { QKV: qkv, DO: dO, St: stats },
    qkv.shape,
    threads,
    `${ATTN_INDEX}
      var dq : array<f32, ${ints.hd}>;
      var dk : array<f32, ${ints.hd}>;
      var dv : array<f32, ${ints.hd}>;
      for (var j = 0; j < uniforms.t; j++) { // this token as the query, token j as the key
        let kr = head0 + j * uniforms.rs;${pds("row", "orow", "i", "kr")}
        for (var c = 0; c < uniforms.hd; c++) { dq[c] += ds * QKV[kr + uniforms.d + c]; }
      }
      let oj0 = n * uniforms.t * uniforms.d + hh * uniforms.hd;
      for (var j = 0; j < uniforms.t; j++) { // token j as the query, this token as the key
        let qr = head0 + j * uniforms.rs;
        let qo = oj0 + j * uniforms.d;${pds("qr", "qo", "nh * uniforms.t + j", "row")}
        for (var c = 0; c < uniforms.hd; c++) {
          dk[c] += ds * (QKV[qr + c] * uniforms.scale);
          dv[c] += p * DO[qo + c];
        }
      }
      for (var c = 0; c < uniforms.hd; c++) {
        result[row + c] = dq[c] * uniforms.scale;
        result[row + uniforms.d + c] = dk[c];
        result[row + 2 * uniforms.d + c] = dv[c];
      }`,
    ints,
    floats,
  );
  stats.dispose();
  return grad;
}
