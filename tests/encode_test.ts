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

    vae.dispose();
    await Deno.remove(tmp, { recursive: true });
  },
});
