/**
 * `weights/config.json`: what a published Anthos model needs besides its tensors — the
 * architecture, the sampling defaults, and the latent space it was trained in.
 *
 * @module
 */

import { DEFAULT_CONFIG, type DiT, type DiTConfig } from "./dit.ts";
import { CFG_SCALE_RANGE, SAMPLE_DEFAULTS, type SamplerName } from "./flow.ts";
import { AUTOENCODER_KINDS, type AutoencoderKind, AUTOENCODERS } from "./latent_space.ts";
import { writeFileAtomic } from "../io/fs.ts";
import { markMissing } from "../runtime/errors.ts";

/** The contents of `weights/config.json`. */
export interface WeightsConfig {
  /** Format tag, always "anthos". */
  format: "anthos";
  /** Architecture of `model.safetensors`. */
  model: DiTConfig;
  /** Sampling defaults the model was tuned for. */
  sampling: { steps: number; cfgScale: number; sampler: SamplerName };
  /** The autoencoder whose latents the model was trained on, and its scaling factor. */
  vae: { name: AutoencoderKind; scalingFactor: number };
  /** Training provenance (steps, batch size, dataset, ...), free-form. */
  training?: Record<string, unknown>;
}

/** How far the training behind a weights folder got, from `config.json`'s `training`. */
export interface ModelStatus {
  /** Steps trained. */
  step: number;
  /** Steps of the recipe. */
  steps: number;
  /** Whether the recipe ran to its end. */
  complete: boolean;
  /** EMA validation loss at `step`, if measured. */
  valLoss: number | null;
  /** One line for people, e.g. "early checkpoint: step 638 of 120,000 (0.5%) ...". */
  text: string;
}

/**
 * Where the training behind `config` stands, or null when `config.json` does not say (weights
 * made elsewhere). An unfinished run's weights load and sample like any others; this is how
 * tasks and the demo page say that their images are not flowers yet.
 *
 * @example
 * ```ts
 * import { defaultWeightsConfig, modelStatus } from "./weights.ts";
 * const s = modelStatus({ ...defaultWeightsConfig(), training: { step: 638, steps: 120000 } });
 * if (!s || s.complete || !s.text.startsWith("early checkpoint")) throw new Error("unfinished");
 * ```
 */
export function modelStatus(config: WeightsConfig): ModelStatus | null {
  const t = config.training ?? {};
  const { step, steps } = t;
  // Only what the exporter writes counts (integers); anything else claims nothing.
  if (!Number.isInteger(step) || !Number.isInteger(steps) || (steps as number) <= 0) return null;
  const valLoss = typeof t.valLoss === "number" ? t.valLoss : null;
  const n = (x: number) => x.toLocaleString("en-US");
  const where = typeof t.device === "string" ? ` on ${t.device}` : "";
  const loss = valLoss === null ? "" : `, EMA validation loss ${valLoss.toFixed(4)}`;
  const [done, total] = [step as number, steps as number];
  const complete = done >= total;
  const text = complete
    ? `trained: ${n(done)} steps${where}${loss}`
    : `early checkpoint: step ${n(done)} of ${n(total)} (${(100 * done / total).toFixed(1)}%)` +
      `${where}${loss}; the run goes on in later GPU slots, and until it is far along the ` +
      `images are not flowers yet`;
  return { step: done, steps: total, complete, valLoss, text };
}

/**
 * The published model's config (DiT-Nano/2 on sd-vae-ft-ema latents, Heun 50, CFG 4.0).
 *
 * @example
 * ```ts
 * import { defaultWeightsConfig } from "./weights.ts";
 * const { steps, cfgScale, sampler } = defaultWeightsConfig().sampling;
 * if (`${steps} ${cfgScale} ${sampler}` !== "50 4 heun") throw new Error("Heun 50, CFG 4.0");
 * ```
 */
export function defaultWeightsConfig(): WeightsConfig {
  return {
    format: "anthos",
    model: { ...DEFAULT_CONFIG },
    sampling: { ...SAMPLE_DEFAULTS },
    vae: { name: "sd-vae-ft-ema", scalingFactor: AUTOENCODERS["sd-vae-ft-ema"].scalingFactor },
  };
}

/**
 * Reads and checks `config.json`; missing fields take the published defaults.
 *
 * @example
 * ```ts
 * import { defaultWeightsConfig, readWeightsConfig, writeWeightsConfig } from "./weights.ts";
 * const path = `${await Deno.makeTempDir()}/config.json`;
 * await writeWeightsConfig(path, defaultWeightsConfig());
 * const cfg = await readWeightsConfig(path);
 * if (cfg.sampling.steps !== 50 || cfg.model.numClasses !== 102) throw new Error("round trip");
 * ```
 */
export async function readWeightsConfig(path: string): Promise<WeightsConfig> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw markMissing(
        new Deno.errors.NotFound(
          `model config not found: ${path}. Train and export a model ` +
            `(a Trainer run, then exportCheckpoint()), or copy published weights into weights/.`,
        ),
        "weights",
      );
    }
    throw e;
  }
  return parseWeightsConfig(text, { source: path });
}

/**
 * Parses the text of `config.json` (no file access: the browser demo uses this with fetched
 * text); missing fields take the published defaults. Types and ranges are checked: an error
 * names the file, every bad field and a fix.
 *
 * @example
 * ```ts
 * import { parseWeightsConfig } from "./weights.ts";
 * const cfg = parseWeightsConfig('{"format": "anthos", "vae": {"name": "taesd"}}');
 * if (cfg.vae.name !== "taesd" || cfg.sampling.steps !== 50) throw new Error("defaults fill in");
 * ```
 */
export function parseWeightsConfig(
  text: string,
  options: { source?: string } = {},
): WeightsConfig {
  const path = options.source ?? "config.json";
  let raw: Partial<WeightsConfig>;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw markMissing(
      new Error(
        `${path} is not valid JSON (${(e as Error).message}): re-export it with exportCheckpoint()`,
      ),
      "weights",
    );
  }
  const d = defaultWeightsConfig();
  const problems = checkWeightsConfig(raw, d);
  if (problems.length > 0) {
    throw markMissing(
      new Error(
        `${path} is not a valid model config: ${problems.join("; ")}. Fix ${
          problems.length > 1 ? "these fields" : "this field"
        } (a field left out takes the published model's value), or re-export the model ` +
          `with exportCheckpoint()`,
      ),
      "weights",
    );
  }
  return {
    format: "anthos",
    model: { ...d.model, ...raw.model },
    sampling: { ...d.sampling, ...raw.sampling },
    vae: { ...d.vae, ...raw.vae },
    training: raw.training,
  };
}

/** Every type or range problem of a parsed config.json, each naming its field and a fix. */
function checkWeightsConfig(raw: unknown, d: WeightsConfig): string[] {
  const kind = (v: unknown) =>
    v === null
      ? "null"
      : Array.isArray(v)
      ? "an array"
      : typeof v === "string"
      ? `the string ${JSON.stringify(v)}`
      : `${v}`;
  const isObject = (v: unknown): v is Record<string, unknown> =>
    typeof v === "object" && v !== null && !Array.isArray(v);
  if (!isObject(raw)) {
    return [`it must hold a JSON object ({"format": "anthos", ...}), got ${kind(raw)}`];
  }
  const problems: string[] = [];
  const quoted = (v: unknown) =>
    typeof v === "string" && v.trim() !== "" && Number.isFinite(Number(v))
      ? ` (write the number without quotes: ${v.trim()})`
      : "";
  const section = (name: "model" | "sampling" | "vae", allowed: readonly string[]) => {
    const v = raw[name];
    if (v === undefined) return {};
    if (!isObject(v)) {
      problems.push(`"${name}" must be an object, got ${kind(v)}`);
      return {};
    }
    for (const k of Object.keys(v)) {
      if (!allowed.includes(k)) {
        problems.push(`unknown field "${name}.${k}" (known: ${allowed.join(", ")})`);
      }
    }
    return v;
  };
  if (raw.format !== undefined && raw.format !== "anthos") {
    problems.push(`"format" must be "anthos", got ${kind(raw.format)}`);
  }
  const model = section("model", Object.keys(d.model));
  for (const [k, def] of Object.entries(d.model) as [keyof typeof d.model, number][]) {
    const v = model[k];
    if (v === undefined) continue;
    const ok = k === "mlpRatio"
      ? typeof v === "number" && Number.isFinite(v) && v > 0
      : Number.isInteger(v) && (v as number) >= 1;
    if (!ok) {
      const want = k === "mlpRatio" ? "a number > 0" : "a positive integer";
      problems.push(
        `"model.${k}" must be ${want}, got ${kind(v)}${quoted(v)} (DiT-Nano/2 uses ${def})`,
      );
    }
  }
  const m = { ...d.model, ...model } as Record<string, unknown>;
  const int = (k: string) => Number.isInteger(m[k]) && (m[k] as number) >= 1;
  if (int("inputSize") && int("patchSize") && (m.inputSize as number) % (m.patchSize as number)) {
    problems.push(
      `"model.inputSize" ${m.inputSize} is not a multiple of "model.patchSize" ${m.patchSize}`,
    );
  }
  if (
    int("hiddenSize") && int("numHeads") &&
    ((m.hiddenSize as number) % (m.numHeads as number) || (m.hiddenSize as number) % 4)
  ) {
    problems.push(
      `"model.hiddenSize" ${m.hiddenSize} must divide by "model.numHeads" ${m.numHeads} and by 4`,
    );
  }
  const sampling = section("sampling", Object.keys(d.sampling));
  if (
    sampling.steps !== undefined &&
    !(Number.isInteger(sampling.steps) && (sampling.steps as number) >= 1)
  ) {
    problems.push(
      `"sampling.steps" must be a positive integer, got ${kind(sampling.steps)}` +
        `${quoted(sampling.steps)} (the published model uses ${d.sampling.steps})`,
    );
  }
  if (sampling.cfgScale !== undefined) {
    const { min, max } = CFG_SCALE_RANGE;
    const v = sampling.cfgScale;
    if (!(typeof v === "number" && v >= min && v <= max)) {
      problems.push(
        `"sampling.cfgScale" must be a number from ${min} to ${max}, got ${kind(v)}` +
          `${quoted(v)} (the published model uses ${d.sampling.cfgScale})`,
      );
    }
  }
  if (
    sampling.sampler !== undefined && sampling.sampler !== "heun" && sampling.sampler !== "euler"
  ) {
    problems.push(`"sampling.sampler" must be "heun" or "euler", got ${kind(sampling.sampler)}`);
  }
  const vae = section("vae", Object.keys(d.vae));
  if (vae.name !== undefined && !(AUTOENCODER_KINDS as readonly unknown[]).includes(vae.name)) {
    const names = AUTOENCODER_KINDS.map((k) => `"${k}"`).join(" or ");
    problems.push(`"vae.name" must be ${names}, got ${kind(vae.name)}`);
  }
  if (
    vae.scalingFactor !== undefined &&
    !(typeof vae.scalingFactor === "number" && Number.isFinite(vae.scalingFactor) &&
      vae.scalingFactor > 0)
  ) {
    problems.push(
      `"vae.scalingFactor" must be a number > 0, got ${kind(vae.scalingFactor)}` +
        `${quoted(vae.scalingFactor)} (SD VAE latents use ${d.vae.scalingFactor})`,
    );
  }
  if (raw.training !== undefined && !isObject(raw.training)) {
    problems.push(`"training" must be an object, got ${kind(raw.training)}`);
  }
  return problems;
}

/**
 * Writes `config.json` atomically.
 *
 * @example
 * ```ts
 * import { defaultWeightsConfig, writeWeightsConfig } from "./weights.ts";
 * const path = `${await Deno.makeTempDir()}/config.json`;
 * await writeWeightsConfig(path, defaultWeightsConfig());
 * if (JSON.parse(await Deno.readTextFile(path)).format !== "anthos") throw new Error("written");
 * ```
 */
export async function writeWeightsConfig(path: string, config: WeightsConfig): Promise<void> {
  await writeFileAtomic(path, JSON.stringify(config, null, 2) + "\n");
}

/** What {@link saveWeights} wrote. */
export interface SavedWeights {
  /** Path of `model.safetensors`. */
  model: string;
  /** Path of `config.json`. */
  config: string;
  /** Path of the copied `classes.txt`, if any. */
  classes: string | null;
  /** The written config. */
  weightsConfig: WeightsConfig;
}

/**
 * Writes a weights folder, the one way one is made: `model.safetensors` (reference keys, PyTorch
 * layout) + `config.json` (the model's architecture, sampling defaults, latent space, provenance),
 * plus a copy of `classes.txt` when given. Each file is written atomically.
 *
 * @example
 * ```ts
 * import { DiT } from "./dit.ts";
 * import { saveWeights } from "./weights.ts";
 * const model = DiT.create({}, { seed: 0 });
 * await saveWeights("/tmp/anthos-weights", model, { vae: { name: "taesd", scalingFactor: 0.18215 } });
 * model.dispose();
 * ```
 */
export async function saveWeights(
  dir: string,
  model: DiT,
  options: {
    vae?: WeightsConfig["vae"];
    sampling?: Partial<WeightsConfig["sampling"]>;
    training?: Record<string, unknown>;
    classesFile?: string;
    metadata?: Record<string, string>;
  } = {},
): Promise<SavedWeights> {
  const d = defaultWeightsConfig();
  const weightsConfig: WeightsConfig = {
    format: "anthos",
    model: { ...model.config },
    sampling: { ...d.sampling, ...options.sampling },
    vae: options.vae ?? d.vae,
    ...(options.training ? { training: options.training } : {}),
  };
  await Deno.mkdir(dir, { recursive: true });
  const modelPath = `${dir}/model.safetensors`;
  await model.save(modelPath, { metadata: options.metadata });
  const configPath = `${dir}/config.json`;
  await writeWeightsConfig(configPath, weightsConfig);
  let classes: string | null = null;
  if (options.classesFile) {
    classes = `${dir}/classes.txt`;
    if (await realPath(options.classesFile) !== await realPath(classes)) {
      await writeFileAtomic(classes, await Deno.readFile(options.classesFile));
    }
  }
  return { model: modelPath, config: configPath, classes, weightsConfig };
}

async function realPath(p: string): Promise<string | null> {
  try {
    return await Deno.realPath(p);
  } catch {
    return null;
  }
}
