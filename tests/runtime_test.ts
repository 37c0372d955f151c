// The low-level helpers every layer shares: the env object (one reader of ANTHOS_*, safe without
// --allow-env), seed derivation (bit-identical to the formulas it replaced), the fs predicates,
// edit distance, and the state-dict check.
import { assert, assertEquals, assertRejects, assertThrows } from "./_assert.ts";
import { fileURLToPath } from "node:url";
import { env, ENV_VARS, envFlag, readEnv } from "../lib/runtime/env.ts";
import { deriveSeed, IMAGE_NOISE_STREAM } from "../lib/runtime/rng.ts";
import { imageSeed } from "../lib/pipeline/pipeline.ts";
import { closestMatch, editDistance } from "../lib/runtime/text.ts";
import { dirname, exists, isDir, isFile, writeFileAtomic } from "../lib/io/fs.ts";
import {
  checkStateDict,
  convFilterFromTorch,
  StateDictError,
  stateDictProblems,
  torchToTf,
} from "../lib/io/state_dict.ts";
import type { RawTensor } from "../lib/io/safetensors.ts";
import * as tf from "@tensorflow/tfjs-core";
import { loadBackend } from "../lib/runtime/backend.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** Runs `code` as a module in a subprocess with the project's config and the given flags. */
async function runModule(
  code: string,
  flags: string[],
  envVars: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/main.ts`;
  await Deno.writeTextFile(file, code);
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", "--config", `${ROOT}/deno.json`, ...flags, file],
      cwd: ROOT,
      env: envVars,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("env: reads each variable at access; empty is unset; flags are true-ish", () => {
  const saved = Object.fromEntries(
    Object.values(ENV_VARS).map((k) => [k, Deno.env.get(k)] as const),
  );
  try {
    Deno.env.set("ANTHOS_HOME", "/tmp/h");
    Deno.env.set("ANTHOS_QUICK", "TRUE");
    Deno.env.set("ANTHOS_DEBUG", "0");
    Deno.env.set("CI", "1"); // CI services set exactly "true"
    Deno.env.set("ANTHOS_SHARED", "");
    assertEquals([env.home, env.quick, env.debug, env.ci, env.shared], [
      "/tmp/h",
      true,
      false,
      false,
      undefined,
    ]);
    Deno.env.set("ANTHOS_HOME", "/tmp/other");
    Deno.env.set("CI", "true");
    assertEquals([env.home, env.ci], ["/tmp/other", true]);
    assertEquals(readEnv("ANTHOS_SHARED"), undefined);
    for (const v of ["1", "yes", "On", " true "]) {
      Deno.env.set("ANTHOS_QUICK", v);
      assert(envFlag("ANTHOS_QUICK"), v);
    }
    for (const v of ["0", "no", "false", "2"]) {
      Deno.env.set("ANTHOS_QUICK", v);
      assert(!env.quick, v);
    }
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) Deno.env.delete(k);
      else Deno.env.set(k, v);
    }
  }
});

Deno.test("env: without --allow-env mod.ts imports and every variable reads as unset", async () => {
  const code = `
    import { env } from "${ROOT}/lib/runtime/env.ts";
    import { defaultBackendName } from "${ROOT}/lib/runtime/backend.ts";
    import { DiT } from "${ROOT}/mod.ts"; // the whole library: sharp loads on first use only
    console.log(JSON.stringify({ home: env.home ?? null, quick: env.quick, backend: defaultBackendName(), dit: typeof DiT }));
  `;
  const vars = { ANTHOS_BACKEND: "cpu", ANTHOS_QUICK: "1", ANTHOS_HOME: "/x" };
  const denied = await runModule(code, [], vars);
  assertEquals(denied.code, 0, denied.stderr);
  assertEquals(JSON.parse(denied.stdout), {
    home: null,
    quick: false,
    backend: "wasm",
    dit: "function",
  });
  // The same script with the permission sees the variables (so the first run proved something).
  const allowed = await runModule(code, ["--allow-env"], vars);
  assertEquals(allowed.code, 0, allowed.stderr);
  assertEquals(JSON.parse(allowed.stdout), {
    home: "/x",
    quick: true,
    backend: "cpu",
    dit: "function",
  });
});

/** The two seed formulas deriveSeed replaced, copied from the code before the change. */
function oldImageSeed(seed: number, index: number): number {
  let h = (Math.trunc(seed) ^ 0x51ed270b) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = (h ^ Math.imul(index + 1, 0xc2b2ae35)) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0x27d4eb2f) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}
function oldMixSeed(seed: number, stream: number, counter: number): number {
  let h = (Math.trunc(seed) ^ Math.imul(stream, 0x9e3779b1)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = (h ^ Math.imul(counter + 1, 0xc2b2ae35)) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0x27d4eb2f) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

Deno.test("deriveSeed: bit-identical to the old imageSeed and mixSeed", () => {
  const seeds = [0, 1, 42, -1, -123456, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 40 + 7, 3.9];
  for (const seed of seeds) {
    for (const i of [0, 1, 2, 99, 10_000, 2 ** 31]) {
      assertEquals(deriveSeed(seed, IMAGE_NOISE_STREAM, i), oldImageSeed(seed, i), `${seed} ${i}`);
      assertEquals(imageSeed(seed, i), oldImageSeed(seed, i));
      for (const stream of [0x5eed, 0x7a11]) {
        assertEquals(deriveSeed(seed, stream, i), oldMixSeed(seed, stream, i));
      }
    }
  }
});

Deno.test("fs: exists / isFile / isDir tell files, folders and missing paths apart", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/a/b.bin`;
    await writeFileAtomic(file, "hi");
    assertEquals(await Deno.readTextFile(file), "hi");
    assertEquals([await exists(file), await isFile(file), await isDir(file)], [true, true, false]);
    assertEquals([await exists(dir), await isFile(dir), await isDir(dir)], [true, false, true]);
    const none = `${dir}/missing`;
    assertEquals([await exists(none), await isFile(none), await isDir(none)], [
      false,
      false,
      false,
    ]);
    // A path through a file is "not there", not an error.
    assertEquals([await exists(`${file}/x`), await isDir(`${file}/x`)], [false, false]);
    assertEquals(dirname("weights/model.safetensors"), "weights");
    assertEquals(dirname("model.safetensors"), ".");
    // No leftover temp files beside the target.
    assertEquals([...Deno.readDirSync(`${dir}/a`)].map((e) => e.name), ["b.bin"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fs: other errors are not hidden as 'missing'", {
  ignore: Deno.build.os === "windows" || Deno.uid() === 0,
}, async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/locked`);
    await Deno.writeTextFile(`${dir}/locked/f`, "x");
    await Deno.chmod(`${dir}/locked`, 0o000);
    await assertRejects(() => isFile(`${dir}/locked/f`), Deno.errors.PermissionDenied);
    await Deno.chmod(`${dir}/locked`, 0o700);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("editDistance / closestMatch", () => {
  assertEquals(editDistance("", "abc"), 3);
  assertEquals(editDistance("flaw", "lawn"), 2);
  assertEquals(editDistance("sunflower", "sunflower"), 0);
  assertEquals(closestMatch("batchsize", ["batch-size", "batch"]), "batch-size");
  assertEquals(closestMatch("zzz", ["steps"]), undefined);
});

const f32 = (shape: number[], values?: number[]): RawTensor => ({
  dtype: "F32",
  shape,
  data: values ? new Float32Array(values) : new Float32Array(shape.reduce((a, b) => a * b, 1)),
});

Deno.test("checkStateDict: lists every mismatch by name, with the caller's hint", () => {
  const expected = new Map([["a", [2, 3]], ["b", [4]], ["c", [1]]]);
  const tensors = new Map<string, RawTensor>([
    ["a", f32([3, 2])],
    ["c", { dtype: "I32", shape: [1], data: new Int32Array(1) }],
    ["zz", f32([1])],
  ]);
  assertEquals(stateDictProblems(tensors, expected), [
    'key "a" has shape [3,2], expected [2,3]',
    'missing key "b" (expected shape [4])',
    'key "c" has dtype I32, expected a float type',
    'unexpected key "zz"',
  ]);
  assertEquals(stateDictProblems(tensors, expected, { float: false }).length, 3);
  const err = assertThrows(
    () =>
      checkStateDict(tensors, expected, { what: "x.safetensors", hint: "Fix it.", maxListed: 2 }),
    StateDictError,
    'x.safetensors: key "a" has shape [3,2], expected [2,3]; missing key "b"',
  ) as StateDictError;
  assert(
    err.message.endsWith("; and 2 more (1 missing, 1 unexpected, 2 mis-shaped in all). Fix it."),
    err.message,
  );
  assertEquals(err.problems.length, 4);
  // alsoAccept: a linear stored as a 1x1 conv.
  const conv = new Map([["a", f32([2, 3, 1, 1])]]);
  assertEquals(stateDictProblems(conv, new Map([["a", [2, 3]]])).length, 1);
  checkStateDict(conv, new Map([["a", [2, 3]]]), {
    alsoAccept: (_k, s, e) => s.join() === [...e, 1, 1].join(),
  });
  checkStateDict(new Map(), new Map()); // nothing expected, nothing given: fine
});

Deno.test("torchToTf / convFilterFromTorch: PyTorch layouts to TF, element by element", async () => {
  await loadBackend("cpu");
  const before = tf.memory().numTensors;
  // conv [out=2, in=3, kh=2, kw=2], value = a code of its torch index.
  const [o, i, kh, kw] = [2, 3, 2, 2];
  const data = new Float32Array(o * i * kh * kw);
  for (let a = 0; a < o; a++) {
    for (let b = 0; b < i; b++) {
      for (let y = 0; y < kh; y++) {
        for (let x = 0; x < kw; x++) {
          data[((a * i + b) * kh + y) * kw + x] = a * 1000 + b * 100 + y * 10 + x;
        }
      }
    }
  }
  const f = convFilterFromTorch(data, [o, i, kh, kw]);
  assertEquals(f.shape, [kh, kw, i, o]);
  const arr = f.arraySync();
  for (let a = 0; a < o; a++) {
    for (let b = 0; b < i; b++) {
      for (let y = 0; y < kh; y++) {
        for (let x = 0; x < kw; x++) assertEquals(arr[y][x][b][a], a * 1000 + b * 100 + y * 10 + x);
      }
    }
  }
  const viaRank = torchToTf({ dtype: "F32", shape: [o, i, kh, kw], data }, [o, i, kh, kw]);
  assertEquals(viaRank.arraySync(), arr);
  const lin = torchToTf(f32([2, 3, 1, 1], [1, 2, 3, 4, 5, 6]), [2, 3]); // 1x1-conv storage
  assertEquals(lin.arraySync(), [[1, 4], [2, 5], [3, 6]]);
  const bias = torchToTf(f32([2], [7, 8]), [2]);
  assertEquals(bias.arraySync(), [7, 8]);
  assertThrows(() => torchToTf({ dtype: "I32", shape: [1], data: new Int32Array(1) }, [1]));
  tf.dispose([f, viaRank, lin, bias]);
  assertEquals(tf.memory().numTensors, before);
});
