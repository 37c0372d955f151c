// weights/config.json: types and ranges are checked when it is read; errors name the file, the
// field and a fix (a field left out takes the published model's value).
import { modelStatus, parseWeightsConfig, readWeightsConfig } from "../lib/model/weights.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./_assert.ts";

Deno.test("weights config: missing fields take the published defaults; good values pass", () => {
  const c = parseWeightsConfig('{"format": "anthos", "vae": {"name": "taesd"}}');
  assertEquals(c.model.hiddenSize, 96);
  assertEquals(c.sampling, { steps: 50, cfgScale: 4, sampler: "heun" });
  assertEquals(c.vae, { name: "taesd", scalingFactor: 0.18215 });
  const d = parseWeightsConfig(
    JSON.stringify({ sampling: { steps: 25, cfgScale: 0, sampler: "euler" }, model: { depth: 2 } }),
  );
  assertEquals([d.sampling.steps, d.sampling.cfgScale, d.model.depth], [25, 0, 2]);
});

Deno.test("weights config: null, strings for numbers, zero steps and more name file and field", async () => {
  const bad = (json: string, ...parts: string[]) => {
    const e = assertThrows(() => parseWeightsConfig(json, { source: "w/config.json" }));
    assert(e.message.startsWith("w/config.json is not a valid model config: "), e.message);
    for (const p of parts) assert(e.message.includes(p), `${json}: "${e.message}" lacks "${p}"`);
    assert(!e.message.includes("use e.g. 0"), e.message);
    return e;
  };
  bad("null", 'it must hold a JSON object ({"format": "anthos", ...}), got null');
  bad("[1]", "got an array");
  bad(
    '{"model": {"hiddenSize": "96"}}',
    '"model.hiddenSize" must be a positive integer, got the string "96"',
    "(write the number without quotes: 96)",
    "(DiT-Nano/2 uses 96)",
  );
  bad(
    '{"sampling": {"steps": 0}}',
    '"sampling.steps" must be a positive integer, got 0 (the published model uses 50)',
  );
  bad('{"sampling": {"steps": 2.5}}', '"sampling.steps" must be a positive integer, got 2.5');
  bad('{"sampling": {"cfgScale": 1e40}}', '"sampling.cfgScale" must be a number from 0 to 50');
  bad('{"sampling": {"sampler": "rk4"}}', '"sampling.sampler" must be "heun" or "euler"');
  bad('{"vae": {"name": "sdxl"}}', '"vae.name" must be "taesd" or "sd-vae-ft-ema"');
  bad('{"vae": {"scalingFactor": -1}}', '"vae.scalingFactor" must be a number > 0, got -1');
  bad('{"model": null}', '"model" must be an object, got null');
  bad('{"model": {"hidden_size": 96}}', 'unknown field "model.hidden_size" (known: inputSize');
  bad('{"model": {"hiddenSize": 90}}', '"model.hiddenSize" 90 must divide by "model.numHeads" 4');
  bad(
    '{"model": {"patchSize": 3}}',
    '"model.inputSize" 32 is not a multiple of "model.patchSize" 3',
  );
  bad('{"format": "diffusers"}', '"format" must be "anthos"');
  // Several problems are reported together.
  const two = bad('{"sampling": {"steps": 0, "sampler": 1}}', "sampling.steps", "sampling.sampler");
  assert(two.message.includes("Fix these fields"), two.message);
  // readWeightsConfig names the path it read.
  const dir = await Deno.makeTempDir({ prefix: "anthos-cfg-" });
  await Deno.writeTextFile(`${dir}/config.json`, "null");
  await assertRejects(
    () => readWeightsConfig(`${dir}/config.json`),
    Error,
    `${dir}/config.json is not a valid model config: it must hold a JSON object`,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("weights config: the training status of early, finished and unrecorded weights", async () => {
  const base = parseWeightsConfig('{"format": "anthos"}');
  assertEquals(modelStatus(base), null); // no training record: nothing claimed
  assertEquals(modelStatus({ ...base, training: { step: "638", steps: 120000 } }), null);
  const early = modelStatus({
    ...base,
    training: { step: 638, steps: 120000, device: "NVIDIA H200", valLoss: 1.81275 },
  })!;
  assertEquals([early.step, early.steps, early.complete, early.valLoss], [
    638,
    120000,
    false,
    1.81275,
  ]);
  assertEquals(
    early.text,
    "early checkpoint: step 638 of 120,000 (0.5%) on NVIDIA H200, EMA validation loss 1.8128; " +
      "the run goes on in later GPU slots, and until it is far along the images are not flowers yet",
  );
  const done = modelStatus({ ...base, training: { step: 120000, steps: 120000 } })!;
  assertEquals([done.complete, done.text], [true, "trained: 120,000 steps"]);
  // The weights this repository ships say what they are.
  const shipped = await readWeightsConfig(
    new URL("../weights/config.json", import.meta.url).pathname,
  );
  const s = modelStatus(shipped);
  assert(s !== null, "weights/config.json records its training");
  assertEquals(s.steps, 120000);
});
