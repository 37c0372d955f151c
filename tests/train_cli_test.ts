// The training and convert CLIs as a user runs them (subprocesses): the run folder (log.jsonl,
// checkpoint, sample grid, export), --resume against a straight run, convert, Ctrl-C, and the
// error paths. A tiny model (DiT-Pico/2, 8x8 latents) keeps each run to seconds.
import * as tf from "@tensorflow/tfjs-core";
import { assert, assertEquals, assertGreater } from "./_assert.ts";
import { loadBackend } from "../lib/runtime/backend.ts";
import { DiT } from "../lib/model/dit.ts";
import { saveLatents } from "../lib/data/latents.ts";
import { Rng } from "../lib/runtime/rng.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import { readWeightsConfig } from "../lib/model/weights.ts";
import { sharedPath } from "./_shared.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const taesdDir = sharedPath("weights/taesd");

/** Runs `deno run -A tasks/<task>.ts args` from the project root. */
async function runTask(
  task: string,
  args: string[],
): Promise<{ code: number; stderr: string; stdout: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `tasks/${task}.ts`, ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1", ANTHOS_QUICK: "" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** A learnable 8x8x4 latent set: one fixed random pattern per class, plus a little noise. */
async function makeCache(path: string): Promise<void> {
  const n = 32;
  const per = 8 * 8 * 4;
  const rng = new Rng(1);
  const classes = [0, 17, 22, 46];
  const protos = classes.map(() => rng.normalArray(per));
  const latents = new Float32Array(n * per);
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    labels[i] = classes[i % 4];
    latents.set(protos[i % 4].map((v) => v + 0.1 * rng.normal()), i * per);
  }
  await saveLatents(path, { latents, labels, shape: [n, 8, 8, 4] }, {
    metadata: { vae: "taesd", scaling_factor: "0.18215", count: String(n), source: "test" },
  });
}

function readLog(path: string): Record<string, number>[] {
  return Deno.readTextFileSync(path).trim().split("\n").map((l) => JSON.parse(l));
}

/** Width and height from a PNG's IHDR chunk (after checking the signature). */
function pngSize(bytes: Uint8Array): [number, number] {
  const sig = [137, 80, 78, 71, 13, 10, 26, 10];
  assert(sig.every((b, i) => bytes[i] === b), "PNG signature");
  const dv = new DataView(bytes.buffer, bytes.byteOffset);
  return [dv.getUint32(16), dv.getUint32(20)];
}

async function tensorsOf(path: string, prefix: string): Promise<Map<string, Float32Array>> {
  const { tensors } = await readSafetensors(path);
  const out = new Map<string, Float32Array>();
  for (const [k, t] of tensors) {
    if (k.startsWith(prefix)) out.set(k.slice(prefix.length), t.data as Float32Array);
  }
  return out;
}

function sameBits(a: Map<string, Float32Array>, b: Map<string, Float32Array>): boolean {
  if (a.size !== b.size || a.size === 0) return false;
  for (const [k, x] of a) {
    const y = b.get(k);
    if (!y || y.length !== x.length || x.some((v, i) => !Object.is(v, y[i]))) return false;
  }
  return true;
}

const common = [
  "--preset",
  "smoke",
  "--model",
  "DiT-Pico/2",
  "--batch-size",
  "4",
];

Deno.test({
  name: "train CLI: run folder, resume = straight run, convert, errors",
  ignore: !taesdDir,
  fn: async (t) => {
    const tmp = await Deno.makeTempDir({ prefix: "anthos-train-cli-" });
    const cache = `${tmp}/latents.safetensors`;
    await makeCache(cache);
    const runA = `${tmp}/a`;
    const runB = `${tmp}/b`;

    await t.step("4 steps: log.jsonl, checkpoint, sample grid, export", async () => {
      const r = await runTask("train", [
        ...common,
        ...["--data", cache, "--out", runA, "--steps", "4", "--ckpt-every", "2"],
        ...["--sample-every", "2", "--sample-steps", "2", "--vae-dir", taesdDir!],
      ]);
      assertEquals(r.code, 0, r.stderr);
      const log = readLog(`${runA}/log.jsonl`);
      assertEquals(log.map((l) => l.step), [1, 2, 3, 4]);
      for (const l of log) {
        for (const k of ["loss", "gradNorm", "lr", "time"]) assert(Number.isFinite(l[k]), k);
        assertGreater(l.loss, 0);
      }
      assertEquals(log[0].lr, 1e-3 / 30); // smoke preset: 30-step warmup to 1e-3
      const ck = await readSafetensors(`${runA}/checkpoint.safetensors`);
      assertEquals(ck.metadata.step, "4");
      // 8 classes, 4 per row, 64x64 tiles (8x8 latents decoded by TAESD), 4 px pads, captions.
      const want: [number, number] = [4 + 4 * (64 + 4), 4 + 2 * (64 + 21 + 4)];
      for (const step of ["000002", "000004"]) {
        assertEquals(pngSize(await Deno.readFile(`${runA}/samples/step_${step}.png`)), want);
      }
      const cfg = await readWeightsConfig(`${runA}/export/config.json`);
      assertEquals(cfg.model.inputSize, 8);
      assertEquals(cfg.vae, { name: "taesd", scalingFactor: 0.18215 });
      assertEquals(cfg.training?.step, 4);
      assertEquals(cfg.training?.batchSize, 4);
    });

    await t.step("--resume to 6 equals a straight 6-step run, bit for bit", async () => {
      // The --help example's form: repeating the run's own --preset is no change (issue 11.10).
      const r1 = await runTask("train", [
        "--preset",
        "smoke",
        "--resume",
        "--out",
        runA,
        "--steps",
        "6",
      ]);
      assertEquals(r1.code, 0, r1.stderr);
      assert(r1.stderr.includes("resuming"), r1.stderr);
      assertEquals(readLog(`${runA}/log.jsonl`).map((l) => l.step), [1, 2, 3, 4, 5, 6]);
      const r2 = await runTask("train", [
        ...common,
        ...["--data", cache, "--out", runB, "--steps", "6", "--sample-every", "0"],
      ]);
      assertEquals(r2.code, 0, r2.stderr);
      const a = `${runA}/checkpoint.safetensors`;
      const b = `${runB}/checkpoint.safetensors`;
      for (const prefix of ["model.", "ema.", "adam_m.", "adam_v."]) {
        assert(sameBits(await tensorsOf(a, prefix), await tensorsOf(b, prefix)), prefix);
      }
      const la = readLog(`${runA}/log.jsonl`).map((l) => l.loss);
      const lb = readLog(`${runB}/log.jsonl`).map((l) => l.loss);
      assertEquals(la, lb);
    });

    await t.step(
      "--max-minutes: saves and stops; --resume then equals the straight run",
      async () => {
        const out = `${tmp}/timed`;
        const r1 = await runTask("train", [
          ...common,
          ...["--data", cache, "--out", out, "--steps", "6", "--sample-every", "0"],
          ...["--max-minutes", "0.000001"],
        ]);
        assertEquals(r1.code, 0, r1.stderr);
        assert(r1.stderr.includes("time limit reached at step 1"), r1.stderr);
        const r2 = await runTask("train", ["--resume", "--out", out, "--sample-every", "0"]);
        assertEquals(r2.code, 0, r2.stderr);
        for (const prefix of ["model.", "ema.", "adam_m.", "adam_v."]) {
          const a = await tensorsOf(`${out}/checkpoint.safetensors`, prefix);
          assert(sameBits(a, await tensorsOf(`${runB}/checkpoint.safetensors`, prefix)), prefix);
        }
        const strip = (l: Record<string, number>) => [l.step, l.loss, l.gradNorm, l.lr];
        assertEquals(
          readLog(`${out}/log.jsonl`).map(strip),
          readLog(`${runB}/log.jsonl`).map(strip),
        );
        const ledger = readLog(`${out}/ledger.jsonl`);
        assertEquals(ledger.map((e) => [e.slot, e.stepsFrom, e.stepsTo]), [[1, 0, 1], [2, 1, 6]]);
      },
    );

    await t.step("convert: EMA weights -> model.safetensors + config.json", async () => {
      const out = `${tmp}/weights`;
      const r = await runTask("convert", [
        "--checkpoint",
        `${runB}/checkpoint.safetensors`,
        "--out",
        out,
      ]);
      assertEquals(r.code, 0, r.stderr);
      const cfg = await readWeightsConfig(`${out}/config.json`);
      assertEquals(cfg.vae.name, "taesd"); // from run.json beside the checkpoint
      assertEquals(cfg.training?.step, 6);
      assertEquals(cfg.sampling, { steps: 50, cfgScale: 4, sampler: "heun" });
      // The run's record as train's own export wrote it at the end of the last session (step 6):
      // a checkpoint converted later (e.g. one trained on a GPU machine) carries the same.
      const own = (await readWeightsConfig(`${runB}/export/config.json`)).training!;
      const last = readLog(`${runB}/ledger.jsonl`).at(-1)!;
      for (const k of ["preset", "data", "samplesSeen", "phase", "phases", "backend", "device"]) {
        assertEquals(cfg.training?.[k], own[k], k);
      }
      assertEquals(cfg.training?.valLoss, last.valLoss);
      assertEquals(cfg.training?.device, last.device);
      assertEquals(cfg.training?.data, [cache]);
      await loadBackend("cpu");
      const model = await DiT.load(`${out}/model.safetensors`, { config: cfg.model });
      assertEquals(model.paramCount(), 50_048);
      model.dispose();
      const exported = await tensorsOf(`${out}/model.safetensors`, "");
      const ema = await tensorsOf(`${runB}/checkpoint.safetensors`, "ema.");
      assert(sameBits(exported, ema), "model.safetensors holds the EMA weights");
      assertEquals(tf.memory().numTensors, 0);
    });

    await t.step("micro-batch: capped on wasm, a session setting on --resume", async () => {
      // The anthos recipe's micro-batch (256, for GPUs) does not fit the wasm heap for
      // DiT-Nano/2: on wasm the task trains in chunks of WASM_MICRO_BATCH and the run keeps its own.
      const out = `${tmp}/micro`;
      const microOf = async () =>
        JSON.parse((await readSafetensors(`${out}/checkpoint.safetensors`)).metadata.train_config)
          .microBatch;
      const r1 = await runTask("train", [
        ...["--preset", "anthos", "--model", "DiT-Pico/2", "--batch-size", "48", "--steps", "1"],
        ...["--data", cache, "--out", out, "--sample-every", "0", "--backend", "wasm"],
      ]);
      assertEquals(r1.code, 0, r1.stderr);
      assert(r1.stderr.includes("batch 48 in chunks of 32,"), r1.stderr);
      assertEquals(await microOf(), 48);
      // Another micro-batch on --resume is not a change of the run (RunChangedError otherwise).
      const r2 = await runTask("train", [
        ...["--resume", "--out", out, "--steps", "2", "--micro-batch", "16", "--backend", "wasm"],
        ...["--sample-every", "0"],
      ]);
      assertEquals(r2.code, 0, r2.stderr);
      assert(r2.stderr.includes("batch 48 in chunks of 16,"), r2.stderr);
      assertEquals(await microOf(), 48);
      assertEquals(readLog(`${out}/log.jsonl`).map((l) => l.step), [1, 2]);
      // Asked for more than wasm holds: trained as asked, with a warning.
      const r3 = await runTask("train", [
        ...["--resume", "--out", out, "--steps", "3", "--micro-batch", "48", "--backend", "wasm"],
        ...["--sample-every", "0"],
      ]);
      assertEquals(r3.code, 0, r3.stderr);
      assert(r3.stderr.includes("warning: --micro-batch 48 may not fit the wasm heap"), r3.stderr);
      assert(!r3.stderr.includes("in chunks of"), r3.stderr);
    });

    await t.step("errors: missing cache, existing run, nothing to resume", async () => {
      const r1 = await runTask("train", [
        ...common,
        ...["--data", `${tmp}/nope.safetensors`, "--out", `${tmp}/c`],
      ]);
      assertEquals(r1.code, 1);
      assert(r1.stderr.includes("deno task encode"), r1.stderr);
      const r2 = await runTask("train", [...common, "--data", cache, "--out", runB]);
      assertEquals(r2.code, 1);
      assert(r2.stderr.includes("--resume"), r2.stderr);
      const r3 = await runTask("train", ["--resume", "--out", `${tmp}/none`]);
      assertEquals(r3.code, 1);
      assert(r3.stderr.includes("nothing to resume"), r3.stderr);
      const r4 = await runTask("train", ["--stpes", "3"]);
      assertEquals(r4.code, 1);
      assert(r4.stderr.includes("--steps"), r4.stderr); // "did you mean"
    });

    await t.step("non-finite loss: exit 1 with the reason, last checkpoint kept", async () => {
      const out = `${tmp}/nan`;
      const r = await runTask("train", [
        ...common,
        ...["--data", cache, "--out", out, "--steps", "20", "--lr", "1e30", "--warmup", "0"],
        ...["--ckpt-every", "1", "--sample-every", "0"],
      ]);
      assertEquals(r.code, 1, r.stderr);
      assert(r.stderr.includes("loss is"), r.stderr);
      const step = Number((await readSafetensors(`${out}/checkpoint.safetensors`)).metadata.step);
      assert(step >= 1 && step < 20, `kept checkpoint at step ${step}`);
    });

    await t.step("non-finite loss before any checkpoint: says none exists", async () => {
      const r = await runTask("train", [
        ...common,
        ...["--data", cache, "--out", `${tmp}/nan0`, "--steps", "20", "--lr", "1e30"],
        ...["--warmup", "0", "--ckpt-every", "0", "--sample-every", "0"],
      ]);
      assertEquals(r.code, 1, r.stderr);
      assert(r.stderr.includes("no checkpoint was written yet"), r.stderr);
      assert(!r.stderr.includes("(step 0) is kept"), r.stderr);
    });

    for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
      await t.step(
        `${signal}: finishes the step, saves, exits ${code}; --resume goes on`,
        async () => {
          await interrupted(`${tmp}/int-${signal}`, signal, code);
        },
      );
    }

    async function interrupted(out: string, signal: Deno.Signal, code: number) {
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          ...["run", "-A", "tasks/train.ts", ...common, "--data", cache, "--out", out],
          ...["--steps", "100000", "--sample-every", "0", "--ckpt-every", "100000"],
        ],
        cwd: ROOT,
        env: { NO_COLOR: "1", ANTHOS_QUICK: "" },
        stdout: "null",
        stderr: "piped",
      }).spawn();
      // Wait for the first progress line (printed after step 1), then press Ctrl-C.
      let err = "";
      const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
      while (!/train \d+\/100000/.test(err)) {
        const { value, done } = await reader.read();
        if (done) break;
        err += value;
      }
      child.kill(signal);
      for (let r = await reader.read(); !r.done; r = await reader.read()) err += r.value;
      const status = await child.status;
      assertEquals(status.code, code, err);
      const step = Number((await readSafetensors(`${out}/checkpoint.safetensors`)).metadata.step);
      assert(step >= 1, `checkpoint at step ${step}`);
      assertEquals(readLog(`${out}/log.jsonl`).length, step);
      const r = await runTask("train", [
        ...["--resume", "--out", out, "--steps", String(step + 1), "--sample-every", "0"],
      ]);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(readLog(`${out}/log.jsonl`).map((l) => l.step).at(-1), step + 1);
    }

    await Deno.remove(tmp, { recursive: true });
  },
});
