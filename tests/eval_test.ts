// Evaluation: the held-out split (deterministic, disjoint, stable when a file is added, mirror
// images with their photo), the validation loss (reproducible to the last digit, checked against
// a separate float64 computation, buckets that average back to the mean, no tensor growth), the
// evaluation grid, and clear errors on bad input.
import * as tf from "@tensorflow/tfjs-core";
import { assert, assertEquals, assertLess, assertRejects, assertThrows } from "./_assert.ts";
import { loadBackend } from "../lib/runtime/backend.ts";
import { DiT, PRESETS } from "../lib/model/dit.ts";
import type { LatentDataset } from "../lib/data/latents.ts";
import { Rng } from "../lib/runtime/rng.ts";
import {
  evaluationGrid,
  gridPoint,
  heldOutSplit,
  type LatentPart,
  selectLatents,
  T_BUCKETS,
  validationLoss,
} from "../lib/training/eval.ts";
import { Taesd } from "../lib/autoencoders/taesd.ts";
import { sharedPath } from "./_shared.ts";

const GOLDEN = sharedPath("spec/golden/weights.safetensors");
const TAESD = sharedPath("weights/taesd");

/** Random latents `[n, s, s, 4]` with labels, as one cache file with the given metadata. */
function randomSet(n: number, s: number, metadata: Record<string, string> = {}): LatentDataset {
  const rng = new Rng(1234);
  const labels = Int32Array.from({ length: n }, () => rng.int(102));
  return {
    latents: tf.tensor4d(rng.normalArray(n * s * s * 4), [n, s, s, 4]),
    labels,
    metadata: { splits: "train", ...metadata },
  };
}

// ---------------------------------------------------------------- split

Deno.test("split: deterministic, disjoint, covers every latent, about the asked fraction", () => {
  const parts: LatentPart[] = [{ count: 20_000, metadata: { splits: "test" } }];
  const a = heldOutSplit(parts);
  const b = heldOutSplit(parts);
  assertEquals(a.heldOut, b.heldOut);
  assertEquals(a.train, b.train);
  const seen = new Uint8Array(20_000);
  for (const i of [...a.train, ...a.heldOut]) seen[i]++;
  assert(seen.every((c) => c === 1), "train and held-out must be disjoint and cover everything");
  const share = a.heldOut.length / 20_000;
  assert(share > 0.016 && share < 0.024, `held-out share ${share}, expected about 0.02`);
  // Another seed or fraction picks another set.
  const c = heldOutSplit(parts, { seed: 1 });
  assert(c.heldOut.some((i, k) => a.heldOut[k] !== i), "seed 1 must hold out other latents");
  assertEquals(heldOutSplit(parts, { fraction: 0 }).heldOut.length, 0);
  const half = heldOutSplit(parts, { fraction: 0.5 }).heldOut.length / 20_000;
  assert(half > 0.48 && half < 0.52, `fraction 0.5 held out ${half}`);
});

Deno.test("split: adding a cache file does not move earlier latents; a dataset = its parts", () => {
  const train: LatentPart = {
    count: 2040,
    metadata: { splits: "train", images: "1020", flipped: "second-half" },
    name: "latents-taesd.safetensors",
  };
  const test: LatentPart = { count: 6149, metadata: { splits: "test", images: "6149" } };
  const one = heldOutSplit([train]);
  const two = heldOutSplit([train, test]);
  const early = (s: Int32Array) => Array.from(s).filter((i) => i < 2040);
  assertEquals(early(two.heldOut), Array.from(one.heldOut));
  assertEquals(early(two.train), Array.from(one.train));
  assertEquals(two.keys.slice(0, 2040), one.keys);
  assert(two.heldOut.some((i) => i >= 2040), "the new file contributes held-out latents too");
  // Putting the new file first shifts indices but not decisions.
  const swapped = heldOutSplit([test, train]);
  assertEquals(
    Array.from(swapped.heldOut).filter((i) => i >= 6149).map((i) => i - 6149),
    Array.from(one.heldOut),
  );
  // A LatentDataset-like input with `parts` splits like the part list; without, like one file.
  const labels = new Int32Array(2040 + 6149);
  assertEquals(heldOutSplit({ labels, metadata: {}, parts: [train, test] }).heldOut, two.heldOut);
  assertEquals(
    heldOutSplit({ labels: new Int32Array(2040), metadata: train.metadata }).heldOut,
    one.heldOut,
  );
});

Deno.test("split: a photo and its mirror image land on the same side, in one file or two", () => {
  const meta = { splits: "train", images: "1020", flipped: "second-half" };
  const s = heldOutSplit([{ count: 2040, metadata: meta }], { fraction: 0.1 });
  const held = new Set(s.heldOut);
  assert(held.size > 50, `expected ~102 held-out latents at 10%, got ${held.size}`);
  for (let i = 0; i < 1020; i++) assertEquals(held.has(i), held.has(i + 1020), `photo ${i}`);
  assert(s.keys[5] !== s.keys[1025], "a mirror image has its own identity (its own noise)");
  // Originals in one file, their mirror images in another (same split): same decisions.
  const orig = { count: 6149, metadata: { splits: "test", images: "6149", flipped: "none" } };
  const mirr = { count: 6149, metadata: { splits: "test", images: "6149", flipped: "all" } };
  const two = heldOutSplit([orig, mirr], { fraction: 0.1 });
  const h2 = new Set(two.heldOut);
  for (let i = 0; i < 6149; i++) assertEquals(h2.has(i), h2.has(i + 6149), `test photo ${i}`);
  assert(two.keys[7] !== two.keys[6149 + 7]);
});

Deno.test("split: bad inputs give clear errors", () => {
  const parts = [{ count: 10, metadata: {} }];
  assertThrows(
    () => heldOutSplit(parts, { fraction: 1 }),
    RangeError,
    "fraction must be in [0, 1)",
  );
  assertThrows(() => heldOutSplit(parts, { fraction: -0.1 }), RangeError, "fraction");
  assertThrows(() => heldOutSplit(parts, { seed: 0.5 }), RangeError, "seed must be an integer");
  assertThrows(() => heldOutSplit([{ count: -1, metadata: {} }]), RangeError, "count -1");
  assertThrows(
    () => heldOutSplit({ labels: new Int32Array(20), metadata: {}, parts }),
    Error,
    "list every cache file",
  );
});

// ---------------------------------------------------------------- validation loss

Deno.test("validation loss: same digits twice, buckets average to the mean, no tensor growth", async () => {
  await loadBackend("wasm");
  const data = randomSet(40, 8);
  const model = DiT.create(PRESETS["DiT-Pico/2"], { seed: 3 });
  const split = heldOutSplit(data, { fraction: 0.2 });
  assert(split.heldOut.length >= 3, `expected a few held-out latents, got ${split.heldOut.length}`);
  const before = tf.memory().numTensors;
  const a = await validationLoss(model, data, { split, batchSize: 7 });
  const b = await validationLoss(model, data, { split, batchSize: 7 });
  assertEquals(tf.memory().numTensors, before, "validationLoss leaked tensors");
  assertEquals(a, b); // every digit, every bucket
  assertEquals(a.items, split.heldOut.length);
  assertEquals(a.evaluations, split.heldOut.length * T_BUCKETS);
  assertEquals(a.counts, new Array(T_BUCKETS).fill(split.heldOut.length));
  const meanOfBuckets = a.buckets.reduce((s, v) => s + v, 0) / T_BUCKETS;
  assertLess(Math.abs(meanOfBuckets - a.loss) / a.loss, 1e-12);
  assert(Number.isFinite(a.loss) && a.loss > 0.5, `loss ${a.loss}`);
  // Another grid seed gives another (close) estimate; the batch size only the last digits.
  const c = await validationLoss(model, data, { split, seed: 1 });
  assert(c.loss !== a.loss);
  const d = await validationLoss(model, data, { split, batchSize: 64 });
  assertLess(Math.abs(d.loss - a.loss) / a.loss, 1e-5);
  // A subset (maxItems) is the first held-out latents.
  const e = await validationLoss(model, data, { split, maxItems: 2, tPerItem: 3 });
  assertEquals([e.items, e.evaluations], [2, 6]);
  assertEquals(e.counts.reduce((s, v) => s + v, 0), 6);
  model.dispose();
  data.latents.dispose();
});

Deno.test({
  name: "validation loss equals a separate float64 computation (golden DiT-Nano weights)",
  ignore: !GOLDEN,
  fn: async () => {
    await loadBackend("wasm");
    const model = await DiT.load(GOLDEN!);
    const data = randomSet(6, 32, { splits: "test" });
    const split = heldOutSplit(data, { fraction: 0.5 });
    const indices = [1, 4]; // evaluate these two, whatever the split says
    const k = 4;
    const res = await validationLoss(model, data, { split, indices, tPerItem: k, seed: 9 });
    // Reference: x_t and v in float64 by hand, one model call per point, MSE summed in float64.
    const clean = await data.latents.data();
    const per = 32 * 32 * 4;
    const sums = new Array(T_BUCKETS).fill(0);
    const counts = new Array(T_BUCKETS).fill(0);
    let total = 0;
    for (const i of indices) {
      for (let s = 0; s < k; s++) {
        const { t, noise } = gridPoint(split.keys[i], s, { tPerItem: k, seed: 9 });
        assert(t >= s / k && t < (s + 1) / k, `t ${t} outside stratum ${s}`);
        const t32 = Math.fround(t);
        const xt = new Float32Array(per);
        const v = new Float64Array(per);
        for (let j = 0; j < per; j++) {
          const x = clean[i * per + j];
          xt[j] = (1 - t32) * noise[j] + t32 * x;
          v[j] = x - noise[j];
        }
        const out = model.forward(tf.tensor4d(xt, [1, 32, 32, 4]), [t32], [data.labels[i]]);
        const pred = await out.data();
        out.dispose();
        let se = 0;
        for (let j = 0; j < per; j++) se += (pred[j] - v[j]) ** 2;
        const mse = se / per;
        const bucket = Math.floor(t * T_BUCKETS);
        sums[bucket] += mse;
        counts[bucket]++;
        total += mse;
      }
    }
    assertEquals(res.counts, counts);
    assertLess(Math.abs(res.loss - total / (2 * k)) / res.loss, 2e-6);
    res.buckets.forEach((b, i) => {
      if (counts[i] === 0) assert(Number.isNaN(b), `empty bucket ${i} should be NaN`);
      else assertLess(Math.abs(b - sums[i] / counts[i]) / b, 2e-6, `bucket ${i}`);
    });
    // The labels matter: the same grid with other classes gives another loss.
    const other = { ...data, labels: data.labels.map((l) => (l + 50) % 102) };
    const res2 = await validationLoss(model, other, { split, indices, tPerItem: k, seed: 9 });
    assert(res2.loss !== res.loss, "the loss must depend on the class labels");
    model.dispose();
    data.latents.dispose();
  },
});

Deno.test("validation loss: bad inputs give clear errors", async () => {
  await loadBackend("wasm");
  const model = DiT.create(PRESETS["DiT-Pico/2"], { seed: 0 });
  const data = randomSet(10, 8);
  await assertRejects(
    () => validationLoss(model, data, { split: heldOutSplit(data, { fraction: 0 }) }),
    Error,
    "held-out slice is empty",
  );
  await assertRejects(
    () => validationLoss(model, data, { split: heldOutSplit([{ count: 3, metadata: {} }]) }),
    Error,
    "make the split from this dataset",
  );
  await assertRejects(() => validationLoss(model, data, { tPerItem: 0 }), RangeError, "tPerItem");
  await assertRejects(() => validationLoss(model, data, { indices: [10] }), RangeError, "index 10");
  const big = randomSet(2, 16);
  await assertRejects(
    () => validationLoss(model, big, { indices: [0] }),
    Error,
    "the latents are [16, 16, 4] but the model takes [8, 8, 4]",
  );
  const badLabels = { ...data, labels: new Int32Array(10).fill(200) };
  await assertRejects(
    () => validationLoss(model, badLabels, { indices: [0] }),
    Error,
    "outside the model's classes",
  );
  assertThrows(() => selectLatents(data, [11]), RangeError, "outside the dataset");
  const sub = selectLatents(data, [3, 1]);
  assertEquals(Array.from(sub.labels), [data.labels[3], data.labels[1]]);
  assertEquals(
    Array.from(await sub.latents.data()),
    Array.from((await data.latents.data()).slice(3 * 256, 4 * 256)).concat(
      Array.from((await data.latents.data()).slice(256, 2 * 256)),
    ),
  );
  sub.latents.dispose();
  big.latents.dispose();
  data.latents.dispose();
  model.dispose();
});

// ---------------------------------------------------------------- grid

Deno.test({
  name: "evaluation grid: fixed classes and noise -> the same PNG twice; captions; bad input",
  ignore: !GOLDEN || !TAESD,
  fn: async () => {
    await loadBackend("wasm");
    const model = await DiT.load(GOLDEN!);
    const vae = await Taesd.load({ dir: TAESD! });
    const names = Array.from({ length: 102 }, (_, i) => `flower ${i}`);
    const before = tf.memory().numTensors;
    const opts = { classes: [73, 5], perClass: 1, steps: 2, classNames: names, batchSize: 1 };
    const a = await evaluationGrid(model, vae, opts);
    const b = await evaluationGrid(model, vae, opts);
    const c = await evaluationGrid(model, vae, { ...opts, batchSize: 2 });
    assertEquals(tf.memory().numTensors, before, "evaluationGrid leaked tensors");
    assertEquals(Array.from(a.png.subarray(0, 8)), [137, 80, 78, 71, 13, 10, 26, 10]);
    // (Byte arrays compared by hand: a failed deepStrictEqual on 400 kB would print for minutes.)
    const same = (x: Uint8Array, y: Uint8Array) =>
      x.length === y.length && x.every((v, i) => v === y[i]);
    assert(same(a.png, b.png), "the same options must give the same PNG bytes");
    // Another batch size: the same noise, and products whose rows do not depend on how many
    // share the call (matmul.ts, BLAS_ROW_BLOCK), so the same bytes.
    assert(same(a.png, c.png), "the grid must not depend on the batch size");
    assertEquals(a.captions, ["flower 73", "flower 5"]);
    assertEquals(a.classes, [73, 5]);
    await assertRejects(
      () => evaluationGrid(model, vae, { classes: [102] }),
      RangeError,
      "class 102",
    );
    await assertRejects(() => evaluationGrid(model, vae, { steps: 0 }), RangeError, "steps");
    vae.dispose();
    model.dispose();
  },
});
