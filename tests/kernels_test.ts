// The closed-form layers of lib/model/kernels.ts. The linear layer's gradients (dx, dW, db) against
// plain float64 sums in JS, at a row count that takes webgpu's split-K weight gradient (M = 4,096:
// four slices of 1,024 rows) and one that does not (M = 1,000), on webgpu and wasm, with and
// without a bias; the layers (on webgpu their WGSL kernels from kernels_webgpu.ts: LayerNorm, with
// the adaLN modulation read in place and the final layer's affine, SiLU, the flow loss, the packed
// SwiGLU, the qk-norm attention, the gated residual) against plain tf ops differentiated by tfjs
// on the cpu backend, with a check that no WGSL kernel failed WebGPU's validation.
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs"; // the gradients of the core ops (tf.sum, tf.mul), as dit.ts does
import { assert, assertEquals, assertLess } from "./_assert.ts";
import type { BackendName } from "../lib/runtime/backend.ts";
import {
  attentionQkv,
  gatedResidual,
  layerNormFused,
  layerNormModulate,
  linearBias,
  linearNoBias,
  meanSquaredError,
  siluFused,
  SPLIT_K_ROWS,
  splitKWeightGrad,
  straightPath,
  swigluGate,
  swigluHidden,
  timestepSinusoids,
} from "../lib/model/kernels.ts";
import * as wgsl from "../lib/model/kernels_webgpu.ts";
import { Rng } from "../lib/runtime/rng.ts";
import { relErr, useBackend } from "./_shared.ts";

/** `shape`'s worth of seeded standard normals. */
const seededNormal = (shape: number[], seed: number) =>
  new Rng(seed).normalArray(shape.reduce((a, b) => a * b, 1));

/** x^T @ r, sum_rows(r) and r @ w^T in float64, straight from the definitions. */
function reference(
  x: Float32Array,
  w: Float32Array,
  r: Float32Array,
  m: number,
  i: number,
  o: number,
) {
  const dw = new Float64Array(i * o);
  const db = new Float64Array(o);
  const dx = new Float64Array(m * i);
  for (let row = 0; row < m; row++) {
    for (let c = 0; c < o; c++) {
      const g = r[row * o + c];
      db[c] += g;
      for (let k = 0; k < i; k++) {
        dw[k * o + c] += x[row * i + k] * g;
        dx[row * i + k] += g * w[k * o + c];
      }
    }
  }
  return { dw, db, dx };
}

for (const backend of ["webgpu", "wasm"] as BackendName[]) {
  for (const m of [4 * SPLIT_K_ROWS, 1000]) {
    Deno.test(`linear layer gradients on ${backend}, M = ${m}: dx, dW, db match float64 sums`, async () => {
      if (!(await useBackend(backend))) return;
      const [i, o] = [96, 192]; // 192 outputs: the bias sum tfjs-webgpu would do with atomics
      const x = seededNormal([m, i], 1);
      const w = seededNormal([i, o], 2);
      const r = seededNormal([m, o], 3); // dL/dy of L = sum(y * r)
      const before = tf.memory().numTensors;
      const [xt, wt, bt, rt] = [
        tf.tensor2d(x, [m, i]),
        tf.tensor2d(w, [i, o]),
        tf.zeros([o]) as tf.Tensor1D,
        tf.tensor2d(r, [m, o]),
      ];
      const grads = tf.grads((a, b, c) =>
        tf.sum(tf.mul(linearBias(a as tf.Tensor2D, b as tf.Tensor2D, c as tf.Tensor1D), rt))
      );
      const [gx, gw, gb] = grads([xt, wt, bt]);
      const ref = reference(x, w, r, m, i, o);
      assertLess(relErr(await gw.data(), ref.dw), 1e-5, "dW");
      assertLess(relErr(await gb.data(), ref.db), 1e-5, "db");
      assertLess(relErr(await gx.data(), ref.dx), 1e-5, "dx");
      // The split product by itself, and no tensor left behind by either.
      const direct = splitKWeightGrad(xt, rt);
      assertEquals(direct.shape, [i, o]);
      assertLess(relErr(await direct.data(), ref.dw), 1e-5, "splitKWeightGrad");
      const bits = async (t: tf.Tensor) => new Uint32Array((await t.data() as Float32Array).buffer);
      // On webgpu the layer's backward took splitKWeightGrad's product: the very same bits.
      if (backend === "webgpu") assertEquals(await bits(gw), await bits(direct));
      // The bias-free linear (the final projection): the same dx and dW, no bias.
      const [nx, nw] = tf.grads((a, b) =>
        tf.sum(tf.mul(linearNoBias(a as tf.Tensor2D, b as tf.Tensor2D), rt))
      )([xt, wt]);
      assertLess(relErr(await nw.data(), ref.dw), 1e-5, "dW (no bias)");
      assertLess(relErr(await nx.data(), ref.dx), 1e-5, "dx (no bias)");
      if (backend === "webgpu") assertEquals(await bits(nw), await bits(direct));
      tf.dispose([xt, wt, bt, rt, gx, gw, gb, direct, nx, nw]);
      assertEquals(tf.memory().numTensors, before);
    });
  }
}

Deno.test("split-K weight and bias gradients: fixed sum order, the same bits on every call (webgpu)", async () => {
  if (!(await useBackend("webgpu"))) return;
  const m = 8 * SPLIT_K_ROWS;
  const x = tf.tensor2d(seededNormal([m, 32], 4), [m, 32]);
  const dy = tf.tensor2d(seededNormal([m, 48], 5), [m, 48]);
  const runs: Uint32Array[] = [];
  for (let k = 0; k < 3; k++) {
    const g = splitKWeightGrad(x, dy);
    runs.push(new Uint32Array((await g.data() as Float32Array).buffer.slice(0)));
    g.dispose();
  }
  assert(runs[1].every((v, j) => v === runs[0][j]) && runs[2].every((v, j) => v === runs[0][j]));
  // The bias gradient of a 192-wide layer (tfjs's own product would add with atomics).
  const w = tf.zeros([32, 192]);
  const b = tf.zeros([192]);
  const r = tf.tensor2d(seededNormal([m, 192], 6), [m, 192]);
  const db: Uint32Array[] = [];
  for (let k = 0; k < 3; k++) {
    const g = tf.grad((bb) =>
      tf.sum(tf.mul(linearBias(x, w as tf.Tensor2D, bb as tf.Tensor1D), r))
    )(b);
    db.push(new Uint32Array((await g.data() as Float32Array).buffer.slice(0)));
    g.dispose();
  }
  assert(db[1].every((v, j) => v === db[0][j]) && db[2].every((v, j) => v === db[0][j]));
  tf.dispose([x, dy, w, b, r]);
});

/** Column block `at` (96 wide) of a per-sample adaLN output `[N, k*96]`. */
const block = (mod: tf.Tensor, at: number) => tf.slice(mod, [0, at * 96], [mod.shape[0], 96]);

/** The layers as plain tf ops (autodiff), the reference for the fused and WGSL versions. */
const plainLayers = {
  layerNorm: (x: tf.Tensor) => {
    const { mean, variance } = tf.moments(x, -1, true);
    return tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, 1e-6)));
  },
  modulate: (x: tf.Tensor, shift: tf.Tensor, scale: tf.Tensor) => {
    const [n, d] = shift.shape;
    return tf.add(tf.mul(x, tf.add(tf.reshape(scale, [n, 1, d]), 1)), tf.reshape(shift, [n, 1, d]));
  },
};
const layerCases: {
  name: string;
  shapes: number[][];
  fused: (...x: tf.Tensor[]) => tf.Tensor;
  plain: (...x: tf.Tensor[]) => tf.Tensor;
}[] = [
  {
    name: "layerNorm",
    shapes: [[8, 256, 24]],
    fused: (x) => layerNormFused(x, 1e-6),
    plain: (x) => plainLayers.layerNorm(x),
  },
  {
    // shift and scale read in place from blocks 1 and 2 of a 4-block adaLN output; 300 tokens:
    // more than one row per lane in the per-sample gradient kernel
    name: "layerNorm + modulate",
    shapes: [[3, 300, 96], [3, 4 * 96]],
    fused: (x, mod) => layerNormModulate(x as tf.Tensor3D, mod as tf.Tensor2D, { at: 1 }),
    plain: (x, mod) => plainLayers.modulate(plainLayers.layerNorm(x), block(mod, 1), block(mod, 2)),
  },
  {
    // the final layer's: LayerNorm's affine weight and bias, then the modulation
    name: "layerNorm + affine + modulate",
    shapes: [[3, 256, 96], [3, 2 * 96], [96], [96]],
    fused: (x, mod, w, b) =>
      layerNormModulate(x as tf.Tensor3D, mod as tf.Tensor2D, { affine: { weight: w, bias: b } }),
    plain: (x, mod, w, b) =>
      plainLayers.modulate(
        tf.add(tf.mul(plainLayers.layerNorm(x), w), b),
        block(mod, 0),
        block(mod, 1),
      ),
  },
  {
    name: "mean squared error (the flow loss)",
    shapes: [[3, 32, 32, 4]],
    fused: (p) => meanSquaredError(p, tf.onesLike(p)),
    plain: (p) => tf.mean(tf.square(tf.sub(p, tf.onesLike(p)))),
  },
  {
    name: "SiLU",
    shapes: [[3, 96]],
    fused: (x) => siluFused(x),
    plain: (x) => tf.mul(x, tf.sigmoid(x)),
  },
  {
    name: "SwiGLU gate",
    shapes: [[3, 256, 192], [3, 256, 192]],
    fused: (a, b) => swigluGate(a, b),
    plain: (a, b) => tf.mul(tf.mul(a, tf.sigmoid(a)), b),
  },
  // M = 512 rows: one product; M = 2,048: the weight gradients split in two slices of 1,024 rows.
  ...[2, 8].map((n) => ({
    name: `SwiGLU hidden (w1 and w2 as one packed product on webgpu), M = ${n * 256}`,
    shapes: [[n, 256, 96], [96, 192], [192], [96, 192], [192]],
    fused: (x: tf.Tensor, w1: tf.Tensor, b1: tf.Tensor, w2: tf.Tensor, b2: tf.Tensor) =>
      swigluHidden(x, { weight: w1, bias: b1 }, { weight: w2, bias: b2 }),
    plain: (x: tf.Tensor, w1: tf.Tensor, b1: tf.Tensor, w2: tf.Tensor, b2: tf.Tensor) => {
      const lin = (w: tf.Tensor, b: tf.Tensor) => tf.add(tf.matMul(tf.reshape(x, [-1, 96]), w), b); // [M, 192]
      const a = lin(w1, b1);
      return tf.reshape(tf.mul(tf.mul(a, tf.sigmoid(a)), lin(w2, b2)), [n, 256, 192]);
    },
  })),
  {
    name: "qk-norm attention from the packed qkv",
    shapes: [[2, 64, 288]],
    fused: (qkv) => attentionQkv(qkv as tf.Tensor3D, 4, 1e-6),
    plain: (qkv) => {
      // [N, T, 3, H, hd] -> q, k, v as [N, H, T, hd]; q and k LayerNormed per head.
      const [q, k, v] = tf.split(tf.reshape(qkv, [2, 64, 3, 4, 24]), 3, 2).map((x) =>
        tf.transpose(tf.reshape(x, [2, 64, 4, 24]), [0, 2, 1, 3])
      );
      const logits = tf.matMul(plainLayers.layerNorm(q), plainLayers.layerNorm(k), false, true);
      const p = tf.softmax(tf.div(logits, Math.sqrt(24))); // [N, H, T, T]
      return tf.reshape(tf.transpose(tf.matMul(p, v), [0, 2, 1, 3]), [2, 64, 96]);
    },
  },
  {
    // the gate read in place from block 2 of a 3-block adaLN output
    name: "gated residual",
    shapes: [[3, 256, 96], [3, 3 * 96], [3, 256, 96]],
    fused: (x, mod, h) =>
      gatedResidual(x as tf.Tensor3D, h as tf.Tensor3D, { mod: mod as tf.Tensor2D, at: 2 }),
    plain: (x, mod, h) => tf.add(x, tf.mul(tf.reshape(block(mod, 2), [3, 1, 96]), h)),
  },
];
for (const [c, backend] of layerCases.flatMap((c) => [[c, "webgpu"], [c, "wasm"]] as const)) {
  const what = backend === "webgpu" ? "webgpu (WGSL kernels)" : "wasm (tf ops)";
  Deno.test(`${c.name} on ${what}: value and gradients match plain tf ops on cpu`, async () => {
    const inputs = c.shapes.map((s, k) => seededNormal(s, 10 + k));
    const run = async (backend: BackendName, f: (...x: tf.Tensor[]) => tf.Tensor) => {
      if (!(await useBackend(backend))) return null;
      const before = tf.memory().numTensors;
      // A WGSL kernel that fails validation drops its whole command buffer without a word.
      const device = backend === "webgpu"
        ? (tf.backend() as unknown as { device: GPUDevice }).device
        : null;
      device?.pushErrorScope("validation");
      const ts = inputs.map((v, k) => tf.tensor(v, c.shapes[k]));
      const y = tf.tidy(() => f(...ts)); // tidy: customGrad keeps its saved views outside a tape
      const rt = tf.tensor(seededNormal([y.size], 99)); // dL/dy of L = sum(y * r)
      const g = tf.grads((...xs: tf.Tensor[]) => tf.sum(tf.mul(tf.reshape(f(...xs), [-1]), rt)))(
        ts,
      );
      const out = [await y.data(), ...await Promise.all(g.map((t) => t.data()))];
      assertEquals(await device?.popErrorScope() ?? null, null, "a WGSL kernel failed validation");
      tf.dispose([...ts, rt, y, ...g]);
      assertEquals(tf.memory().numTensors, before);
      return out;
    };
    const got = await run(backend, c.fused);
    const want = await run("cpu", c.plain);
    if (!got || !want) return;
    for (let k = 0; k < want.length; k++) {
      assertLess(relErr(got[k], want[k]), 2e-5, `${c.name}: ${k === 0 ? "value" : `grad ${k}`}`);
    }
  });
}

Deno.test("straight path and timestep sinusoids on webgpu (WGSL) match tf ops on cpu", async () => {
  const data = seededNormal([3, 32, 32, 4], 20);
  const noise = seededNormal([3, 32, 32, 4], 21);
  const t = [0.1, 0.5, 0.97];
  const freqs = new Float32Array(128).map((_, k) => Math.exp(-Math.log(10000) * k / 128));
  const run = async (backend: BackendName) => {
    if (!(await useBackend(backend))) return null;
    const before = tf.memory().numTensors;
    const [d, z, tt] = [
      tf.tensor(data, [3, 32, 32, 4]),
      tf.tensor(noise, [3, 32, 32, 4]),
      tf.tensor1d(t),
    ];
    const { xt, v } = straightPath(d, z, tt);
    const e = timestepSinusoids(tt, freqs, 1000);
    const out = [await xt.data(), await v.data(), await e.data()];
    tf.dispose([d, z, tt, xt, v, e]);
    assertEquals(tf.memory().numTensors, before);
    return out;
  };
  const got = await run("webgpu");
  const want = await run("cpu");
  if (!got || !want) return;
  assertLess(relErr(got[0], want[0]), 1e-6, "x_t");
  assertLess(relErr(got[1], want[1]), 1e-6, "v");
  assertLess(relErr(got[2], want[2]), 1e-5, "[cos | sin]");
});

Deno.test("attention kernels on webgpu: tiled (workgroup tiles, vec4 reads) = untiled, bit for bit", async () => {
  if (!(await useBackend("webgpu"))) return;
  // T = 192: three tiles of 64 keys; hd = 24; two samples, four heads.
  const [n, t, h, hd] = [2, 192, 4, 24];
  const d = h * hd;
  const dims = { tokens: t, heads: h };
  const qkv = tf.tensor2d(seededNormal([n * t, 3 * d], 30), [n * t, 3 * d]);
  const dO = tf.tensor2d(seededNormal([n * t, d], 31), [n * t, d]);
  const before = tf.memory().numTensors;
  const device = (tf.backend() as unknown as { device?: GPUDevice }).device;
  device?.pushErrorScope("validation");
  const outs: Float32Array[][] = [];
  for (const tiled of [true, false]) {
    const o = wgsl.attentionWgsl(qkv, dims, { tiled });
    const g = wgsl.attentionGradWgsl(qkv, o, dO, dims, { tiled });
    outs.push([await o.data() as Float32Array, await g.data() as Float32Array]);
    tf.dispose([o, g]);
  }
  assertEquals(await device?.popErrorScope() ?? null, null, "a WGSL kernel failed validation");
  assertEquals(tf.memory().numTensors, before);
  for (const k of [0, 1]) {
    const [a, b] = [outs[0][k], outs[1][k]];
    const differ = a.reduce((m, v, i) => m + (Object.is(v, b[i]) ? 0 : 1), 0);
    assertEquals(differ, 0, `${k ? "gradient" : "output"}: values that differ`);
    assert(a.some((v) => v !== 0), "a real output");
  }
  tf.dispose([qkv, dO]);
});
