// The system BLAS path of the wasm backend (lib/runtime/blas.ts + gemm in lib/model/matmul.ts):
// every transpose/bias/batch form against plain JS, on BLAS and on XNNPACK, also after the heap
// grows; and a machine without the library or without --allow-ffi runs on XNNPACK and says so once.
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs"; // registers the gradients of tfjs's own ops
import { assert, assertEquals, assertLess } from "./_assert.ts";
import { loadBackend } from "../lib/runtime/backend.ts";
import { activeBlas, BLAS_ENV } from "../lib/runtime/blas.ts";
import { gemm, matmul } from "../lib/model/matmul.ts";
import { Rng } from "../lib/runtime/rng.ts";
import { relErr, withProducts } from "./_shared.ts";

/** `op(a) @ op(b) (+ bias)` in float64 plain JS, over stored row-major matrices. */
function gemmRef(
  a: Float32Array,
  b: Float32Array,
  [m, n, k]: [number, number, number],
  ta: boolean,
  tb: boolean,
  bias?: Float32Array,
): number[] {
  const out: number[] = [];
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = bias ? bias[j] : 0;
      for (let p = 0; p < k; p++) {
        s += a[ta ? p * m + i : i * k + p] * b[tb ? j * k + p : p * n + j];
      }
      out.push(s);
    }
  }
  return out;
}

/** Checks gemm over every flag combination, 2D with and without bias and 3D batched. */
async function checkGemm(): Promise<void> {
  const rng = new Rng(3);
  const [m, n, k, nb] = [37, 29, 45, 3];
  for (const ta of [false, true]) {
    for (const tb of [false, true]) {
      const a = rng.normalArray(nb * m * k);
      const b = rng.normalArray(nb * k * n);
      const bias = rng.normalArray(n);
      const aShape = ta ? [k, m] : [m, k];
      const bShape = tb ? [n, k] : [k, n];
      const opts = { transposeA: ta, transposeB: tb };
      // 2D, with a bias row.
      const a2 = tf.tensor(a.subarray(0, m * k), aShape);
      const b2 = tf.tensor(b.subarray(0, k * n), bShape);
      const bt = tf.tensor1d(bias);
      const c2 = gemm(a2, b2, { ...opts, bias: bt });
      assertEquals(c2.shape, [m, n]);
      const want2 = gemmRef(a.subarray(0, m * k), b.subarray(0, k * n), [m, n, k], ta, tb, bias);
      assertLess(relErr(await c2.data(), want2), 1e-5, `2D ta=${ta} tb=${tb}`);
      // 3D batched, no bias.
      const a3 = tf.tensor(a, [nb, ...aShape]);
      const b3 = tf.tensor(b, [nb, ...bShape]);
      const c3 = gemm(a3, b3, opts);
      assertEquals(c3.shape, [nb, m, n]);
      const got3 = await c3.data();
      for (let i = 0; i < nb; i++) {
        const want = gemmRef(
          a.subarray(i * m * k, (i + 1) * m * k),
          b.subarray(i * k * n, (i + 1) * k * n),
          [m, n, k],
          ta,
          tb,
        );
        assertLess(relErr(got3.subarray(i * m * n, (i + 1) * m * n), want), 1e-5, `3D slice ${i}`);
      }
      tf.dispose([a2, b2, bt, c2, a3, b3, c3]);
    }
  }
}

for (const products of ["blas", "xnnpack"] as const) {
  Deno.test(`gemm: transposes, bias and batches match plain JS (products on ${products})`, () =>
    withProducts(products, async () => {
      const n0 = tf.memory().numTensors;
      await checkGemm();
      // The heap grows past 2 GiB while tensors stay alive: the pointers must follow, and
      // offsets above 2^31 must stay positive.
      const big = tf.zeros([560_000_000]);
      await checkGemm();
      big.dispose();
      assertEquals(tf.memory().numTensors, n0);
    }));
}

Deno.test("matmul's gradients on BLAS equal those on XNNPACK (to float rounding)", async () => {
  await loadBackend("wasm");
  const rng = new Rng(5);
  const a = tf.tensor3d(rng.normalArray(4 * 16 * 24), [4, 16, 24]);
  const b = tf.tensor3d(rng.normalArray(4 * 24 * 8), [4, 24, 8]);
  const grads = () =>
    tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.square(matmul(x, y))))([a, b]);
  const results: Float32Array[][] = [];
  for (const products of ["blas", "xnnpack"] as const) {
    await withProducts(products, async () => {
      const g = grads();
      results.push(await Promise.all(g.map((t) => t.data() as Promise<Float32Array>)));
      tf.dispose(g);
    });
  }
  if (results.length < 2) return; // no BLAS here (withProducts printed the SKIP)
  for (let i = 0; i < 2; i++) assertLess(relErr(results[0][i], results[1][i]), 1e-5);
  tf.dispose([a, b]);
});

/** Runs a small script in a fresh deno with `flags`; returns its outputs. */
async function runScript(flags: string[], env: Record<string, string> = {}) {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/probe.ts`;
  const url = (p: string) => new URL(p, import.meta.url).href;
  await Deno.writeTextFile(
    file,
    `import * as tf from "@tensorflow/tfjs-core";
     import { loadBackend } from "${url("../lib/runtime/backend.ts")}";
     import { gemm } from "${url("../lib/model/matmul.ts")}";
     const info = await loadBackend("wasm");
     await loadBackend("wasm");
     const c = gemm(tf.ones([8, 3]), tf.ones([5, 3]), { transposeB: true });
     console.log(JSON.stringify({ info, sum: (await tf.sum(c).data())[0] }));`,
  );
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", `--config=${url("../deno.json").slice(7)}`, ...flags, file],
      env,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(out.stderr);
    assert(out.success, err);
    const json = JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!);
    return { ...json, err };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("without --allow-ffi or without the library, products run on XNNPACK and say so once", async () => {
  const noFfi = await runScript(["--allow-read", "--allow-env", "--allow-sys", "--allow-net"]);
  assertEquals(noFfi.info.products, "XNNPACK");
  assertEquals(noFfi.sum, 8 * 5 * 3);
  assertEquals(noFfi.err.match(/matrix products on XNNPACK/g)?.length, 1, noFfi.err);
  assert(noFfi.err.includes("--allow-ffi"), noFfi.err);

  const noLib = await runScript(["-A"], { [BLAS_ENV]: "/nonexistent/libopenblas.so.0" });
  assertEquals(noLib.info.products, "XNNPACK");
  assertEquals(noLib.sum, 8 * 5 * 3);
  assertEquals(noLib.err.match(/matrix products on XNNPACK/g)?.length, 1, noLib.err);
  assert(noLib.err.includes("no BLAS library found"), noLib.err);

  const off = await runScript(["-A"], { [BLAS_ENV]: "0" });
  assertEquals(off.info.products, "XNNPACK");
  assert(off.err.includes(`switched off by $${BLAS_ENV}=0`), off.err);

  // And where the library is (this machine, CI): the report names it, and nothing is said.
  await loadBackend("wasm");
  if (activeBlas()) {
    const on = await runScript(["-A"]);
    assert(on.info.products !== "XNNPACK", on.info.products);
    assertEquals(on.sum, 8 * 5 * 3);
    assert(!on.err.includes("matrix products on XNNPACK"), on.err);
  }
});
