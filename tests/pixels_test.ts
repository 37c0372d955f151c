// The platform-free PNG encoder (shared by Deno and the browser demo): sharp (libvips, an
// independent decoder) reads back exactly the pixels that went in, for gray, RGB and RGBA.
import sharp from "sharp";
import { encodePng, ImageError } from "../lib/io/pixels.ts";
import { assertEquals, assertRejects } from "./_assert.ts";
import { Rng } from "../lib/runtime/rng.ts";

Deno.test("encodePng: lossless for gray, RGB and RGBA (decoded by sharp)", async () => {
  const rng = new Rng(7);
  for (const channels of [1, 3, 4]) {
    const [width, height] = [37, 11]; // odd sizes: rows are not aligned
    const data = new Uint8Array(width * height * channels).map(() => rng.int(256));
    const png = await encodePng({ data, width, height, channels });
    assertEquals([...png.subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47]);
    const meta = await sharp(png).metadata();
    assertEquals([meta.width, meta.height, meta.channels], [width, height, channels]);
    const img = channels === 1 ? sharp(png).toColourspace("b-w") : sharp(png);
    const out = await img.raw().toBuffer({ resolveWithObject: true });
    assertEquals(out.info.channels, channels);
    assertEquals(new Uint8Array(out.data), data, `${channels} channels`);
  }
});

Deno.test("encodePng: a buffer that does not match its size is an ImageError", async () => {
  await assertRejects(
    () => encodePng({ data: new Uint8Array(10), width: 2, height: 2, channels: 3 }),
    ImageError,
    "does not match 2x2x3",
  );
});
