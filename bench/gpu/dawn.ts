/**
 * One measured try of another WebGPU implementation: Dawn (Chromium's, from the npm `webgpu`
 * package, a node-API addon) in place of Deno's own (wgpu), for the GPU job (stage 2c) and here on
 * a CPU Vulkan. Prints the adapter, the readback floor (a 256-byte copy then `mapAsync`, 20 times:
 * Deno's polls with a 10 ms sleep), golden parity (forward, loss, every gradient) when the shared
 * golden vectors are at hand, and DiT-Nano/2 training steps on tfjs-webgpu over that
 * implementation's device, with the GPU calls per step. Run it once per implementation (one
 * webgpu backend per process) and compare the two.
 *
 * Usage: deno run -A --no-lock bench/gpu/dawn.ts [dawn|deno] [batch=256] [steps=5] [dawn.node]
 *
 * Dawn comes from its node-API addon when a path to `dawn.node` is given (the GPU job: pack.sh
 * ships the linux-x64 one, ~5 MB compressed, with no npm resolution on the offline machine), else
 * from the npm package (51 MB: every platform's binary), as `ANTHOS_WEBGPU` loads them
 * (`webgpuEntryPoint` in lib/runtime/backend.ts); `--no-lock` keeps it out of deno.lock. Training
 * itself on Dawn is `ANTHOS_WEBGPU=dawn deno task train --backend webgpu ...`.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import { loadBackend, webgpuEntryPoint } from "../../lib/runtime/backend.ts";
import { env } from "../../lib/runtime/env.ts";
import { DiT, toTorchLayout } from "../../lib/model/dit.ts";
import { readSafetensors } from "../../lib/io/safetensors.ts";
import { benchTraining } from "../dit.ts";
import { outputs, relErr } from "./parity.ts";
import { formatCounts } from "../webgpu_counters.ts";

const impl = Deno.args[0] ?? "dawn";
const batch = Number(Deno.args[1] ?? 256);
const steps = Number(Deno.args[2] ?? 5);
if (impl !== "dawn" && impl !== "deno") throw new Error(`impl "${impl}": use dawn or deno`);

// As ANTHOS_WEBGPU would (lib/runtime/backend.ts): Dawn's classes become the globals, so the
// GPU-call counters wrap theirs.
const entry = await webgpuEntryPoint(impl === "dawn" ? Deno.args[3] ?? "dawn" : "deno");
const gpu = entry.gpu;
const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
if (!adapter) {
  console.log(`RESULT ${impl} adapter none (see the log above: Dawn refuses Mesa 22 lavapipe)`);
  Deno.exit(1);
}
console.log(
  `RESULT ${impl} adapter ${adapter.info.description || adapter.info.device} (${entry.webgpu})`,
);

// The readback floor: what one wait for the GPU costs when there is nothing to wait for.
{
  const device = await adapter.requestDevice();
  const src = device.createBuffer({ size: 256, usage: GPUBufferUsage.COPY_SRC });
  const dst = device.createBuffer({
    size: 256,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const ms: number[] = [];
  for (let k = 0; k < 20; k++) {
    const enc = device.createCommandEncoder();
    enc.copyBufferToBuffer(src, 0, dst, 0, 256);
    device.queue.submit([enc.finish()]);
    const t0 = performance.now();
    await dst.mapAsync(GPUMapMode.READ);
    ms.push(performance.now() - t0);
    dst.unmap();
  }
  ms.sort((a, b) => a - b);
  console.log(
    `RESULT ${impl} readback floor: median ${ms[10].toFixed(3)} ms, min ${ms[0].toFixed(3)}, ` +
      `max ${ms[19].toFixed(3)} (256 B, 20 waits)`,
  );
  device.destroy();
}

const info = await loadBackend("webgpu", { gpu });

// Golden parity (forward, loss, every gradient) when the shared vectors are here (not on the job).
const golden = `${env.shared ?? "../shared"}/spec/golden`;
if (await Deno.stat(`${golden}/case.safetensors`).then(() => true, () => false)) {
  const c = (await readSafetensors(`${golden}/case.safetensors`)).tensors;
  const t4 = (k: string) =>
    tf.tensor4d(
      c.get(k)!.data as Float32Array,
      c.get(k)!.shape as [number, number, number, number],
    );
  const m = await DiT.load(`${golden}/weights.safetensors`);
  const batch = {
    xt: t4("x_t"),
    t: tf.tensor1d(c.get("t")!.data as Float32Array),
    y: tf.tensor1d(c.get("y")!.data as Int32Array, "int32"),
    v: t4("v_target"),
  };
  const o = await outputs(m, batch);
  const fwd = relErr(o.v, c.get("v_pred")!.data);
  const loss = relErr(o.loss, c.get("loss")!.data);
  const worst = Math.max(
    ...o.grads.map(({ param: p, data }) =>
      relErr(
        toTorchLayout(data, p.variable.shape, p.torchShape, p.layout),
        c.get(`grad.${p.key}`)!.data,
      )
    ),
  );
  console.log(
    `RESULT ${impl} golden parity: forward ${fwd.toExponential(2)}, loss ` +
      `${loss.toExponential(2)}, worst gradient ${worst.toExponential(2)} (tests allow 1e-4)`,
  );
  tf.dispose(Object.values(batch));
  m.dispose();
}

// Training steps on tfjs-webgpu over this implementation.
const row = await benchTraining(batch, { steps });
console.log(
  `RESULT ${impl} train batch ${batch}: ${row.stepsPerSec.toFixed(3)} steps/s ` +
    `(${row.samplesPerSec.toFixed(1)} samples/s) on ${info.adapter}` +
    (row.counts ? `; per step ${formatCounts(row.counts)}` : ""),
);
