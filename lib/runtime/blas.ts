/**
 * The system's BLAS (`cblas_sgemm`) through Deno FFI, for matrix products on the wasm heap.
 *
 * Why: XNNPACK's wasm build is 128-bit SIMD without FMA; a native BLAS (OpenBLAS with AVX2/AVX-512
 * and FMA, Apple's Accelerate) is several times faster on the same core. The products of the wasm
 * backend's tensors can run there without a copy: the backend's heap is one WebAssembly.Memory
 * whose base address does not move when it grows, so `cblas_sgemm` gets plain pointers into it,
 * and transposed operands are BLAS flags, not copies.
 *
 * Optional by design: used only when the library is found and FFI is granted (`--allow-ffi`, which
 * `deno run -A` includes), and not switched off with `ANTHOS_BLAS=0`. Otherwise every product stays
 * on XNNPACK, and {@link blasStatus} says why. `ANTHOS_BLAS=/path/to/lib.so` picks the library.
 *
 * @module
 */

import { env as anthosEnv, ENV_VARS } from "./env.ts";

/** The env var that switches BLAS off (`0`, `off`, `false`, `no`) or names the library file. */
export const BLAS_ENV: "ANTHOS_BLAS" = ENV_VARS.blas;

/** cblas enum values (row-major layout, transpose flags). */
const ROW_MAJOR = 101;
const NO_TRANS = 111;
const TRANS = 112;

/** Library files tried in order when `$ANTHOS_BLAS` names none. */
const CANDIDATES: Record<string, string[]> = {
  linux: ["libopenblas.so.0", "libopenblas.so"],
  darwin: [
    "/System/Library/Frameworks/Accelerate.framework/Accelerate",
    "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
    "/usr/local/opt/openblas/lib/libopenblas.dylib",
  ],
  windows: ["libopenblas.dll"],
};

const SYMBOLS = {
  cblas_sgemm: {
    // order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc (pointers as addresses)
    parameters: [
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "usize",
      "i32",
      "usize",
      "i32",
      "f32",
      "usize",
      "i32",
    ],
    result: "void",
  },
} as const;

/** Optional OpenBLAS extras, looked up one by one (Accelerate has none of them). */
const OPENBLAS_EXTRAS = {
  openblas_get_config: { parameters: [], result: "pointer" },
  openblas_get_corename: { parameters: [], result: "pointer" },
  openblas_get_num_threads: { parameters: [], result: "i32" },
  openblas_set_num_threads: { parameters: ["i32"], result: "void" },
} as const;

/** A loaded BLAS. */
export interface Blas {
  /** Which library, e.g. "OpenBLAS 0.3.21 (Haswell kernels, 2 threads) from libopenblas.so.0". */
  name: string;
  /**
   * Row-major `C = alpha * op(A) @ op(B) + beta * C` with `op(A)` `[m, k]`, `op(B)` `[k, n]`;
   * `a`, `b`, `c` are byte addresses (see {@link heapAddress}), `lda`/`ldb`/`ldc` row strides in
   * elements of the stored (untransposed) matrices.
   */
  sgemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: number,
    lda: number,
    b: number,
    ldb: number,
    beta: number,
    c: number,
    ldc: number,
  ): void;
  /**
   * Runs `f` with the library's own threading limited to one thread (OpenBLAS; elsewhere `f`
   * runs as it is). For many small products in a row: handing each one to a second thread costs
   * more than it saves, and far more when the cores are busy with other work (measured).
   */
  singleThreaded<T>(f: () => T): T;
}

/** Whether BLAS is loaded and in use, and if not, why not. */
export interface BlasStatus {
  /** The library in use, or null when products run on XNNPACK. */
  active: string | null;
  /** Why BLAS is not in use (null when it is). */
  reason: string | null;
}

let loaded: Blas | null | undefined; // undefined: not tried yet
let reason: string | null = null;
let enabled = true;

/**
 * Loads the system BLAS once (later calls return the same answer). Never throws: when the
 * library is missing, FFI is not granted or `$ANTHOS_BLAS` switches it off, it returns null and
 * {@link blasStatus} says why.
 *
 * @example
 * ```ts
 * import { loadBlas } from "./blas.ts";
 * const blas = loadBlas();
 * console.log(blas?.name ?? "no BLAS: products stay on XNNPACK");
 * ```
 */
export function loadBlas(): Blas | null {
  if (loaded !== undefined) return loaded;
  loaded = null;
  const env = readEnv();
  if (env != null && /^(0|off|false|no)$/i.test(env)) {
    reason = `switched off by $${BLAS_ENV}=${env}`;
    return null;
  }
  if (typeof Deno?.dlopen !== "function") {
    reason = "Deno.dlopen is not available here";
    return null;
  }
  let ffi: Deno.PermissionState = "denied";
  try {
    ffi = Deno.permissions.querySync({ name: "ffi" }).state;
  } catch {
    ffi = "denied";
  }
  if (ffi !== "granted") {
    reason = "FFI is not granted (run with --allow-ffi, or -A)";
    return null;
  }
  const files = env ? [env] : (CANDIDATES[Deno.build.os] ?? []);
  const failures: string[] = [];
  for (const file of files) {
    try {
      loaded = open(file);
      reason = null;
      return loaded;
    } catch (e) {
      failures.push(`${file}: ${String((e as Error).message).split("\n")[0]}`);
    }
  }
  reason = `no BLAS library found (${failures.join("; ") || "none known on " + Deno.build.os})` +
    (Deno.build.os === "linux" ? "; install it with `apt-get install libopenblas0-pthread`" : "");
  return null;
}

/**
 * The BLAS to compute products with right now: the loaded one, unless switched off with
 * {@link setBlasEnabled} (or not loaded at all).
 *
 * @example
 * ```ts
 * import { activeBlas } from "./blas.ts";
 * if (activeBlas()) console.log("products on the system BLAS");
 * ```
 */
export function activeBlas(): Blas | null {
  return enabled && loaded ? loaded : null;
}

/**
 * Switches the use of a loaded BLAS on or off for this process (tests compare both paths in
 * one run). Returns the previous setting. Has no effect on whether the library is loaded.
 *
 * @example
 * ```ts
 * import { setBlasEnabled } from "./blas.ts";
 * const before = setBlasEnabled(false); // XNNPACK only from here
 * setBlasEnabled(before);
 * ```
 */
export function setBlasEnabled(on: boolean): boolean {
  const before = enabled;
  enabled = on;
  return before;
}

/**
 * What {@link loadBlas} found: the library in use, or why products run on XNNPACK.
 *
 * @example
 * ```ts
 * import { blasStatus, loadBlas } from "./blas.ts";
 * loadBlas();
 * const { active, reason } = blasStatus();
 * console.log(active ?? `XNNPACK (${reason})`);
 * ```
 */
export function blasStatus(): BlasStatus {
  if (loaded === undefined) return { active: null, reason: "not loaded yet" };
  if (loaded && !enabled) return { active: null, reason: "switched off in this process" };
  return { active: loaded?.name ?? null, reason };
}

/**
 * The byte address of the first element of `view` (for {@link Blas.sgemm}). Works for views of
 * a SharedArrayBuffer (the threaded wasm heap) as well as of a plain ArrayBuffer.
 *
 * @example
 * ```ts
 * import { heapAddress } from "./blas.ts";
 * const base = heapAddress(new Float32Array(4)); // a number, e.g. 94306834821120
 * ```
 */
export function heapAddress(view: ArrayBufferView): number {
  return Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(view as Uint8Array<ArrayBuffer>)));
}

function readEnv(): string | undefined {
  return anthosEnv.blas?.trim() || undefined; // unset without --allow-env: defaults
}

function open(file: string): Blas {
  const lib = Deno.dlopen(file, SYMBOLS);
  const sgemm = lib.symbols.cblas_sgemm;
  let name = file;
  let threads = 1;
  let setThreads: ((n: number) => void) | null = null;
  try {
    const extra = Deno.dlopen(file, OPENBLAS_EXTRAS).symbols;
    threads = extra.openblas_get_num_threads();
    setThreads = (n) => extra.openblas_set_num_threads(n);
    const str = (p: Deno.PointerValue) => p ? new Deno.UnsafePointerView(p).getCString() : "";
    const version = str(extra.openblas_get_config()).match(/^OpenBLAS (\S+)/)?.[1] ?? "";
    name = `OpenBLAS ${version} (${str(extra.openblas_get_corename())} kernels, ` +
      `${extra.openblas_get_num_threads()} threads) from ${file}`;
  } catch {
    // Not OpenBLAS (e.g. Accelerate): the file name says which library it is.
  }
  return {
    name,
    singleThreaded<T>(f: () => T): T {
      if (setThreads === null || threads === 1) return f();
      setThreads(1);
      try {
        return f();
      } finally {
        setThreads(threads);
      }
    },
    sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) {
      sgemm(
        ROW_MAJOR,
        transA ? TRANS : NO_TRANS,
        transB ? TRANS : NO_TRANS,
        m,
        n,
        k,
        alpha,
        BigInt(a),
        lda,
        BigInt(b),
        ldb,
        beta,
        BigInt(c),
        ldc,
      );
    },
  };
}
