// `deno task eval` end to end, as a subprocess: it prints the validation loss and its 10
// t-buckets, the digits equal the library's for the same model and data, it reads a weights
// folder or a training checkpoint, writes the grid PNG, and bad input exits 1 with the fix.
// Uses the golden random DiT weights and the real TAESD decoder from ../shared.
import sharp from "sharp";
import { assert, assertEquals } from "./_assert.ts";
import { sharedPath } from "./_shared.ts";
import { loadBackend } from "../lib/runtime/backend.ts";
import { DiT } from "../lib/model/dit.ts";
import { loadLatents, saveLatents } from "../lib/data/latents.ts";
import { Rng } from "../lib/runtime/rng.ts";
import { Trainer } from "../lib/training/trainer.ts";
import { heldOutSplit, validationLoss } from "../lib/training/eval.ts";

const GOLDEN = sharedPath("spec/golden/weights.safetensors");
const TAESD = sharedPath("weights/taesd");
const ROOT = new URL("..", import.meta.url).pathname;

/** A temp folder with a weights/ folder (golden weights) and a random latent cache. */
async function fixture(size = 32, vae = "taesd"): Promise<{ dir: string; cache: string }> {
  const dir = await Deno.makeTempDir({ prefix: "anthos-eval-" });
  await Deno.mkdir(`${dir}/weights`);
  if (GOLDEN) await Deno.copyFile(GOLDEN, `${dir}/weights/model.safetensors`);
  await Deno.copyFile(`${ROOT}/weights/classes.txt`, `${dir}/weights/classes.txt`);
  await Deno.writeTextFile(
    `${dir}/weights/config.json`,
    JSON.stringify({ format: "anthos", vae: { name: vae, scalingFactor: 0.18215 } }),
  );
  const n = 120;
  const rng = new Rng(7);
  const cache = `${dir}/latents.safetensors`;
  await saveLatents(cache, {
    latents: rng.normalArray(n * size * size * 4),
    labels: Int32Array.from({ length: n }, () => rng.int(102)),
    shape: [n, size, size, 4],
  }, { dtype: "F32", metadata: { vae: "taesd", splits: "train", images: String(n) } });
  return { dir, cache };
}

async function evalTask(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "-q", "eval", ...args],
    cwd: ROOT,
    env: { ANTHOS_BACKEND: "wasm" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test({
  name: "eval CLI: prints the loss and 10 t-buckets, writes the grid PNG",
  ignore: !GOLDEN || !TAESD,
  fn: async () => {
    const { dir, cache } = await fixture();
    const png = `${dir}/grid.png`;
    const r = await evalTask([
      `${dir}/weights`,
      "--data",
      cache,
      "--fraction",
      "0.1",
      "--max-items",
      "2",
      "--t-per-item",
      "10",
      "--grid",
      png,
      "--grid-classes",
      "rose,5",
      "--grid-steps",
      "1",
      "--vae-dir",
      TAESD!,
      "--repo-dir",
      dir,
      "-q",
    ]);
    assertEquals(r.code, 0, r.stderr);
    const m = /validation loss (\d+\.\d{6})/.exec(r.stdout);
    assert(m, `no loss line in:\n${r.stdout}`);
    assert(/2 held-out latents of 120 x 10 t = 20 evaluations/.test(r.stdout), r.stdout);
    const lines = r.stdout.trim().split("\n");
    const head = lines.find((l) => l.trim().startsWith("t-bucket"))!.trim().split(/\s+/);
    const row = lines.find((l) => l.trim().startsWith("loss"))!.trim().split(/\s+/);
    assertEquals(head.length, 11);
    assertEquals(head[1], "0.0-0.1");
    assertEquals(row.length, 11);
    const buckets = row.slice(1).map(Number);
    assert(buckets.every((b) => Number.isFinite(b) && b > 0), row.join(" "));
    // Each bucket holds 2 evaluations here: their mean is the loss (to the printed digits).
    const mean = buckets.reduce((s, b) => s + b, 0) / 10;
    assert(Math.abs(mean - Number(m[1])) < 1e-4, `${mean} vs ${m[1]}`);
    const meta = await sharp(await Deno.readFile(png)).metadata();
    assertEquals([meta.format, meta.width], ["png", 4 + 4 * (256 + 4)]);
    assert(r.stderr.includes(`wrote ${png}: 4 images`), r.stderr);
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "eval CLI: --json digits equal the library's, for a weights folder and a checkpoint",
  ignore: !GOLDEN,
  fn: async () => {
    await loadBackend("wasm");
    const { dir, cache } = await fixture();
    const opts = ["--data", cache, "--fraction", "0.1", "--max-items", "3", "--t-per-item", "2"];
    const r = await evalTask([`${dir}/weights`, ...opts, "--json"]);
    assertEquals(r.code, 0, r.stderr);
    const got = JSON.parse(r.stdout);
    const data = await loadLatents(cache);
    const split = heldOutSplit([{ count: 120, metadata: data.metadata, name: "latents" }], {
      fraction: 0.1,
    });
    const model = await DiT.load(GOLDEN!);
    const want = await validationLoss(model, data, { split, maxItems: 3, tPerItem: 2 });
    assertEquals(got.valLoss, want.loss);
    assertEquals(got.valBuckets.map((b: number | null) => b ?? NaN), want.buckets);
    assertEquals([got.heldOut, got.evaluations], [3, 6]);
    // Exported weights name their data and held-out share (config.json's training): the defaults.
    await Deno.writeTextFile(
      `${dir}/weights/config.json`,
      JSON.stringify({
        format: "anthos",
        vae: { name: "taesd", scalingFactor: 0.18215 },
        training: { step: 6, data: [cache], heldOutFraction: 0.1 },
      }),
    );
    const rd = await evalTask([`${dir}/weights`, ...opts.slice(4), "--json"]);
    assertEquals(rd.code, 0, rd.stderr);
    assertEquals(JSON.parse(rd.stdout).valLoss, want.loss);
    model.dispose();
    data.latents.dispose();

    // A training checkpoint (a tiny model on 8x8 latents): EMA by default, --raw the raw weights.
    const small = await fixture(8);
    const trainer = new Trainer({ model: "DiT-Pico/2", batchSize: 4, steps: 2, emaDecay: 0.5 });
    const smallData = await loadLatents(small.cache);
    await trainer.fit(smallData);
    const ckpt = `${small.dir}/checkpoint.safetensors`;
    await trainer.saveCheckpoint(ckpt);
    const smallSplit = heldOutSplit(smallData, { fraction: 0.1 });
    for (const raw of [false, true]) {
      const args = [ckpt, "--data", small.cache, ...opts.slice(2), "--json"];
      const rc = await evalTask(raw ? [...args, "--raw"] : args);
      assertEquals(rc.code, 0, rc.stderr);
      const res = await validationLoss(raw ? trainer.model : trainer.ema, smallData, {
        split: smallSplit,
        maxItems: 3,
        tPerItem: 2,
      });
      assertEquals(JSON.parse(rc.stdout).valLoss, res.loss, raw ? "raw" : "EMA");
    }
    // Beside run.json, the run's caches and held-out share are the defaults (no --data).
    await Deno.writeTextFile(
      `${small.dir}/run.json`,
      JSON.stringify({
        preset: "smoke",
        data: [small.cache],
        latentMetadata: {},
        heldOutFraction: 0.2,
      }),
    );
    const rr = await evalTask([ckpt, "--max-items", "3", "--t-per-item", "2", "--json"]);
    assertEquals(rr.code, 0, rr.stderr);
    const runRes = await validationLoss(trainer.ema, smallData, {
      split: heldOutSplit(smallData, { fraction: 0.2 }),
      maxItems: 3,
      tPerItem: 2,
    });
    const got2 = JSON.parse(rr.stdout);
    assertEquals([got2.valLoss, got2.fraction, got2.data], [runRes.loss, 0.2, [small.cache]]);
    // More than the run's share: a warning that trained photos are counted.
    const rw = await evalTask([ckpt, "--fraction", "0.5", "--max-items", "1", "--t-per-item", "1"]);
    assertEquals(rw.code, 0, rw.stderr);
    assert(rw.stderr.includes("were trained on"), rw.stderr);
    trainer.dispose();
    smallData.latents.dispose();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(small.dir, { recursive: true });
  },
});

Deno.test({
  name:
    "eval CLI: missing weights, missing data, wrong latent space, nothing to do -> clear errors",
  ignore: !GOLDEN,
  fn: async () => {
    const { dir, cache } = await fixture();
    // weights/ as shipped today: classes.txt only.
    const bare = await Deno.makeTempDir({ prefix: "anthos-eval-bare-" });
    await Deno.copyFile(`${ROOT}/weights/classes.txt`, `${bare}/classes.txt`);
    const cases: [string[], string][] = [
      [[bare, "--data", cache], "model.safetensors and config.json are missing"],
      [[`${dir}/nothing`], "no model at"],
      [[`${dir}/weights`, "--data", `${dir}/none.safetensors`], "no latent cache at"],
      [[`${dir}/weights`, "--no-loss"], "nothing to do: --no-loss needs --grid FILE"],
      [[`${dir}/weights`, "--data", cache, "--fraction", "1"], "--fraction must be in (0, 1)"],
      [[`${dir}/weights`, "--data", cache, "--t-per-item", "0"], "--t-per-item must be at least 1"],
      [[`${dir}/weights`, "--data", cache, "--raw"], "--raw applies to checkpoints"],
      [[`${dir}/weights`, "--data", `${cache},${cache}`], "listed twice"],
    ];
    for (const [args, text] of cases) {
      const r = await evalTask(args);
      assertEquals(r.code, 1, `${args.join(" ")}: ${r.stderr}`);
      assert(r.stderr.includes(text), `${args.join(" ")}: "${r.stderr}" lacks "${text}"`);
      if (args[0] === bare) assert(r.stderr.includes("deno task train"), "say how to get weights");
    }
    // A model of the SD-VAE latent space on a TAESD cache.
    const sd = await fixture(32, "sd-vae-ft-ema");
    const r = await evalTask([`${sd.dir}/weights`, "--data", cache]);
    assertEquals(r.code, 1);
    assert(r.stderr.includes("works in sd-vae-ft-ema latents"), r.stderr);
    for (const d of [dir, bare, sd.dir]) await Deno.remove(d, { recursive: true });
  },
});
