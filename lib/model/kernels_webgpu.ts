/**
 * WGSL kernels for the webgpu backend: the row-wise and elementwise layers of DiT-Nano/2 (LayerNorm
 * with the adaLN modulation read in place from the adaLN output, the final layer's affine, the
 * q/k norms and attention on the packed qkv, the SwiGLU gate on the packed `[w1 | w2]` product,
 * the gated residual, SiLU), the per-sample token sums and column sums their gradients need, the
 * flow loss, the straight path and the timestep sinusoids: each one GPU dispatch where tf ops take
 * 3 to 15. kernels.ts wires them into its closed-form-gradient layers when the backend is webgpu;
 * the maths is that of kernels.ts's tf-op versions (sums run in a fixed order in f32, so results
 * agree to float rounding, not bit for bit, and repeat bit for bit from call to call).
 *
 * Each kernel is a tfjs-webgpu program run through the backend's own `runWebGPUProgram`, so it
 * shares tfjs's command encoder, buffers and pipeline cache. Shapes travel as uniforms: one
 * compiled pipeline per kernel variant, whatever the batch. A kernel must read every input it
 * binds: WebGPU drops unread bindings from the pipeline's layout, and the mismatch fails the whole
 * command buffer without an exception (tests/kernels_test.ts checks for validation errors).
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

/** One WGSL kernel: what {@link runKernel} compiles and dispatches. */
interface KernelSpec {
  /** Pipeline cache key (with `anthos_`); one per distinct WGSL text. */
  key: string;
  /** Read-only arrays, bound under these names. */
  inputs: { [name: string]: tf.Tensor };
  /** Shape of `result`. */
  outShape: number[];
  /** Thread indices `i` in `0..threads-1`. */
  threads: number;
  /** WGSL run for each `i` (in group mode: for every thread of every group, no early return). */
  body: string;
  /** `i32` uniforms, read as `uniforms.<name>`. */
  ints?: { [name: string]: number };
  /** `f32` uniforms. */
  floats?: { [name: string]: number };
  /**
   * Group mode: workgroups of this many threads that share `var<workgroup>` memory declared in
   * `shared` and sync with `workgroupBarrier()`; `i / group` is the group, `i % group` the lane.
   */
  group?: number;
  /** Module-scope WGSL (workgroup arrays) for group mode. */
  shared?: string;
}

/**
 * Runs a {@link KernelSpec}: `body` once per thread index `i` (WGSL, f32), the inputs bound as
 * read-only arrays and the result written to `result[...]`.
 */
function runKernel(spec: KernelSpec): tf.Tensor {
  const { key, inputs, outShape, threads, body, ints = {}, floats = {}, group, shared = "" } = spec;
  const backend = tf.backend() as unknown as WebGpuProgramRunner;
  const size = group ?? WORKGROUP;
  const all = { threads, ...ints };
  const program = {
    variableNames: Object.keys(inputs),
    outputShape: outShape,
    shaderKey: `anthos_${key}`,
    dispatchLayout: { x: outShape.map((_, i) => i) },
    dispatch: [Math.ceil(threads / size), 1, 1],
    workgroupSize: [size, 1, 1],
    uniforms: Object.keys(all).map((n) => `${n} : i32, `).join("") +
      Object.keys(floats).map((n) => `${n} : f32, `).join(""),
    getUserCode: () =>
      `${shared}
      fn main(i : i32) {
        ${group ? "" : "if (i >= uniforms.threads) { return; }"}
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
 * A per-sample modulation read in place: shift = column block `at` and scale = block `at + 1` of
 * `mod [N, k*D]` (the adaLN linear's output, no split); with `affine`, LayerNorm's own weight and
 * bias `[D]` apply before it (the final layer).
 */
export interface ModulationWgsl {
  /** `[N, k*D]`. */
  mod: tf.Tensor;
  /** The shift's column block; the scale's is `at + 1`. */
  at: number;
  /** LayerNorm's affine weight and bias, `[D]` each. */
  affine?: { weight: tf.Tensor; bias: tf.Tensor };
}

/**
 * Inputs, uniforms and WGSL names of a modulated LayerNorm over `x [N, T, D]`. `uses` says which
 * of `Mod`, `W`, `B` the kernel reads: WebGPU drops an unread binding from the pipeline's layout,
 * and binding it anyway fails the whole command buffer.
 */
function modulationParts(x: tf.Tensor, mod?: ModulationWgsl, uses = "Mod W B") {
  const [, d] = rowsOf(x);
  const inputs: { [name: string]: tf.Tensor } = {};
  if (mod && uses.includes("Mod")) inputs.Mod = mod.mod;
  if (mod?.affine && uses.includes("W")) inputs.W = mod.affine.weight;
  if (mod?.affine && uses.includes("B")) inputs.B = mod.affine.bias;
  const ints = mod
    ? { d, t: x.shape[x.rank - 2], md: mod.mod.shape[1]!, sh: mod.at * d, sc: (mod.at + 1) * d }
    : { d, t: 1, md: d, sh: 0, sc: 0 };
  // `m` is this sample's row of Mod (see lnForward); `j` the channel.
  const scale1 = "(1.0 + Mod[m + uniforms.sc + j])";
  const shift = "Mod[m + uniforms.sh + j]";
  const affine = (y: string) => mod?.affine ? `(${y} * W[j] + B[j])` : y;
  return { inputs, ints, scale1, shift, affine };
}

/**
 * LayerNorm over the last axis (no affine; biased variance, as torch), optionally followed by
 * LayerNorm's affine weight and bias and the per-sample modulation `y * (1 + scale) + shift` read
 * from `mod` in place (`x [N, T, D]`). One thread per row.
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
export function layerNormWgsl(x: tf.Tensor, eps: number, mod?: ModulationWgsl): tf.Tensor {
  const [rows] = rowsOf(x);
  const { inputs, ints, scale1, shift, affine } = modulationParts(x, mod);
  const out = mod ? `${affine("y")} * ${scale1} + ${shift}` : "y";
  return runKernel({
    key: mod ? (mod.affine ? "layernorm_affine_mod" : "layernorm_mod") : "layernorm",
    inputs: { X: x, ...inputs },
    outShape: x.shape,
    threads: rows,
    body: lnForward(out),
    ints,
    floats: { eps },
  });
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
 * `m`, this sample's row of the `[N, md]` modulation when `uniforms.t` is the token count).
 */
const lnForward = (out: string) =>
  `${ROW_STATS}
      let m = (i / uniforms.t) * uniforms.md;
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
      let m = (i / uniforms.t) * uniforms.md;
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
 * The input gradient of {@link layerNormWgsl}: with `g = dy` (times `1 + scale` when modulated,
 * times the affine weight when there is one) and `y` the normalised row,
 * `dx = rstd * (g - mean(g) - y * mean(g * y))`.
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
  mod?: ModulationWgsl,
): tf.Tensor {
  const [rows] = rowsOf(x);
  const { inputs, ints, scale1 } = modulationParts(x, mod, "Mod W");
  let g = "DY[base + j]"; // the upstream gradient of y
  if (mod) g = `(${g} * ${scale1})`;
  if (mod?.affine) g = `(${g} * W[j])`;
  return runKernel({
    key: mod ? (mod.affine ? "layernorm_affine_mod_grad" : "layernorm_mod_grad") : "layernorm_grad",
    inputs: { X: x, DY: dy, ...inputs },
    outShape: x.shape,
    threads: rows,
    body: lnBackward(g),
    ints,
    floats: { eps },
  });
}

/**
 * What {@link tokenTermsWgsl} sums over the tokens in one column block: nothing (`zero`), `dy`,
 * `dy * h`, `dy * a` with `a` the modulation's input (LayerNorm of x, with its affine when there
 * is one), `dy * (1 + scale) * LN(x)` and `dy * (1 + scale)` (the affine weight's and bias's
 * per-sample parts).
 */
export type TokenTerm = "zero" | "dy" | "dy*h" | "dy*a" | "dy*s*ln" | "dy*s";

/** Group size of {@link tokenTermsWgsl}, and the most tokens it takes (its shared row table). */
const TERM_GROUP = 256;
const MAX_TERM_TOKENS = 1024;

/**
 * Per-sample sums over the token axis of `dy [N, T, D]`, one column block of the `[N, k*D]` result
 * per entry of `blocks` (see {@link TokenTerm}): the modulation's and gate's gradients written in
 * place into the layout of the adaLN output they read (no split, no concat). One workgroup per
 * sample: the LayerNorm statistics of its rows first (each row once), then one lane per column,
 * tokens added in order.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * import { tokenTermsWgsl } from "./kernels_webgpu.ts";
 * await loadBackend("webgpu");
 * const s = tokenTermsWgsl(tf.ones([2, 5, 3]), ["zero", "dy"], {}); // [2, 6]
 * if ((await s.data()).join() !== "0,0,0,5,5,5,0,0,0,5,5,5") throw new Error("0 | sum of 5");
 * ```
 */
export function tokenTermsWgsl(
  dy: tf.Tensor,
  blocks: TokenTerm[],
  options: { x?: tf.Tensor; h?: tf.Tensor; mod?: ModulationWgsl; eps?: number },
): tf.Tensor2D {
  const [n, t, d] = dy.shape;
  if (t > MAX_TERM_TOKENS) {
    throw new Error(`tokenTermsWgsl: ${t} tokens; at most ${MAX_TERM_TOKENS} (its row table)`);
  }
  const { x, h, mod, eps = 0 } = options;
  const stats = blocks.some((b) => b === "dy*a" || b === "dy*s*ln");
  const scaled = blocks.some((b) => b === "dy*s" || b === "dy*s*ln");
  const parts = modulationParts(
    dy,
    mod,
    `${scaled ? "Mod" : ""} ${blocks.includes("dy*a") ? "W B" : ""}`,
  );
  const inputs: { [name: string]: tf.Tensor } = { DY: dy, ...parts.inputs };
  if (stats) inputs.X = x!;
  if (blocks.includes("dy*h")) inputs.H = h!;
  const ln = "((X[k] - smean[tok]) * srstd[tok])";
  const term: Record<TokenTerm, string> = {
    zero: "0.0",
    dy: "DY[k]",
    "dy*h": "DY[k] * H[k]",
    "dy*a": `DY[k] * ${parts.affine(ln)}`,
    "dy*s*ln": `(DY[k] * ${parts.scale1}) * ${ln}`,
    "dy*s": `DY[k] * ${parts.scale1}`,
  };
  const sums = blocks.map((b, k) =>
    b === "zero" ? "" : `
        if (blk == ${k}) {
          for (var tok = 0; tok < uniforms.t; tok++) {
            let k = (smp * uniforms.t + tok) * uniforms.d + j;
            acc += ${term[b]};
          }
        }`
  ).join("");
  return runKernel({
    key: `tokenterms_${blocks.join("_")}${mod?.affine ? "_affine" : ""}`,
    inputs,
    outShape: [n, blocks.length * d],
    threads: n * TERM_GROUP,
    group: TERM_GROUP,
    shared: stats
      ? `var<workgroup> smean : array<f32, ${MAX_TERM_TOKENS}>;
      var<workgroup> srstd : array<f32, ${MAX_TERM_TOKENS}>;`
      : "",
    body: `
      let smp = i / ${TERM_GROUP};
      let lane = i % ${TERM_GROUP};
      let m = smp * uniforms.md;
      ${
      stats
        ? `for (var r = lane; r < uniforms.t; r += ${TERM_GROUP}) {${
          rowStats("X", "(smp * uniforms.t + r)")
        }
        smean[r] = mean;
        srstd[r] = rstd;
      }`
        : ""
    }
      workgroupBarrier();
      for (var col = lane; col < ${blocks.length} * uniforms.d; col += ${TERM_GROUP}) {
        let blk = col / uniforms.d;
        let j = col % uniforms.d;
        var acc = 0.0;${sums}
        result[smp * ${blocks.length} * uniforms.d + col] = acc;
      }`,
    ints: { ...parts.ints, t }, // the token count even without a modulation
    floats: { eps },
  }) as tf.Tensor2D;
}

/**
 * Elementwise over same-shaped inputs: `expr` in terms of `A[i]`, `B[i]`, ...
 *
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
  options: { prelude?: string; floats?: { [name: string]: number } } = {},
): tf.Tensor {
  const first = Object.values(inputs)[0];
  return runKernel({
    key: `ew_${key}`,
    inputs,
    outShape: first.shape,
    threads: first.size,
    body: `${options.prelude ?? ""}
      result[i] = ${expr};`,
    floats: options.floats,
  });
}

/**
 * WGSL: the sigmoid of the expression `a`, as tfjs-webgpu computes it (the one place the formula
 * is written; kernels.ts's SiLU uses it too).
 *
 * @example
 * ```ts
 * import { sigmoidWgsl } from "./kernels_webgpu.ts";
 * if (sigmoidWgsl("x") !== "(1.0 / (1.0 + exp(-1.0 * x)))") throw new Error(sigmoidWgsl("x"));
 * ```
 */
export function sigmoidWgsl(a: string): string {
  return `(1.0 / (1.0 + exp(-1.0 * ${a})))`;
}

/**
 * The SwiGLU gate `silu(a) * b` on the packed `ab [M, 2H]` (a = w1's half, b = w2's; one product
 * made both), or with `dg [M, H]` its gradient, packed `[M, 2H]` the same way:
 * `da = dg * b * sig * (1 + a * (1 - sig))`, `db = dg * silu(a)`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * import { swigluPackedWgsl } from "./kernels_webgpu.ts";
 * await loadBackend("webgpu");
 * const g = swigluPackedWgsl(tf.tensor2d([[0, 5]])); // silu(0) * 5 = 0
 * if ((await g.data())[0] !== 0) throw new Error("silu(0) = 0");
 * ```
 */
export function swigluPackedWgsl(ab: tf.Tensor, dg?: tf.Tensor): tf.Tensor {
  const [m, h2] = ab.shape;
  const h = h2 / 2;
  const a = "AB[r * 2 * uniforms.h + j]";
  const b = "AB[r * 2 * uniforms.h + uniforms.h + j]";
  if (!dg) {
    return runKernel({
      key: "swiglu_packed",
      inputs: { AB: ab },
      outShape: [m, h],
      threads: m * h,
      body: `
      let r = i / uniforms.h;
      let j = i % uniforms.h;
      result[i] = (${a} * ${sigmoidWgsl(a)}) * ${b};`,
      ints: { h },
    });
  }
  return runKernel({
    key: "swiglu_packed_grad",
    inputs: { AB: ab, DG: dg },
    outShape: ab.shape,
    threads: ab.size,
    body: `
      let r = i / (2 * uniforms.h);
      let c = i % (2 * uniforms.h);
      let j = c % uniforms.h;
      let sg = ${sigmoidWgsl(a)};
      let g = DG[r * uniforms.h + j];
      if (c < uniforms.h) {
        result[i] = (g * ${b}) * (sg * (${a} * (1.0 - sg) + 1.0));
      } else {
        result[i] = g * (${a} * sg);
      }`,
    ints: { h },
  });
}

/** Lanes of {@link meanSquaredErrorWgsl}'s one workgroup (a power of two). */
const MSE_GROUP = 256;

/**
 * `mean((a - b)^2)` over all values, as `[1]`: one workgroup, each lane adds a strided run in
 * order, then a fixed pairwise tree (the same bits on every call; tf.mean's order differs).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * import { meanSquaredErrorWgsl } from "./kernels_webgpu.ts";
 * await loadBackend("webgpu");
 * const l = meanSquaredErrorWgsl(tf.fill([1000], 3), tf.ones([1000])); // [4]
 * if ((await l.data())[0] !== 4) throw new Error("mean of (3 - 1)^2");
 * ```
 */
export function meanSquaredErrorWgsl(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  return runKernel({
    key: "mse",
    inputs: { A: a, B: b },
    outShape: [1],
    threads: MSE_GROUP,
    group: MSE_GROUP,
    shared: `var<workgroup> part : array<f32, ${MSE_GROUP}>;`,
    body: `
      var acc = 0.0;
      for (var k = i; k < uniforms.n; k += ${MSE_GROUP}) { let e = A[k] - B[k]; acc += e * e; }
      part[i] = acc;
      workgroupBarrier();
      for (var w = ${MSE_GROUP / 2}; w > 0; w = w / 2) {
        if (i < w) { part[i] += part[i + w]; }
        workgroupBarrier();
      }
      if (i == 0) { result[0] = part[0] / f32(uniforms.n); }`,
    ints: { n: a.size },
  });
}

/**
 * The straight path's point `x_t = (1 - t) * noise + t * data` (`which` "xt") or its velocity
 * `v = data - noise` ("v"), for `data`, `noise` `[N, ...]` and per-sample `t [N]`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * import { straightPathWgsl } from "./kernels_webgpu.ts";
 * await loadBackend("webgpu");
 * const xt = straightPathWgsl("xt", tf.ones([1, 4]), tf.zeros([1, 4]), tf.tensor1d([0.25]));
 * if ((await xt.data()).some((v) => v !== 0.25)) throw new Error("t * data");
 * ```
 */
export function straightPathWgsl(
  which: "xt" | "v",
  data: tf.Tensor,
  noise: tf.Tensor,
  t: tf.Tensor,
): tf.Tensor {
  return runKernel({
    key: `path_${which}`,
    inputs: which === "xt" ? { D: data, Z: noise, T: t } : { D: data, Z: noise },
    outShape: data.shape,
    threads: data.size,
    body: which === "xt"
      ? `let tn = T[i / uniforms.per];
      result[i] = (1.0 - tn) * Z[i] + tn * D[i];`
      : "result[i] = D[i] - Z[i];",
    ints: { per: data.size / data.shape[0] },
  });
}

/**
 * The sinusoidal timestep embedding `[cos(a) | sin(a)]` with `a = (t * scale) * f_k`: `t [N]`,
 * frequencies `freqs [half]` -> `[N, 2 * half]`, one thread per value.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * import { sinusoidsWgsl } from "./kernels_webgpu.ts";
 * await loadBackend("webgpu");
 * const e = sinusoidsWgsl(tf.tensor1d([0]), tf.ones([2]), 1000); // [1, 4]: cos 0, cos 0, sin 0, sin 0
 * if ((await e.data()).join() !== "1,1,0,0") throw new Error("[cos | sin]");
 * ```
 */
export function sinusoidsWgsl(t: tf.Tensor, freqs: tf.Tensor, scale: number): tf.Tensor {
  const half = freqs.size;
  return runKernel({
    key: "sinusoids",
    inputs: { T: t, F: freqs },
    outShape: [t.size, 2 * half],
    threads: t.size * 2 * half,
    body: `
      let k = i % (2 * uniforms.half);
      let a = (T[i / (2 * uniforms.half)] * uniforms.scale) * F[k % uniforms.half];
      result[i] = select(sin(a), cos(a), k < uniforms.half);`,
    ints: { half },
    floats: { scale },
  });
}

/**
 * `x + gate * h` with a per-sample gate, column block `at` of `mod [N, k*D]` read in place, over
 * `x`, `h` `[N, T, D]` (or, without `x`, `gate * h`): the gated residual's forward and its `h`
 * gradient.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * import { gateWgsl } from "./kernels_webgpu.ts";
 * await loadBackend("webgpu");
 * const y = gateWgsl(tf.ones([1, 2, 3]), { mod: tf.ones([1, 3]), at: 0 }, tf.ones([1, 2, 3]));
 * if ((await y.data()).some((v) => v !== 2)) throw new Error("x + gate * h: every value 2");
 * ```
 */
export function gateWgsl(
  x: tf.Tensor | null,
  gate: { mod: tf.Tensor; at: number },
  h: tf.Tensor,
): tf.Tensor {
  const [, t, d] = h.shape;
  const g = "G[(i / (uniforms.t * uniforms.d)) * uniforms.md + uniforms.at + i % uniforms.d]";
  return runKernel({
    key: x ? "gate_residual" : "gate",
    inputs: x ? { X: x, G: gate.mod, H: h } : { G: gate.mod, H: h },
    outShape: h.shape,
    threads: h.size,
    body: `result[i] = ${x ? "X[i] + " : ""}${g} * H[i];`,
    ints: { t, d, md: gate.mod.shape[1]!, at: gate.at * d },
  });
}

/**
 * Column sums of `x [R, C]` over `slices` equal runs of rows: `[slices, w]`, or `[w]` when
 * `slices` is 1, for the `w = width` columns from `from` (default: all); with `blocks`, `blocks`
 * runs of `width` columns, `pitch` apart (a column block of each row of a matrix flattened into
 * C, e.g. `dW1` of a packed `[in, 2H]` weight gradient). One thread per (slice, column), rows
 * added in order.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * import { columnSumWgsl } from "./kernels_webgpu.ts";
 * await loadBackend("webgpu");
 * const s = columnSumWgsl(tf.ones([8, 3]) as tf.Tensor2D, { slices: 2 }); // [2, 3]: slices of 4 rows
 * if ((await s.data()).some((v) => v !== 4)) throw new Error("every value 4");
 * ```
 */
export function columnSumWgsl(
  x: tf.Tensor2D,
  options: { slices?: number; from?: number; width?: number; blocks?: number; pitch?: number } = {},
): tf.Tensor {
  const [r, c] = x.shape;
  const { slices = 1, from = 0, width = c - from, blocks = 1, pitch = 0 } = options;
  const rows = r / slices;
  const cols = blocks * width;
  return runKernel({
    key: "colsum",
    inputs: { X: x },
    outShape: slices === 1 ? [cols] : [slices, cols],
    threads: slices * cols,
    body: `
      let s = i / uniforms.cols;
      let o = i % uniforms.cols;
      let col = (o / uniforms.cw) * uniforms.pitch + uniforms.c0 + o % uniforms.cw;
      var acc = 0.0;
      for (var k = 0; k < uniforms.rows; k++) { acc += X[(s * uniforms.rows + k) * uniforms.c + col]; }
      result[i] = acc;`,
    ints: { c, rows, cols, cw: width, c0: from, pitch },
  });
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

/**
 * WGSL: `qs`, this thread's q times the scale (as tf scales q first), kept in registers for its
 * pass over the keys. `hd` is a literal in every loop over a head's channels: the loops unroll and
 * the per-thread arrays stay in registers.
 */
const OWN_Q = (hd: number) => `
      var qs : array<f32, ${hd}>;
      for (var c = 0; c < ${hd}; c++) { qs[c] = QKV[row + c] * uniforms.scale; }`;

/** WGSL: `s`, the score of this thread's q (`qs`) and the k of the token at row `kr`. */
const SCORE_OWN_Q = (hd: number, kr: string) => `
        var s = 0.0;
        for (var c = 0; c < ${hd}; c++) { s += qs[c] * QKV[${kr} + uniforms.d + c]; }`;

/**
 * WGSL: the running maximum `mx` of a query row's scores in one pass (online softmax): when the
 * score `s` is a new maximum, the sum `sum` so far (and the first `hd` values of `acc`) are scaled
 * by `exp(old - new)`, so `sum` is `sum_j exp(s_j - mx)` for the final `mx`.
 */
const ONLINE_MAX = (hd: number) => `
        if (s > mx) {
          let r = exp(mx - s);
          sum *= r;${
  hd > 0
    ? `
          for (var c = 0; c < ${hd}; c++) { acc[c] *= r; }`
    : ""
}
          mx = s;
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
 * Keys (and queries) per tile of the tiled attention kernels, = their workgroup size: each lane
 * copies one row of the tile into workgroup memory, then every lane reads the whole tile.
 */
const ATTN_TILE = 64;

/** Options of {@link attentionWgsl} and {@link attentionGradWgsl}. */
export interface AttentionWgslOptions {
  /**
   * `false`: the untiled kernels (every thread reads its keys from the storage buffer); default:
   * tiled where the shapes allow ({@link ATTN_TILE}). Both give the same sums in the same order.
   */
  tiled?: boolean;
}

/**
 * How the attention kernels for `tokens` and head size `hd` run: tiled (unless `options.tiled` is
 * false) when T is a multiple of {@link ATTN_TILE} (a workgroup is one tile of queries of one
 * (sample, head)) and two tiles of `hd`-wide rows (`ta`, `tb`, as `vec4`s) fit 16 KiB of workgroup
 * memory (WebGPU's guaranteed minimum). Returns the {@link KernelSpec} parts and the key suffix.
 */
function attentionTiling(tokens: number, hd: number, options: AttentionWgslOptions) {
  const tiled = options.tiled !== false && tokens % ATTN_TILE === 0 && hd % 4 === 0 &&
    2 * ATTN_TILE * hd * 4 <= 16384;
  return tiled
    ? {
      tiled,
      key: "_tiled",
      spec: {
        group: ATTN_TILE,
        shared: `
      var<workgroup> ta : array<vec4<f32>, ${ATTN_TILE * hd / 4}>;
      var<workgroup> tb : array<vec4<f32>, ${ATTN_TILE * hd / 4}>;`,
      },
    }
    : { tiled, key: "", spec: {} };
}

/**
 * WGSL: a loop, in order, over the T rows of this thread's (sample, head) (the keys; in the
 * backward's second half the queries): row `jt`, at `kr` in the packed qkv. Untiled, `body` reads
 * the row from the storage buffers. Tiled, `load` first copies this lane's row of each tile into
 * workgroup memory (`lane`: this thread's place in its workgroup), then `tiledBody` reads row `j`
 * of the tile.
 */
function overRows(tiled: boolean, load: string, body: string, tiledBody: string): string {
  return tiled
    ? `
      for (var t0 = 0; t0 < uniforms.t; t0 += ${ATTN_TILE}) {
        let lane = i % ${ATTN_TILE};
        let kr = head0 + (t0 + lane) * uniforms.rs;${load}
        workgroupBarrier();
        for (var j = 0; j < ${ATTN_TILE}; j++) {
          let jt = t0 + j;${tiledBody}
        }
        workgroupBarrier();
      }`
    : `
      for (var jt = 0; jt < uniforms.t; jt++) {
        let kr = head0 + jt * uniforms.rs;${body}
      }`;
}

/**
 * WGSL: copies `hd` floats of `src` from `from` into row `lane` of tile `tile` (as vec4s), where
 * `lane` is this thread's place in its workgroup.
 */
const TO_TILE = (hd: number, tile: string, src: string, from: string) => `
        for (var c = 0; c < ${hd / 4}; c++) {
          let f = ${from} + 4 * c;
          ${tile}[lane * ${
  hd / 4
} + c] = vec4<f32>(${src}[f], ${src}[f + 1], ${src}[f + 2], ${src}[f + 3]);
        }`;

/**
 * WGSL: `acc = acc + sum over the channels of a * (tile row j)` written out channel by channel
 * (one scalar product per channel, channels in order: the same sums as the untiled kernels); `a`
 * is an expression of the channel index `ch`, e.g. `qs[ch]`; `comp` maps a tile value first.
 */
const TILE_DOT = (
  hd: number,
  acc: string,
  a: (ch: string) => string,
  tile: string,
  comp: (v: string) => string = (v) => v,
) => `
          for (var c = 0; c < ${hd / 4}; c++) {
            let r = ${tile}[j * ${hd / 4} + c];
            ${acc} += ${a("4 * c")} * ${comp("r.x")};
            ${acc} += ${a("4 * c + 1")} * ${comp("r.y")};
            ${acc} += ${a("4 * c + 2")} * ${comp("r.z")};
            ${acc} += ${a("4 * c + 3")} * ${comp("r.w")};
          }`;

/** WGSL: `out[ch] += w * (tile row j)[ch]` for every channel. */
const TILE_AXPY = (
  hd: number,
  out: string,
  w: string,
  tile: string,
  comp: (v: string) => string = (v) => v,
) => `
          for (var c = 0; c < ${hd / 4}; c++) {
            let r = ${tile}[j * ${hd / 4} + c];
            ${out}[4 * c] += ${w} * ${comp("r.x")};
            ${out}[4 * c + 1] += ${w} * ${comp("r.y")};
            ${out}[4 * c + 2] += ${w} * ${comp("r.z")};
            ${out}[4 * c + 3] += ${w} * ${comp("r.w")};
          }`;

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
  return runKernel({
    key: dy ? "qknorm_grad" : "qknorm",
    inputs: dy ? { X: qkv, DY: dy } : { X: qkv },
    outShape: qkv.shape,
    threads: rows,
    body: `
      if ((i % (3 * uniforms.h)) / uniforms.h == 2) { // a head of v
        for (var j = 0; j < uniforms.d; j++) { result[i * uniforms.d + j] = ${pass}[i * uniforms.d + j]; }
        return;
      }${dy ? lnBackward("DY[base + j]") : lnForward("y")}`,
    ints: { d: hd, h: heads, t: 1, md: hd },
    floats: { eps },
  });
}

/**
 * Scaled dot-product attention `softmax(q k^T * scale) v` per (sample, head) on the packed
 * `qkv [N*T, 3D]`: no head transposes, no `[T, T]` map in memory. One thread per (sample, head,
 * query) runs one pass over the keys with a running maximum (online softmax), the exponentials
 * summed and accumulated with the values (normalised at the end); tiled where the shapes allow
 * (the keys through workgroup memory, {@link AttentionWgslOptions}). Result `[N*T, D]`, heads
 * merged.
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
  options: AttentionWgslOptions = {},
): tf.Tensor {
  const { threads, ints, floats } = attentionUniforms(qkv, dims);
  const hd = ints.hd;
  const tiling = attentionTiling(dims.tokens, hd, options);
  return runKernel({
    key: `attention${tiling.key}_hd${hd}`, // hd is a literal in the WGSL: one pipeline per size
    inputs: { QKV: qkv },
    outShape: [qkv.size / ints.rs, ints.d],
    threads,
    ...tiling.spec,
    body: `${ATTN_INDEX}${OWN_Q(hd)}
      var mx = -3.402823e38;
      var sum = 0.0;
      var acc : array<f32, ${hd}>;${
      overRows(
        tiling.tiled,
        `${TO_TILE(hd, "ta", "QKV", "kr + uniforms.d")}${
          TO_TILE(hd, "tb", "QKV", "kr + 2 * uniforms.d")
        }`,
        `${SCORE_OWN_Q(hd, "kr")}${ONLINE_MAX(hd)}
        let e = exp(s - mx);
        sum += e;
        for (var c = 0; c < ${hd}; c++) { acc[c] += e * QKV[kr + 2 * uniforms.d + c]; }`,
        `
          var s = 0.0;${TILE_DOT(hd, "s", (ch) => `qs[${ch}]`, "ta")}${ONLINE_MAX(hd)}
          let e = exp(s - mx);
          sum += e;${TILE_AXPY(hd, "acc", "e", "tb")}`,
      )
    }
      for (var c = 0; c < ${hd}; c++) { result[orow + c] = acc[c] / sum; }`,
    ints,
    floats,
  });
}

/**
 * The gradient of {@link attentionWgsl} with respect to `qkv`, for the output `o` and its gradient
 * `dO` (`[N*T, D]`): the softmax statistics of each query row (max, sum, `delta = dO . o`) in one
 * kernel, then one thread per (sample, head, token) computes that token's `dq` (over the keys) and
 * its `dk`, `dv` (over the queries) from scores recomputed on the fly, into the packed
 * `[N*T, 3D]`, both tiled as {@link attentionWgsl} is. With `P` the attention and
 * `dS = P * (dO v^T - delta)`: `dq = dS k * scale`, `dk = dS^T (q * scale)`, `dv = P^T dO`.
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
  options: AttentionWgslOptions = {},
): tf.Tensor {
  const { threads, ints, floats } = attentionUniforms(qkv, dims);
  const hd = ints.hd;
  const tiling = attentionTiling(dims.tokens, hd, options);
  const stats = runKernel({
    key: `attention_stats${tiling.key}_hd${hd}`,
    inputs: { QKV: qkv, O: o, DO: dO },
    outShape: [threads, 3],
    threads,
    ...tiling.spec,
    body: `${ATTN_INDEX}${OWN_Q(hd)}
      var mx = -3.402823e38;
      var sum = 0.0;${
      overRows(
        tiling.tiled,
        TO_TILE(hd, "ta", "QKV", "kr + uniforms.d"),
        `${SCORE_OWN_Q(hd, "kr")}${ONLINE_MAX(0)}
        sum += exp(s - mx);`,
        `
          var s = 0.0;${TILE_DOT(hd, "s", (ch) => `qs[${ch}]`, "ta")}${ONLINE_MAX(0)}
          sum += exp(s - mx);`,
      )
    }
      var delta = 0.0;
      for (var c = 0; c < ${hd}; c++) { delta += DO[orow + c] * O[orow + c]; }
      result[i * 3] = mx;
      result[i * 3 + 1] = sum;
      result[i * 3 + 2] = delta;`,
    ints,
    floats,
  });
  // P and dS from the score `s`, the statistics of query row `si` and `dp = dO . v`.
  const pds = (si: string) => `
        let si = ${si};
        let p = exp(s - St[si * 3]) / St[si * 3 + 1];
        let ds = p * (dp - St[si * 3 + 2]);`;
  // This token as the query, token jt as the key.
  const dq = overRows(
    tiling.tiled,
    `${TO_TILE(hd, "ta", "QKV", "kr + uniforms.d")}${
      TO_TILE(hd, "tb", "QKV", "kr + 2 * uniforms.d")
    }`,
    `${SCORE_OWN_Q(hd, "kr")}
        var dp = 0.0;
        for (var c = 0; c < ${hd}; c++) { dp += dOo[c] * QKV[kr + 2 * uniforms.d + c]; }${pds("i")}
        for (var c = 0; c < ${hd}; c++) { dq[c] += ds * QKV[kr + uniforms.d + c]; }`,
    `
          var s = 0.0;${TILE_DOT(hd, "s", (ch) => `qs[${ch}]`, "ta")}
          var dp = 0.0;${TILE_DOT(hd, "dp", (ch) => `dOo[${ch}]`, "tb")}${pds("i")}${
      TILE_AXPY(hd, "dq", "ds", "ta")
    }`,
  );
  // This token as the key, token jt as the query (its q at `kr`), q scaled as tf scales it.
  const scaled = (v: string) => `(${v} * uniforms.scale)`;
  const dkdv = overRows(
    tiling.tiled,
    `${TO_TILE(hd, "ta", "QKV", "kr")}${TO_TILE(hd, "tb", "DO", "oj0 + (t0 + lane) * uniforms.d")}`,
    `
        let qo = oj0 + jt * uniforms.d;
        var s = 0.0;
        for (var c = 0; c < ${hd}; c++) { s += (QKV[kr + c] * uniforms.scale) * kk[c]; }
        var dp = 0.0;
        for (var c = 0; c < ${hd}; c++) { dp += DO[qo + c] * vv[c]; }${pds("nh * uniforms.t + jt")}
        for (var c = 0; c < ${hd}; c++) {
          dk[c] += ds * (QKV[kr + c] * uniforms.scale);
          dv[c] += p * DO[qo + c];
        }`,
    `
          var s = 0.0;${TILE_DOT(hd, "s", (ch) => `kk[${ch}]`, "ta", scaled)}
          var dp = 0.0;${TILE_DOT(hd, "dp", (ch) => `vv[${ch}]`, "tb")}${
      pds("nh * uniforms.t + jt")
    }${TILE_AXPY(hd, "dk", "ds", "ta", scaled)}${TILE_AXPY(hd, "dv", "p", "tb")}`,
  );
  const grad = runKernel({
    key: `attention_grad${tiling.key}_hd${hd}`,
    inputs: { QKV: qkv, DO: dO, St: stats },
    outShape: qkv.shape,
    threads,
    ...tiling.spec,
    body: `${ATTN_INDEX}${OWN_Q(hd)}
      // This token as the query, token jt as the key: dq.
      var dOo : array<f32, ${hd}>;
      for (var c = 0; c < ${hd}; c++) { dOo[c] = DO[orow + c]; }
      var dq : array<f32, ${hd}>;${dq}
      for (var c = 0; c < ${hd}; c++) { result[row + c] = dq[c] * uniforms.scale; }
      // Token jt as the query, this token as the key: dk, dv.
      var kk : array<f32, ${hd}>;
      var vv : array<f32, ${hd}>;
      for (var c = 0; c < ${hd}; c++) {
        kk[c] = QKV[row + uniforms.d + c];
        vv[c] = QKV[row + 2 * uniforms.d + c];
      }
      var dk : array<f32, ${hd}>;
      var dv : array<f32, ${hd}>;
      let oj0 = n * uniforms.t * uniforms.d + hh * uniforms.hd;${dkdv}
      for (var c = 0; c < ${hd}; c++) {
        result[row + uniforms.d + c] = dk[c];
        result[row + 2 * uniforms.d + c] = dv[c];
      }`,
    ints,
    floats,
  });
  stats.dispose();
  return grad;
}
