/**
 * Choosing and starting a TensorFlow.js backend under Deno.
 *
 * `loadBackend(name)` registers, initialises and activates one of four backends and reports what
 * it got (thread count, SIMD, GPU adapter). The name defaults to `$ANTHOS_BACKEND`, else `wasm`.
 * Library code never calls this itself: entry points (tasks, notebooks, tests) pick the backend.
 *
 * - `wasm`: XNNPACK with SIMD. With `threads > 1` (the default on multi-core machines) it runs the
 *   multi-threaded build (`tfjs-backend-wasm-threaded-simd.wasm`, Emscripten pthreads), which
 *   tfjs itself switches off on Node-like platforms; see {@link startWasm} for how it is enabled.
 *   The `.wasm` binaries are read from the npm package on disk (no network).
 * - `cpu`: tfjs-backend-cpu (plain JS, slow, the reference).
 * - `webgpu`: Deno's `navigator.gpu` (on a GPU-less Linux box: Mesa's lavapipe, from the Debian
 *   package `mesa-vulkan-drivers`), or Dawn (Chromium's WebGPU, npm `webgpu`) with
 *   `ANTHOS_WEBGPU=dawn`; see {@link webgpuEntryPoint}. The device is created here with a clean
 *   descriptor.
 * - `tensorflow`: native libtensorflow via `@tensorflow/tfjs-node(-gpu)`, imported only on demand.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { blasStatus, loadBlas } from "./blas.ts";
import { env as anthosEnv, ENV_VARS } from "./env.ts";

/** Names accepted by {@link loadBackend}. */
export type BackendName = "wasm" | "cpu" | "webgpu" | "tensorflow";

/** Every backend name, in order of preference for this project. */
export const BACKENDS: readonly BackendName[] = ["wasm", "cpu", "webgpu", "tensorflow"];

/** What {@link loadBackend} started. */
export interface BackendInfo {
  /** The active tfjs backend. */
  name: BackendName;
  /** wasm: XNNPACK threads actually in use (1 = single-threaded build). */
  threads?: number;
  /** wasm: whether the SIMD build is in use. */
  simd?: boolean;
  /**
   * wasm: what computes the matrix products: the system BLAS through FFI (e.g. "OpenBLAS 0.3.21
   * (Haswell kernels, 2 threads) from libopenblas.so.0") or "XNNPACK" (see lib/runtime/blas.ts).
   */
  products?: string;
  /** webgpu: the adapter's description, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)". */
  adapter?: string;
  /** webgpu: true for a software (fallback) adapter such as lavapipe. */
  fallbackAdapter?: boolean;
  /**
   * webgpu: the WebGPU implementation under tfjs: "navigator.gpu" (the runtime's own: wgpu in
   * Deno), "Dawn (npm:webgpu@0.6.2)", "Dawn (<path to dawn.node>)", or "options.gpu".
   */
  webgpu?: string;
  /** tensorflow: the module specifier that provided the backend. */
  module?: string;
}

/** Options for {@link loadBackend}. */
export interface LoadBackendOptions {
  /**
   * wasm only: XNNPACK threads, 1..8 (the threaded build pre-spawns 8 workers). Default:
   * `$ANTHOS_WASM_THREADS`, else the number of logical CPUs, capped at 8. Fixed for the process
   * once wasm has started.
   */
  threads?: number;
  /**
   * tensorflow only: module specifiers tried in order. Default: tfjs-node-gpu, then tfjs-node
   * (both `npm:` at the tfjs version in use).
   */
  tensorflowModules?: readonly string[];
  /**
   * webgpu only: the WebGPU entry point to ask for the adapter. Default: the one `$ANTHOS_WEBGPU`
   * names ({@link webgpuEntryPoint}), else `navigator.gpu` (Deno's own WebGPU). Fixed for the
   * process once webgpu has started.
   */
  gpu?: GPU;
}

/**
 * The device a backend computes on, for logs, ledgers and bench tables: the GPU adapter (with
 * " via Dawn" when Dawn's WebGPU runs it), else "cpu".
 *
 * @example
 * ```ts
 * import { deviceName } from "./backend.ts";
 * deviceName({ adapter: "NVIDIA H200", webgpu: "Dawn (npm:webgpu@0.6.2)" }); // "NVIDIA H200 via Dawn"
 * deviceName({}); // "cpu"
 * ```
 */
export function deviceName(info: { adapter?: string; webgpu?: string }): string {
  if (info.adapter == null) return "cpu";
  return info.webgpu?.startsWith("Dawn") ? `${info.adapter} via Dawn` : info.adapter;
}

/** The env var that names the default backend. */
export const BACKEND_ENV: "ANTHOS_BACKEND" = ENV_VARS.backend;

const TFJS_VERSION = "4.22.0";
/** Most pthreads the threaded wasm build can use: it pre-spawns this many workers. */
const WASM_MAX_THREADS = 8;

const loaded = new Map<BackendName, BackendInfo>();

/**
 * Starts a tfjs backend (once per process) and makes it the active one.
 *
 * Loading a backend again is cheap: it only switches to it. Switching between backends in one
 * process works (tensors move lazily). Unknown names, a missing GPU adapter or a missing native
 * tensorflow binding throw an error that says how to fix it.
 *
 * @param name backend to start; default `$ANTHOS_BACKEND`, else `"wasm"`.
 * @example
 * ```ts
 * import { loadBackend } from "./backend.ts";
 * const info = await loadBackend("wasm", { threads: 2 });
 * console.log(info); // { name: "wasm", threads: 2, simd: true }
 * ```
 */
export async function loadBackend(
  name?: BackendName,
  options: LoadBackendOptions = {},
): Promise<BackendInfo> {
  const chosen = checkName(name ?? defaultBackendName());
  const known = loaded.get(chosen);
  if (known && tf.findBackend(chosen) != null) {
    if (chosen === "webgpu" && options.gpu != null && options.gpu !== webgpuEntry?.gpu) {
      throw new Error(
        "webgpu already started in this process on another WebGPU entry point; the entry point is " +
          'fixed at the first loadBackend("webgpu"): pass gpu there (or drop the option).',
      );
    }
    if (chosen === "wasm" && options.threads != null && wasmThreads(options) !== known.threads) {
      throw new Error(
        `wasm already started with ${known.threads} thread(s) in this process; its thread count ` +
          `is fixed at the first loadBackend("wasm"): pass threads there (or drop the option).`,
      );
    }
    await activate(chosen);
    return { ...known };
  }
  let info: BackendInfo;
  switch (chosen) {
    case "wasm":
      info = await startWasm(wasmThreads(options));
      break;
    case "cpu":
      await import("@tensorflow/tfjs-backend-cpu");
      await activate("cpu");
      // Silence the one-time "install tfjs-node to speed things up" banner (IS_NODE is true).
      (tf.backend() as { firstUse?: boolean }).firstUse = false;
      info = { name: "cpu" };
      break;
    case "webgpu":
      info = await startWebGpu(
        options.gpu ? { gpu: options.gpu, webgpu: "options.gpu" } : await webgpuEntryPoint(),
      );
      break;
    case "tensorflow":
      info = await startTensorflow(options.tensorflowModules ?? defaultTensorflowModules());
      break;
  }
  loaded.set(chosen, info);
  return { ...info };
}

/**
 * Whether the active tfjs backend is `wasm`. Model code asks this to pick its wasm fast path:
 * fused layers with hand-written gradients (lib/model/kernels.ts) and products split into plain
 * 2D XNNPACK products (lib/model/matmul.ts); other backends run tfjs's own kernels.
 *
 * @example
 * ```ts
 * import { isWasmBackend, loadBackend } from "./backend.ts";
 * await loadBackend("cpu");
 * if (isWasmBackend()) throw new Error("cpu is not wasm");
 * ```
 */
export function isWasmBackend(): boolean {
  return tf.getBackend() === "wasm";
}

/**
 * The backend named by `$ANTHOS_BACKEND`, else `"wasm"` (also when env access is not granted).
 *
 * @example
 * ```ts
 * import { defaultBackendName } from "./backend.ts";
 * Deno.env.set("ANTHOS_BACKEND", "cpu");
 * console.log(defaultBackendName()); // "cpu"
 * ```
 */
export function defaultBackendName(): BackendName {
  const env = anthosEnv.backend; // undefined without --allow-env: the default
  if (env == null || env.trim() === "") return "wasm";
  return checkName(env.trim(), `$${BACKEND_ENV}`);
}

/**
 * Backends that can start on this machine without installing anything: `wasm` and `cpu` always,
 * `webgpu` when `navigator.gpu` yields an adapter, `tensorflow` only once it has been loaded
 * (probing it would download packages).
 *
 * @example
 * ```ts
 * import { availableBackends, loadBackend } from "./backend.ts";
 * for (const name of await availableBackends()) console.log(await loadBackend(name));
 * ```
 */
export async function availableBackends(): Promise<BackendName[]> {
  const out: BackendName[] = ["wasm", "cpu"];
  if (loaded.has("webgpu") || (await gpuAdapter()) != null) out.push("webgpu");
  if (loaded.has("tensorflow")) out.push("tensorflow");
  return out;
}

function checkName(name: string, source = "backend name"): BackendName {
  if ((BACKENDS as readonly string[]).includes(name)) return name as BackendName;
  throw new Error(
    `unknown ${source} "${name}": use one of ${BACKENDS.map((b) => `"${b}"`).join(", ")}.`,
  );
}

async function activate(name: BackendName): Promise<void> {
  if (!(await tf.setBackend(name))) {
    throw new Error(`tf.setBackend("${name}") failed; see the tfjs error logged above.`);
  }
  await tf.ready();
}

// ---------------------------------------------------------------------------------------- wasm

/** The env var that sets the wasm thread count (default: the number of CPUs, at most 8). */
export const WASM_THREADS_ENV: "ANTHOS_WASM_THREADS" = ENV_VARS.wasmThreads;

function wasmThreads(options: LoadBackendOptions): number {
  // XNNPACK's pool threads spin-wait for each other: on a machine whose cores are busy with
  // other work, one thread can be 2x faster than two (measured), hence the override.
  const env = anthosEnv.wasmThreads;
  const n = options.threads ?? (env ? Number(env) : undefined) ??
    Math.min(navigator.hardwareConcurrency || 1, WASM_MAX_THREADS);
  if (!Number.isInteger(n) || n < 1 || n > WASM_MAX_THREADS) {
    throw new Error(
      `wasm threads must be an integer in 1..${WASM_MAX_THREADS}, got ${env ?? n}` +
        `${options.threads === undefined && env ? ` (from $${WASM_THREADS_ENV})` : ""}.`,
    );
  }
  return n;
}

/**
 * Starts the wasm backend, multi-threaded when `threads > 1`.
 *
 * Why threads need help under Deno: Deno exposes `process`, so both tfjs and Emscripten take the
 * Node.js code path, and three things break there:
 * 1. tfjs forces `WASM_HAS_MULTITHREAD_SUPPORT` to false when `IS_NODE` (tfjs issue #3830). We set
 *    the flag to true; Deno has SharedArrayBuffer, shared WebAssembly.Memory and Atomics.
 * 2. Emscripten's Node path sets `globalThis.Worker = worker_threads.Worker` and then spawns each
 *    pthread worker from a `blob:` URL, which worker_threads rejects (ERR_WORKER_PATH); the worker
 *    script would also try `fs.readFileSync` on the blob URL of the main script. During start-up we
 *    make `globalThis.Worker` an accessor that hands out {@link PTHREAD_SHIM}-based workers (and
 *    ignores Emscripten's assignment), then restore Deno's own `Worker`. The shim runs
 *    Emscripten's worker script in its *web worker* mode inside a `node:worker_threads` worker
 *    (which, unlike Deno's web workers, can be `unref()`ed so the process still exits).
 * 3. tfjs caps threads at `os.cpus().length / 2` (it assumes hyperthreading), i.e. 1 on a 2-core
 *    box. We report `2 * threads` CPUs while the module starts, so `threads` is honoured.
 * All 8 pthread workers are spawned at start-up (PTHREAD_POOL_SIZE), so no worker is created after
 * `globalThis.Worker` is restored. A probe worker checks the needed features first; if it or the
 * threaded start fails we warn and fall back to the single-threaded SIMD build.
 */
async function startWasm(threads: number): Promise<BackendInfo> {
  const wasm = await import("@tensorflow/tfjs-backend-wasm");
  // The SIMD and non-SIMD binaries are read with fs from the package's dist/ folder on disk (the
  // Node path's default prefix is the bundle's own __dirname), so no setWasmPaths is needed.
  const simd = (await tf.env().getAsync("WASM_HAS_SIMD_SUPPORT")) as boolean;
  let useThreads = threads > 1 && simd;
  if (useThreads) {
    // A worker that fails inside Emscripten's start-up kills the process (uncaught worker error),
    // so first check, in a throw-away worker, everything the pthread workers rely on.
    const problem = await probePthreads();
    if (problem != null) {
      console.warn(`wasm: threads unavailable (${problem}); using 1 thread.`);
      useThreads = false;
    }
  }
  tf.env().set("WASM_HAS_MULTITHREAD_SUPPORT", useThreads);
  wasm.setThreadsCount(useThreads ? threads : 1);
  let ok = false;
  if (useThreads) {
    const restore = await patchForPthreads(threads);
    try {
      ok = await tf.setBackend("wasm");
    } finally {
      restore();
    }
    if (!ok) {
      console.warn("wasm: multi-threaded start failed (see above); using 1 thread instead.");
      useThreads = false;
      tf.env().set("WASM_HAS_MULTITHREAD_SUPPORT", false);
      wasm.setThreadsCount(1);
    }
  }
  if (!ok) ok = await tf.setBackend("wasm");
  if (!ok) throw new Error(`tf.setBackend("wasm") failed; see the tfjs error logged above.`);
  await tf.ready();
  if (useThreads) {
    // One small product makes XNNPACK start its pool threads now, then the pool is let go.
    tf.tidy(() => tf.matMul(tf.ones([64, 64]), tf.ones([64, 64])).dataSync());
    releasePthreads();
  }
  // Products go to the system BLAS when it loads; else XNNPACK, and we say why, once.
  const blas = loadBlas();
  if (!blas) console.error(`wasm: matrix products on XNNPACK (${blasStatus().reason}).`);
  // XNNPACK's real pool size (tfjs may cap it); 1 for the single-threaded build.
  const threadsUsed = Math.max(1, wasm.getThreadsCount());
  return { name: "wasm", threads: threadsUsed, simd, products: blas?.name ?? "XNNPACK" };
}

/**
 * Source of each pthread worker (CommonJS, run by `node:worker_threads` with `eval: true`).
 * It fetches Emscripten's worker script from the blob URL tfjs made, and runs it and the main
 * module script with `process`/`require` hidden, so both take their web-worker paths; their
 * `postMessage`/`self` go through this worker's `parentPort`. Messages are handled in order,
 * after the (async) script loads.
 */
const PTHREAD_SHIM = `"use strict";
const { parentPort, workerData } = require("node:worker_threads");
const post = (msg, transfer) => parentPort.postMessage(msg, transfer);
const self = { location: { href: "file:///tfjs-backend-wasm-threaded-simd.worker.js" } };
const startWorker = (m) => self.startWorker(m);
const NAMES = ["process", "require", "self", "postMessage", "importScripts", "startWorker"];
let mainScript = "";
function run(src, tail) {
  return new Function(...NAMES, src + tail)(undefined, undefined, self, post, importScripts,
    startWorker);
}
function importScripts() {
  globalThis.WasmBackendModuleThreadedSimd = run(mainScript,
    "\\n;return WasmBackendModuleThreadedSimd;");
}
let queue = fetch(workerData.url).then((r) => r.text()).then((src) => { run(src, ""); });
parentPort.on("message", (data) => {
  queue = queue.then(async () => {
    if (data && data.cmd === "load" && typeof data.urlOrBlob !== "string") {
      mainScript = await data.urlOrBlob.text();
      data.urlOrBlob = "main-script";
    }
    self.onmessage({ data });
  }).catch((e) => { console.error("tfjs wasm pthread worker:", e); throw e; });
});
`;

/**
 * Checks that a `node:worker_threads` eval worker can fetch a blob URL, receive a Blob, a
 * WebAssembly.Module and a shared WebAssembly.Memory, and wake us with Atomics; null if so, else
 * what failed.
 */
async function probePthreads(): Promise<string | null> {
  if (typeof SharedArrayBuffer !== "function") return "no SharedArrayBuffer";
  let url = "";
  let worker: { terminate(): unknown } | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const { Worker: NodeWorker } = await import("node:worker_threads");
    url = URL.createObjectURL(new Blob(["ok"]));
    const memory = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
    const module = new WebAssembly.Module(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0]));
    const src = `"use strict";
      const { parentPort, workerData } = require("node:worker_threads");
      parentPort.on("message", async (d) => {
        try {
          const a = await (await fetch(workerData.url)).text();
          const b = await d.blob.text();
          const flag = new Int32Array(d.memory.buffer);
          const good = a === "ok" && b === "ok" && d.module instanceof WebAssembly.Module;
          Atomics.store(flag, 0, good ? 1 : 2);
          Atomics.notify(flag, 0);
          parentPort.postMessage(good ? "ok" : "bad message contents");
        } catch (e) { parentPort.postMessage(String(e)); }
      });`;
    const w = new NodeWorker(src, { eval: true, workerData: { url } });
    worker = w;
    const reply = await new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve("probe worker timed out"), 15_000);
      w.once("message", (m: unknown) => resolve(String(m)));
      w.once("error", (e: unknown) => resolve(String(e)));
      w.postMessage({ blob: new Blob(["ok"]), module, memory });
    });
    const flag = new Int32Array(memory.buffer);
    return reply === "ok" && Atomics.load(flag, 0) === 1 ? null : reply;
  } catch (e) {
    return String(e);
  } finally {
    clearTimeout(timer);
    await worker?.terminate();
    if (url) URL.revokeObjectURL(url);
  }
}

/** Installs the start-up patches described at {@link startWasm}; returns their undo. */
/** Workers of the threaded wasm build, and whether they have been let go (see below). */
const pthreadPool: { unref(): void }[] = [];
let pthreadsReleased = false;

/**
 * XNNPACK's pool threads live for the whole process, parked between kernels, and Emscripten
 * ref()s each worker once its pthread starts: every script would then hang after its last line.
 * After start-up (which does wait on the workers through the event loop) nothing waits on them
 * that way again — the main thread blocks on them synchronously inside kernels — so they are
 * unref'd for good.
 */
function releasePthreads(): void {
  pthreadsReleased = true;
  for (const w of pthreadPool) w.unref();
}

async function patchForPthreads(threads: number): Promise<() => void> {
  const { Worker: NodeWorker } = await import("node:worker_threads");
  const os = (await import("node:os")).default as { cpus: () => unknown[] };
  class PthreadWorker extends NodeWorker {
    constructor(url: string | URL) {
      super(PTHREAD_SHIM, { eval: true, workerData: { url: String(url) } });
      pthreadPool.push(this);
    }
    // See releasePthreads: once the pool is up, its workers never hold the process open.
    override ref(): void {
      if (!pthreadsReleased) super.ref();
    }
  }
  const workerDesc = Object.getOwnPropertyDescriptor(globalThis, "Worker");
  Object.defineProperty(globalThis, "Worker", {
    configurable: true,
    get: () => PthreadWorker,
    set: () => {}, // Emscripten assigns worker_threads.Worker here; keep ours
  });
  const cpus = os.cpus;
  const one = cpus()[0];
  os.cpus = () => Array.from({ length: 2 * threads }, () => one);
  return () => {
    os.cpus = cpus;
    if (workerDesc) Object.defineProperty(globalThis, "Worker", workerDesc);
    else delete (globalThis as { Worker?: unknown }).Worker;
  };
}

// -------------------------------------------------------------------------------------- webgpu

let adapterPromise: Promise<GPUAdapter | null> | null = null;
/** The WebGPU entry point the webgpu backend started on. */
let webgpuEntry: WebGpuEntry | undefined;

/** The npm package of Dawn's WebGPU bindings that `ANTHOS_WEBGPU=dawn` loads. */
export const DAWN_PACKAGE = "npm:webgpu@0.6.2";

/** A WebGPU implementation: its entry point and what it is (as {@link BackendInfo.webgpu}). */
export interface WebGpuEntry {
  /** What `navigator.gpu` is in a browser: `requestAdapter()`. */
  gpu: GPU;
  /** E.g. "navigator.gpu" or "Dawn (npm:webgpu@0.6.2)". */
  webgpu: string;
}

/**
 * The WebGPU implementation that `setting` (default `$ANTHOS_WEBGPU`) names, for the webgpu
 * backend: unset or `deno` = `navigator.gpu` (the runtime's own; in Deno, wgpu); `dawn` = Dawn,
 * Chromium's WebGPU, from the npm package {@link DAWN_PACKAGE} (a node-API addon, ~51 MB with
 * every platform's binary; fetched on first use, by a computed specifier so that type checks
 * never fetch it); a path to a `dawn.node` file = that addon (offline machines: bench/gpu/ ships
 * the linux-x64 one). Why Dawn: in Deno 2.9, each wait for the GPU (`mapAsync`) costs >= 10 ms
 * (it polls with a 10 ms sleep); through Dawn it costs 0.03-0.07 ms (BENCHMARKS.md).
 *
 * Dawn's WebGPU classes (`GPUDevice`, `GPUBuffer`, ...) become the globals of the process, so code
 * that looks up the WebGPU classes, such as the benches' call counters, sees the ones in use.
 *
 * @example
 * ```ts
 * import { webgpuEntryPoint } from "./backend.ts";
 * const { webgpu } = await webgpuEntryPoint("deno");
 * console.log(webgpu); // "navigator.gpu"
 * ```
 */
export async function webgpuEntryPoint(
  setting: string | undefined = anthosEnv.webgpu,
): Promise<WebGpuEntry> {
  const s = setting?.trim() || "deno";
  const native = () => {
    if (typeof navigator === "undefined" || !("gpu" in navigator) || navigator.gpu == null) {
      throw new Error(
        "webgpu unavailable: navigator.gpu is missing (Deno < 2 needs --unstable-webgpu). " +
          `${ENV_VARS.webgpu}=dawn uses Dawn's WebGPU instead, or use wasm/cpu.`,
      );
    }
    return { gpu: navigator.gpu, webgpu: "navigator.gpu" };
  };
  if (s === "deno" || s === "navigator") return native();
  type Dawn = { create(flags: string[]): GPU; globals: Record<string, unknown> };
  let dawn: Dawn;
  let what: string;
  if (s === "dawn") {
    what = DAWN_PACKAGE;
    const spec = DAWN_PACKAGE; // a variable: `deno check` and `deno publish` never fetch it
    dawn = await import(spec).catch((e) => {
      throw new Error(
        `${ENV_VARS.webgpu}=dawn: could not load ${DAWN_PACKAGE} (${e.message}). It is fetched ` +
          `from npm on first use; offline, set ${ENV_VARS.webgpu} to the path of its ` +
          `linux-x64 dawn.node (bench/gpu/pack.sh makes one), or to deno.`,
      );
    });
  } else if (s.endsWith(".node")) {
    what = s;
    const stat = await Deno.stat(s).catch(() => null);
    if (!stat?.isFile) {
      throw new Error(`${ENV_VARS.webgpu}=${s}: no such file (a path to Dawn's dawn.node addon).`);
    }
    // A node-API addon loads through require(); node:module only on this path (the web demo
    // bundles this file).
    const { createRequire } = await import("node:module");
    dawn = createRequire(import.meta.url)(s.startsWith("/") ? s : `${Deno.cwd()}/${s}`);
  } else {
    throw new Error(
      `${ENV_VARS.webgpu}="${s}": use deno (the runtime's WebGPU), dawn (${DAWN_PACKAGE}), ` +
        `or the path of a dawn.node file.`,
    );
  }
  Object.assign(globalThis, dawn.globals);
  return { gpu: dawn.create([]), webgpu: `Dawn (${what})` };
}

function gpuAdapter(): Promise<GPUAdapter | null> {
  if (typeof navigator === "undefined" || !("gpu" in navigator) || navigator.gpu == null) {
    return Promise.resolve(null);
  }
  adapterPromise ??= navigator.gpu.requestAdapter({ powerPreference: "high-performance" })
    .catch(() => null);
  return adapterPromise;
}

/**
 * Starts the webgpu backend on a device made here, not by tfjs's own factory.
 *
 * Why: tfjs-backend-webgpu 4.22 asks for `requiredFeatures: ["timestamp-query",
 * ["bgra8unorm-storage"]]` (a nested array, a tfjs bug), which strict WebGPU implementations
 * reject, and it crashes with a TypeError when there is no adapter. We request the adapter, then
 * a device with a flat feature list and the same limits tfjs wants, and register a factory that
 * wraps that device in `WebGPUBackend` (no patching of node_modules).
 */
async function startWebGpu(entry: WebGpuEntry): Promise<BackendInfo> {
  const native = entry.webgpu === "navigator.gpu";
  const adapter = native
    ? await gpuAdapter()
    : await entry.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (adapter == null) {
    const why = native
      ? "navigator.gpu.requestAdapter() returned no adapter"
      : entry.webgpu === "options.gpu"
      ? "the given GPU entry point returned no adapter"
      : `${entry.webgpu} returned no adapter (Dawn refuses some Vulkan drivers, e.g. Mesa 22's ` +
        `lavapipe: ${ENV_VARS.webgpu}=deno uses the runtime's WebGPU)`;
    throw new Error(
      `webgpu unavailable: ${why}. Install a Vulkan driver (on Debian/Ubuntu without a GPU: ` +
        `\`apt-get install mesa-vulkan-drivers\` for the lavapipe CPU adapter), or use wasm/cpu.`,
    );
  }
  const { WebGPUBackend } = await import("@tensorflow/tfjs-backend-webgpu");
  if (tf.findBackend("webgpu") == null) {
    const features = (["timestamp-query", "bgra8unorm-storage"] as GPUFeatureName[])
      .filter((f) => adapter.features.has(f));
    const l = adapter.limits;
    const device = await adapter.requestDevice({
      requiredFeatures: features,
      requiredLimits: {
        maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
        maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
        maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
        maxBufferSize: l.maxBufferSize,
        maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
        maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      },
    });
    // Replace the factory the package registered on import (if any) with ours.
    if (tf.engine().registryFactory["webgpu"] != null) tf.removeBackend("webgpu");
    // deno-lint-ignore no-explicit-any
    const make = () => new WebGPUBackend(device as any, adapter.info as any);
    tf.registerBackend("webgpu", make, 3);
    webgpuEntry = entry;
  }
  await activate("webgpu");
  const info = adapter.info;
  const label = info.description || [info.vendor, info.architecture, info.device]
    .filter((s) => s).join(" ") ||
    "unknown adapter";
  return {
    name: "webgpu",
    adapter: label,
    fallbackAdapter: info.isFallbackAdapter === true,
    webgpu: webgpuEntry?.webgpu ?? entry.webgpu,
  };
}

// ---------------------------------------------------------------------------------- tensorflow

function defaultTensorflowModules(): string[] {
  return ["tfjs-node-gpu", "tfjs-node"].map((p) => `npm:@tensorflow/${p}@${TFJS_VERSION}`);
}

/**
 * Imports the first loadable tfjs-node flavour, which registers the "tensorflow" backend.
 * The specifiers are computed strings so `deno check`/`deno publish` never resolve or download
 * them; Deno fetches an `npm:` one only when this runs. Their install scripts (which download
 * libtensorflow) must be allowed explicitly, hence the install step in the error.
 */
async function startTensorflow(modules: readonly string[]): Promise<BackendInfo> {
  const failures: string[] = [];
  for (const spec of modules) {
    try {
      // Computed on purpose (see above). `deno publish` warns "unanalyzable-dynamic-import"
      // here; that is expected and harmless: the specifier is a full npm:/file: URL.
      await import(spec);
    } catch (e) {
      failures.push(`${spec}: ${String((e as Error)?.message ?? e).split("\n")[0]}`);
      continue;
    }
    if (tf.engine().registryFactory["tensorflow"] == null) {
      failures.push(
        `${spec}: loaded, but registered no "tensorflow" backend on this tfjs-core ` +
          `(its @tensorflow/tfjs-core must be ${TFJS_VERSION})`,
      );
      continue;
    }
    await activate("tensorflow");
    return { name: "tensorflow", module: spec };
  }
  throw new Error(
    `tensorflow backend unavailable: no tfjs-node module could be loaded.\n  ` +
      failures.join("\n  ") +
      `\nInstall it with its native binding (the install script downloads libtensorflow): ` +
      `\`deno add npm:@tensorflow/tfjs-node@${TFJS_VERSION} && deno install ` +
      `--allow-scripts=npm:@tensorflow/tfjs-node\` (tfjs-node-gpu for CUDA), or use ` +
      `wasm, cpu or webgpu.`,
  );
}
