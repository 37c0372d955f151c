/**
 * The optimizer step on the GPU for tfjs's webgpu backend: global-norm clipping, AdamW and the
 * EMA update of every parameter in three WGSL dispatches, with nothing read back to the host.
 *
 * Why: done with tf ops, the step costs ~19 dispatches per variable (~1,600 for DiT-Nano) plus a
 * host readback of the gradient norm (≥ 10 ms in Deno) to compute the clip factor. Here the
 * gradients are copied (buffer copies, not dispatches) into one flat buffer; parameters, moments
 * and EMA live in flat buffers too and are copied back into the tf.Variables after each update,
 * so the rest of the code (forward, checkpoints) sees ordinary variables. The loss and the norm
 * of each step go into a ring on the GPU that {@link DeviceAdamW.read} fetches in one readback,
 * as often as the caller wants (the logging interval).
 *
 * Numerics follow the tf-op path of the trainer (torch's AdamW: `m.lerp_(g, 1 - b1)`,
 * `denom = sqrt(v) / sqrt(1 - b2^t) + eps`, `p -= step_size * m / denom`; EMA by
 * `e.lerp_(p, 1 - decay)`; clip factor `min(1, max_norm / (norm + 1e-6))`, applied only below 1).
 * A step whose loss or gradient norm is not finite changes nothing, and neither does any step
 * after it (the first such step is remembered and reported by `read`).
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";

/** Hyper-parameters of one update (the schedule stays with the caller). */
export interface DeviceAdamWStep {
  /** 1-based number of this update (bias corrections use it). */
  step: number;
  /** Learning rate of this update. */
  lr: number;
}

/** Constant hyper-parameters. */
export interface DeviceAdamWConfig {
  /** AdamW betas. */
  betas: [number, number];
  /** AdamW epsilon. */
  eps: number;
  /** Decoupled weight decay. */
  weightDecay: number;
  /** Clip gradients to this global L2 norm. */
  gradClip: number;
  /** EMA decay. */
  emaDecay: number;
}

/** What the GPU recorded for one step. */
export interface DeviceStepRecord {
  /** 1-based step number. */
  step: number;
  /** Loss of the step. */
  loss: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
}

/** What {@link DeviceAdamW.read} returns. */
export interface DeviceReadout {
  /** Records of the steps since the last read, oldest first (at most the ring size). */
  records: DeviceStepRecord[];
  /** First step whose loss or gradient norm was not finite (0: none). */
  firstBadStep: number;
}

/** The parts of tfjs-backend-webgpu's WebGPUBackend used here (internal API of 4.22). */
interface WebGpuBackendInternals {
  device: GPUDevice;
  queue: GPUQueue;
  tensorMap: {
    get(dataId: object): { resource: unknown; values: unknown; refCount: number } | undefined;
  };
  commandEncoder: GPUCommandEncoder | null;
  uploadToGPU(dataId: object): void;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
}

/** Steps whose loss and norm the GPU keeps until read. */
const RING = 1024;
const WG = 256;

// Uniform block of all three kernels (16 words).
const PARAMS = /* wgsl */ `
struct Params {
  n: u32, num_partials: u32, slot: u32, step: u32,
  b1m: f32, b2: f32, b2m: f32, eps: f32,
  decay: f32, use_decay: u32, step_size: f32, bc2_sqrt: f32,
  ema_m: f32, max_norm: f32, pad0: u32, pad1: u32,
}
@group(0) @binding(0) var<uniform> P: Params;
const RING: u32 = ${RING}u;
fn finite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u; }
`;

// Stage 1: each workgroup sums g² over a strided share of the flat gradient.
const NORM_PARTIAL = PARAMS + /* wgsl */ `
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
var<workgroup> acc: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  var s = 0.0;
  let stride = P.num_partials * ${WG}u;
  for (var i = wid.x * ${WG}u + lid.x; i < P.n; i += stride) { s += g[i] * g[i]; }
  acc[lid.x] = s;
  workgroupBarrier();
  for (var k = ${WG / 2}u; k > 0u; k >>= 1u) {
    if (lid.x < k) { acc[lid.x] += acc[lid.x + k]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) { partials[wid.x] = acc[0]; }
}`;

// Stage 2 (one workgroup): the norm, the clip factor and the finiteness check.
// stats: [0, RING) losses, [RING, 2 RING) norms, 2 RING: clip, 2 RING + 1: ok, 2 RING + 2: bad step.
const NORM_FINAL = PARAMS + /* wgsl */ `
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;
var<workgroup> acc: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {
  var s = 0.0;
  for (var i = lid.x; i < P.num_partials; i += ${WG}u) { s += partials[i]; }
  acc[lid.x] = s;
  workgroupBarrier();
  for (var k = ${WG / 2}u; k > 0u; k >>= 1u) {
    if (lid.x < k) { acc[lid.x] += acc[lid.x + k]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) {
    let norm = sqrt(acc[0]);
    stats[RING + P.slot] = norm;
    let bad = stats[2u * RING + 2u];
    let ok = finite(norm) && finite(stats[P.slot]) && bad == 0.0;
    stats[2u * RING] = min(1.0, P.max_norm / (norm + 1e-6));
    stats[2u * RING + 1u] = select(0.0, 1.0, ok);
    if (!ok && bad == 0.0) { stats[2u * RING + 2u] = f32(P.step); }
  }
}`;

// Stage 3: clip, AdamW and EMA for every element (grid-stride loop).
const ADAMW = PARAMS + /* wgsl */ `
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> stats: array<f32>;
@group(0) @binding(3) var<storage, read_write> p: array<f32>;
@group(0) @binding(4) var<storage, read_write> m: array<f32>;
@group(0) @binding(5) var<storage, read_write> v: array<f32>;
@group(0) @binding(6) var<storage, read_write> e: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  if (stats[2u * RING + 1u] == 0.0) { return; }
  let clip = stats[2u * RING];
  for (var i = gid.x; i < P.n; i += nwg.x * ${WG}u) {
    var gi = g[i];
    if (clip < 1.0) { gi = gi * clip; }
    let mi = m[i] + (gi - m[i]) * P.b1m;
    let vi = v[i] * P.b2 + (gi * gi) * P.b2m;
    let denom = sqrt(vi) / P.bc2_sqrt + P.eps;
    var pi = p[i];
    if (P.use_decay != 0u) { pi = pi * P.decay; }
    pi = pi - (mi / denom) * P.step_size;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi;
    e[i] = e[i] + (pi - e[i]) * P.ema_m;
  }
}`;

/** Whether the active tfjs backend is webgpu (the only one {@link DeviceAdamW} runs on). */
export function deviceAdamWSupported(): boolean {
  return tf.getBackend() === "webgpu";
}

/**
 * AdamW + clipping + EMA over a fixed list of variables, on tfjs's webgpu backend.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { DeviceAdamW } from "./optimizer_webgpu.ts";
 * const p = [tf.variable(tf.ones([4]))];
 * const m = [tf.variable(tf.zeros([4]))], v = [tf.variable(tf.zeros([4]))];
 * const ema = [tf.variable(tf.ones([4]))];
 * const opt = new DeviceAdamW({ params: p, m, v, ema }, {
 *   betas: [0.9, 0.95], eps: 1e-8, weightDecay: 0, gradClip: 1, emaDecay: 0.99,
 * });
 * opt.step([tf.ones([4])], tf.scalar(0.5), { step: 1, lr: 1e-3 });
 * console.log(await opt.read()); // { records: [{ step: 1, loss: 0.5, gradNorm: 2 }], ... }
 * ```
 */
export class DeviceAdamW {
  readonly #be: WebGpuBackendInternals;
  readonly #config: DeviceAdamWConfig;
  readonly #lists: tf.Variable[][]; // params, m, v, ema
  readonly #offsets: number[]; // element offset of each variable in the flat buffers
  readonly #n: number;
  readonly #flat: GPUBuffer[]; // p, m, v, e
  readonly #grad: GPUBuffer;
  readonly #partials: GPUBuffer;
  readonly #stats: GPUBuffer;
  readonly #staging: GPUBuffer;
  readonly #uniform: GPUBuffer;
  readonly #numPartials: number;
  readonly #passes: { pipeline: GPUComputePipeline; bind: GPUBindGroup; groups: number }[];
  // The dataId each variable had when the flat copy was last in sync with it.
  readonly #synced: (object | null)[][];
  #lastStep = 0;
  #readUpTo = 0;
  #disposed = false;

  /**
   * Takes the variables (all float32, same shapes across the four lists) whose buffers it will
   * update in place. Throws when the active backend is not webgpu.
   */
  constructor(
    vars: { params: tf.Variable[]; m: tf.Variable[]; v: tf.Variable[]; ema: tf.Variable[] },
    config: DeviceAdamWConfig,
  ) {
    if (!deviceAdamWSupported()) {
      throw new Error(
        `DeviceAdamW needs the webgpu backend (active: ${tf.getBackend()}); ` +
          `use the tf-op optimizer on other backends`,
      );
    }
    this.#be = tf.backend() as unknown as WebGpuBackendInternals;
    this.#config = config;
    this.#lists = [vars.params, vars.m, vars.v, vars.ema];
    for (const list of this.#lists) {
      if (list.length !== vars.params.length) {
        throw new Error("DeviceAdamW: params, m, v and ema must have the same length");
      }
      list.forEach((t, i) => {
        if (t.dtype !== "float32" || t.size !== vars.params[i].size) {
          throw new Error(
            `DeviceAdamW: variable ${t.name} must be float32 of size ` +
              `${vars.params[i].size}`,
          );
        }
      });
    }
    this.#offsets = [];
    let n = 0;
    for (const p of vars.params) {
      this.#offsets.push(n);
      n += p.size;
    }
    this.#n = n;
    const dev = this.#be.device;
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    const bytes = Math.max(4, n * 4);
    this.#flat = [0, 1, 2, 3].map((i) =>
      dev.createBuffer({ size: bytes, usage, label: `anthos-adamw-${"pmve"[i]}` })
    );
    this.#grad = dev.createBuffer({ size: bytes, usage, label: "anthos-adamw-g" });
    this.#numPartials = Math.max(1, Math.min(1024, Math.ceil(n / (WG * 4))));
    this.#partials = dev.createBuffer({
      size: this.#numPartials * 4,
      usage: GPUBufferUsage.STORAGE,
    });
    const statsBytes = (2 * RING + 4) * 4;
    this.#stats = dev.createBuffer({ size: statsBytes, usage, label: "anthos-adamw-stats" });
    this.#staging = dev.createBuffer({
      size: statsBytes,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    this.#uniform = dev.createBuffer({
      size: 64,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    const pass = (code: string, buffers: GPUBuffer[], groups: number) => {
      const pipeline = dev.createComputePipeline({
        layout: "auto",
        compute: { module: dev.createShaderModule({ code }), entryPoint: "main" },
      });
      const bind = dev.createBindGroup({
        layout: pipeline.getBindGroupLayout(0),
        entries: [this.#uniform, ...buffers].map((buffer, binding) => ({
          binding,
          resource: { buffer },
        })),
      });
      return { pipeline, bind, groups };
    };
    const [fp, fm, fv, fe] = this.#flat;
    this.#passes = [
      pass(NORM_PARTIAL, [this.#grad, this.#partials], this.#numPartials),
      pass(NORM_FINAL, [this.#partials, this.#stats], 1),
      pass(
        ADAMW,
        [this.#grad, this.#stats, fp, fm, fv, fe],
        Math.max(1, Math.min(dev.limits.maxComputeWorkgroupsPerDimension, Math.ceil(n / WG))),
      ),
    ];
    this.#synced = this.#lists.map((l) => l.map(() => null));
  }

  /** Total number of parameters handled. */
  get size(): number {
    return this.#n;
  }

  /**
   * Enqueues one update: copies `grads` in, clips, AdamW, EMA, copies the results back into the
   * variables, and records `loss` (a scalar tensor, e.g. the batch's mean loss) and the norm.
   * Returns at once; nothing is read back. The caller keeps ownership of `grads` and `loss`.
   */
  step(grads: tf.Tensor[], loss: tf.Tensor, hyper: DeviceAdamWStep): void {
    if (this.#disposed) throw new Error("DeviceAdamW: used after dispose()");
    const params = this.#lists[0];
    if (grads.length !== params.length) {
      throw new Error(`DeviceAdamW: ${grads.length} gradients for ${params.length} variables`);
    }
    if (loss.size !== 1) throw new Error(`DeviceAdamW: loss must be a scalar, got ${loss.shape}`);
    if (hyper.step < this.#lastStep + 1 && hyper.step !== 1) {
      this.#readUpTo = hyper.step - 1; // a rewind (resume): earlier records are gone
    }
    this.#lastStep = hyper.step;
    const c = this.#config;
    const [b1, b2] = c.betas;
    const t = hyper.step;
    const slot = (t - 1) % RING;
    this.#detachShared();
    const u = new ArrayBuffer(64);
    const ui = new Uint32Array(u);
    const uf = new Float32Array(u);
    ui.set([this.#n, this.#numPartials, slot, t]);
    uf.set([1 - b1, b2, 1 - b2, c.eps, 1 - hyper.lr * c.weightDecay], 4);
    ui[9] = c.weightDecay ? 1 : 0;
    uf.set([hyper.lr / (1 - b1 ** t), Math.sqrt(1 - b2 ** t), 1 - c.emaDecay, c.gradClip], 10);
    this.#be.queue.writeBuffer(this.#uniform, 0, u);

    const be = this.#be;
    be.ensureCommandEncoderReady();
    be.endComputePassEncoder();
    const enc = be.commandEncoder!;
    // Variables reassigned since the last step (e.g. restored from a checkpoint): copy them in.
    this.#lists.forEach((list, k) => {
      list.forEach((variable, i) => {
        if (this.#synced[k][i] === variable.dataId) return;
        enc.copyBufferToBuffer(
          this.#bufferOf(variable),
          0,
          this.#flat[k],
          this.#offsets[i] * 4,
          variable.size * 4,
        );
        this.#synced[k][i] = variable.dataId;
      });
    });
    grads.forEach((g, i) => {
      if (g.size !== params[i].size) {
        throw new Error(
          `DeviceAdamW: gradient ${i} has ${g.size} elements, ` +
            `variable ${params[i].name} ${params[i].size}`,
        );
      }
      enc.copyBufferToBuffer(this.#bufferOf(g), 0, this.#grad, this.#offsets[i] * 4, g.size * 4);
    });
    enc.copyBufferToBuffer(this.#bufferOf(loss), 0, this.#stats, slot * 4, 4);
    const cp = enc.beginComputePass();
    for (const p of this.#passes) {
      cp.setPipeline(p.pipeline);
      cp.setBindGroup(0, p.bind);
      cp.dispatchWorkgroups(p.groups);
    }
    cp.end();
    // Results back into the variables' own buffers (in place: their dataIds stay).
    this.#lists.forEach((list, k) => {
      list.forEach((variable, i) => {
        enc.copyBufferToBuffer(
          this.#flat[k],
          this.#offsets[i] * 4,
          this.#bufferOf(variable),
          0,
          variable.size * 4,
        );
        // A CPU copy cached by an earlier read is stale now.
        be.tensorMap.get(variable.dataId)!.values = null;
      });
    });
    // Submit now: the gradients' buffers may go back to tfjs's pool once the caller frees them.
    be.submitQueue();
  }

  /**
   * Reads the records of the steps since the last read (one host readback, which waits for the
   * GPU to finish the enqueued work).
   */
  async read(): Promise<DeviceReadout> {
    const be = this.#be;
    be.ensureCommandEncoderReady();
    be.endComputePassEncoder();
    be.commandEncoder!.copyBufferToBuffer(this.#stats, 0, this.#staging, 0, this.#staging.size);
    be.submitQueue();
    await this.#staging.mapAsync(GPUMapMode.READ);
    const s = new Float32Array(this.#staging.getMappedRange().slice(0));
    this.#staging.unmap();
    const records: DeviceStepRecord[] = [];
    const from = Math.max(this.#readUpTo + 1, this.#lastStep - RING + 1);
    for (let step = from; step <= this.#lastStep; step++) {
      const slot = (step - 1) % RING;
      records.push({ step, loss: s[slot], gradNorm: s[RING + slot] });
    }
    this.#readUpTo = this.#lastStep;
    return { records, firstBadStep: s[2 * RING + 2] };
  }

  /** Frees the GPU buffers (not the variables). */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const b of [...this.#flat, this.#grad, this.#partials, this.#stats, this.#staging]) {
      b.destroy();
    }
    this.#uniform.destroy();
  }

  /** The GPU buffer of a tensor (uploaded first if it still lives on the CPU). */
  #bufferOf(t: tf.Tensor): GPUBuffer {
    this.#be.uploadToGPU(t.dataId);
    const r = this.#be.tensorMap.get(t.dataId)?.resource;
    if (!(r instanceof GPUBuffer)) {
      throw new Error(`DeviceAdamW: tensor ${t.id} is not held in a GPU buffer`);
    }
    return r;
  }

  /**
   * In-place updates need a buffer per variable: a variable sharing its data with another tensor
   * (tf.clone shares, e.g. a fresh EMA copy of the model) gets its own copy first.
   */
  #detachShared(): void {
    for (const list of this.#lists) {
      for (const variable of list) {
        if (this.#be.tensorMap.get(variable.dataId)!.refCount > 1) {
          tf.tidy(() => variable.assign(tf.mul(variable, tf.scalar(1)))); // x * 1 is x, bit for bit
        }
      }
    }
  }
}
