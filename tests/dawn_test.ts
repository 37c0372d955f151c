// webgpu on Dawn (ANTHOS_WEBGPU=dawn: Chromium's WebGPU from the npm `webgpu` package) instead of
// Deno's own: tfjs's kernels and ours compute the same forward pass and gradients as the cpu
// backend, our attention kernels pass Dawn's WGSL compiler, and `deno task train` trains on it
// and says so in its ledger. Dawn refuses Mesa 22's
// lavapipe, so these run on the SwiftShader Vulkan driver that Debian's chromium ships (CI installs
// it: .ci/setup.sh); each in its own process (one webgpu backend per process).
import { assert, assertEquals } from "./_assert.ts";
import { IN_CI } from "./_shared.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const SWIFTSHADER = "/usr/lib/chromium/vk_swiftshader_icd.json";
const haveSwiftShader = (() => {
  try {
    return Deno.statSync(SWIFTSHADER).isFile;
  } catch {
    return false;
  }
})();
if (!haveSwiftShader) {
  const msg = `missing ${SWIFTSHADER}: the Dawn tests run on chromium's SwiftShader Vulkan ` +
    "(apt-get install chromium)";
  if (IN_CI) throw new Error(msg);
  console.warn(`SKIP: ${msg}`);
}

/** `deno <args>` from the project root on Dawn over SwiftShader; --no-lock: Dawn stays out of deno.lock. */
async function onDawn(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [args[0], "--no-lock", ...args.slice(1)],
    cwd: ROOT,
    env: {
      ANTHOS_WEBGPU: "dawn",
      VK_DRIVER_FILES: SWIFTSHADER,
      XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp",
      NO_COLOR: "1",
      ANTHOS_QUICK: "",
    },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

// The child: DiT-Pico/2 with every weight random (a fresh DiT's zero-initialised final layer would
// leave most gradients zero), forward, flow loss and every gradient on webgpu (Dawn), then the
// same on cpu; prints what it ran on and the largest relative differences.
const PARITY = `
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs";
import { deviceName, loadBackend } from "./lib/runtime/backend.ts";
import { DiT, PRESETS } from "./lib/model/dit.ts";
import { flowBatch, flowLoss } from "./lib/model/flow.ts";
import { Rng } from "./lib/runtime/rng.ts";
import { relErr as rel } from "./tests/_shared.ts";
async function run(name) {
  const info = await loadBackend(name);
  const model = DiT.create(PRESETS["DiT-Pico/2"], { seed: 5 });
  const rng = new Rng(9);
  const params = model.namedParams().filter((p) => p.variable.trainable);
  for (const p of params) {
    p.variable.assign(tf.tensor(rng.normalArray(p.variable.size).map((v) => 0.2 * v), p.variable.shape));
  }
  const x0 = tf.tensor4d(rng.normalArray(3 * 8 * 8 * 4), [3, 8, 8, 4]);
  const batch = flowBatch(x0, { y: [1, 40, 101], rng, classDropout: 0.3 });
  const { value, grads } = tf.variableGrads(() => flowLoss(model, batch), params.map((p) => p.variable));
  const v = model.forward(batch.xt, batch.t, batch.y);
  const out = {
    info, device: deviceName(info),
    v: Array.from(await v.data()), loss: (await value.data())[0],
    grads: await Promise.all(params.map(async (p) => Array.from(await grads[p.variable.name].data()))),
  };
  tf.dispose([v, value, x0, ...Object.values(grads)]);
  model.dispose();
  return out;
}
const gpu = await run("webgpu");
const cpu = await run("cpu");
console.log(JSON.stringify({
  webgpu: gpu.info.webgpu, adapter: gpu.info.adapter, device: gpu.device,
  forward: rel(gpu.v, cpu.v), loss: rel([gpu.loss], [cpu.loss]),
  grad: Math.max(...gpu.grads.map((g, i) => rel(g, cpu.grads[i]))),
  gradCount: gpu.grads.length, zeroGrads: cpu.grads.filter((g) => g.every((x) => x === 0)).length,
}));
`;

Deno.test({
  name: "Dawn: DiT-Pico/2 forward, loss and every gradient match the cpu backend",
  ignore: !haveSwiftShader,
  fn: async () => {
    const r = await onDawn(["eval", PARITY]);
    assertEquals(r.code, 0, r.stderr);
    const o = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
    console.log(`Dawn on ${o.adapter}: ${JSON.stringify(o)}`);
    assertEquals(o.webgpu, "Dawn (npm:webgpu@0.6.2)");
    assertEquals(o.device, `${o.adapter} via Dawn`);
    assertEquals(o.zeroGrads, 0); // every gradient is exercised
    // SwiftShader's own float arithmetic sets these, not Dawn: this child on Deno's WebGPU over
    // SwiftShader gives the same digits (forward 1.96e-4, worst gradient 8.04e-4), and 4.1e-7 /
    // 1.5e-6 over lavapipe.
    assert(o.forward < 1e-3 && o.loss < 1e-3, `forward ${o.forward}, loss ${o.loss}`);
    assert(o.grad < 3e-3, `worst gradient ${o.grad}`);
  },
});

Deno.test({
  name: "Dawn: deno task train trains on it, and the ledger and the export say so",
  ignore: !haveSwiftShader,
  fn: async () => {
    const tmp = await Deno.makeTempDir({ prefix: "anthos-dawn-" });
    try {
      // 16 random 8x8x4 latents of two classes, as encode writes them.
      const make = `
        import { saveLatents } from "./lib/data/latents.ts";
        import { Rng } from "./lib/runtime/rng.ts";
        const rng = new Rng(2);
        await saveLatents("${tmp}/latents.safetensors", {
          latents: rng.normalArray(16 * 256), labels: Int32Array.from({ length: 16 }, (_, i) => i % 2 ? 7 : 3),
          shape: [16, 8, 8, 4],
        }, { metadata: { vae: "taesd", scaling_factor: "0.18215", count: "16", source: "test" } });`;
      const m = await onDawn(["eval", make]);
      assertEquals(m.code, 0, m.stderr);
      const r = await onDawn([
        "run",
        "-A",
        "tasks/train.ts",
        ...["--preset", "smoke", "--model", "DiT-Pico/2", "--batch-size", "4", "--steps", "3"],
        ...["--backend", "webgpu", "--sample-every", "0", "--data", `${tmp}/latents.safetensors`],
        ...["--out", `${tmp}/run`],
      ]);
      assertEquals(r.code, 0, r.stderr);
      const lines = (f: string) =>
        Deno.readTextFileSync(f).trim().split("\n").map((l) => JSON.parse(l));
      const log = lines(`${tmp}/run/log.jsonl`);
      assertEquals(log.map((l) => l.step), [1, 2, 3]);
      assert(log.every((l) => Number.isFinite(l.loss) && l.loss > 0), JSON.stringify(log));
      const ledger = lines(`${tmp}/run/ledger.jsonl`);
      assertEquals(ledger.length, 1);
      assertEquals(ledger[0].backend, "webgpu");
      assert(/^SwiftShader.* via Dawn$/.test(ledger[0].device), ledger[0].device);
      const cfg = JSON.parse(Deno.readTextFileSync(`${tmp}/run/export/config.json`));
      assertEquals(cfg.training.device, ledger[0].device);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});

Deno.test({
  name: "Dawn: the attention kernels (tiled and untiled) pass Tint and match tf ops and each other",
  ignore: !haveSwiftShader,
  fn: async () => {
    // Dawn compiles WGSL with Tint (Deno's WebGPU with naga): the tiled kernels' workgroup memory
    // and barriers must pass its uniformity analysis too. kernels_test.ts's attention tests, run
    // on Dawn: the layer against tf ops on cpu, tiled = untiled bit for bit, no validation error.
    const r = await onDawn(["test", "-A", "tests/kernels_test.ts", "--filter", "attention"]);
    assertEquals(r.code, 0, r.stdout + r.stderr);
    assert(/ok \| 3 passed \| 0 failed/.test(r.stdout), r.stdout);
    assert(!/SKIP/.test(r.stdout + r.stderr), "ran on Dawn, not skipped");
  },
});
