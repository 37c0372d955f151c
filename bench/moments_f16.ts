// Does a checkpoint with F16 AdamW moments still resume exactly? Trains N steps straight, and N/2
// steps, checkpoint (moments F32 or F16), resume, N/2 steps; prints how far the resumed weights,
// EMA and moments are from the straight run's, how many moment values F16 cannot hold (flushed to
// zero or changed), and the checkpoint sizes.
//
//   deno run -A bench/moments_f16.ts [latents.safetensors] [steps]
//
// Without a cache it uses a random 32x32x4 set (DiT-Nano/2, batch 16, smoke recipe).
import * as tf from "@tensorflow/tfjs-core";
import { loadBackend } from "../lib/runtime/backend.ts";
import { loadLatents } from "../lib/data/latents.ts";
import { Trainer } from "../lib/training/trainer.ts";
import { readCheckpoint } from "../lib/training/checkpoint.ts";
import { f16ToF32, f32ToF16 } from "../lib/io/safetensors.ts";
import type { LatentDataset } from "../lib/data/latents.ts";

await loadBackend("wasm");
const [path, stepsArg] = Deno.args;
const steps = Number(stepsArg ?? 8);
const data: LatentDataset = path ? await loadLatents(path, { limit: 512 }) : {
  latents: tf.randomNormal([64, 32, 32, 4], 0, 1, "float32", 1) as tf.Tensor4D,
  labels: Int32Array.from({ length: 64 }, (_, i) => i % 102),
  metadata: {},
};
const recipe = { preset: "smoke", batchSize: 16, steps } as const;

async function snapshot(t: Trainer): Promise<Float32Array[]> {
  const s = t.state();
  const vars = [...s.model.trainableVariables(), ...s.ema.trainableVariables()];
  return await Promise.all(
    [...vars, ...s.adamM, ...s.adamV].map((v) => v.data() as Promise<Float32Array>),
  );
}

const straight = new Trainer(recipe);
await straight.fit(data);
const want = await snapshot(straight);
straight.dispose();
const dir = await Deno.makeTempDir();
for (const moments of ["F32", "F16"] as const) {
  const half = new Trainer(recipe);
  await half.fit(data, { untilStep: steps / 2 });
  if (moments === "F16") {
    // How many moment values F16 cannot hold, and how many it flushes to zero.
    let changed = 0, zeroed = 0, total = 0;
    const s = half.state();
    for (const m of [...s.adamM, ...s.adamV]) {
      for (const v of await m.data() as Float32Array) {
        const r = f16ToF32(f32ToF16(v));
        total++;
        if (r !== v) changed++;
        if (r === 0 && v !== 0) zeroed++;
      }
    }
    console.log(`F16: ${changed}/${total} moment values change, ${zeroed} flush to zero`);
  }
  const file = `${dir}/ckpt-${moments}.safetensors`;
  await half.saveCheckpoint(file, { moments });
  half.dispose();
  const state = await readCheckpoint(file);
  const resumed = new Trainer({ restore: state });
  await resumed.fit(data);
  const got = await snapshot(resumed);
  resumed.dispose();
  let worst = 0, differ = 0;
  got.forEach((g, i) => {
    let num = 0, den = 0;
    for (let j = 0; j < g.length; j++) {
      if (!Object.is(g[j], want[i][j])) differ++;
      num = Math.max(num, Math.abs(g[j] - want[i][j]));
      den = Math.max(den, Math.abs(want[i][j]));
    }
    worst = Math.max(worst, den > 0 ? num / den : num);
  });
  const mb = ((await Deno.stat(file)).size / 1e6).toFixed(1);
  console.log(
    `moments ${moments}: checkpoint ${mb} MB; after ${steps / 2} + ${steps / 2} steps ` +
      `${differ} values differ from the straight run, worst rel err ${worst.toExponential(2)}`,
  );
}
await Deno.remove(dir, { recursive: true });
data.latents.dispose();
