/// <reference lib="dom" />
// The demo page in a real browser: `deno task serve`'s server and bundle, Debian's chromium
// driven headless by puppeteer-core. Loads the page, checks the form's errors, picks two classes,
// generates with the golden weights at a few steps on wasm (and WebGPU when headless chromium
// offers an adapter: SwiftShader here), and checks that the grid's pixels are the ones
// AnthosPipeline makes in Deno for the same seed and settings, and that the downloaded PNG holds
// them. Also: caching headers, 304s, and the 404 / page message when the weights are missing.
//
// Set ANTHOS_SCREENSHOT=docs/demo.png to save a screenshot of the page after generating.
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import sharp from "sharp";
import * as tf from "@tensorflow/tfjs-core";
import { assert, assertEquals, assertThrows } from "./_assert.ts";
import { goldenWeightsRepo, IN_CI, setTrainingRecord, sharedPath, useBackend } from "./_shared.ts";
import { AnthosPipeline, type GeneratedImage } from "../lib/pipeline/pipeline.ts";
import { ClassNames } from "../lib/pipeline/classes.ts";
import { DiT } from "../lib/model/dit.ts";
import { Taesd } from "../lib/autoencoders/taesd.ts";
import { parseWeightsConfig } from "../lib/model/weights.ts";
import { activeBlas, setBlasEnabled } from "../lib/runtime/blas.ts";
import { dirname as shimDirname } from "../web/shims/node_path.ts";
import { dirname as nodeDirname } from "node:path";
import { bundleDemo, type DemoBundle } from "../lib/web/bundle.ts";
import { demoHandler, serveDemo } from "../lib/web/server.ts";

const GOLDEN = sharedPath("spec/golden/weights.safetensors");
const TAESD = sharedPath("weights/taesd");
const CHROMIUM = Deno.env.get("CHROMIUM") ?? "/usr/bin/chromium";

function haveChromium(): boolean {
  try {
    Deno.statSync(CHROMIUM);
    return true;
  } catch {
    const msg = `missing ${CHROMIUM}: the browser test needs Debian's chromium ` +
      `(apt-get install chromium; .ci/setup.sh installs it) or CHROMIUM=/path/to/chrome`;
    if (IN_CI) throw new Error(msg);
    console.warn(`SKIP: ${msg}`);
    return false;
  }
}

const ok = GOLDEN !== null && TAESD !== null && haveChromium();

function tempRepo(withWeights = true): Promise<string> {
  return goldenWeightsRepo({ prefix: "anthos-web-", weights: withWeights });
}

let bundle: DemoBundle | null = null;
async function sharedBundle(): Promise<DemoBundle> {
  return bundle ??= await bundleDemo();
}

/** Serves the demo on a free port for the duration of `fn`. */
async function withServer(
  repoDir: string,
  fn: (url: string) => Promise<void>,
): Promise<void> {
  const ac = new AbortController();
  let url = "";
  const server = await serveDemo({
    port: 0,
    repoDir,
    vaeDir: TAESD!,
    bundle: await sharedBundle(),
    signal: ac.signal,
    onListen: (u) => url = u,
  });
  try {
    await fn(url);
  } finally {
    ac.abort();
    await server.finished;
  }
}

async function withBrowser(fn: (browser: Browser) => Promise<void>): Promise<void> {
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    protocolTimeout: 1_800_000, // a busy 2-core machine is slow; the test's own waits bound it
    // WebGPU in headless chromium without a GPU: SwiftShader's Vulkan adapter.
    args: ["--no-sandbox", "--enable-unsafe-webgpu", "--enable-unsafe-swiftshader"],
  });
  try {
    await fn(browser);
  } finally {
    await browser.close();
  }
}

async function openPage(browser: Browser, url: string): Promise<Page> {
  const page = await browser.newPage();
  await page.setViewport({ width: 1200, height: 1000 });
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  await page.waitForFunction(
    () => ["ready", "missing", "error"].includes(document.body.dataset.state ?? ""),
    { timeout: 120_000 },
  );
  assertEquals(errors, [], "errors on the page");
  return page;
}

async function formError(page: Page): Promise<string> {
  await page.click("#generate");
  return await page.$eval("#form-error", (e) => (e as HTMLElement).hidden ? "" : e.textContent!);
}

async function setInput(page: Page, id: string, value: string): Promise<void> {
  await page.$eval(`#${id}`, (e, v) => (e as HTMLInputElement).value = v as string, value);
}

/** Picks a class the way a visitor does: type in the search box, tick the match. */
async function pickClass(page: Page, query: string, id: number): Promise<void> {
  await page.click("#class-search", { count: 3 });
  await page.type("#class-search", query);
  await page.click(`#class-list label[data-class-id="${id}"] input`);
}

/** The result grid's tiles as RGB bytes, read back from the page's canvases. */
async function gridPixels(page: Page): Promise<{ caption: string; rgb: Uint8Array }[]> {
  const tiles = await page.$$eval("#grid figure", (figs) =>
    figs.map((f) => {
      const c = f.querySelector("canvas")!;
      const d = c.getContext("2d")!.getImageData(0, 0, c.width, c.height).data;
      const rgb: number[] = [];
      for (let i = 0; i < d.length; i += 4) rgb.push(d[i], d[i + 1], d[i + 2]);
      return { caption: f.querySelector("figcaption")!.textContent!, w: c.width, rgb };
    }));
  return tiles.map((t) => {
    assertEquals(t.w, 256);
    return { caption: t.caption, rgb: new Uint8Array(t.rgb) };
  });
}

/** Largest per-channel difference and the share of differing bytes. */
function compare(a: Uint8Array, b: Uint8Array): { max: number; frac: number } {
  assertEquals(a.length, b.length);
  let max = 0;
  let n = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (d > 0) n++;
    if (d > max) max = d;
  }
  return { max, frac: n / a.length };
}

// Small on purpose (2 busy cores): 2 images, 2 Heun steps.
const SETTINGS = { seed: 42, steps: 2, cfgScale: 4, sampler: "heun" as const, nPerClass: 1 };
const CLASSES = [73, 53]; // rose, sunflower

async function denoImages(backend: "wasm" | "webgpu", repo: string): Promise<GeneratedImage[]> {
  const pipe = await AnthosPipeline.load({ repoDir: repo, backend, vae: "taesd", vaeDir: TAESD! });
  try {
    return await pipe.generate(CLASSES, SETTINGS);
  } finally {
    pipe.dispose();
  }
}

/** Generates in the page; returns the tiles and the page's backend badge. */
async function generateInPage(page: Page): Promise<{ caption: string; rgb: Uint8Array }[]> {
  // The form catches bad input before anything runs.
  assert((await formError(page)).includes("Pick at least one class"), "no-class error");
  await pickClass(page, "rose", 73);
  await pickClass(page, "sunfl", 53);
  assertEquals(
    await page.$$eval("#chips .chip", (cs) => cs.map((c) => c.textContent)),
    ["rose", "sunflower"],
  );
  await setInput(page, "steps", "0");
  assert((await formError(page)).includes("Steps must be a whole number"), "0 steps error");
  await setInput(page, "steps", String(SETTINGS.steps));
  await setInput(page, "cfg", "");
  assert((await formError(page)).includes("CFG scale must be a number"), "CFG NaN error");
  await setInput(page, "cfg", "1e9");
  assert((await formError(page)).includes("CFG scale must be a number from 0 to"), "CFG range");
  await setInput(page, "cfg", String(SETTINGS.cfgScale));
  await setInput(page, "seed", "-1");
  assert((await formError(page)).includes("seed must be an integer"), "bad seed error");
  await page.click("#dice");
  const rolled = await page.$eval("#seed", (e) => (e as HTMLInputElement).value);
  assert(/^\d+$/.test(rolled), `the dice gave "${rolled}"`);
  await setInput(page, "seed", String(SETTINGS.seed));
  await setInput(page, "n-per-class", String(SETTINGS.nPerClass));
  await page.select("#sampler", SETTINGS.sampler);

  await page.click("#generate");
  await page.waitForFunction(
    () => ["done", "error"].includes(document.body.dataset.state ?? ""),
    { timeout: 1_200_000 },
  );
  const err = await page.$eval(
    "#form-error",
    (e) => (e as HTMLElement).hidden ? "" : e.textContent,
  );
  assertEquals(err, "", "generation failed in the page");
  // The progress bar went through every sampling step and the decode (one batch: steps + 1).
  const [value, max] = await page.$eval("#progress", (p) => {
    const e = p as HTMLProgressElement;
    return [e.value, e.max];
  });
  assertEquals([value, max], [SETTINGS.steps + 1, SETTINGS.steps + 1]);
  const command = await page.$eval("#command", (e) => e.textContent!);
  assert(
    command.includes(
      `deno task sample "rose,sunflower" --n-per-class 1 --seed 42 --steps 2 --cfg-scale 4 ` +
        `--sampler heun --vae taesd`,
    ),
    command,
  );
  return await gridPixels(page);
}

/** Clicks Download and returns the PNG the browser saved. */
async function download(page: Page): Promise<Uint8Array> {
  const dir = await Deno.makeTempDir({ prefix: "anthos-dl-" });
  const cdp = await page.createCDPSession();
  await cdp.send("Browser.setDownloadBehavior", { behavior: "allow", downloadPath: dir });
  await page.click("#download");
  for (let i = 0; i < 200; i++) {
    const files = [...Deno.readDirSync(dir)].map((e) => e.name);
    const png = files.find((f) => f.endsWith(".png"));
    if (png) return await Deno.readFile(`${dir}/${png}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no PNG was downloaded into ${dir}`);
}

Deno.test({
  name: "web demo: chromium generates the grid AnthosPipeline makes in Deno (wasm, WebGPU)",
  ignore: !ok,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const repo = await tempRepo();
    await withServer(repo, async (url) => {
      await withBrowser(async (browser) => {
        // ---- wasm: the same wasm kernels as Deno's wasm backend
        const page = await openPage(browser, `${url}?backend=wasm`);
        assert(
          (await page.$eval("#backend", (e) => e.textContent!)).startsWith("running on wasm"),
          "the page does not say it runs on wasm",
        );
        // Weights without a training record claim nothing: no note about the model.
        assert(await page.$eval("#model-note", (e) => (e as HTMLElement).hidden), "model note");
        const tiles = await generateInPage(page);
        assertEquals(tiles.map((t) => t.caption), ["rose · #0", "sunflower · #1"]);
        await useBackend("wasm");
        // The browser's wasm runs every product on XNNPACK; so does Deno's with the system BLAS
        // switched off: same binary, same kernels, so the pixels must be identical.
        const blasWas = setBlasEnabled(false);
        let ref: GeneratedImage[];
        try {
          ref = await denoImages("wasm", repo);
        } finally {
          setBlasEnabled(blasWas);
        }
        for (let i = 0; i < ref.length; i++) {
          const d = compare(tiles[i].rgb, ref[i].pixels);
          console.log(`wasm image ${i}: max |browser - Deno| = ${d.max}/255, ${d.frac} differ`);
          assertEquals(d.max, 0, `wasm image ${i} differs from Deno's by ${d.max}/255`);
        }
        if (activeBlas()) {
          // Deno's products on OpenBLAS (FMA, other summation order): float rounding only.
          const blasRef = await denoImages("wasm", repo);
          for (let i = 0; i < ref.length; i++) {
            const d = compare(tiles[i].rgb, blasRef[i].pixels);
            console.log(`wasm image ${i} vs Deno on BLAS: max ${d.max}/255, ${d.frac} differ`);
            assert(d.max <= 2, `wasm image ${i} differs from Deno-on-BLAS by ${d.max}/255`);
          }
        }
        // The download: the grid (2 tiles in a row), 4 px white gaps, the tiles' pixels.
        const png = await download(page);
        const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
        assertEquals([info.width, info.height, info.channels], [4 + 2 * 260, 4 + 260, 3]);
        for (let i = 0; i < 2; i++) {
          const [x0, y0] = [4 + (i % 2) * 260, 4 + Math.floor(i / 2) * 260];
          const tile = new Uint8Array(256 * 256 * 3);
          for (let y = 0; y < 256; y++) {
            const start = ((y0 + y) * info.width + x0) * 3;
            tile.set(data.subarray(start, start + 256 * 3), y * 256 * 3);
          }
          assertEquals(compare(tile, tiles[i].rgb).max, 0, `downloaded tile ${i}`);
        }
        const shot = Deno.env.get("ANTHOS_SCREENSHOT");
        if (shot) await page.screenshot({ path: shot, fullPage: true });
        await page.close();

        // ---- WebGPU: without ?backend the page takes WebGPU exactly when the browser has an
        // adapter (SwiftShader in headless chromium here), and says so.
        // The same weights as an unfinished run's export: the page says how far it is.
        await setTrainingRecord(repo, { step: 5, steps: 100 });
        const auto = await openPage(browser, url);
        const note = await auto.$eval("#model-note", (e) => ({
          hidden: (e as HTMLElement).hidden,
          text: e.textContent!,
        }));
        assert(
          !note.hidden && note.text.includes("early checkpoint: step 5 of 100 (5.0%)"),
          note.text,
        );
        const adapter = await auto.evaluate(async () =>
          // deno-lint-ignore no-explicit-any
          (await (navigator as any).gpu?.requestAdapter()) != null
        );
        const badge = await auto.$eval("#backend", (e) => e.textContent!);
        assert(badge.startsWith(adapter ? "running on WebGPU" : "running on wasm"), badge);
        await auto.close();
        if (!adapter || Deno.env.get("ANTHOS_WEB_WEBGPU") !== "1") {
          console.warn(
            `SKIP generating on WebGPU in chromium: ${
              adapter
                ? "SwiftShader (a CPU WebGPU) takes minutes for these 2 images on 2 cores; " +
                  "ANTHOS_WEB_WEBGPU=1 runs it"
                : "no WebGPU adapter in headless chromium"
            }`,
          );
          return;
        }
        const gpuPage = await openPage(browser, `${url}?backend=webgpu`);
        const gpuTiles = await generateInPage(gpuPage);
        // Chromium's WebGPU (SwiftShader) is another float implementation than wasm, so compare
        // with the Deno wasm reference under a tolerance (measured: at most 1/255 on 0.03%).
        for (let i = 0; i < ref.length; i++) {
          const d = compare(gpuTiles[i].rgb, ref[i].pixels);
          console.log(
            `webgpu image ${i}: max |browser - Deno wasm| = ${d.max}/255, ${d.frac} differ`,
          );
          assert(d.max <= 3, `webgpu image ${i} differs from Deno's by ${d.max}/255`);
        }
      });
    });
  },
});

Deno.test({
  name: "web demo: caching headers, 304, clear 404s; the page says how to get missing weights",
  ignore: !ok,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const repo = await tempRepo();
    const handler = await demoHandler({
      repoDir: repo,
      vaeDir: TAESD!,
      bundle: await sharedBundle(),
    });
    for (
      const path of ["/", "/app.js", "/weights/model.safetensors", "/vae/taesd_decoder.safetensors"]
    ) {
      const res = await handler(new Request(`http://x${path}`));
      assertEquals(res.status, 200, path);
      const etag = res.headers.get("etag");
      assert(etag, `${path} has no ETag`);
      assertEquals(res.headers.get("cache-control"), "no-cache", path);
      await res.body?.cancel();
      const again = await handler(
        new Request(`http://x${path}`, { headers: { "if-none-match": etag } }),
      );
      assertEquals(again.status, 304, `${path} revalidation`);
    }
    const wasm = await handler(new Request("http://x/tfjs-wasm/tfjs-backend-wasm-simd.wasm"));
    assertEquals(wasm.headers.get("content-type"), "application/wasm");
    await wasm.body?.cancel();
    const nope = await handler(new Request("http://x/etc/passwd"));
    assertEquals(nope.status, 404);
    assert((await nope.text()).includes("This server serves the demo page"));

    // No weights: 404s say what is missing and how to get it, and so does the page.
    const empty = await tempRepo(false);
    const h2 = await demoHandler({ repoDir: empty, vaeDir: TAESD!, bundle: await sharedBundle() });
    const res = await h2(new Request("http://x/weights/model.safetensors"));
    assertEquals(res.status, 404);
    const msg = await res.text();
    assert(
      msg.includes(`${empty}/weights/model.safetensors`) && msg.includes("deno task train"),
      msg,
    );
    await withServer(empty, async (url) => {
      await withBrowser(async (browser) => {
        const page = await openPage(browser, `${url}?backend=wasm`);
        assertEquals(await page.evaluate(() => document.body.dataset.state), "missing");
        const text = await page.$eval("#missing-text", (e) => e.textContent!);
        assert(text.includes("model.safetensors") && text.includes("deno task convert"), text);
        assert(await page.$eval("#generate", (b) => (b as HTMLButtonElement).disabled));
      });
    });
  },
});

Deno.test({
  name: "browser path in Deno: fromParts with fetched bytes and a decode-only TAESD = load()",
  ignore: GOLDEN === null || TAESD === null,
  fn: async () => {
    // What web/worker.ts does with the served files, minus the browser: parse the texts, load the
    // DiT and TAESD's decoder from bytes. Same images as the Deno folder loader gives.
    const repo = await tempRepo();
    if (!(await useBackend("wasm"))) return;
    const text = (p: string) => Deno.readTextFile(`${repo}/weights/${p}`);
    const config = parseWeightsConfig(await text("config.json"));
    const vae = await Taesd.load({
      decoder: await Deno.readFile(`${TAESD}/taesd_decoder.safetensors`),
    });
    assertThrows(() => tf.tidy(() => vae.encode(tf.zeros([1, 256, 256, 3]))), Error, "decode-only");
    const fromBytes = AnthosPipeline.fromParts({
      config,
      classes: ClassNames.parse(await text("classes.txt")),
      model: await DiT.load(await Deno.readFile(`${repo}/weights/model.safetensors`), {
        config: config.model,
      }),
      vae,
    });
    const fromFolder = await AnthosPipeline.load({ repoDir: repo, vae: "taesd", vaeDir: TAESD! });
    const opts = { seed: 7, steps: 1 };
    const [a] = await fromBytes.generate([5], opts);
    const [b] = await fromFolder.generate([5], opts);
    assertEquals(a.pixels, b.pixels);
    fromBytes.dispose();
    fromFolder.dispose();
  },
});

Deno.test("browser shim of node:path's dirname = node:path's (POSIX)", () => {
  const cases = [
    "",
    "/",
    "//",
    "a",
    "a/",
    "/a",
    "/a/",
    "/a/b",
    "/a/b/",
    "a/b/c.txt",
    "./x",
    "../x/y",
  ];
  for (const c of [...cases, "//a", "///a/b//", "a//b"]) {
    assertEquals(shimDirname(c), nodeDirname(c), JSON.stringify(c));
  }
});
