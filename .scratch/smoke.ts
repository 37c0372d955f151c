import * as tf from "@tensorflow/tfjs-core";
import { loadBackend } from "../lib/runtime/backend.ts";
import { loadLatents } from "../lib/data/latents.ts";
import { DiT } from "../lib/model/dit.ts";
import { heldOutSplit, validationLoss } from "../lib/training/eval.ts";
await loadBackend(Deno.args[0] as "wasm" ?? "wasm");
const data = await loadLatents("/work/shared/data/latents/oxford102-test-taesd.safetensors");
const split = heldOutSplit(data);
console.log("held out", split.heldOut.length, "of", data.labels.length);
const model = await DiT.load("/work/shared/spec/golden/weights.safetensors");
for (let r = 0; r < 2; r++) {
  const t0 = performance.now();
  const res = await validationLoss(model, data, { split, maxItems: 16 });
  console.log(res.loss, res.buckets.map((b) => b.toFixed(5)).join(" "), res.counts.join(","), ((performance.now() - t0) / 1000).toFixed(2), "s", tf.memory().numTensors);
}
