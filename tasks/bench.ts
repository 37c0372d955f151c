// deno task bench: DiT-Nano/2 training and sampling throughput, autoencoder encode/decode time,
// on each available backend, next to the PyTorch CPU anchor measured in the same run.
import { fileURLToPath } from "node:url";
import { parseCommandLine, splitList } from "../lib/cli/args.ts";
import { env } from "../lib/runtime/env.ts";
import {
  availableBackends,
  type BackendName,
  deviceName,
  loadBackend,
} from "../lib/runtime/backend.ts";
import { forwardMacs } from "../lib/model/dit.ts";
import { WASM_MICRO_BATCH } from "../lib/training/trainer.ts";
import { benchSampling, benchTraining, runTorchAnchor, type TorchBenchRow } from "../bench/dit.ts";
import { benchAutoencoders } from "../bench/vae.ts";
import { formatCounts } from "../bench/webgpu_counters.ts";

const SPEC = {
  name: "deno task bench",
  description: "Measures, on each backend: training steps/s (forward + backward + AdamW) of " +
    "DiT-Nano/2 at each batch size, sampling time per image (Heun 50, CFG 4.0, latents only), " +
    "and TAESD / SD VAE encode and decode time per 256x256 image; runs PyTorch CPU " +
    "(shared/bench/bench_torch_cpu.py) first on the same machine and prints the ratios.",
  options: {
    backends: {
      type: "string",
      placeholder: "LIST",
      description: "comma-separated backends [default: wasm, plus webgpu when an adapter exists]",
    },
    batches: {
      type: "string",
      placeholder: "LIST",
      default: "32,256",
      description: "training batch sizes",
    },
    "micro-batch": {
      type: "integer",
      default: WASM_MICRO_BATCH,
      description: "largest chunk per forward/backward on wasm (gradients accumulate)",
    },
    steps: { type: "integer", default: 2, description: "timed training steps per batch size" },
    "sample-batch": { type: "integer", default: 16, description: "images sampled together" },
    "no-torch": { type: "boolean", description: "skip the PyTorch anchor" },
    "no-vae": { type: "boolean", description: "skip the autoencoder timings" },
    shared: {
      type: "string",
      placeholder: "DIR",
      description: "shared/ folder [default: $ANTHOS_SHARED or ../shared]",
    },
    quick: { type: "boolean", description: "batch 32 only, one timed step (also ANTHOS_QUICK=1)" },
  },
  examples: ["deno task bench", "deno task bench --backends wasm,webgpu --batches 32 --no-vae"],
} as const;

const { values } = parseCommandLine(SPEC);
values.quick ||= env.quick;
const shared = values.shared ?? env.shared ??
  fileURLToPath(new URL("../../shared", import.meta.url));
const batches = values.quick ? [32] : splitList(values.batches).map(Number);
const steps = values.quick ? 1 : values.steps;
const micro = values.microBatch;
const sampleBatch = values.sampleBatch;
const backends = values.backends
  ? splitList(values.backends) as BackendName[]
  : (await availableBackends()).filter((b) => b === "wasm" || b === "webgpu");

// The PyTorch anchor runs right before our measurement at the same batch size (interleaved, so
// both see the same machine load), once per batch size.
const torch = new Map<number, TorchBenchRow>();
async function anchor(b: number): Promise<TorchBenchRow | undefined> {
  if (values.noTorch || torch.has(b)) return torch.get(b);
  console.error(`PyTorch CPU anchor, batch ${b} (load ${load()}) ...`);
  const row = await runTorchAnchor(`${shared}/bench/bench_torch_cpu.py`, { batch: b, threads: 2 });
  console.error("  " + row.raw.replaceAll("\n", "\n  "));
  torch.set(b, row);
  return row;
}
/** The 1-minute load average, recorded with each row (these machines are shared). */
const load = () => Deno.loadavg()[0].toFixed(1);

const lines: string[] = [];
const counters: string[] = [];
const fmt = (x: number, d = 2) => x.toFixed(d);
// Arithmetic done per second in training: 6 x the forward pass's multiply-adds per sample (a
// multiply-add is 2 operations; the backward costs two products per forward one).
const gflops = (samplesPerSec: number) =>
  `${fmt((samplesPerSec * 6 * forwardMacs()) / 1e9, 1)} GFLOP/s`;
lines.push("| backend | what | batch | ours | PyTorch CPU | ours / PyTorch | load |");
lines.push("| --- | --- | --- | --- | --- | --- | --- |");
for (const name of backends) {
  const info = await loadBackend(name);
  const label = name === "wasm"
    ? `wasm (${info.threads} thread${info.threads === 1 ? "" : "s"}, SIMD ${
      info.simd ? "on" : "off"
    }, products on ${info.products?.replace(/ from .*/, "")})`
    : name === "webgpu"
    ? `webgpu (${deviceName(info)})`
    : name;
  for (const b of batches) {
    console.error(`${label}: training, batch ${b} ...`);
    const mb = name === "wasm" ? Math.min(micro, b) : b;
    const t = await anchor(b);
    const r = await benchTraining(b, { steps, microBatch: mb });
    lines.push(
      `| ${label} | train step${mb < b ? ` (micro-batch ${mb})` : ""} | ${b} | ` +
        `${fmt(r.stepsPerSec, 3)} steps/s = ${fmt(r.samplesPerSec, 1)} samples/s = ` +
        `${gflops(r.samplesPerSec)} | ` +
        (t
          ? `${fmt(1000 / t.msPerStep, 3)} steps/s = ${fmt(t.samplesPerSec, 1)} samples/s = ${
            gflops(t.samplesPerSec)
          } | ${fmt(r.samplesPerSec / t.samplesPerSec)}x |`
          : "— | — |") +
        ` ${load()} |`,
    );
    console.error("  " + lines.at(-1));
    if (r.counts) counters.push(`| ${label} | train step | ${b} | ${formatCounts(r.counts)} |`);
  }
  console.error(`${label}: sampling ...`);
  const s = await benchSampling(sampleBatch, { timedSteps: values.quick ? 1 : 3 });
  const t = torch.get(32);
  lines.push(
    `| ${label} | sample (Heun 50, CFG 4) | ${sampleBatch} | ${fmt(s.secPerImage)} s/image = ` +
      `${fmt(s.samplesPerSec, 3)} samples/s | ` +
      (t
        ? `${fmt(t.secPerImageHeun50)} s/image | ${fmt(t.secPerImageHeun50 / s.secPerImage)}x |`
        : "— | — |") +
      ` ${load()} |`,
  );
  console.error("  " + lines.at(-1));
  if (s.counts) {
    counters.push(`| ${label} | Heun step (CFG 4) | ${sampleBatch} | ${formatCounts(s.counts)} |`);
  }
  if (!values.noVae) {
    const rows = await benchAutoencoders({ taesdDir: `${shared}/weights/taesd` });
    for (const r of rows) {
      lines.push(
        `| ${label} | ${r.model} ${r.op} | ${r.batch} | ${
          fmt(r.msPerImage, 0)
        } ms/image | — | — | ` +
          `${load()} |`,
      );
      console.error("  " + lines.at(-1));
    }
  }
}
// What shapes the numbers on a shared machine: the load, and the OpenBLAS settings (ours and
// PyTorch's products both use the system OpenBLAS, so they see the same ones).
const openblasEnv = Object.entries(Deno.env.toObject())
  .filter(([k]) => /^OPENBLAS_(CORETYPE|L2_SIZE|NUM_THREADS)$/.test(k))
  .map(([k, v]) => `${k}=${v}`).join(" ") || "none";
console.log(
  `load average ${Deno.loadavg().map((x) => x.toFixed(2)).join(" ")} at the end; ` +
    `OpenBLAS env: ${openblasEnv}\n`,
);
console.log(lines.join("\n"));
if (counters.length > 0) {
  console.log("\nGPU calls per step (webgpu; training reads the loss back every 10 steps):\n");
  console.log("| backend | what | batch | per step |\n| --- | --- | --- | --- |");
  console.log(counters.join("\n"));
}
