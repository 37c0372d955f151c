// AnthosPipeline: loading errors, class selection, option checks, determinism (same seed -> same
// pixels whatever the batch size), metadata, PNG output and no tensor leaks. Uses the golden
// random DiT weights and the real TAESD decoder from ../shared in a temporary repo folder.
import * as tf from "@tensorflow/tfjs-core";
import sharp from "sharp";
import { loadBackend } from "../lib/runtime/backend.ts";
import { AnthosPipeline, GeneratedImage, imageSeed } from "../lib/pipeline/pipeline.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./_assert.ts";
import { sharedPath } from "./_shared.ts";
import { taskHint } from "../lib/cli/args.ts";

const GOLDEN = sharedPath("spec/golden/weights.safetensors");
const TAESD = sharedPath("weights/taesd");
const CLASSES = new URL("../weights/classes.txt", import.meta.url);

/** A temporary repo folder with weights/{config.json, model.safetensors, classes.txt}. */
async function tempRepo(config: unknown = { format: "anthos", vae: { name: "taesd" } }) {
  const dir = await Deno.makeTempDir({ prefix: "anthos-pipe-" });
  await Deno.mkdir(`${dir}/weights`);
  await Deno.copyFile(GOLDEN!, `${dir}/weights/model.safetensors`);
  await Deno.copyFile(CLASSES, `${dir}/weights/classes.txt`);
  await Deno.writeTextFile(`${dir}/weights/config.json`, JSON.stringify(config));
  return dir;
}

let shared: { pipe: AnthosPipeline; dir: string } | null = null;
async function pipeline(): Promise<AnthosPipeline> {
  if (!shared) {
    const dir = await tempRepo();
    const pipe = await AnthosPipeline.load({ repoDir: dir, backend: "wasm", vaeDir: TAESD! });
    shared = { pipe, dir };
  }
  return shared.pipe;
}

const ok = GOLDEN !== null && TAESD !== null;

Deno.test({
  name: "pipeline: missing files are named, with how to get them",
  ignore: !ok,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "anthos-pipe-" });
    const err = await assertRejects(() => AnthosPipeline.load({ repoDir: dir }));
    for (const f of ["config.json", "model.safetensors", "classes.txt"]) {
      assert(err.message.includes(`${dir}/weights/${f}`), err.message);
    }
    // The library names library calls; the tasks add their command (taskHint, via runMain).
    assert(err.message.includes("exportCheckpoint()"), err.message);
    assert(!err.message.includes("deno task"), err.message);
    assert(taskHint(err)?.includes("`deno task train`, then `deno task convert`"), err.message);
    // Only the model file missing: only it is named.
    const repo = await tempRepo();
    await Deno.remove(`${repo}/weights/model.safetensors`);
    const one = await assertRejects(() => AnthosPipeline.load({ repoDir: repo }));
    assert(one.message.includes(`${repo}/weights/model.safetensors is missing`), one.message);
    assert(!one.message.includes(`${repo}/weights/classes.txt`), one.message);
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(repo, { recursive: true });
  },
});

Deno.test({
  name: "pipeline: classes.txt and config.json must agree on the class count",
  ignore: !ok,
  fn: async () => {
    const repo = await tempRepo();
    await Deno.writeTextFile(`${repo}/weights/classes.txt`, "0\trose\n1\ttulip\n");
    const err = await assertRejects(() => AnthosPipeline.load({ repoDir: repo, vaeDir: TAESD! }));
    assert(/lists 2 classes .* 102/.test(err.message), err.message);
    await Deno.remove(repo, { recursive: true });
  },
});

Deno.test({
  name: "pipeline: class selection by names, ids, all, any case and spacing",
  ignore: !ok,
  fn: async () => {
    const pipe = await pipeline();
    // Ids from weights/classes.txt (Oxford label - 1): rose 73, sunflower 53, daffodil 41.
    assertEquals(pipe.classIds("rose,sunflower,daffodil"), [73, 53, 41]);
    assertEquals(pipe.classIds("  ROSE ,  Sunflower,daffodil  "), [73, 53, 41]);
    assertEquals(pipe.classIds("Sweet-Pea, sweet pea"), [3, 3]);
    assertEquals(pipe.classIds(73), [73]);
    assertEquals(pipe.classIds(["rose", 0, "101"]), [73, 0, 101]);
    const all = pipe.classIds("all");
    assertEquals(all.length, 102);
    assertEquals(all[0], 0);
    assertEquals(all[101], 101);
    const typo = assertThrows(() => pipe.classIds("sunflowr"));
    assert(typo.message.includes('"sunflower" (53)'), typo.message);
    assertThrows(() => pipe.classIds(102), undefined, "out of range");
    assertThrows(() => pipe.classIds(" , "), undefined, "no classes selected");
  },
});

Deno.test({
  name: "pipeline: bad options are rejected with the fix",
  ignore: !ok,
  fn: async () => {
    const pipe = await pipeline();
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ nPerClass: 0 }, /nPerClass must be a positive integer, got 0/],
      [{ steps: -1 }, /steps must be a positive integer, got -1/],
      [{ steps: 2.5 }, /steps must be a positive integer/],
      [{ sampler: "rk4" }, /unknown sampler "rk4": use "heun" or "euler"/],
      [{ cfgScale: NaN }, /cfgScale must be a number/],
      // 1e40 used to overflow into NaN latents and a flat image (issue 11, item 1).
      [{ cfgScale: 1e40 }, /cfgScale must be a number from 0 to 50, got 1e\+40/],
      [{ cfgScale: -0.5 }, /cfgScale must be a number from 0 to 50/],
      [{ batchSize: 0 }, /batchSize must be a positive integer/],
      [{ seed: 1.5 }, /seed must be an integer/],
      // Seeds outside 32 bits would alias 0 and 2^32 - 1 (issue 11, item 3).
      [{ seed: 2 ** 32 }, /seed must be an integer from 0 to 4294967295/],
      [{ seed: -1 }, /seed must be an integer from 0 to 4294967295/],
    ];
    const before = tf.memory().numTensors;
    for (const [opts, re] of cases) {
      const err = await assertRejects(() => pipe.generate("rose", opts));
      assert(re.test(err.message), `${JSON.stringify(opts)}: ${err.message}`);
    }
    const bad = await assertRejects(() => pipe.generate("rosse", { steps: 1 }));
    assert(bad.message.includes('"rose" (73)'), bad.message);
    assertEquals(tf.memory().numTensors, before);
  },
});

Deno.test({
  name: "pipeline: deterministic, independent of batch size, leak-free; PNG and save work",
  ignore: !ok,
  fn: async () => {
    const pipe = await pipeline();
    const opts = { seed: 7, steps: 2, sampler: "euler" as const };
    const before = tf.memory().numTensors;
    let calls = 0;
    let last = { done: 0, total: 0 };
    const a = await pipe.generate("rose,pink primrose", {
      ...opts,
      batchSize: 2,
      onProgress: (p) => {
        calls++;
        last = p;
      },
    });
    assertEquals(tf.memory().numTensors, before, "tensors leaked by generate()");
    // One batch: 2 sampling steps + 1 decode.
    assertEquals(calls, 3);
    assertEquals([last.done, last.total], [3, 3]);
    assertEquals(a.map((im) => [im.classId, im.className, im.index]), [
      [73, "rose", 0],
      [0, "pink primrose", 1],
    ]);
    for (const im of a) {
      assert(im instanceof GeneratedImage);
      assertEquals([im.width, im.height, im.pixels.length], [256, 256, 256 * 256 * 3]);
    }
    // Batch size 1 and a prefix request give the very same pixels.
    const b = await pipe.generate(["rose", "Pink Primrose"], { ...opts, batchSize: 1 });
    const prefix = await pipe.generate("rose", opts);
    assertEquals(b[0].pixels, a[0].pixels);
    assertEquals(b[1].pixels, a[1].pixels);
    assertEquals(prefix[0].pixels, a[0].pixels);
    // Each image has its own noise: the two images differ, and another seed differs.
    assert(!sameBytes(a[0].pixels, a[1].pixels), "images 0 and 1 are identical");
    const other = await pipe.generate("rose", { ...opts, seed: 8 });
    assert(!sameBytes(other[0].pixels, a[0].pixels), "seed 8 gave the pixels of seed 7");
    assertEquals(tf.memory().numTensors, before, "tensors leaked by generate()");

    // PNG bytes decode back to the same pixels; save() writes them.
    const png = await a[0].png();
    const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
    assertEquals([info.width, info.height, info.channels], [256, 256, 3]);
    assert(sameBytes(new Uint8Array(data), a[0].pixels), "PNG does not round-trip");
    const path = `${shared!.dir}/rose.png`;
    await a[0].save(path);
    assertEquals(await Deno.readFile(path), png);
  },
});

Deno.test({
  name: "pipeline: nPerClass repeats classes in order; grid is captioned and sized",
  ignore: !ok,
  fn: async () => {
    const pipe = await pipeline();
    const images = await pipe.generate("daffodil,53", { nPerClass: 2, seed: 1, steps: 1 });
    assertEquals(images.map((im) => im.classId), [41, 41, 53, 53]);
    assertEquals(images.map((im) => im.index), [0, 1, 2, 3]);
    const grid = await pipe.grid(images, { cols: 2 });
    const meta = await sharp(grid).metadata();
    // makeGrid layout: 4 px padding, 256 px tiles, 21 px caption rows (14 px font * 1.5).
    assertEquals([meta.width, meta.height], [4 + 2 * 260, 4 + 2 * (256 + 21 + 4)]);
    const plain = await sharp(await pipe.grid(images, { cols: 4, captions: false })).metadata();
    assertEquals([plain.width, plain.height], [4 + 4 * 260, 4 + 260]);
  },
});

Deno.test("imageSeed: distinct streams per image and seed", () => {
  const seen = new Set<number>();
  for (let seed = 0; seed < 20; seed++) {
    for (let i = 0; i < 50; i++) seen.add(imageSeed(seed, i));
  }
  assertEquals(seen.size, 1000);
  assertEquals(imageSeed(42, 3), imageSeed(42, 3));
});

Deno.test({
  name: "pipeline: dispose frees the weights",
  ignore: !ok,
  fn: async () => {
    await loadBackend("wasm");
    const pipe = await pipeline();
    const before = tf.memory().numTensors;
    pipe.dispose();
    assert(tf.memory().numTensors < before, "dispose() freed nothing");
    await Deno.remove(shared!.dir, { recursive: true });
    shared = null;
  },
});

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

Deno.test({
  name: "pipeline: onImage gets each image as it is made; keepImages: false returns none",
  ignore: !ok,
  fn: async () => {
    const pipe = await pipeline();
    const opts = { seed: 3, steps: 1, sampler: "euler" as const, batchSize: 2 };
    const all = await pipe.generate("rose,sunflower,daffodil", opts);
    const seen: GeneratedImage[] = [];
    let lastProgressImages = -1;
    const none = await pipe.generate("rose,sunflower,daffodil", {
      ...opts,
      keepImages: false,
      onImage: async (im) => {
        await Promise.resolve();
        seen.push(im);
      },
      onProgress: (p) => (lastProgressImages = p.images),
    });
    assertEquals(none, []);
    assertEquals(lastProgressImages, 3);
    assertEquals(seen.map((im) => [im.index, im.className]), [
      [0, "rose"],
      [1, "sunflower"],
      [2, "daffodil"],
    ]);
    for (let i = 0; i < 3; i++) assert(sameBytes(seen[i].pixels, all[i].pixels), `#${i}`);
    // The grid's size is known before any image exists.
    const g = pipe.gridSize(6, { cols: 2 });
    assertEquals([g.cols, g.rows, g.width, g.height], [2, 3, 4 + 2 * 260, 4 + 3 * 281]);
    const big = pipe.gridSize(4000, { cols: 4000 });
    assertEquals([big.width, big.height], [4 + 4000 * 260, 285]);
  },
});
