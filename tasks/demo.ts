// deno task demo: the whole pipeline on the real photos in shared/, as one command —
// encode (TAESD, photos + mirror images) -> train (smoke preset) -> export -> sample a grid.
// Each stage is the ordinary task, run as a subprocess, so this file only chains them.
import { fileURLToPath } from "node:url";
import { BACKEND_OPTION, parseCommandLine } from "../lib/cli/args.ts";
import { env } from "../lib/runtime/env.ts";

const SPEC = {
  name: "deno task demo",
  description: "The main job: encodes the shared Oxford photos (and their mirror images) with " +
    "TAESD, trains the smoke preset on them, exports the EMA weights and samples a labelled " +
    "grid into <out>/flowers.png.",
  options: {
    out: { type: "string", placeholder: "DIR", default: "runs/demo", description: "run folder" },
    shared: {
      type: "string",
      placeholder: "DIR",
      description: "shared/ folder [default: $ANTHOS_SHARED or ../shared]",
    },
    steps: { type: "integer", description: "training steps [default: the smoke preset's]" },
    backend: BACKEND_OPTION,
  },
  examples: ["deno task demo", "ANTHOS_QUICK=1 deno task demo --out runs/quick"],
  epilog: "Environment: ANTHOS_QUICK=1 makes every stage CI-sized (a few minutes in all).",
} as const;

const { values: o } = parseCommandLine(SPEC);
const out = o.out;
const shared = o.shared ?? env.shared ??
  fileURLToPath(new URL("../../shared", import.meta.url));
const taesd = `${shared}/weights/taesd`;
const photos = `${shared}/data/oxford102`;
try {
  await Deno.stat(`${photos}/imagelabels.mat`);
} catch {
  console.error(
    `demo: no Oxford photos at ${photos}. Point --shared or ANTHOS_SHARED at the shared/ folder.`,
  );
  Deno.exit(1);
}
const backend = o.backend ? ["--backend", o.backend] : [];
const latents = `${out}/latents-taesd.safetensors`;

async function run(task: string, args: string[]): Promise<void> {
  console.error(`\n== deno task ${task} ${args.join(" ")}`);
  const status = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", fileURLToPath(new URL(`./${task}.ts`, import.meta.url)), ...args],
    stdin: "inherit",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn().status;
  if (!status.success) {
    console.error(`demo: \`deno task ${task}\` failed (exit ${status.code})`);
    Deno.exit(status.code || 1);
  }
}

await run("encode", [
  ...["--data", photos, "--splits", "train", "--vae", "taesd", "--vae-dir", taesd],
  ...["--out", latents, ...backend],
]);
await run("train", [
  ...["--preset", "smoke", "--data", latents, "--out", out, "--vae", "taesd", "--vae-dir", taesd],
  ...(o.steps ? ["--steps", String(o.steps)] : []),
  ...backend,
]);
await run("convert", [
  ...["--checkpoint", `${out}/checkpoint.safetensors`, "--out", `${out}/weights`],
  ...["--latents", latents],
]);
await run("sample", [
  "pink primrose,sunflower,rose,daffodil,water lily,tiger lily,lotus,bird of paradise",
  ...["--repo-dir", out, "--vae", "taesd", "--vae-dir", taesd, "--seed", "0"],
  ...["--steps", env.quick ? "10" : "50", "--out", `${out}/flowers.png`],
  ...backend,
]);
console.error(
  `\ndemo: done. Flowers: ${out}/flowers.png; loss log: ${out}/log.jsonl; weights: ${out}/weights/`,
);
