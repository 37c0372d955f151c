// Image I/O: decoding real and synthetic images (grayscale, CMYK, alpha, EXIF rotation, tiny,
// truncated, not an image), center crop + resize against the reference crop, PNG output, grids.
import * as tf from "@tensorflow/tfjs-core";
import type { Buffer } from "node:buffer";
import sharp from "sharp";
import {
  assert,
  assertEquals,
  assertGreater,
  assertLess,
  assertRejects,
  assertThrows,
} from "./_assert.ts";
import { loadBackend } from "../lib/runtime/backend.ts";
import {
  flipHorizontal,
  ImageError,
  makeGrid,
  rawToTensor,
  readImage,
  readImageRaw,
  toPng,
  writePng,
} from "../lib/io/image.ts";
import { checkImageBatch, ShapeError } from "../lib/autoencoders/autoencoder.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import { sharedPath } from "./_shared.ts";

/** RGB bytes of a solid-colour image split into vertical bands, as JPEG/PNG via sharp. */
function bands(width: number, height: number, colours: number[][]): Uint8Array {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const c = colours[Math.floor((x * colours.length) / width)];
      data.set(c, (y * width + x) * 3);
    }
  }
  return data;
}
const RED = [230, 20, 20];
const GREEN = [20, 200, 40];
const BLUE = [20, 30, 220];
const asBytes = (b: Buffer) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
const raw3 = (w: number, h: number) => ({ raw: { width: w, height: h, channels: 3 as const } });

/** The pixel at (x, y) of RGB bytes. */
function px(data: Uint8Array, size: number, x: number, y: number): number[] {
  const i = (y * size + x) * 3;
  return [data[i], data[i + 1], data[i + 2]];
}
function near(a: number[], b: number[], tol: number): boolean {
  return a.every((v, i) => Math.abs(v - b[i]) <= tol);
}

Deno.test("readImage matches the reference center crop + bicubic resize of a real photo", async () => {
  const casePath = sharedPath("spec/golden_vae/taesd/case.safetensors");
  if (!casePath) return;
  await loadBackend("wasm");
  const { tensors, metadata } = await readSafetensors(casePath);
  const ref = tensors.get("image")!.data as Float32Array; // [1, 256, 256, 3], PIL bicubic
  const photo = sharedPath(`data/oxford102/jpg/${metadata.photo}`)!;
  const img = await readImage(photo, { size: 256 });
  assertEquals(img.shape, [256, 256, 3]);
  assertEquals(img.dtype, "float32");
  const got = await img.data();
  let se = 0;
  let max = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = got[i] - ref[i];
    se += d * d;
    max = Math.max(max, Math.abs(d));
  }
  const psnr = -10 * Math.log10(se / ref.length);
  // Same crop offsets and kernel family as PIL: only resampling round-off differs.
  assertGreater(psnr, 50, `PSNR to the reference crop ${psnr.toFixed(2)} dB`);
  assertLess(max, 6 / 255);
  img.dispose();
});

Deno.test("readImage: center crop of a landscape image keeps the middle", async () => {
  await loadBackend("wasm");
  const png = asBytes(
    await sharp(bands(96, 32, [RED, GREEN, BLUE]), raw3(96, 32)).png().toBuffer(),
  );
  const r = await readImageRaw(png, { size: 32 });
  assertEquals([r.width, r.height, r.channels, r.data.length], [32, 32, 3, 32 * 32 * 3]);
  for (const [x, y] of [[0, 0], [31, 0], [0, 31], [31, 31], [16, 16]]) {
    assert(near(px(r.data, 32, x, y), GREEN, 2), `(${x},${y}) ${px(r.data, 32, x, y)}`);
  }
  const t = await readImage(png, { size: 16 });
  assertEquals(t.shape, [16, 16, 3]);
  const v = await t.data();
  assert(v.every((x) => x >= 0 && x <= 1));
  t.dispose();
});

Deno.test("readImage: EXIF orientation is applied before the crop", async () => {
  // Stored 64x32, left half red, right half blue, EXIF orientation 6 (display rotated 90° CW):
  // shown as 32x64 with red on top, so the square center crop is red above blue.
  const jpg = asBytes(
    await sharp(bands(64, 32, [RED, BLUE]), raw3(64, 32)).withMetadata({ orientation: 6 })
      .jpeg({ quality: 95 }).toBuffer(),
  );
  assertEquals((await sharp(jpg).metadata()).orientation, 6);
  const r = await readImageRaw(jpg, { size: 32 });
  assert(near(px(r.data, 32, 2, 2), RED, 25), `top-left ${px(r.data, 32, 2, 2)}`);
  assert(near(px(r.data, 32, 29, 2), RED, 25), `top-right ${px(r.data, 32, 29, 2)}`);
  assert(near(px(r.data, 32, 2, 29), BLUE, 25), `bottom-left ${px(r.data, 32, 2, 29)}`);
});

Deno.test("readImage: grayscale JPEG becomes 3 equal channels", async () => {
  const g = new Uint8Array(40 * 40).map((_, i) => (i % 40) * 6);
  const jpg = asBytes(
    await sharp(g, { raw: { width: 40, height: 40, channels: 1 } }).toColourspace("b-w").jpeg()
      .toBuffer(),
  );
  assertEquals((await sharp(jpg).metadata()).channels, 1);
  const r = await readImageRaw(jpg, { size: 32 });
  assertEquals(r.channels, 3);
  for (let i = 0; i < r.data.length; i += 3) {
    assert(r.data[i] === r.data[i + 1] && r.data[i] === r.data[i + 2], `pixel ${i / 3} not gray`);
  }
  assertGreater(r.data[(16 * 32 + 31) * 3], r.data[(16 * 32) * 3] + 100); // the ramp survives
});

Deno.test("readImage: CMYK JPEG is converted to sRGB", async () => {
  const jpg = asBytes(
    await sharp(bands(48, 48, [RED]), raw3(48, 48)).toColourspace("cmyk").jpeg().toBuffer(),
  );
  const meta = await sharp(jpg).metadata();
  assertEquals([meta.space, meta.channels], ["cmyk", 4]);
  const r = await readImageRaw(jpg, { size: 32 });
  assertEquals(r.channels, 3);
  const [cr, cg, cb] = px(r.data, 32, 16, 16);
  // Round-tripping through a CMYK profile shifts colours a little; it must still be red.
  assert(cr > 170 && cg < 90 && cb < 90, `CMYK red came back as ${[cr, cg, cb]}`);
});

Deno.test("readImage: PNG alpha is flattened onto white", async () => {
  const rgba = new Uint8Array(32 * 32 * 4);
  for (let i = 0; i < 32 * 32; i++) {
    const left = i % 32 < 16;
    rgba.set(left ? [0, 0, 255, 255] : [255, 0, 0, 0], i * 4); // right half fully transparent
  }
  const png = asBytes(
    await sharp(rgba, { raw: { width: 32, height: 32, channels: 4 } }).png().toBuffer(),
  );
  const r = await readImageRaw(png, { size: 32 });
  assertEquals(r.channels, 3);
  assertEquals(px(r.data, 32, 4, 10), [0, 0, 255]);
  assertEquals(px(r.data, 32, 28, 10), [255, 255, 255]);
});

Deno.test("readImage: tiny images are an error unless upscaling is allowed", async () => {
  await loadBackend("wasm");
  const png = asBytes(await sharp(bands(8, 8, [GREEN]), raw3(8, 8)).png().toBuffer());
  const err = await assertRejects(() => readImage(png, { size: 256 }), ImageError, "8x8");
  assert(err.message.includes("upscale: true"), err.message);
  const up = await readImage(png, { size: 256, upscale: true });
  assertEquals(up.shape, [256, 256, 3]);
  up.dispose();
});

Deno.test("readImage: not an image, truncated file, missing file, bad size give clear errors", async () => {
  const text = new TextEncoder().encode("this is not an image\n");
  await assertRejects(() => readImageRaw(text), ImageError, "not a readable image");
  const path = await Deno.makeTempFile({ suffix: ".txt" });
  await Deno.writeFile(path, text);
  await assertRejects(() => readImageRaw(path), ImageError, path);
  await Deno.remove(path);

  const jpg = asBytes(
    await sharp(bands(300, 300, [RED, GREEN, BLUE]), raw3(300, 300)).jpeg().toBuffer(),
  );
  const cut = jpg.slice(0, Math.floor(jpg.length * 0.6));
  const e = await assertRejects(() => readImageRaw(cut, { size: 256 }), ImageError);
  assert(/truncated|damaged|not a readable/.test(e.message), e.message);

  await assertRejects(() => readImageRaw("/nonexistent/x.jpg"), ImageError, "not found");
  await assertRejects(() => readImageRaw(jpg, { size: 0 }), ImageError, "size");
});

Deno.test("toPng / writePng write lossless PNGs of [0,1] tensors; flipHorizontal mirrors", async () => {
  await loadBackend("wasm");
  const vals = new Float32Array(4 * 6 * 3).map((_, i) => (i % 7) / 6);
  vals[0] = -0.5; // clipped to 0
  vals[1] = 1.7; // clipped to 1
  const img = tf.tensor3d(vals, [4, 6, 3]);
  const png = await toPng(img);
  const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
  assertEquals([info.width, info.height, info.channels], [6, 4, 3]);
  const expected = Array.from(vals, (v) => Math.round(Math.min(1, Math.max(0, v)) * 255));
  assertEquals(Array.from(data), expected);

  const path = `${await Deno.makeTempDir()}/sub/out.png`;
  await writePng(path, img);
  const back = await readImageRaw(path, { size: 4 }); // center 4x4 of the 6x4 image
  assertEquals(px(back.data, 4, 0, 0), expected.slice(3, 6));

  const flipped = flipHorizontal(img);
  const f = await flipped.data();
  for (let c = 0; c < 3; c++) assertEquals(f[c], vals[5 * 3 + c]); // (0,0) <- (0,5)
  const batch = flipHorizontal(tf.stack([img, img]) as tf.Tensor4D);
  assertEquals(batch.shape, [2, 4, 6, 3]);
  assertEquals((await batch.data())[0], vals[15]);
  await assertRejects(() => toPng(tf.zeros([4, 4])), ImageError, "[H, W, 3]");
  tf.dispose([img, flipped, batch]);
});

Deno.test("makeGrid places tiles row-major and renders captions", async () => {
  await loadBackend("wasm");
  const colours = [RED, GREEN, BLUE];
  const tiles = colours.map((c) =>
    rawToTensor({ data: bands(20, 20, [c]), width: 20, height: 20, channels: 3 })
  );
  const n0 = tf.memory().numTensors;
  const png = await makeGrid(tiles, { cols: 2, pad: 4, captions: ["rose", "sunflower", "<&>"] });
  assertEquals(tf.memory().numTensors, n0);
  const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
  const capH = Math.ceil(14 * 1.5);
  assertEquals([info.width, info.height], [4 + 2 * 24, 4 + 2 * (20 + capH + 4)]);
  const at = (x: number, y: number) => {
    const i = (y * info.width + x) * info.channels;
    return [data[i], data[i + 1], data[i + 2]];
  };
  assert(near(at(14, 14), RED, 1), `tile 0 ${at(14, 14)}`);
  assert(near(at(38, 14), GREEN, 1), `tile 1 ${at(38, 14)}`);
  const row2 = 4 + 20 + capH + 4;
  assert(near(at(14, row2 + 10), BLUE, 1), `tile 2 ${at(14, row2 + 10)}`);
  assertEquals(at(38, row2 + 10), [255, 255, 255]); // empty cell
  assertEquals(at(1, 1), [255, 255, 255]); // padding
  // Caption strip under tile 0: some dark (text) pixels, i.e. a font rendered.
  let dark = 0;
  for (let y = 24; y < 24 + capH; y++) {
    for (let x = 4; x < 24; x++) if (at(x, y)[0] < 128) dark++;
  }
  assertGreater(dark, 5, "no caption pixels: are fonts installed (fonts-dejavu-core)?");

  const batch = tf.stack(tiles) as tf.Tensor4D;
  const plain = await makeGrid(batch);
  assertEquals((await sharp(plain).metadata()).width, 4 + 2 * 24);
  await assertRejects(() => makeGrid(tiles, { captions: ["one"] }), ImageError, "captions");
  await assertRejects(() => makeGrid([]), ImageError, "at least one");
  tf.dispose([...tiles, batch]);
});

Deno.test("checkImageBatch names the expected shape", async () => {
  await loadBackend("wasm");
  const ok = tf.zeros([2, 256, 256, 3]);
  checkImageBatch(ok, { size: 256 });
  const cases: [tf.Tensor, string][] = [
    [tf.zeros([256, 256, 3]), "expandDims"],
    [tf.zeros([1, 3, 256, 256]), "NCHW"],
    [tf.zeros([1, 128, 128, 3]), "[N, 256, 256, 3]"],
    [tf.zeros([1, 256, 256, 4]), "[N, 256, 256, 3]"],
    [tf.zeros([1, 256, 256, 3], "int32"), "float32"],
  ];
  for (const [t, msg] of cases) {
    assertThrows(() => checkImageBatch(t, { size: 256 }), ShapeError, msg);
  }
  tf.dispose([ok, ...cases.map((c) => c[0])]);
});

Deno.test("makeGrid tileSize scales every tile first (colours kept, grid sized by the new tiles)", async () => {
  const tiles = [RED, GREEN].map((c) => ({
    data: bands(40, 40, [c]),
    width: 40,
    height: 40,
    channels: 3,
  }));
  const png = await makeGrid(tiles, { cols: 2, pad: 4, tileSize: 10 });
  const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
  assertEquals([info.width, info.height], [4 + 2 * 14, 4 + 14]);
  const at = (x: number, y: number) => {
    const i = (y * info.width + x) * info.channels;
    return [data[i], data[i + 1], data[i + 2]];
  };
  assert(near(at(9, 9), RED, 2), `tile 0 ${at(9, 9)}`);
  assert(near(at(23, 9), GREEN, 2), `tile 1 ${at(23, 9)}`);
  await assertRejects(() => makeGrid(tiles, { tileSize: 0 }), ImageError, "tileSize");
});
