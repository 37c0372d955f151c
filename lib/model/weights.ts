/**
 * `weights/config.json`: what a published Anthos model needs besides its tensors — the
 * architecture, the sampling defaults, and the latent space it was trained in.
 *
 * @module
 */

import { DEFAULT_CONFIG, type DiTConfig } from "./dit.ts";
import { SAMPLE_DEFAULTS, type SamplerName } from "./flow.ts";
import { writeFileAtomic } from "../io/fs.ts";

/** The contents of `weights/config.json`. */
export interface WeightsConfig {
  /** Format tag, always "anthos". */
  format: "anthos";
  /** Architecture of `model.safetensors`. */
  model: DiTConfig;
  /** Sampling defaults the model was tuned for. */
  sampling: { steps: number; cfgScale: number; sampler: SamplerName };
  /** The autoencoder whose latents the model was trained on, and its scaling factor. */
  vae: { name: "sd-vae-ft-ema" | "taesd"; scalingFactor: number };
  /** Training provenance (steps, batch size, dataset, ...), free-form. */
  training?: Record<string, unknown>;
}

/**
 * The published model's config (DiT-Nano/2 on sd-vae-ft-ema latents, Heun 50, CFG 4.0).
 *
 * @example
 * ```ts
 * import { defaultWeightsConfig } from "./weights.ts";
 * defaultWeightsConfig().sampling; // { steps: 50, cfgScale: 4, sampler: "heun" }
 * ```
 */
export function defaultWeightsConfig(): WeightsConfig {
  return {
    format: "anthos",
    model: { ...DEFAULT_CONFIG },
    sampling: { ...SAMPLE_DEFAULTS },
    vae: { name: "sd-vae-ft-ema", scalingFactor: 0.18215 },
  };
}

/**
 * Reads and checks `config.json`; missing fields take the published defaults.
 *
 * @example
 * ```ts
 * import { readWeightsConfig } from "./weights.ts";
 * const cfg = await readWeightsConfig("weights/config.json");
 * cfg.sampling.steps; // 50
 * ```
 */
export async function readWeightsConfig(path: string): Promise<WeightsConfig> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Deno.errors.NotFound(
        `model config not found: ${path}. Train and export a model ` +
          `(\`deno task train\`, then \`deno task convert\`), or copy published weights into weights/.`,
      );
    }
    throw e;
  }
  return parseWeightsConfig(text, { source: path });
}

/**
 * Parses the text of `config.json` (no file access: the browser demo uses this with fetched
 * text); missing fields take the published defaults.
 *
 * @example
 * ```ts
 * import { parseWeightsConfig } from "./weights.ts";
 * const cfg = parseWeightsConfig('{"format": "anthos", "vae": {"name": "taesd"}}');
 * cfg.vae.name; // "taesd"
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
    throw new Error(
      `${path} is not valid JSON (${
        (e as Error).message
      }): re-export it with \`deno task convert\``,
    );
  }
  const d = defaultWeightsConfig();
  return {
    format: "anthos",
    model: { ...d.model, ...raw.model },
    sampling: { ...d.sampling, ...raw.sampling },
    vae: { ...d.vae, ...raw.vae },
    training: raw.training,
  };
}

/**
 * Writes `config.json` atomically.
 *
 * @example
 * ```ts
 * import { defaultWeightsConfig, writeWeightsConfig } from "./weights.ts";
 * await writeWeightsConfig("/tmp/config.json", defaultWeightsConfig());
 * ```
 */
export async function writeWeightsConfig(path: string, config: WeightsConfig): Promise<void> {
  await writeFileAtomic(path, JSON.stringify(config, null, 2) + "\n");
}
