// deno task bench: DiT-Nano/2 training and sampling throughput, autoencoder encode/decode time,
// on each available backend, next to the PyTorch CPU anchor measured in the same run.
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { availableBackends, type BackendName, loadBackend } from "../lib/runtime/backend.ts";
import { benchSampling, benchTraining, runTorchAnchor, type TorchBenchRow } from "../bench/dit.ts";
import { benchAutoencoders } from "../bench/vae.ts";
import { formatCounts } from "../bench/webgpu_counters.ts";

const HELP = `deno task bench [options]

Measures, on each backend: training steps/s (forward + backward + AdamW) of DiT-Nano/2 at each
batch size, sampling time per image (Heun 50, CFG 4.0, latents only), and TAESD / SD VAE encode
and decode time per 256x256 image; runs PyTorch CPU (shared/bench/bench_torch_cpu.py) first on
the same machine and prints the ratios.

Options:
  --backends LIST     comma-separated (default: wasm, plus webgpu when an adapter exists)
  --batches LIST      training batch sizes (default 32,256)
  --micro-batch N     largest chunk per forward/backward on wasm (default 32; gradients accumulate)
  --steps N           timed training steps per batch size (default 2)
  --sample-batch N    images sampled together (default 16)
  --no-torch          skip the PyTorch anchor
  --no-vae            skip the autoencoder timings
  --shared DIR        shared/ folder (default $ANTHOS_SHARED or ../shared)
  --quick             batch 32 only, one timed step (also ANTHOS_QUICK=1)
  -h, --help          this text
`;

const { values } = parseArgs({
  args: Deno.args,
  options: {
    backends: { type: "string" },
    batches: { type: "string", default: "32,256" },
    "micro-batch": { type: "string", default: "32" },
    steps: { type: "string", default: "2" },
    "sample-batch": { type: "string", default: "16" },
    "no-torch": { type: "boolean", default: false },
    "no-vae": { type: "boolean", default: false },
    shared: { type: "string" },
    quick: { type: "boolean", default: Deno.env.get("ANTHOS_QUICK") === "1" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  console.log(HELP);
  Deno.exit(0);
}
const shared = values.shared ?? Deno.env.get("ANTHOS_SHARED") ??
  fileURLToPath(new URL("../../shared", import.meta.url));
const batches = values.quick ? [32] : values.batches!.split(",").map(Number);
const steps = values.quick ? 1 : Number(values.steps);
const micro = Number(values["micro-batch"]);
const sampleBatch = Number(values["sample-batch"]);
const backends = values.backends
  ? values.backends.split(",") as BackendName[]
  : (await availableBackends()).filter((b) => b === "wasm" || b === "webgpu");

const torch = new Map<number, TorchBenchRow>();
if (!values["no-torch"]) {
  for (const b of batches) {
    console.error(`PyTorch CPU anchor, batch ${b} ...`);
    const row = await runTorchAnchor(`${shared}/bench/bench_torch_cpu.py`, {
      batch: b,
      threads: 2,
    });
    console.error("  " + row.raw.replaceAll("\n", "\n  "));
    torch.set(b, row);
  }
}

const lines: string[] = [];
const counters: string[] = [];
const fmt = (x: number, d = 2) => x.toFixed(d);
lines.push("| backend | what | batch | ours | PyTorch CPU | ours / PyTorch |");
lines.push("| --- | --- | --- | --- | --- | --- |");
for (const name of backends) {
  const info = await loadBackend(name);
  const label = name === "wasm"
    ? `wasm (${info.threads} thread${info.threads === 1 ? "" : "s"}, SIMD ${
      info.simd ? "on" : "off"
    })`
    : name === "webgpu"
    ? `webgpu (${info.adapter})`
    : name;
  for (const b of batches) {
    console.error(`${label}: training, batch ${b} ...`);
    const mb = name === "wasm" ? Math.min(micro, b) : b;
    const r = await benchTraining(b, { steps, microBatch: mb });
    const t = torch.get(b);
    lines.push(
      `| ${label} | train step${mb < b ? ` (micro-batch ${mb})` : ""} | ${b} | ` +
        `${fmt(r.stepsPerSec, 3)} steps/s = ${fmt(r.samplesPerSec, 1)} samples/s | ` +
        (t
          ? `${fmt(1000 / t.msPerStep, 3)} steps/s = ${fmt(t.samplesPerSec, 1)} samples/s | ${
            fmt(r.samplesPerSec / t.samplesPerSec)
          }x |`
          : "— | — |"),
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
        : "— | — |"),
  );
  console.error("  " + lines.at(-1));
  if (s.counts) {
    counters.push(`| ${label} | Heun step (CFG 4) | ${sampleBatch} | ${formatCounts(s.counts)} |`);
  }
  if (!values["no-vae"]) {
    const rows = await benchAutoencoders({ taesdDir: `${shared}/weights/taesd` });
    for (const r of rows) {
      lines.push(
        `| ${label} | ${r.model} ${r.op} | ${r.batch} | ${fmt(r.msPerImage, 0)} ms/image | — | — |`,
      );
      console.error("  " + lines.at(-1));
    }
  }
}
console.log(lines.join("\n"));
if (counters.length > 0) {
  console.log("\nGPU calls per step (webgpu; training reads the loss back every 10 steps):\n");
  console.log("| backend | what | batch | per step |\n| --- | --- | --- | --- |");
  console.log(counters.join("\n"));
}
