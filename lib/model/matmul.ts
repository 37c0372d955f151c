/**
 * Matrix products with gradients that stay on the fast path of every backend.
 *
 * Why this file exists: on the `wasm` backend only a plain `[M, K] @ [K, N]` product runs through
 * XNNPACK (about 20 GFLOP/s on one core); a product with a transposed operand, or a batched
 * product, falls back to a naive loop (about 2 GFLOP/s). tfjs's own matMul gradient uses exactly
 * those transposed forms. Here the gradients materialise transposes explicitly (a cheap copy) and
 * batched products run slice by slice, so forward and backward are plain products throughout.
 * On other backends (`webgpu`, `cpu`, `tensorflow`) tfjs's kernels are used as they are.
 * When the system BLAS is loaded (lib/runtime/blas.ts), every product on wasm runs there instead,
 * on pointers into the wasm heap, with transposes as BLAS flags ({@link gemm}).
 * The maths is unchanged: `matmul(a, b)` is `a @ b` to float32 rounding.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { activeBlas, type Blas, heapAddress } from "../runtime/blas.ts";
import { timeOp } from "../runtime/opstats.ts";
import { isWasmBackend } from "../runtime/backend.ts";

/**
 * Swaps the last two axes (materialised).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { transposeLast } from "./matmul.ts";
 * const t = transposeLast(tf.ones([5, 2, 3])); // [5, 3, 2]
 * if (t.shape.join() !== "5,3,2") throw new Error(String(t.shape));
 * ```
 */
export function transposeLast(x: tf.Tensor): tf.Tensor {
  const r = x.rank;
  const perm = [...Array(r).keys()];
  [perm[r - 2], perm[r - 1]] = [perm[r - 1], perm[r - 2]];
  return tf.transpose(x, perm);
}

/** The pieces of tfjs-backend-wasm 4.22's internals that {@link wasmBatched} uses. */
interface WasmInternals {
  makeOutput(shape: number[], dtype: "float32"): tf.TensorInfo;
  dataIdMap: { get(dataId: unknown): { memoryOffset: number } };
  wasm: {
    HEAPU8: Uint8Array;
    cwrap(name: string, ret: null, args: string[]): (...args: unknown[]) => void;
    tfjs: {
      registerTensor(id: number, size: number, offset: number): void;
      disposeData(id: number): void;
    };
  };
}

let wasmBmm: ((...args: unknown[]) => void) | undefined;
/** Ids for temporary views; far above the ids the backend hands out (it counts up from 1). */
let nextViewId = 2 ** 30;

/**
 * Batched product on wasm with no copies: each slice of a, b and the output is registered with
 * the wasm backend as a temporary tensor *view* (id + offset into the same heap memory) and
 * multiplied by the backend's own BatchMatMul kernel, so every slice takes the 2D XNNPACK path.
 * Returns null when the backend's internals are not as expected (then the caller copies).
 */
function wasmBatched(a: tf.Tensor3D, b: tf.Tensor3D): tf.Tensor3D | null {
  const be = tf.backend() as unknown as WasmInternals;
  if (!be.makeOutput || !be.dataIdMap?.get || !be.wasm?.tfjs?.registerTensor) return null;
  wasmBmm ??= be.wasm.cwrap("BatchMatMul", null, [
    "number",
    "array",
    "number",
    "number",
    "array",
    "number",
    "number",
    "number",
    "number",
  ]);
  const [nb, m, k] = a.shape;
  const n = b.shape[2] as number;
  // An uninitialised output on the heap (every element is written below).
  const info = be.makeOutput([nb, m, n], "float32");
  const out = tf.engine().makeTensorFromTensorInfo(info) as tf.Tensor3D; // [B, M, N]
  const offA = be.dataIdMap.get(a.dataId).memoryOffset;
  const offB = be.dataIdMap.get(b.dataId).memoryOffset;
  const offO = be.dataIdMap.get(out.dataId).memoryOffset;
  const shapeA = new Uint8Array(new Int32Array([1, m, k]).buffer);
  const shapeB = new Uint8Array(new Int32Array([1, k, n]).buffer);
  const { tfjs } = be.wasm;
  for (let i = 0; i < nb; i++) {
    const [ia, ib, io] = [nextViewId++, nextViewId++, nextViewId++];
    tfjs.registerTensor(ia, m * k, offA + 4 * i * m * k);
    tfjs.registerTensor(ib, k * n, offB + 4 * i * k * n);
    tfjs.registerTensor(io, m * n, offO + 4 * i * m * n);
    wasmBmm(ia, shapeA, 3, ib, shapeB, 3, 0, 0, io); // out[i] = a[i] @ b[i]
    // Forget the views (the memory belongs to a, b and out; this also drops XNNPACK's cache).
    tfjs.disposeData(ia);
    tfjs.disposeData(ib);
    tfjs.disposeData(io);
  }
  return out;
}

/**
 * Plain product without custom gradients: `[M, K] @ [K, N]` or batched `[B, M, K] @ [B, K, N]`,
 * no transposes. On wasm the batched form runs slice by slice through XNNPACK.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { plainMatmul } from "./matmul.ts";
 * const c = plainMatmul(tf.ones([5, 2, 3]), tf.ones([5, 3, 4])); // [5, 2, 4], every value 3
 * if (c.dataSync().some((v) => v !== 3)) throw new Error("a @ b");
 * ```
 */
export function plainMatmul(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  if (!isWasmBackend()) return tf.matMul(a as tf.Tensor3D, b as tf.Tensor3D);
  const blas = activeBlas();
  if (blas) {
    const out = blasGemm(blas, a, b, false, false);
    if (out) return out;
  }
  if (a.rank === 2) return tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D);
  const fast = timeOp(
    "BatchMatMul slices (xnnpack)",
    () => wasmBatched(a as tf.Tensor3D, b as tf.Tensor3D),
  );
  if (fast) return fast;
  // Fallback: slices cut from the data in JS (wasm's Slice/Unpack kernels are slow).
  const [nb, m, k] = a.shape;
  const n = b.shape[2] as number;
  const ad = a.dataSync() as Float32Array;
  const bd = b.dataSync() as Float32Array;
  const out = new Float32Array(nb * m * n);
  for (let i = 0; i < nb; i++) {
    const ai = tf.tensor2d(ad.subarray(i * m * k, (i + 1) * m * k), [m, k]);
    const bi = tf.tensor2d(bd.subarray(i * k * n, (i + 1) * k * n), [k, n]);
    const oi = tf.matMul(ai, bi); // [M, N]
    out.set(oi.dataSync() as Float32Array, i * m * n);
    tf.dispose([ai, bi, oi]);
  }
  return tf.tensor3d(out, [nb, m, n]);
}

/** Options of {@link gemm}. */
export interface GemmOptions {
  /** Use `a^T` (of its last two axes) in place of `a`. */
  transposeA?: boolean;
  /** Use `b^T` (of its last two axes) in place of `b`. */
  transposeB?: boolean;
  /** A `[N]` row added to every row of the result (2D products only). */
  bias?: tf.Tensor;
}

/**
 * `op(a) @ op(b) (+ bias)`, 2D or batched 3D, without gradient. With the system BLAS active on
 * wasm, one `cblas_sgemm` per slice on the heap: transposes are flags and the bias is written
 * into the output before the product adds to it (no copies, no extra passes). Otherwise the
 * transposes are materialised and the product is a plain XNNPACK one ({@link plainMatmul}).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { gemm } from "./matmul.ts";
 * const c = gemm(tf.ones([3, 2]), tf.ones([4, 3]), { transposeA: true, transposeB: true }); // [2, 4]
 * if (c.shape.join() !== "2,4" || c.dataSync()[0] !== 3) throw new Error("a^T @ b^T");
 * ```
 */
export function gemm(a: tf.Tensor, b: tf.Tensor, options: GemmOptions = {}): tf.Tensor {
  const { transposeA = false, transposeB = false, bias } = options;
  const blas = isWasmBackend() ? activeBlas() : null;
  if (blas) {
    const out = blasGemm(blas, a, b, transposeA, transposeB, bias);
    if (out) return out;
  }
  if (bias && tf.getBackend() === "webgpu") {
    // The bias added inside the product's own kernel: one dispatch, the same additions.
    return tf.fused.matMul({
      a: a as tf.Tensor3D,
      b: b as tf.Tensor3D,
      transposeA,
      transposeB,
      bias,
    });
  }
  return tf.tidy(() => {
    const p = isWasmBackend()
      ? plainMatmul(transposeA ? transposeLast(a) : a, transposeB ? transposeLast(b) : b)
      : tf.matMul(a as tf.Tensor3D, b as tf.Tensor3D, transposeA, transposeB);
    return bias ? tf.add(p, bias) : p;
  });
}

/** Rows per BLAS call (see blasGemm): the DiT's tokens per image, (32 / 2)^2. */
const BLAS_ROW_BLOCK = 256;

/** Multiply-adds per slice below which a batched product runs single-threaded (Blas.singleThreaded). */
const SMALL_PRODUCT = 1 << 22;

/**
 * The BLAS product on the wasm heap (see {@link gemm}); null when the backend's internals are not
 * as expected or a dtype is not float32 (then the caller takes the XNNPACK path).
 */
function blasGemm(
  blas: Blas,
  a: tf.Tensor,
  b: tf.Tensor,
  transA: boolean,
  transB: boolean,
  bias?: tf.Tensor,
): tf.Tensor | null {
  const be = tf.backend() as unknown as Partial<WasmInternals>;
  if (!be.makeOutput || !be.dataIdMap?.get || !be.wasm?.HEAPU8) return null;
  if (a.dtype !== "float32" || b.dtype !== "float32" || (bias && bias.dtype !== "float32")) {
    return null;
  }
  const r = a.rank;
  if ((r !== 2 && r !== 3) || b.rank !== r || (bias && (r !== 2 || bias.rank !== 1))) {
    throw new Error(
      `gemm: expected 2D or 3D operands of equal rank, got ${a.shape} and ${b.shape}`,
    );
  }
  const nb = r === 3 ? a.shape[0] : 1;
  const [ra, ca] = a.shape.slice(-2);
  const [rb, cb] = b.shape.slice(-2);
  const [m, k] = transA ? [ca, ra] : [ra, ca];
  const [kb, n] = transB ? [cb, rb] : [rb, cb];
  if (k !== kb || (r === 3 && b.shape[0] !== nb) || (bias && bias.shape[0] !== n)) {
    throw new Error(
      `gemm: shapes ${a.shape}${transA ? "^T" : ""} and ${b.shape}${transB ? "^T" : ""}` +
        `${bias ? ` + bias ${bias.shape}` : ""} do not match`,
    );
  }
  // A row's result must not depend on how many rows share the call, or an image's pixels would
  // depend on the batch size: OpenBLAS picks its kernels by the row count (measured: 28 to 248 of
  // 288 outputs of row 0 change between M = 1 and M = 4..2048). So row counts are cut into
  // blocks of BLAS_ROW_BLOCK (the DiT's 256 tokens per image: an image's rows are always whole
  // blocks), and other row counts (the per-sample conditioning products, M = batch) go to
  // XNNPACK, whose rows are independent. Reductions over rows (transA: weight gradients) sum the
  // batch anyway and stay one call.
  if (!transA && m % BLAS_ROW_BLOCK !== 0) return null;
  const blocks = transA ? 1 : m / BLAS_ROW_BLOCK;
  const rows = m / blocks;
  return timeOp(`sgemm ${r === 3 ? "batched" : "2D"} (blas)`, () => {
    const shape = r === 3 ? [nb, m, n] : [m, n];
    const out = tf.engine().makeTensorFromTensorInfo(be.makeOutput!(shape, "float32"));
    const ids = be.dataIdMap!;
    const offA = ids.get(a.dataId).memoryOffset;
    const offB = ids.get(b.dataId).memoryOffset;
    const offC = ids.get(out.dataId).memoryOffset;
    // Taken after the allocation above, which may grow the heap (its base stays put; views change).
    const heap = be.wasm!.HEAPU8;
    const base = heapAddress(heap);
    let beta = 0;
    if (bias) {
      // Every output row starts as the bias (doubling copies, memcpy speed); BLAS adds onto it.
      // (>>> 2, not >> 2: the heap and its offsets pass 2 GiB.)
      const f32 = new Float32Array(heap.buffer, heap.byteOffset, heap.byteLength >>> 2);
      const [c0, b0] = [offC >>> 2, ids.get(bias.dataId).memoryOffset >>> 2];
      f32.copyWithin(c0, b0, b0 + n);
      for (let filled = n; filled < m * n;) {
        const len = Math.min(filled, m * n - filled);
        f32.copyWithin(c0 + filled, c0, c0 + len);
        filled += len;
      }
      beta = 1;
    }
    const slices = () => {
      for (let i = 0; i < nb; i++) {
        for (let j = 0; j < blocks; j++) {
          blas.sgemm(
            transA,
            transB,
            rows,
            n,
            k,
            1,
            base + offA + 4 * (i * ra * ca + j * rows * ca), // blocks only when !transA: rows of a
            ca,
            base + offB + 4 * i * rb * cb,
            cb,
            beta,
            base + offC + 4 * (i * m * n + j * rows * n),
            n,
          );
        }
      }
    };
    // Many small slices (attention: [256, 24] @ [24, 256]): one thread each, no hand-offs.
    if (nb > 1 && m * n * k < SMALL_PRODUCT) blas.singleThreaded(slices);
    else slices();
    return out;
  });
}

const customMatmul = tf.customGrad(
  ((a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    save([a, b]);
    return {
      value: plainMatmul(a, b),
      // d(a@b)/da = dy @ b^T, d(a@b)/db = a^T @ dy, both as plain products.
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sa, sb] = saved;
        return [gemm(dy, sb, { transposeB: true }), gemm(sa, dy, { transposeA: true })];
      },
    };
    // tfjs types customGrad's callback with a rest parameter; ours takes (a, b, save).
    // deno-lint-ignore no-explicit-any
  }) as any,
);

/**
 * `a @ b` for `[M, K] @ [K, N]` or batched `[B, M, K] @ [B, K, N]`, differentiable, with the
 * fastest plain-product form on the current backend.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { loadBackend } from "../runtime/backend.ts";
 * await loadBackend("cpu");
 * import { matmul } from "./matmul.ts";
 * const c = matmul(tf.ones([2, 3]), tf.ones([3, 4])); // [2, 4], every value 3
 * if (c.dataSync().some((v) => v !== 3)) throw new Error("a @ b");
 * ```
 */
export function matmul<T extends tf.Tensor>(a: T, b: tf.Tensor): T {
  if (!isWasmBackend()) return tf.matMul(a as tf.Tensor3D, b as tf.Tensor3D) as unknown as T;
  return customMatmul(a, b) as T;
}
