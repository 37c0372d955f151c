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
    `${ROW_STATS}
      let m = (i / uniforms.t) * uniforms.d; // this sample's row of shift/scale
      for (var j = 0; j < uniforms.d; j++) {
        let y = (X[base + j] - mean) * rstd;
        result[base + j] = ${mod ? "y * (1.0 + Scale[m + j]) + Shift[m + j]" : "y"};
      }`,
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
 * The input gradient of {@link layerNormWgsl}: with `g = dy` (or `dy * (1 + scale)` when
 * modulated) and `y` the normalised row, `dx = rstd * (g - mean(g) - y * mean(g * y))`.
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
    scale ? `(DY[base + ${j}] * (1.0 + Scale[m + ${j}]))` : `DY[base + ${j}]`;
  return runKernel(
    scale ? "layernorm_mod_grad" : "layernorm_grad",
    scale ? { X: x, DY: dy, Scale: scale } : { X: x, DY: dy },
    x.shape,
    rows,
    `${ROW_STATS}
      let m = (i / uniforms.t) * uniforms.d;
      var sg = 0.0;
      var sgy = 0.0;
      for (var j = 0; j < uniforms.d; j++) {
        let gj = ${g("j")};
        sg += gj;
        sgy += gj * (X[base + j] - mean) * rstd;
      }
      let mg = sg / f32(uniforms.d);
      let mgy = sgy / f32(uniforms.d);
      for (var j = 0; j < uniforms.d; j++) {
        let y = (X[base + j] - mean) * rstd;
        result[base + j] = rstd * (${g("j")} - mg - y * mgy);
      }`,
    { d, t },
    { eps },
  );
}

/**
 * Sums over the token axis of `[N, T, D]` into `[N, D]`, one thread per (sample, channel):
 * `sum_t a` (`kind` "plain"), `sum_t a * b` ("product") or `sum_t a * layerNorm(b)` ("normed",
 * the modulation scale's gradient; `eps` is LayerNorm's).
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

/** Elementwise over same-shaped inputs: `expr` in terms of `A[i]`, `B[i]`, ... */
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

/** The largest head dimension the attention kernels take (their per-thread accumulators). */
export const MAX_HEAD_DIM = 64;

/**
 * WGSL shared by the attention kernels: for thread `i` over (sample, head, token) with the token
 * fastest, `row` = this token's offset in `[N*T, D]`, `head0` = the sample's first row for this
 * head (rows are `d` apart), and `dot(a, ai, b, bi)` over one head's `hd` values.
 */
const ATTN_INDEX = `
      let tok = i % uniforms.t;
      let nh = i / uniforms.t;
      let n = nh / uniforms.h;
      let head0 = n * uniforms.t * uniforms.d + (nh % uniforms.h) * uniforms.hd;
      let row = head0 + tok * uniforms.d;`;

/** WGSL: the scaled score of query row `qr` and key row `kr` (q * scale first, as tf does). */
const SCORE = (qr: string, kr: string) => `
        var s = 0.0;
        for (var c = 0; c < uniforms.hd; c++) { s += (Q[${qr} + c] * uniforms.scale) * K[${kr} + c]; }`;

/**
 * Scaled dot-product attention `softmax(q k^T * scale) v` for `q`, `k`, `v` in the layout the
 * projections make, `[N*T, H*hd]` (head h at columns h*hd ...): no head transposes, no `[T, T]`
 * map in memory. One thread per (sample, head, query) runs two passes over the keys: the max, then
 * the exponentials summed and accumulated with the values (normalised at the end). Result
 * `[N*T, H*hd]`, heads merged.
 */
export function attentionWgsl(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  dims: { tokens: number; heads: number },
): tf.Tensor {
  const [rows, d] = rowsOf(q);
  const hd = d / dims.heads;
  return runKernel(
    "attention",
    { Q: q, K: k, V: v },
    q.shape,
    rows * dims.heads,
    `${ATTN_INDEX}
      var mx = -3.402823e38;
      for (var j = 0; j < uniforms.t; j++) {${SCORE("row", "head0 + j * uniforms.d")}
        mx = max(mx, s);
      }
      var sum = 0.0;
      var acc : array<f32, ${MAX_HEAD_DIM}>;
      for (var j = 0; j < uniforms.t; j++) {${SCORE("row", "head0 + j * uniforms.d")}
        let e = exp(s - mx);
        sum += e;
        let kr = head0 + j * uniforms.d;
        for (var c = 0; c < uniforms.hd; c++) { acc[c] += e * V[kr + c]; }
      }
      for (var c = 0; c < uniforms.hd; c++) { result[row + c] = acc[c] / sum; }`,
    { t: dims.tokens, h: dims.heads, hd, d },
    { scale: 1 / Math.sqrt(hd) },
  );
}

/**
 * The gradients of {@link attentionWgsl} for output gradient `dO` and output `o`: per query row
 * the softmax statistics (max, sum, and `delta = dO . o`) once, then `dq`, `dk`, `dv`, each from
 * scores recomputed on the fly. With `P` the attention and `dS = P * (dO v^T - delta)`:
 * `dq = dS k * scale`, `dk = dS^T (q * scale)`, `dv = P^T dO`.
 */
export function attentionGradWgsl(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  o: tf.Tensor,
  dO: tf.Tensor,
  dims: { tokens: number; heads: number },
): [tf.Tensor, tf.Tensor, tf.Tensor] {
  const [rows, d] = rowsOf(q);
  const hd = d / dims.heads;
  const ints = { t: dims.tokens, h: dims.heads, hd, d };
  const floats = { scale: 1 / Math.sqrt(hd) };
  const threads = rows * dims.heads;
  const stats = runKernel(
    "attention_stats",
    { Q: q, K: k, O: o, DO: dO },
    [threads, 3],
    threads,
    `${ATTN_INDEX}
      var mx = -3.402823e38;
      for (var j = 0; j < uniforms.t; j++) {${SCORE("row", "head0 + j * uniforms.d")}
        mx = max(mx, s);
      }
      var sum = 0.0;
      for (var j = 0; j < uniforms.t; j++) {${SCORE("row", "head0 + j * uniforms.d")}
        sum += exp(s - mx);
      }
      var delta = 0.0;
      for (var c = 0; c < uniforms.hd; c++) { delta += DO[row + c] * O[row + c]; }
      result[i * 3] = mx;
      result[i * 3 + 1] = sum;
      result[i * 3 + 2] = delta;`,
    ints,
    floats,
  );
  // dS for query row `qr` (stats index `si`) and key row `kr`, as `ds`; `p` is the attention.
  const ds = (qr: string, kr: string, si: string) =>
    `${SCORE(qr, kr)}
        let p = exp(s - St[${si} * 3]) / St[${si} * 3 + 1];
        var dp = 0.0;
        for (var c = 0; c < uniforms.hd; c++) { dp += DO[${qr} + c] * V[${kr} + c]; }
        let ds = p * (dp - St[${si} * 3 + 2]);`;
  const dq = runKernel(
    "attention_dq",
    { Q: q, K: k, V: v, DO: dO, St: stats },
    q.shape,
    threads,
    `${ATTN_INDEX}
      var acc : array<f32, ${MAX_HEAD_DIM}>;
      for (var j = 0; j < uniforms.t; j++) {
        let kr = head0 + j * uniforms.d;${ds("row", "kr", "i")}
        for (var c = 0; c < uniforms.hd; c++) { acc[c] += ds * K[kr + c]; }
      }
      for (var c = 0; c < uniforms.hd; c++) { result[row + c] = acc[c] * uniforms.scale; }`,
    ints,
    floats,
  );
  // dk and dv: one thread per key row, over the query rows `qr` of its (sample, head).
  const perKey = (key: string, inputs: { [name: string]: tf.Tensor }, body: string) =>
    runKernel(
      key,
      inputs,
      q.shape,
      threads,
      `${ATTN_INDEX}
      var acc : array<f32, ${MAX_HEAD_DIM}>;
      for (var j = 0; j < uniforms.t; j++) {
        let qr = head0 + j * uniforms.d;
        let si = nh * uniforms.t + j;${body}
      }
      for (var c = 0; c < uniforms.hd; c++) { result[row + c] = acc[c]; }`,
      ints,
      floats,
    );
  const dk = perKey(
    "attention_dk",
    { Q: q, K: k, V: v, DO: dO, St: stats },
    `${ds("qr", "row", "si")}
        for (var c = 0; c < uniforms.hd; c++) { acc[c] += ds * (Q[qr + c] * uniforms.scale); }`,
  );
  const dv = perKey(
    "attention_dv",
    { Q: q, K: k, DO: dO, St: stats },
    `${SCORE("qr", "row")}
        let p = exp(s - St[si * 3]) / St[si * 3 + 1];
        for (var c = 0; c < uniforms.hd; c++) { acc[c] += p * DO[qr + c]; }`,
  );
  stats.dispose();
  return [dq, dk, dv];
}
