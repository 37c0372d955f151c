// loadBackend: each backend that can run here computes correctly; bad names and a missing
// tfjs-node give clear errors; $ANTHOS_BACKEND picks the default.
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import {
  availableBackends,
  BACKEND_ENV,
  type BackendName,
  BACKENDS,
  defaultBackendName,
  deviceName,
  loadBackend,
  webgpuEntryPoint,
} from "../lib/runtime/backend.ts";
import { Rng } from "../lib/runtime/rng.ts";
import { IN_CI, relErr } from "./_shared.ts";

/** Plain-JS [m,k] x [k,n] matmul in float64: the independent reference. */
function matmulRef(a: Float32Array, b: Float32Array, m: number, k: number, n: number): number[] {
  const out = new Array<number>(m * n).fill(0);
  for (let i = 0; i < m; i++) {
    for (let p = 0; p < k; p++) {
      const aip = a[i * k + p];
      for (let j = 0; j < n; j++) out[i * n + j] += aip * b[p * n + j];
    }
  }
  return out;
}

/** Runs a [37,64]x[64,29] matmul on the active backend and returns its max relative error. */
async function matmulError(): Promise<number> {
  const rng = new Rng(7);
  const [m, k, n] = [37, 64, 29];
  const a = rng.normalArray(m * k);
  const b = rng.normalArray(k * n);
  const y = tf.matMul(tf.tensor2d(a, [m, k]), tf.tensor2d(b, [k, n])); // [m, n]
  const got = await y.data();
  tf.dispose(y);
  return relErr(got, matmulRef(a, b, m, k, n));
}

/** matmul, conv2d (3x3, stride 1, same) and softmax on the active backend, as flat arrays. */
async function smallOps(): Promise<Float32Array[]> {
  const rng = new Rng(11);
  const outs = tf.tidy(() => {
    const a = tf.tensor2d(rng.normalArray(16 * 48), [16, 48]);
    const b = tf.tensor2d(rng.normalArray(48 * 24), [48, 24]);
    const x = tf.tensor4d(rng.normalArray(2 * 9 * 9 * 8), [2, 9, 9, 8]); // [N, H, W, C]
    const w = tf.tensor4d(rng.normalArray(3 * 3 * 8 * 12), [3, 3, 8, 12]); // [kh, kw, Cin, Cout]
    const logits = tf.tensor2d(rng.normalArray(6 * 50).map((v) => 4 * v), [6, 50]);
    return [tf.matMul(a, b), tf.conv2d(x, w, 1, "same"), tf.softmax(logits)];
  });
  const data = await Promise.all(outs.map((t) => t.data() as Promise<Float32Array>));
  tf.dispose(outs);
  return data;
}

/** The error a promise rejects with (fails if it resolves). */
async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof Error);
    return e;
  }
  throw new assert.AssertionError({ message: "expected a rejection" });
}

const canWebGpu = (await availableBackends()).includes("webgpu");
if (!canWebGpu && !IN_CI) {
  console.warn(
    "SKIP webgpu tests: no WebGPU adapter (install mesa-vulkan-drivers for lavapipe). " +
      "Under CI=true this is a failure.",
  );
}

Deno.test("BACKENDS lists the four names", () => {
  assert.deepEqual([...BACKENDS].sort(), ["cpu", "tensorflow", "wasm", "webgpu"]);
});

Deno.test("cpu computes a matmul like plain JS", async () => {
  const info = await loadBackend("cpu");
  assert.deepEqual(info, { name: "cpu" });
  assert.equal(tf.getBackend(), "cpu");
  assert.ok((await matmulError()) < 1e-6);
});

Deno.test("wasm uses SIMD and all requested threads, and computes a matmul like plain JS", async () => {
  const want = Math.min(navigator.hardwareConcurrency || 1, 8);
  const info = await loadBackend("wasm");
  const { products, ...rest } = info;
  assert.deepEqual(rest, { name: "wasm", threads: want, simd: true });
  assert.ok(products && products.length > 0, "the report names what computes the products");
  assert.equal(tf.getBackend(), "wasm");
  assert.ok((await matmulError()) < 1e-5);
  // A bigger matmul spreads over the pthreads; check it too.
  const rng = new Rng(3);
  const a = rng.normalArray(256 * 96);
  const b = rng.normalArray(96 * 80);
  const y = tf.matMul(tf.tensor2d(a, [256, 96]), tf.tensor2d(b, [96, 80])); // [256, 80]
  const got = await y.data();
  tf.dispose(y);
  assert.ok(relErr(got, matmulRef(a, b, 256, 96, 80)) < 1e-5);
});

Deno.test("wasm (threaded) matches cpu on matmul, conv2d and softmax", async () => {
  await loadBackend("cpu");
  const want = await smallOps();
  await loadBackend("wasm");
  const got = await smallOps();
  for (let i = 0; i < want.length; i++) {
    const e = relErr(got[i], want[i]);
    assert.ok(e < 1e-5, `op ${i}: rel err ${e}`);
  }
});

Deno.test("loading again is idempotent and switching backends keeps results right", async () => {
  const first = await loadBackend("wasm");
  const x = tf.tensor1d([1, 2, 3]); // made on wasm, read after switching
  assert.deepEqual(await loadBackend("cpu"), { name: "cpu" });
  assert.deepEqual(Array.from(await tf.mul(x, 2).data()), [2, 4, 6]);
  assert.deepEqual(await loadBackend("wasm"), first);
  assert.equal(tf.getBackend(), "wasm");
  assert.ok((await matmulError()) < 1e-5);
  tf.dispose(x);
});

Deno.test("wasm's thread count cannot change once started", async () => {
  const { threads } = await loadBackend("wasm");
  const other = threads === 1 ? 2 : 1;
  await assert.rejects(loadBackend("wasm", { threads: other }), /fixed at the first/);
  await assert.rejects(loadBackend("wasm", { threads: 0 }), /threads must be/);
});

Deno.test("unknown backend names give an error listing the valid ones", async () => {
  const err = await rejection(loadBackend("webgl" as BackendName));
  for (const name of BACKENDS) assert.ok(err.message.includes(`"${name}"`), err.message);
  assert.ok(err.message.includes("webgl"));
});

Deno.test("$ANTHOS_BACKEND picks the default backend", async () => {
  const saved = Deno.env.get(BACKEND_ENV);
  try {
    Deno.env.delete(BACKEND_ENV);
    assert.equal(defaultBackendName(), "wasm");
    Deno.env.set(BACKEND_ENV, "cpu");
    assert.equal(defaultBackendName(), "cpu");
    assert.equal((await loadBackend()).name, "cpu");
    assert.equal(tf.getBackend(), "cpu");
    Deno.env.set(BACKEND_ENV, "tpu");
    assert.throws(() => defaultBackendName(), /\$ANTHOS_BACKEND/);
  } finally {
    if (saved == null) Deno.env.delete(BACKEND_ENV);
    else Deno.env.set(BACKEND_ENV, saved);
  }
});

Deno.test("tensorflow without tfjs-node gives an error naming the install step", async () => {
  // Missing local modules stand in for tfjs-node(-gpu): the real npm: specifiers would download
  // ~60 packages here before failing on the missing libtensorflow binding.
  const missing = [
    new URL("./__no_tfjs_node_gpu__.js", import.meta.url).href,
    new URL("./__no_tfjs_node__.js", import.meta.url).href,
  ];
  const err = await rejection(loadBackend("tensorflow", { tensorflowModules: missing }));
  assert.match(err.message, /tensorflow backend unavailable/);
  assert.ok(err.message.includes("deno install --allow-scripts=npm:@tensorflow/tfjs-node"));
  for (const m of missing) assert.ok(err.message.includes(m), err.message);
  assert.ok(!(await availableBackends()).includes("tensorflow"));
});

Deno.test({
  name: "webgpu loads an adapter and matches cpu on matmul, conv2d and softmax",
  ignore: !canWebGpu && !IN_CI, // under CI a missing adapter fails below, loudly
  fn: async () => {
    await loadBackend("cpu");
    const want = await smallOps();
    const info = await loadBackend("webgpu"); // throws with the install hint if no adapter
    assert.equal(info.name, "webgpu");
    assert.ok(info.adapter && info.adapter.length > 0, "adapter name");
    console.log(`webgpu adapter: ${info.adapter}${info.fallbackAdapter ? " (fallback)" : ""}`);
    const got = await smallOps();
    for (let i = 0; i < want.length; i++) {
      const e = relErr(got[i], want[i]);
      assert.ok(e < 1e-5, `op ${i}: rel err ${e}`);
    }
    assert.ok((await matmulError()) < 1e-5);
    // Back and forth with wasm, as the parity tests do.
    await loadBackend("wasm");
    assert.ok((await matmulError()) < 1e-5);
    assert.equal((await loadBackend("webgpu")).adapter, info.adapter);
    assert.ok((await matmulError()) < 1e-5);
    // The WebGPU entry point is fixed once webgpu runs: the same one is fine, another is refused.
    assert.equal((await loadBackend("webgpu", { gpu: navigator.gpu })).adapter, info.adapter);
    await assert.rejects(
      () => loadBackend("webgpu", { gpu: {} as GPU }),
      /webgpu already started in this process on another WebGPU entry point/,
    );
  },
});

Deno.test("webgpu on a given WebGPU entry point without an adapter: an error that says so", async () => {
  // In a fresh process: one webgpu backend per process.
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `import { loadBackend } from "${new URL("../lib/runtime/backend.ts", import.meta.url)}";` +
      `await loadBackend("webgpu", { gpu: { requestAdapter: () => Promise.resolve(null) } });`,
    ],
    stderr: "piped",
  }).output();
  assert.ok(!out.success);
  assert.match(
    new TextDecoder().decode(out.stderr),
    /the given GPU entry point returned no adapter/,
  );
});

Deno.test("$ANTHOS_WEBGPU: deno is navigator.gpu; a bad value or a missing addon is named", async () => {
  if (navigator.gpu) assert.equal((await webgpuEntryPoint("deno")).gpu, navigator.gpu);
  assert.equal((await webgpuEntryPoint("deno")).webgpu, "navigator.gpu");
  const bad = await rejection(webgpuEntryPoint("vulkan"));
  assert.match(
    bad.message,
    /ANTHOS_WEBGPU="vulkan": use deno .*, dawn .*, or the path of a dawn.node/,
  );
  const missing = await rejection(webgpuEntryPoint("/nowhere/dawn.node"));
  assert.match(missing.message, /ANTHOS_WEBGPU=\/nowhere\/dawn.node: no such file/);
  // What ledgers and bench tables call the device (Dawn itself runs in tests/dawn_test.ts).
  assert.equal(deviceName({ adapter: "NVIDIA H200", webgpu: "navigator.gpu" }), "NVIDIA H200");
  assert.equal(deviceName({ adapter: "NVIDIA H200", webgpu: "Dawn (x)" }), "NVIDIA H200 via Dawn");
  assert.equal(deviceName({}), "cpu");
});

Deno.test("$ANTHOS_WASM_THREADS sets the wasm thread count; a bad value is named", async () => {
  const run = async (value: string) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "eval",
        `import { loadBackend } from "${new URL("../lib/runtime/backend.ts", import.meta.url)}";` +
        `console.log(JSON.stringify(await loadBackend("wasm")));`,
      ],
      env: { ANTHOS_WASM_THREADS: value },
      stdout: "piped",
      stderr: "piped",
    }).output();
    return {
      ok: out.success,
      out: new TextDecoder().decode(out.stdout),
      err: new TextDecoder().decode(out.stderr),
    };
  };
  const one = await run("1");
  assert.ok(one.ok, one.err);
  assert.equal(JSON.parse(one.out).threads, 1);
  const bad = await run("lots");
  assert.ok(!bad.ok);
  assert.ok(bad.err.includes("ANTHOS_WASM_THREADS"), bad.err);
});
