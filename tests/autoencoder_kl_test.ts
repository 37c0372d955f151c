// AutoencoderKL (the SD VAE architecture) against the golden vectors of
// ../shared/spec/golden_vae/kl (a small config made by make_golden_vae.py with vae_ref.py):
// posterior mean/logvar and decoder output, both attention key spellings, the API maths
// (scaling, clipping, posterior sampling), weight/config validation, and the hub download path
// against a local server.
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
import {
  AutoencoderKL,
  klWeightShapes,
  parseKLConfig,
  SD_VAE_FT_EMA_CONFIG,
} from "../lib/autoencoders/kl.ts";
import { loadBackend } from "../lib/runtime/backend.ts";
import { type RawTensor, readSafetensors } from "../lib/io/safetensors.ts";
import { relErr, sharedPath, useBackend } from "./_shared.ts";

const dir = sharedPath("spec/golden_vae/kl");
const t4 = (r: RawTensor) =>
  tf.tensor4d(r.data as Float32Array, r.shape as [number, number, number, number]);
/** A zero tensor of any shape, typed as the 4D input the API expects (for bad-shape tests). */
const bad = (shape: number[]) => tf.zeros<tf.Rank>(shape) as tf.Tensor4D;

async function golden(): Promise<Map<string, RawTensor>> {
  return (await readSafetensors(`${dir}/case.safetensors`)).tensors;
}

for (const backend of ["wasm", "cpu", "webgpu"] as const) {
  Deno.test(`AutoencoderKL matches the golden posterior and decoder output (${backend})`, async () => {
    if (!dir || !(await useBackend(backend))) return;
    const g = await golden();
    // Both attention key spellings on wasm; the slower backends check the maths once.
    const files = ["diffusion_pytorch_model.safetensors"];
    if (backend === "wasm") files.push("diffusion_pytorch_model.legacy.safetensors");
    for (const file of files) {
      const vae = await AutoencoderKL.load(dir, { weights: `${dir}/${file}` });
      const image = t4(g.get("image")!); // [2, 64, 64, 3] in [0, 1]
      const z = t4(g.get("z")!); // [2, 8, 8, 4], unscaled
      const n0 = tf.memory().numTensors;

      const { mean, logvar } = vae.posterior(image);
      assertEquals(mean.shape, [2, 8, 8, 4]);
      for (const [name, t] of [["mean", mean], ["logvar", logvar]] as const) {
        const e = relErr(await t.data(), g.get(name)!.data);
        assertLess(e, 1e-4, `${file} ${name} rel err ${e}`);
      }
      const raw = vae.decodeRaw(z);
      const e = relErr(await raw.data(), g.get("decoded")!.data);
      assertLess(e, 1e-4, `${file} decoded rel err ${e}`);

      // encode = mean * scaling_factor; decode(l) = clip((raw(l / sf) + 1) / 2, 0, 1).
      const sf = vae.config.scaling_factor;
      const lat = vae.encode(image);
      const m = await mean.data();
      const l = await lat.data();
      for (let i = 0; i < l.length; i++) assertLess(Math.abs(l[i] - m[i] * sf), 1e-6);
      const scaled = tf.mul(z, sf) as tf.Tensor4D;
      const img = vae.decode(scaled);
      assertEquals(img.shape, [2, 64, 64, 3]);
      const r = await raw.data();
      const d = await img.data();
      for (let i = 0; i < d.length; i++) {
        assertLess(Math.abs(d[i] - Math.min(1, Math.max(0, (r[i] + 1) / 2))), 1e-5);
      }
      tf.dispose([mean, logvar, raw, lat, scaled, img]);
      assertEquals(tf.memory().numTensors, n0, "encode/decode leaked tensors");
      tf.dispose([image, z]);
      vae.dispose();
    }
  });
}

Deno.test("encode({ sample: true, seed }) draws mean + std * eps, reproducibly", async () => {
  if (!dir) return;
  await loadBackend("wasm");
  const vae = await AutoencoderKL.load(dir);
  const image = t4((await golden()).get("image")!);
  const sf = vae.config.scaling_factor;
  const a = vae.encode(image, { sample: true, seed: 7 });
  const b = vae.encode(image, { sample: true, seed: 7 });
  const c = vae.encode(image, { sample: true, seed: 8 });
  assertEquals(Array.from(await a.data()), Array.from(await b.data()));
  assert(relErr(await a.data(), await c.data()) > 1e-3, "different seeds gave the same draw");
  // The standardised draw (z / sf - mean) / std must look like N(0, 1).
  const { mean, logvar } = vae.posterior(image);
  const eps = tf.tidy(() => tf.div(tf.sub(tf.div(a, sf), mean), tf.exp(tf.mul(logvar, 0.5))));
  const v = Array.from(await eps.data() as Float32Array);
  const mu = v.reduce((s, x) => s + x, 0) / v.length;
  const sd = Math.sqrt(v.reduce((s, x) => s + (x - mu) ** 2, 0) / v.length);
  assertLess(Math.abs(mu), 0.15, `eps mean ${mu}`);
  assertLess(Math.abs(sd - 1), 0.1, `eps std ${sd}`);
  assertThrows(() => vae.encode(image, { sample: true }), Error, "needs a seed");
  tf.dispose([a, b, c, mean, logvar, eps, image]);
  vae.dispose();
});

Deno.test("the published sd-vae-ft-ema architecture has 248 tensors, 83,653,863 parameters", () => {
  const shapes = klWeightShapes(SD_VAE_FT_EMA_CONFIG);
  assertEquals(shapes.size, 248);
  const n = [...shapes.values()].reduce((s, sh) => s + sh.reduce((a, b) => a * b, 1), 0);
  assertEquals(n, 83_653_863);
  assertEquals(shapes.get("decoder.up_blocks.3.resnets.0.conv_shortcut.weight"), [128, 256, 1, 1]);
  assertEquals(shapes.get("encoder.mid_block.attentions.0.to_q.weight"), [512, 512]);
});

Deno.test("AutoencoderKL weights: 4D attention projections load; bad keys are named", async () => {
  if (!dir) return;
  await loadBackend("wasm");
  const cfg = parseKLConfig(JSON.parse(await Deno.readTextFile(`${dir}/config.json`)));
  const { tensors } = await readSafetensors(`${dir}/diffusion_pytorch_model.safetensors`);
  const g = await golden();
  const image = t4(g.get("image")!);

  // Older checkpoints store q/k/v/out as 1x1 convs [c, c, 1, 1].
  const as4d = new Map(tensors);
  for (const [k, t] of tensors) {
    if (/attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$/.test(k)) {
      as4d.set(k, { ...t, shape: [...t.shape, 1, 1] });
    }
  }
  const vae = AutoencoderKL.fromTensors(cfg, as4d);
  const { mean, logvar } = vae.posterior(image);
  assertLess(relErr(await mean.data(), g.get("mean")!.data), 1e-4);
  tf.dispose([mean, logvar, image]);
  vae.dispose();

  const edit = (fn: (m: Map<string, RawTensor>) => void) => {
    const m = new Map(tensors);
    fn(m);
    return () => AutoencoderKL.fromTensors(cfg, m, { source: "test.safetensors" });
  };
  const n0 = tf.memory().numTensors;
  assertThrows(
    edit((m) => m.delete("decoder.conv_out.bias")),
    Error,
    `missing key "decoder.conv_out.bias"`,
  );
  assertThrows(
    edit((m) => m.set("encoder.extra.weight", tensors.get("quant_conv.bias")!)),
    Error,
    `unexpected key "encoder.extra.weight"`,
  );
  const e = assertThrows(
    edit((m) => m.set("quant_conv.weight", tensors.get("post_quant_conv.weight")!)),
    Error,
    `"quant_conv.weight" has shape [4,4,1,1], expected [8,8,1,1]`,
  );
  assert(e.message.includes("test.safetensors") && e.message.includes("config.json"), e.message);
  assertThrows(
    edit((m) =>
      m.set(
        "encoder.mid_block.attentions.0.query.weight",
        tensors.get("encoder.mid_block.attentions.0.to_q.weight")!,
      )
    ),
    Error,
    "given twice",
  );
  assertEquals(tf.memory().numTensors, n0, "a failed load leaked tensors");
  // Weights of another config.
  const other = { ...cfg, block_out_channels: [32, 64, 64, 64] };
  assertThrows(() => AutoencoderKL.fromTensors(other, tensors), Error, "do not match config.json");
});

Deno.test("AutoencoderKL config and input validation", async () => {
  assertThrows(() => parseKLConfig([]), Error, "not a JSON object");
  assertThrows(() => parseKLConfig({ block_out_channels: "x" }), Error, "block_out_channels");
  assertThrows(
    () => parseKLConfig({ block_out_channels: [48], norm_num_groups: 32 }),
    Error,
    "divisible",
  );
  assertThrows(
    () => parseKLConfig({ _class_name: "UNet2DConditionModel", block_out_channels: [32] }),
    Error,
    "AutoencoderKL",
  );
  assertThrows(
    () => parseKLConfig({ block_out_channels: [32], use_quant_conv: false }),
    Error,
    "quant_conv",
  );
  assertThrows(
    () => parseKLConfig({ block_out_channels: [32], layers_per_block: 0 }),
    Error,
    "layers_per_block",
  );
  const cfg = parseKLConfig({ block_out_channels: [128, 256, 512, 512], layers_per_block: 2 });
  assertEquals(cfg, { ...SD_VAE_FT_EMA_CONFIG });

  if (!dir) return;
  await loadBackend("wasm");
  const vae = await AutoencoderKL.load(dir);
  assertThrows(() => vae.encode(bad([64, 64, 3])), Error, "expandDims");
  assertThrows(() => vae.encode(bad([1, 64, 64, 1])), Error, "[N, H, W, 3]");
  assertThrows(() => vae.encode(bad([1, 3, 64, 64])), Error, "NCHW");
  assertThrows(() => vae.encode(bad([1, 60, 60, 3])), Error, "multiples of 8");
  assertThrows(() => vae.decode(bad([1, 8, 8, 3])), Error, "[N, 32, 32, 4]");
  vae.dispose();
  assertThrows(() => vae.decode(bad([1, 8, 8, 4])), Error, "disposed");
  await assertRejects(() => AutoencoderKL.load("/nonexistent"), Error, "config.json");
});

Deno.test("loadAutoencoder('sd-vae-ft-ema') downloads once into ANTHOS_HOME, then uses the cache", async () => {
  if (!dir) return;
  await loadBackend("wasm");
  const files: Record<string, Uint8Array> = {
    "config.json": await Deno.readFile(`${dir}/config.json`),
    "diffusion_pytorch_model.safetensors": await Deno.readFile(
      `${dir}/diffusion_pytorch_model.safetensors`,
    ),
  };
  const requests: string[] = [];
  const prefix = "/stabilityai/sd-vae-ft-ema/resolve/main/";
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, (req) => {
    const path = new URL(req.url).pathname;
    requests.push(path);
    const body = path.startsWith(prefix) ? files[path.slice(prefix.length)] : undefined;
    return body
      ? new Response(body as Uint8Array<ArrayBuffer>)
      : new Response("not found", { status: 404 });
  });
  const endpoint = `http://127.0.0.1:${server.addr.port}`;
  const home = await Deno.makeTempDir();
  const old = { home: Deno.env.get("ANTHOS_HOME"), hf: Deno.env.get("ANTHOS_HF_ENDPOINT") };
  Deno.env.set("ANTHOS_HOME", home);
  try {
    const progress: string[] = [];
    const vae = await loadAutoencoder("sd-vae-ft-ema", {
      endpoint,
      onProgress: (f) => progress.push(f),
    });
    assertEquals(vae.kind, "sd-vae-ft-ema");
    assertEquals(requests.sort(), Object.keys(files).map((f) => prefix + f).sort());
    assert(progress.includes("diffusion_pytorch_model.safetensors"));
    const cached = `${home}/hub/stabilityai/sd-vae-ft-ema`;
    assertEquals(
      await Deno.readFile(`${cached}/diffusion_pytorch_model.safetensors`),
      files["diffusion_pytorch_model.safetensors"],
    );
    const image = t4((await golden()).get("image")!);
    const { mean, logvar } = (vae as AutoencoderKL).posterior(image);
    assertLess(relErr(await mean.data(), (await golden()).get("mean")!.data), 1e-4);
    tf.dispose([image, mean, logvar]);
    vae.dispose();

    // Second load: from the cache, no requests (the endpoint now comes from the env var).
    Deno.env.set("ANTHOS_HF_ENDPOINT", endpoint);
    const again = await loadAutoencoder("sd-vae-ft-ema");
    assertEquals(requests.length, 2);
    again.dispose();
  } finally {
    await server.shutdown();
  }
  try {
    // Server down, empty cache: a clear error that says where to put the files by hand.
    Deno.env.set("ANTHOS_HOME", `${home}/fresh`);
    const err = await assertRejects(() => loadAutoencoder("sd-vae-ft-ema"), Error);
    for (const part of [endpoint, "by hand", `${home}/fresh/hub/stabilityai/sd-vae-ft-ema`]) {
      assert(err.message.includes(part), `"${err.message}" lacks "${part}"`);
    }
    // A local folder needs no network at all.
    const local = await loadAutoencoder("sd-vae-ft-ema", { dir });
    local.dispose();
  } finally {
    for (const [k, v] of [["ANTHOS_HOME", old.home], ["ANTHOS_HF_ENDPOINT", old.hf]] as const) {
      if (v === undefined) Deno.env.delete(k);
      else Deno.env.set(k, v);
    }
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test("the published sd-vae-ft-ema architecture runs end to end (random weights, 64x64)", async () => {
  // Shapes and value ranges only, at 64x64 (the layout is the same as at 256x256, which costs
  // 16x more: about 10 s + 20 s on 2 cores; benchAutoencoders times that).
  await loadBackend("wasm");
  const vae = AutoencoderKL.random(SD_VAE_FT_EMA_CONFIG, { seed: 0 });
  const n0 = tf.memory().numTensors;
  const x = tf.tidy(() => {
    const r = tf.linspace(0, 1, 64);
    return tf.tile(tf.reshape(tf.mul(tf.reshape(r, [64, 1]), r), [1, 64, 64, 1]), [1, 1, 1, 3]);
  }) as tf.Tensor4D; // a smooth ramp
  const lat = vae.encode(x);
  assertEquals(lat.shape, [1, 8, 8, 4]);
  const l = await lat.data();
  assert(l.every(Number.isFinite), "latents must be finite");
  assertGreater(Math.max(...l) - Math.min(...l), 0);
  const img = vae.decode(lat);
  assertEquals(img.shape, [1, 64, 64, 3]);
  const v = await img.data();
  assert(v.every((p) => p >= 0 && p <= 1), "decode must clip to [0, 1]");
  tf.dispose([x, lat, img]);
  assertEquals(tf.memory().numTensors, n0);
  vae.dispose();
});
