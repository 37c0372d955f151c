/**
 * Wall time of work that runs outside tfjs kernels (BLAS products through FFI, direct wasm calls,
 * passes in JS), by name, for profiles: `tf.profile` sees only registered kernels. Off by default;
 * when off, {@link timeOp} is a plain call.
 *
 * @module
 */

/** One named op's totals. */
export interface OpStat {
  /** Milliseconds spent in the op. */
  ms: number;
  /** Number of calls. */
  calls: number;
}

let stats: Map<string, OpStat> | null = null;

/**
 * Starts (or restarts) collecting op times; returns the live table, filled by {@link timeOp}
 * until {@link stopOpStats}.
 *
 * @example
 * ```ts
 * import { startOpStats, stopOpStats, timeOp } from "./opstats.ts";
 * const table = startOpStats();
 * timeOp("work", () => 1 + 1);
 * stopOpStats();
 * console.log(table.get("work")); // { ms: 0.01, calls: 1 }
 * ```
 */
export function startOpStats(): Map<string, OpStat> {
  stats = new Map();
  return stats;
}

/**
 * Stops collecting op times.
 *
 * @example
 * ```ts
 * import { stopOpStats } from "./opstats.ts";
 * stopOpStats();
 * ```
 */
export function stopOpStats(): void {
  stats = null;
}

/**
 * Runs `f`, adding its wall time to `name` while stats are collected.
 *
 * @example
 * ```ts
 * import { timeOp } from "./opstats.ts";
 * const y = timeOp("sum", () => [1, 2, 3].reduce((a, b) => a + b)); // 6
 * ```
 */
export function timeOp<T>(name: string, f: () => T): T {
  if (stats === null) return f();
  const t0 = performance.now();
  try {
    return f();
  } finally {
    const s = stats.get(name) ?? { ms: 0, calls: 0 };
    s.ms += performance.now() - t0;
    s.calls++;
    stats.set(name, s);
  }
}
