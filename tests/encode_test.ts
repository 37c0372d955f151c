// The dataset encoder: real photos through the real TAESD into a latent cache (photos + flips),
// checked against the golden TAESD latents, and an interrupted run that resumes to the same bytes.
import * as tf from "@tensorflow/tfjs-core";
import { assert, assertEquals, assertLess } from "./_assert.ts";
import { loadAutoencoder } from "../lib/autoencoders/load.ts";
import { loadBackend } from "../lib/runtime/backend.ts";
import { encodeDataset } from "../lib/data/encode.ts";
import { flipHorizontal, readImage } from "../lib/io/image.ts";
import { loadLatents } from "../lib/data/latents.ts";
import { loadOxford } from "../lib/data/oxford.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import { relErr, sharedPath } from "./_shared.ts";

const dataDir = sharedPath("data/oxford102");
const taesdDir = sharedPath("weights/taesd");
const goldenPath = sharedPath("spec/golden_vae/taesd/case.safetensors");

async function exists(p: string): Promise<boolean> {
  return await Deno.stat(p).then(() => true, () => false);
}

Deno.test({
  name: "encode: photos + flips -> latent cache; interrupted run resumes to identical bytes",
  ignore: !dataDir || !taesdDir || !goldenPath,
  fn: async (t) => {
    await loadBackend("wasm");
    const vae = await loadAutoencoder("taesd", { dir: taesdDir! });
    const ds = await loadOxford(dataDir!, { splits: ["train"] });
    const items = ds.items.slice(0, 5); // image_00028 (the golden photo) comes first
    assert(items[0].path.endsWith("image_00028.jpg"), items[0].path);
    const tmp = await Deno.makeTempDir({ prefix: "anthos-encode-" });
    const straight = `${tmp}/straight.safetensors`;
    const opts = { batch: 2, chunk: 2, metadata: { splits: "train", source: dataDir! } };

    await t.step("uninterrupted run", async () => {
      const res = await encodeDataset(items, vae, { out: straight, ...opts });
      assertEquals(res, {
        complete: true,
        count: 10,
        encoded: 5,
        reusedChunks: 0,
        latentShape: [32, 32, 4],
        skipped: [],
      });
      assert(!(await exists(`${straight}.parts`)), "parts folder removed");
      const data = await loadLatents(straight);
      assertEquals(data.latents.shape, [10, 32, 32, 4]);
      const labels = items.map((it) => it.label);
      assertEquals(Array.from(data.labels), [...labels, ...labels]);
      assertEquals(data.metadata.vae, "taesd");
      assertEquals(data.metadata.scaling_factor, "0.18215");
      assertEquals(data.metadata.count, "10");
      assertEquals(data.metadata.flipped, "second-half");
      assertEquals(data.metadata.splits, "train");
      const lat = await data.latents.data();
      const per = 32 * 32 * 4;

      // The first photo is TAESD(readImage(photo)), and close to the golden TAESD latents (whose
      // crop is PIL's: up to 4/255 off ours, which moves latents by ~0.6% on average).
      const img = await readImage(items[0].path);
      const ref = tf.tidy(() => {
        const x = tf.stack([img]) as tf.Tensor4D;
        return tf.concat([vae.encode(x), vae.encode(flipHorizontal(x))]);
      });
      const refData = await ref.data();
      assertLess(relErr(lat.subarray(0, per), refData.subarray(0, per)), 2e-3); // F16 rounding
      const golden = (await readSafetensors(goldenPath!)).tensors.get("latents")!.data;
      assertLess(relErr(lat.subarray(0, per), golden), 0.06);
      let mad = 0;
      for (let i = 0; i < per; i++) mad += Math.abs(lat[i] - golden[i]) / per;
      assertLess(mad, 0.01, `mean abs diff to golden ${mad}`);

      // Its flip is stored at L + 0: different from the original, equal to encoding the flip.
      const flipLat = lat.subarray(5 * per, 6 * per);
      assert(relErr(flipLat, lat.subarray(0, per)) > 0.1, "flipped latent differs");
      assertLess(relErr(flipLat, refData.subarray(per)), 2e-3);
      tf.dispose([img, ref, data.latents]);
    });

    await t.step("killed after the first chunk, then resumed", async () => {
      const out = `${tmp}/resumed.safetensors`;
      const stop = new AbortController();
      const first = await encodeDataset(items, vae, {
        out,
        ...opts,
        signal: stop.signal,
        onProgress: (done) => done >= 2 && stop.abort(), // "kill" once chunk 0 is encoded
      });
      assertEquals(first.complete, false);
      assert(!(await exists(out)), "no cache file before the run completes");
      const parts = [...Deno.readDirSync(`${out}.parts`)].map((e) => e.name).sort();
      assertEquals(parts, ["chunk_000000.safetensors", "manifest.json"]);

      const logs: string[] = [];
      const second = await encodeDataset(items, vae, { out, ...opts, onLog: (m) => logs.push(m) });
      assertEquals(second.complete, true);
      assertEquals(second.reusedChunks, 1);
      assertEquals(second.encoded, 3);
      assert(logs.some((m) => m.includes("resuming")), logs.join("\n"));
      assert(!(await exists(`${out}.parts`)), "parts folder removed");
      const a = await Deno.readFile(straight);
      const b = await Deno.readFile(out);
      assertEquals(b.length, a.length);
      assert(a.every((v, i) => v === b[i]), "resumed cache is byte-identical");
    });

    await t.step("parts made with other settings are discarded", async () => {
      const out = `${tmp}/stale.safetensors`;
      await Deno.mkdir(`${out}.parts`, { recursive: true });
      await Deno.writeTextFile(`${out}.parts/manifest.json`, "{}");
      await Deno.writeTextFile(`${out}.parts/chunk_000000.safetensors`, "junk");
      const logs: string[] = [];
      const res = await encodeDataset(items.slice(0, 1), vae, {
        out,
        flip: false,
        dtype: "F32",
        onLog: (m) => logs.push(m),
      });
      assertEquals([res.complete, res.count, res.reusedChunks], [true, 1, 0]);
      assert(logs.some((m) => m.includes("starting over")), logs.join("\n"));
    });

    await t.step("an unreadable photo is named and skipped; finished chunks stay", async () => {
      // A text file saved as a .jpg between real photos used to crash the run with an uncaught
      // ImageError while a chunk was being written, losing it and leaving a 0-byte .tmp.
      const bad = `${tmp}/image_00118.jpg`;
      await Deno.writeTextFile(bad, "this is not a photo\n");
      const withBad = [items[0], items[1], { path: bad, label: 7 }, ...items.slice(2)];
      const out = `${tmp}/skip.safetensors`;
      const logs: string[] = [];
      const res = await encodeDataset(withBad, vae, { out, ...opts, onLog: (m) => logs.push(m) });
      assertEquals([res.complete, res.count, res.encoded], [true, 10, 5]);
      assertEquals(res.skipped.map((x) => x.path), [bad]);
      assert(res.skipped[0].reason.includes("is not a readable image"), res.skipped[0].reason);
      assert(logs.some((m) => m.includes(`skipping photo ${bad}`)), logs.join("\n"));
      // The cache holds exactly the readable photos, labels in step: the straight run's latents.
      const a = await loadLatents(straight);
      const b = await loadLatents(out);
      assertEquals(Array.from(b.labels), Array.from(a.labels));
      assertEquals(b.metadata.skipped, "1");
      assertEquals(b.metadata.images, "5");
      assertLess(relErr(await b.latents.data(), await a.latents.data()), 2e-3);
      tf.dispose([a.latents, b.latents]);
      const left = [...Deno.readDirSync(tmp)].map((e) => e.name);
      assert(!left.some((f) => f.endsWith(".tmp") || f.endsWith(".parts")), left.join(", "));
    });

    await t.step("a damaged part is found first and encoded again", async () => {
      const out = `${tmp}/damaged.safetensors`;
      const stop = new AbortController();
      await encodeDataset(items, vae, {
        out,
        ...opts,
        signal: stop.signal,
        onProgress: (done) => done >= 4 && stop.abort(), // chunks 0 and 1 are finished
      });
      const parts = [...Deno.readDirSync(`${out}.parts`)].map((e) => e.name).sort();
      assertEquals(parts, [
        "chunk_000000.safetensors",
        "chunk_000001.safetensors",
        "manifest.json",
      ]);
      // Chunk 1 is cut short (a disk error, a bad copy): found before any encoding, then redone.
      const part = `${out}.parts/chunk_000001.safetensors`;
      await Deno.writeFile(part, (await Deno.readFile(part)).slice(0, 100));
      const events: string[] = [];
      const res = await encodeDataset(items, vae, {
        out,
        ...opts,
        onLog: (m) => events.push(m),
        onProgress: (done, _n, reused) => events.push(`progress ${done}${reused ? " reused" : ""}`),
      });
      assertEquals([res.complete, res.reusedChunks, res.encoded], [true, 1, 3]);
      const damaged = events.findIndex((m) => m.includes("chunk_000001.safetensors is damaged"));
      assert(damaged >= 0, events.join("\n"));
      assert(events[damaged].includes("encoding that chunk again"), events[damaged]);
      assert(!events[damaged].includes("download"), events[damaged]);
      assert(damaged < events.findIndex((m) => m.startsWith("progress")), events.join("\n"));
      const a = await Deno.readFile(straight);
      const b = await Deno.readFile(out);
      assert(a.length === b.length && a.every((v, i) => v === b[i]), "cache differs");
    });

    vae.dispose();
    await Deno.remove(tmp, { recursive: true });
  },
});
