/**
 * Counts what the webgpu backend asks of the GPU: compute dispatches, buffer creations, queue
 * submits and host readbacks (`mapAsync` for reading). Only benches use it: it wraps the WebGPU
 * prototypes (so every device, tfjs's and ours, is counted) while a measurement runs, and puts
 * them back afterwards.
 *
 * @module
 */

/** Calls counted while a {@link WebGpuCounter} was running. */
export interface WebGpuCounts {
  /** `GPUComputePassEncoder.dispatchWorkgroups` (+ `...Indirect`). */
  dispatches: number;
  /** `GPUDevice.createBuffer`. */
  buffers: number;
  /** `GPUQueue.submit`. */
  submits: number;
  /** `GPUBuffer.mapAsync(GPUMapMode.READ)`: each waits for the device (in Deno ≥ 10 ms). */
  readbacks: number;
}

/** A running count; `stop()` restores the originals and returns the totals. */
export interface WebGpuCounter {
  /** Totals so far. */
  read(): WebGpuCounts;
  /** Restores the wrapped methods and returns the totals. */
  stop(): WebGpuCounts;
}

type Patch = { proto: Record<string, unknown>; name: string; orig: unknown };

/**
 * Starts counting WebGPU calls (all devices of this process). Throws when WebGPU is absent.
 *
 * @example
 * ```ts
 * import { countWebGpu } from "./webgpu_counters.ts";
 * const counter = countWebGpu();
 * // ... run tfjs work on the webgpu backend ...
 * console.log(counter.stop()); // { dispatches: 3224, buffers: 940, submits: 216, readbacks: 2 }
 * ```
 */
export function countWebGpu(): WebGpuCounter {
  if (typeof GPUComputePassEncoder === "undefined") {
    throw new Error("countWebGpu: this runtime has no WebGPU (navigator.gpu)");
  }
  const counts: WebGpuCounts = { dispatches: 0, buffers: 0, submits: 0, readbacks: 0 };
  const patches: Patch[] = [];
  const wrap = (
    cls: { prototype: unknown },
    name: string,
    count: (args: unknown[]) => void,
  ) => {
    const proto = cls.prototype as Record<string, unknown>;
    const orig = proto[name] as (...a: unknown[]) => unknown;
    patches.push({ proto, name, orig });
    proto[name] = function (this: unknown, ...args: unknown[]) {
      count(args);
      return orig.apply(this, args);
    };
  };
  wrap(GPUComputePassEncoder, "dispatchWorkgroups", () => counts.dispatches++);
  wrap(GPUComputePassEncoder, "dispatchWorkgroupsIndirect", () => counts.dispatches++);
  wrap(GPUDevice, "createBuffer", () => counts.buffers++);
  wrap(GPUQueue, "submit", () => counts.submits++);
  wrap(GPUBuffer, "mapAsync", (a) => {
    if (((a[0] as number) & GPUMapMode.READ) !== 0) counts.readbacks++;
  });
  let stopped = false;
  return {
    read: () => ({ ...counts }),
    stop: () => {
      if (!stopped) {
        for (const p of patches.reverse()) p.proto[p.name] = p.orig;
        stopped = true;
      }
      return { ...counts };
    },
  };
}

/**
 * Divides counts by a number of steps (per-step figures, rounded to 0.01).
 *
 * @example
 * ```ts
 * import { perStep } from "./webgpu_counters.ts";
 * perStep({ dispatches: 30, buffers: 3, submits: 2, readbacks: 1 }, 10).readbacks; // 0.1
 * ```
 */
export function perStep(c: WebGpuCounts, steps: number): WebGpuCounts {
  const r = (x: number) => Math.round((x / steps) * 100) / 100;
  return {
    dispatches: r(c.dispatches),
    buffers: r(c.buffers),
    submits: r(c.submits),
    readbacks: r(c.readbacks),
  };
}

/**
 * One line for the bench table, e.g. `1620 dispatches, 940 buffers, 216 submits, 2 readbacks`.
 *
 * @example
 * ```ts
 * import { formatCounts } from "./webgpu_counters.ts";
 * formatCounts({ dispatches: 1, buffers: 2, submits: 3, readbacks: 0.1 });
 * ```
 */
export function formatCounts(c: WebGpuCounts): string {
  return `${c.dispatches} dispatches, ${c.buffers} buffers, ${c.submits} submits, ` +
    `${c.readbacks} readbacks`;
}
