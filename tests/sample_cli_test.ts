// `deno task sample` end to end, as a subprocess: the grid PNG has the right size and tile count,
// the same seed gives byte-identical files, another seed differs; errors exit 1 with a fix.
// Uses the golden random DiT weights and the real TAESD decoder from ../shared.
import sharp from "sharp";
import { assert, assertEquals } from "./_assert.ts";
import { goldenWeightsRepo, setTrainingRecord, sharedPath } from "./_shared.ts";

const GOLDEN = sharedPath("spec/golden/weights.safetensors");
const TAESD = sharedPath("weights/taesd");
const ROOT = new URL("..", import.meta.url).pathname;
const ok = GOLDEN !== null && TAESD !== null;

function tempRepo(): Promise<string> {
  return goldenWeightsRepo({ prefix: "anthos-sample-" });
}

async function sampleTask(args: string[]): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "-q", "sample", ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stderr: dec.decode(out.stderr) + dec.decode(out.stdout) };
}

Deno.test({
  name: "sample CLI: grid PNG of the right size and tiles; same seed -> same bytes",
  ignore: !ok,
  fn: async () => {
    const repo = await tempRepo();
    const common = ["--steps", "2", "--cols", "2", "--repo-dir", repo, "--vae-dir", TAESD!];
    const run = async (seed: number, out: string) => {
      const r = await sampleTask([
        " Rose,sunflower , 41",
        "--seed",
        String(seed),
        "--out",
        out,
        ...common,
      ]);
      assertEquals(r.code, 0, r.stderr);
      assert(r.stderr.includes(`wrote ${out}: 3 image(s) of 3 class(es)`), r.stderr);
      return await Deno.readFile(out);
    };
    const a = await run(42, `${repo}/a.png`);
    const b = await run(42, `${repo}/b.png`);
    const c = await run(43, `${repo}/c.png`);
    assertEquals(a, b, "same seed, different PNG bytes");
    assert(a.length !== c.length || a.some((v, i) => v !== c[i]), "seed 43 gave seed 42's PNG");

    // 3 tiles in 2 columns: 2 rows of (256 px tile + 21 px caption), 4 px gaps and border.
    const { data, info } = await sharp(a).removeAlpha().raw().toBuffer({ resolveWithObject: true });
    assertEquals([info.width, info.height, info.channels], [4 + 2 * 260, 4 + 2 * 281, 3]);
    const cell = (col: number, row: number) => {
      // Fraction of pure-white pixels in a tile's area.
      let white = 0;
      const x0 = 4 + col * 260;
      const y0 = 4 + row * 281;
      for (let y = y0; y < y0 + 256; y++) {
        for (let x = x0; x < x0 + 256; x++) {
          const p = (y * info.width + x) * 3;
          if (data[p] === 255 && data[p + 1] === 255 && data[p + 2] === 255) white++;
        }
      }
      return white / (256 * 256);
    };
    for (const [col, row] of [[0, 0], [1, 0], [0, 1]]) {
      assert(cell(col, row) < 0.5, `tile (${col}, ${row}) is empty`);
    }
    assertEquals(cell(1, 1), 1, "a 4th tile was drawn");
    // Captions: some dark pixels in each filled tile's caption strip, none in the empty one.
    const dark = (col: number, row: number) => {
      let n = 0;
      const y0 = 4 + row * 281 + 256;
      for (let y = y0; y < y0 + 21; y++) {
        for (let x = 4 + col * 260; x < 4 + col * 260 + 256; x++) {
          if (data[(y * info.width + x) * 3] < 128) n++;
        }
      }
      return n;
    };
    assert(dark(0, 0) > 20 && dark(1, 0) > 20 && dark(0, 1) > 20, "missing captions");
    assertEquals(dark(1, 1), 0);
    await Deno.remove(repo, { recursive: true });
  },
});

Deno.test({
  name: "sample CLI: --help, unknown class, missing weights, bad flags",
  ignore: !ok,
  fn: async () => {
    const help = await sampleTask(["--help"]);
    assertEquals(help.code, 0);
    for (
      const flag of [
        "--n-per-class",
        "--seed",
        "--out",
        "--steps",
        "--cfg-scale",
        "--sampler",
        "--backend",
        "--vae",
        "--vae-dir",
        "--repo-dir",
        "--cols",
        "--batch-size",
        "Examples:",
      ]
    ) {
      assert(help.stderr.includes(flag), `--help lacks ${flag}`);
    }

    const repo = await tempRepo();
    const typo = await sampleTask(["sunflowr", "--repo-dir", repo, "--vae-dir", TAESD!]);
    assertEquals(typo.code, 1);
    assert(typo.stderr.includes('unknown class "sunflowr"'), typo.stderr);
    assert(typo.stderr.includes('"sunflower" (53)'), typo.stderr);

    const empty = await Deno.makeTempDir();
    const missing = await sampleTask(["rose", "--repo-dir", empty]);
    assertEquals(missing.code, 1);
    assert(missing.stderr.includes(`${empty}/weights/model.safetensors`), missing.stderr);
    assert(missing.stderr.includes("deno task train"), missing.stderr);

    const sampler = await sampleTask(["rose", "--sampler", "rk4", "--repo-dir", repo]);
    assertEquals(sampler.code, 1);
    assert(sampler.stderr.includes("--sampler must be one of heun, euler"), sampler.stderr);
    const zero = await sampleTask(["rose", "-n", "0", "--repo-dir", repo]);
    assertEquals(zero.code, 1);
    assert(zero.stderr.includes("--n-per-class must be at least 1, got 0"), zero.stderr);
    await Deno.remove(repo, { recursive: true });
    await Deno.remove(empty, { recursive: true });
  },
});

Deno.test({
  name: "sample CLI: seeds outside 0..2^32-1 are refused before any work, never aliased",
  ignore: !ok,
  fn: async () => {
    // An empty repo: the seed must be refused before the (missing) weights are even looked at.
    const empty = await Deno.makeTempDir();
    for (const seed of ["4294967296", "-1", "1e12"]) {
      const r = await sampleTask(["rose", "--seed", seed, "--repo-dir", empty]);
      assertEquals(r.code, 1, r.stderr);
      assert(r.stderr.includes("--seed must be an integer from 0 to 4294967295"), r.stderr);
      assert(!r.stderr.includes("model.safetensors"), r.stderr);
    }
    const help = await sampleTask(["--help"]);
    assert(help.stderr.includes("0..4294967295"), help.stderr);
    await Deno.remove(empty, { recursive: true });
  },
});

Deno.test({
  name: "sample CLI: NaN weights or a huge --cfg-scale exit 1 with the cause, never write a PNG",
  ignore: !ok,
  fn: async () => {
    const repo = await tempRepo();
    const common = ["--steps", "1", "--repo-dir", repo, "--vae-dir", TAESD!];
    // --cfg-scale 1e40 overflowed the latents into a flat tile with exit 0: refused up front.
    const cfg = await sampleTask([
      "rose",
      "--cfg-scale",
      "1e40",
      "--out",
      `${repo}/c.png`,
      ...common,
    ]);
    assertEquals(cfg.code, 1, cfg.stderr);
    assert(cfg.stderr.includes("--cfg-scale must be a number from 0 to 50"), cfg.stderr);
    const help = await sampleTask(["--help"]);
    assert(help.stderr.includes("0..50"), help.stderr);
    // One NaN in a weight gave an all-black tile with exit 0: the load names the tensor.
    const { parseSafetensors, serializeSafetensors } = await import("../lib/io/safetensors.ts");
    const path = `${repo}/weights/model.safetensors`;
    const { tensors } = parseSafetensors(await Deno.readFile(path));
    const rec = Object.fromEntries(
      [...tensors].map(([k, t]) => [k, { dtype: "F32" as const, shape: t.shape, data: t.data }]),
    );
    rec["blocks.0.attn.qkv.weight"].data[7] = NaN;
    await Deno.writeFile(path, serializeSafetensors(rec));
    const nan = await sampleTask(["rose", "--out", `${repo}/n.png`, ...common]);
    assertEquals(nan.code, 1, nan.stderr);
    assert(nan.stderr.includes(path), nan.stderr);
    assert(nan.stderr.includes('tensor "blocks.0.attn.qkv.weight" has 1 NaN/Inf'), nan.stderr);
    for (const f of ["c.png", "n.png"]) {
      assert(!(await Deno.stat(`${repo}/${f}`).then(() => true, () => false)), `${f} written`);
    }
    await Deno.remove(repo, { recursive: true });
  },
});

Deno.test({
  name: "sample CLI: an unwritable --out/--out-dir is refused before any work, naming the path",
  ignore: !ok,
  fn: async () => {
    // No weights in the repo: a check made only after loading would report those instead.
    const repo = await Deno.makeTempDir({ prefix: "anthos-sample-" });
    await Deno.writeTextFile(`${repo}/file.txt`, "x");
    const cases: [string[], string][] = [
      [["--out", "/proc/x.png"], "cannot write --out /proc/x.png: /proc does not accept new files"],
      [["--out", repo], `cannot write --out ${repo}: it is a folder; give a file name`],
      [
        ["--out", `${repo}/file.txt/sub/x.png`],
        `cannot write --out ${repo}/file.txt/sub/x.png: ${repo}/file.txt is a file, not a folder`,
      ],
      [["--out-dir", `${repo}/file.txt`], `cannot write --out-dir ${repo}/file.txt: it is a file`],
    ];
    for (const [args, msg] of cases) {
      const r = await sampleTask(["rose", "--repo-dir", repo, ...args]);
      assertEquals(r.code, 1, r.stderr);
      assert(r.stderr.includes(msg), `${args.join(" ")}: ${r.stderr}`);
      assert(!r.stderr.includes("model.safetensors"), r.stderr);
      assert(!r.stderr.includes(".tmp"), r.stderr);
    }
    const both = await sampleTask(["rose", "--out", "a.png", "--out-dir", repo]);
    assertEquals(both.code, 1, both.stderr);
    assert(both.stderr.includes("give one of them"), both.stderr);
    assertEquals([...Deno.readDirSync(repo)].map((e) => e.name), ["file.txt"]);
    await Deno.remove(repo, { recursive: true });
  },
});

Deno.test({
  name:
    "sample CLI: a grid too large is refused up front; --per-page and --out-dir save every image",
  ignore: !ok,
  fn: async () => {
    const repo = await tempRepo();
    const common = ["--steps", "1", "--sampler", "euler", "--repo-dir", repo, "--vae-dir", TAESD!];
    // all -n 40 used to sample 4080 images, then fail in the grid with "exceeds pixel limit".
    const big = await sampleTask(["all", "-n", "40", "--out", `${repo}/big.png`, ...common]);
    assertEquals(big.code, 1, big.stderr);
    assert(big.stderr.includes("one grid of 4080 images in 64 columns would be"), big.stderr);
    assert(big.stderr.includes("over the 268402689-pixel limit"), big.stderr);
    assert(big.stderr.includes("--per-page 256") && big.stderr.includes("--out-dir"), big.stderr);
    const rose = await sampleTask(["rose", "-n", "4000", "--out", `${repo}/r.png`, ...common]);
    assertEquals(rose.code, 1, rose.stderr);
    assert(rose.stderr.includes("--per-page"), rose.stderr);
    assert(!(await Deno.stat(`${repo}/big.png`).then(() => true, () => false)), "big.png written");

    // The whole request as one grid, then as pages of 4, then as one file per image.
    const cls = "rose,sunflower";
    const one = await sampleTask([
      cls,
      "-n",
      "3",
      "--cols",
      "2",
      "--out",
      `${repo}/s.png`,
      ...common,
    ]);
    assertEquals(one.code, 0, one.stderr);
    const paged = await sampleTask([
      cls,
      ...["-n", "3", "--cols", "2", "--per-page", "4", "--out", `${repo}/p.png`],
      ...common,
    ]);
    assertEquals(paged.code, 0, paged.stderr);
    assert(paged.stderr.includes(`wrote 2 grid pages, ${repo}/p-01.png .. ${repo}/p-02.png`));
    const dir = `${repo}/each`;
    const each = await sampleTask([cls, "-n", "3", "--out-dir", dir, ...common]);
    assertEquals(each.code, 0, each.stderr);
    const names = ["01-rose", "02-rose", "03-rose", "04-sunflower", "05-sunflower", "06-sunflower"];
    assertEquals(
      [...Deno.readDirSync(dir)].map((e) => e.name).sort(),
      names.map((f) => `${f}.png`),
    );
    const raw = async (path: string) => {
      const { data, info } = await sharp(path).removeAlpha().raw()
        .toBuffer({ resolveWithObject: true });
      return { data, w: info.width, h: info.height };
    };
    /** The 256x256 tile at (col, row) of a captioned grid (4 px gaps, 21 px captions). */
    const tile = (g: { data: Uint8Array; w: number }, col: number, row: number) => {
      const out = new Uint8Array(256 * 256 * 3);
      for (let y = 0; y < 256; y++) {
        const from = ((4 + row * 281 + y) * g.w + 4 + col * 260) * 3;
        out.set(g.data.subarray(from, from + 256 * 3), y * 256 * 3);
      }
      return out;
    };
    const s = await raw(`${repo}/s.png`);
    const p1 = await raw(`${repo}/p-01.png`);
    const p2 = await raw(`${repo}/p-02.png`);
    assertEquals([s.w, s.h, p1.w, p1.h, p2.w, p2.h], [524, 847, 524, 566, 524, 285]);
    // Image i sits at (i % 2, i / 2) in s.png; pages hold images 0-3 and 4-5.
    for (let i = 0; i < 6; i++) {
      const page = i < 4 ? p1 : p2;
      const j = i % 4;
      assertEquals(
        tile(page, j % 2, Math.floor(j / 2)),
        tile(s, i % 2, Math.floor(i / 2)),
        `#${i}`,
      );
    }
    // Per-image files: each is the same picture as its tile in the grid.
    for (let i = 0; i < 6; i++) {
      const im = await raw(`${dir}/${names[i]}.png`);
      assertEquals([im.w, im.h], [256, 256]);
      assertEquals(new Uint8Array(im.data), tile(s, i % 2, Math.floor(i / 2)), names[i]);
    }
    await Deno.remove(repo, { recursive: true });
  },
});

Deno.test({
  name: "sample CLI: weights of an unfinished run say so (note on stderr), finished ones do not",
  ignore: !ok,
  fn: async () => {
    const repo = await tempRepo();
    const args = ["rose", "--steps", "1", "--repo-dir", repo, "--out", `${repo}/o.png`];
    await setTrainingRecord(repo, {
      step: 638,
      steps: 120000,
      device: "NVIDIA H200",
      valLoss: 1.8127,
    });
    const early = await sampleTask([...args, "--vae-dir", TAESD!]);
    assertEquals(early.code, 0, early.stderr);
    assert(
      early.stderr.includes(
        `note: ${repo}/weights/ is an early checkpoint: step 638 of 120,000 (0.5%) on NVIDIA H200`,
      ),
      early.stderr,
    );
    await setTrainingRecord(repo, { step: 120000, steps: 120000 });
    // No --vae-dir: TAESD is found in ../shared beside the checkout (or $ANTHOS_SHARED).
    const done = await sampleTask(args);
    assertEquals(done.code, 0, done.stderr);
    assert(!done.stderr.includes("early checkpoint"), done.stderr);
    await Deno.remove(repo, { recursive: true });
  },
});
