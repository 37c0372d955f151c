// TAESD with the real weights: parity with the reference (vae_ref.py) on the golden photo,
// round-trip quality on real Oxford photos, the loader's errors, and no tensor leaks.
import * as tf from "@tensorflow/tfjs-core";
import {
  assert,
  assertEquals,
  assertGreater,
  assertLess,
  assertRejects,
  assertThrows,
} from "./_assert.ts";
import { loadAutoencoder } from "../lib/autoencoders/load.ts";
import { loadBackend } from "../lib/runtime/backend.ts";
import { readImage } from "../lib/io/image.ts";
import { readSafetensors, serializeSafetensors } from "../lib/io/safetensors.ts";
import { Taesd } from "../lib/autoencoders/taesd.ts";
import { relErr, sharedPath } from "./_shared.ts";

const weightsDir = sharedPath("weights/taesd");
const casePath = sharedPath("spec/golden_vae/taesd/case.safetensors");

const t4 = (r: { data: unknown; shape: number[] }) =>
  tf.tensor4d(r.data as Float32Array, r.shape as [number, number, number, number]);
/** A zero tensor of any shape, typed as the 4D input the API expects (for bad-shape tests). */
const bad = (shape: number[]) => tf.zeros<tf.Rank>(shape) as tf.Tensor4D;

Deno.test("TAESD matches the reference latents and decoder output (real weights)", async () => {
  if (!weightsDir || !casePath) return;
  await loadBackend("wasm");
  const { tensors } = await readSafetensors(casePath);
  const vae = await Taesd.load({ dir: weightsDir });
  const image = t4(tensors.get("image")!); // [1, 256, 256, 3]
  const refLat = t4(tensors.get("latents")!); // [1, 32, 32, 4]
  const n0 = tf.memory().numTensors;

  const lat = vae.encode(image);
  assertEquals(lat.shape, [1, 32, 32, 4]);
  const e1 = relErr(await lat.data(), tensors.get("latents")!.data);
  assertLess(e1, 1e-4, `latents rel err ${e1}`);

  const raw = vae.decodeRaw(refLat);
  const e2 = relErr(await raw.data(), tensors.get("decoded")!.data);
  assertLess(e2, 1e-4, `decoded rel err ${e2}`);

  // decode = clip(decoder, 0, 1)
  const dec = vae.decode(refLat);
  const d = await dec.data();
  const r = await raw.data();
  for (let i = 0; i < d.length; i += 97) assertEquals(d[i], Math.min(1, Math.max(0, r[i])));
  tf.dispose([lat, raw, dec]);
  assertEquals(tf.memory().numTensors, n0, "encode/decode leaked tensors");
  tf.dispose([image, refLat]);
  vae.dispose();
});

Deno.test("TAESD round trip of the first 24 Oxford photos: mean PSNR >= 24.5 dB", async () => {
  const dir = sharedPath("data/oxford102/jpg");
  if (!weightsDir || !dir) return;
  await loadBackend("wasm");
  const vae = await loadAutoencoder("taesd", { dir: weightsDir });
  const files = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".jpg"))
    .sort().slice(0, 24);
  assertEquals(files.length, 24);
  const psnr: number[] = [];
  for (let i = 0; i < files.length; i += 8) {
    const imgs = await Promise.all(files.slice(i, i + 8).map((f) => readImage(`${dir}/${f}`)));
    const x = tf.stack(imgs) as tf.Tensor4D; // [8, 256, 256, 3]
    const lat = vae.encode(x);
    const rec = vae.decode(lat);
    const mse = tf.tidy(() => tf.mean(tf.squaredDifference(rec, x), [1, 2, 3]));
    for (const m of await mse.data()) psnr.push(-10 * Math.log10(m));
    tf.dispose([...imgs, x, lat, rec, mse]);
  }
  const mean = psnr.reduce((a, b) => a + b) / psnr.length;
  // The reference (PIL bicubic crops, PyTorch) gets 25.6 dB on these photos.
  assertGreater(mean, 24.5, `mean PSNR ${mean.toFixed(2)} dB (${psnr.map((p) => p.toFixed(1))})`);
  assert(
    psnr.every((p) => p > 18),
    `a photo round-tripped badly: ${psnr.map((p) => p.toFixed(1))}`,
  );
  vae.dispose();
});

Deno.test("TAESD validates inputs with the expected shape in the message", async () => {
  await loadBackend("wasm");
  const vae = Taesd.random({ seed: 1 });
  assertThrows(() => vae.encode(bad([256, 256, 3])), Error, "expandDims");
  assertThrows(() => vae.encode(bad([1, 256, 256, 4])), Error, "[N, H, W, 3]");
  assertThrows(() => vae.encode(bad([1, 3, 256, 256])), Error, "NCHW");
  assertThrows(
    () => vae.encode(bad([1, 100, 100, 3])),
    Error,
    "multiples of 8",
  );
  assertThrows(() => vae.decode(bad([1, 32, 32, 3])), Error, "[N, 32, 32, 4]");
  assertThrows(() => vae.decode(bad([32, 32, 4])), Error, "expandDims");
  const lat = vae.encode(bad([2, 64, 64, 3]));
  assertEquals(lat.shape, [2, 8, 8, 4]);
  const rgb = vae.decode(lat);
  assertEquals(rgb.shape, [2, 64, 64, 3]);
  vae.dispose();
  assertThrows(() => vae.decode(lat), Error, "disposed");
  tf.dispose([lat, rgb]);
});

Deno.test("TAESD weight files: a missing, extra or mis-shaped key is named in the error", async () => {
  if (!weightsDir) return;
  await loadBackend("wasm");
  const enc = (await readSafetensors(`${weightsDir}/taesd_encoder.safetensors`)).tensors;
  const decoder = await Deno.readFile(`${weightsDir}/taesd_decoder.safetensors`);
  const variant = (
    edit: (m: Map<string, { dtype: "F32"; shape: number[]; data: Float32Array }>) => void,
  ) => {
    const m = new Map(
      [...enc].map((
        [k, t],
      ) => [k, { dtype: "F32" as const, shape: t.shape, data: t.data as Float32Array }]),
    );
    edit(m);
    return serializeSafetensors(Object.fromEntries(m));
  };
  const missing = variant((m) => m.delete("3.conv.2.bias"));
  await assertRejects(() => Taesd.load({ encoder: missing, decoder }), Error, `"3.conv.2.bias"`);
  const extra = variant((m) =>
    m.set("99.weight", { dtype: "F32", shape: [1], data: new Float32Array(1) })
  );
  await assertRejects(() => Taesd.load({ encoder: extra, decoder }), Error, `"99.weight"`);
  const shaped = variant((m) =>
    m.set("14.bias", { dtype: "F32", shape: [5], data: new Float32Array(5) })
  );
  await assertRejects(
    () => Taesd.load({ encoder: shaped, decoder }),
    Error,
    `"14.bias" has shape [5]`,
  );
  // Swapped files: every decoder key is unexpected in the encoder's place.
  await assertRejects(() => Taesd.load({ encoder: decoder, decoder }), Error, "unexpected key");
  // A NaN weight would decode every image to garbage: refused, naming the tensor.
  const nan = variant((m) => {
    const t = m.get("14.bias")!;
    m.set("14.bias", { ...t, data: t.data.slice().fill(NaN, 2, 3) });
  });
  await assertRejects(
    () => Taesd.load({ encoder: nan, decoder }),
    Error,
    `tensor "14.bias" has 1 NaN/Inf (first: NaN at index 2)`,
  );
});

Deno.test("loadAutoencoder('taesd') without dir: the cache, then the shared folder, else says where", async () => {
  const home = await Deno.makeTempDir();
  const emptyShared = await Deno.makeTempDir();
  const old = { home: Deno.env.get("ANTHOS_HOME"), shared: Deno.env.get("ANTHOS_SHARED") };
  Deno.env.set("ANTHOS_HOME", home);
  Deno.env.set("ANTHOS_SHARED", emptyShared);
  try {
    // Neither folder has the files: the error names both and where to put them.
    const err = await assertRejects(() => loadAutoencoder("taesd"), Error, `${home}/taesd`);
    assert(err.message.includes(`${emptyShared}/weights/taesd`), err.message);
    assert(err.message.includes("taesd_encoder.safetensors"), err.message);
    assert(err.message.includes("../shared/weights/taesd"), err.message);
    if (weightsDir) {
      await loadBackend("wasm");
      // ANTHOS_SHARED unset: ../shared beside this checkout, when the reference folder is there
      // (CI's layout) rather than only at $ANTHOS_SHARED.
      const besideDir = new URL("../../shared/weights/taesd", import.meta.url).pathname;
      if (await Deno.stat(besideDir).then(() => true, () => false)) {
        Deno.env.delete("ANTHOS_SHARED");
        const beside = await loadAutoencoder("taesd");
        assertEquals(beside.kind, "taesd");
        beside.dispose();
      } else {console.warn(
          `SKIP the ../shared default: no ${besideDir} (shared is at $ANTHOS_SHARED)`,
        );}
      // The cache comes first.
      Deno.env.set("ANTHOS_SHARED", emptyShared);
      await Deno.mkdir(`${home}/taesd`);
      for (const f of ["taesd_encoder.safetensors", "taesd_decoder.safetensors"]) {
        await Deno.copyFile(`${weightsDir}/${f}`, `${home}/taesd/${f}`);
      }
      const vae = await loadAutoencoder("taesd");
      assertEquals(vae.kind, "taesd");
      vae.dispose();
    }
    await assertRejects(
      () => loadAutoencoder("nope" as "taesd"),
      Error,
      `unknown autoencoder "nope"`,
    );
  } finally {
    for (const [k, v] of [["ANTHOS_HOME", old.home], ["ANTHOS_SHARED", old.shared]] as const) {
      if (v === undefined) Deno.env.delete(k);
      else Deno.env.set(k, v);
    }
    await Deno.remove(home, { recursive: true });
    await Deno.remove(emptyShared, { recursive: true });
  }
});
