/**
 * Small helpers shared by the notebooks: where things are, the CI size switch, and an SVG line
 * chart (the notebooks' only plotting need, so no charting dependency).
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { env } from "../lib/runtime/env.ts";
import type { LatentDataset } from "../lib/data/latents.ts";
import { HELD_OUT_FRACTION, heldOutSplit, type LatentSplit } from "../lib/training/eval.ts";
import { type LogRecord, readLog } from "../lib/training/run.ts";

/** Project root (the folder holding deno.json and weights/). */
export const ROOT: string = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");

/** The shared reference material: $ANTHOS_SHARED, else ../shared beside the project. */
export const SHARED: string = env.shared ??
  fileURLToPath(new URL("../../shared", import.meta.url)).replace(/\/$/, "");

/** Where the notebooks write (latent cache, training log, weights); git-ignored. */
export const RUNS: string = env.notebookRuns ?? `${ROOT}/runs/notebooks`;

/** The latent cache notebook 01 writes and 02 trains on. */
export const LATENTS: string = `${RUNS}/latents-taesd.safetensors`;

/** The training log notebook 02 writes and 03 plots (same format as `deno task train`). */
export const TRAIN_LOG: string = `${RUNS}/train/log.jsonl`;

/** True with ANTHOS_QUICK=1: every notebook shrinks its work to a CI-sized run. */
export const QUICK: boolean = env.quick;

/** The real TAESD weights in the shared folder. */
export const TAESD_DIR: string = `${SHARED}/weights/taesd`;

/** One line of a chart. */
export interface Series {
  /** Legend text. */
  name: string;
  /** Points (x ascending). */
  x: ArrayLike<number>;
  /** Values. */
  y: ArrayLike<number>;
  /** CSS colour. */
  color: string;
  /** Line width in px; default 1.5. */
  width?: number;
}

/**
 * A line chart as SVG text (axes with ticks, optional log-scale y, legend).
 *
 * @example
 * ```ts
 * import { lineChart } from "./_nb.ts";
 * const svg = lineChart([{ name: "loss", x: [1, 2, 3], y: [1, 0.5, 0.4], color: "#1f77b4" }]);
 * ```
 */
export function lineChart(
  series: Series[],
  options: { title?: string; xLabel?: string; yLabel?: string; logY?: boolean } = {},
): string {
  const W = 640, H = 360, L = 64, R = 16, T = 32, B = 44;
  const fy = options.logY ? Math.log10 : (v: number) => v;
  const xs = series.flatMap((s) => Array.from(s.x));
  const ys = series.flatMap((s) => Array.from(s.y)).filter((v) => Number.isFinite(fy(v)));
  if (xs.length === 0 || ys.length === 0) throw new Error("lineChart: no finite points to draw");
  const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  let [y0, y1] = [Math.min(...ys.map(fy)), Math.max(...ys.map(fy))];
  if (y1 - y0 < 1e-9) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const px = (v: number) => L + ((v - x0) / (x1 - x0)) * (W - L - R);
  const py = (v: number) => T + (1 - (fy(v) - y0) / (y1 - y0)) * (H - T - B);
  const fmt = (v: number) => Math.abs(v) >= 1000 ? v.toFixed(0) : Number(v.toPrecision(3)).toString();
  const parts: string[] = [];
  for (let i = 0; i <= 5; i++) {
    const xv = x0 + ((x1 - x0) * i) / 5;
    const yv = options.logY ? 10 ** (y0 + ((y1 - y0) * i) / 5) : y0 + ((y1 - y0) * i) / 5;
    parts.push(
      `<line x1="${px(xv)}" y1="${T}" x2="${px(xv)}" y2="${H - B}" stroke="#eee"/>`,
      `<text x="${px(xv)}" y="${H - B + 16}" text-anchor="middle">${fmt(xv)}</text>`,
      `<line x1="${L}" y1="${py(yv)}" x2="${W - R}" y2="${py(yv)}" stroke="#eee"/>`,
      `<text x="${L - 6}" y="${py(yv) + 4}" text-anchor="end">${fmt(yv)}</text>`,
    );
  }
  series.forEach((s, k) => {
    const pts: string[] = [];
    for (let i = 0; i < s.x.length; i++) {
      if (Number.isFinite(fy(s.y[i]))) pts.push(`${px(s.x[i]).toFixed(1)},${py(s.y[i]).toFixed(1)}`);
    }
    parts.push(
      `<polyline fill="none" stroke="${s.color}" stroke-width="${s.width ?? 1.5}" points="${pts.join(" ")}"/>`,
      `<rect x="${W - R - 150}" y="${T + 6 + k * 18}" width="12" height="3" fill="${s.color}"/>`,
      `<text x="${W - R - 132}" y="${T + 11 + k * 18}">${escape(s.name)}</text>`,
    );
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" ` +
    `font-family="DejaVu Sans, sans-serif" font-size="11">` +
    `<rect width="${W}" height="${H}" fill="white"/>` +
    `<text x="${W / 2}" y="18" text-anchor="middle" font-size="14">${escape(options.title ?? "")}</text>` +
    parts.join("") +
    `<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#888"/>` +
    `<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle">${escape(options.xLabel ?? "")}</text>` +
    `<text transform="translate(14 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">` +
    `${escape(options.yLabel ?? "")}${options.logY ? " (log)" : ""}</text></svg>`;
}

/**
 * Exponential moving average of a series (debiased, as TensorBoard's smoothing).
 *
 * @example
 * ```ts
 * import { smooth } from "./_nb.ts";
 * smooth([1, 0, 1, 0], 0.5);
 * ```
 */
export function smooth(values: ArrayLike<number>, alpha = 0.9): number[] {
  const out: number[] = [];
  let m = 0;
  for (let i = 0; i < values.length; i++) {
    m = alpha * m + (1 - alpha) * values[i];
    out.push(m / (1 - alpha ** (i + 1)));
  }
  return out;
}

/** One line of a training log (`log.jsonl`; its format is lib/training/run.ts's). */
export type LogLine = LogRecord;

/** Reads a `log.jsonl` training log (lib/training/run.ts's reader). */
export { readLog };

function escape(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

export { exists } from "../lib/io/fs.ts";

/**
 * The held-out split of a notebook's latent cache: the library's rule at 2% of the photos, or,
 * for the few photos of a quick run, the smallest of 5%, 10%, 25% and 50% that holds out at
 * least one photo (so the validation curve always has data).
 *
 * @example
 * ```ts
 * import { notebookSplit } from "./_nb.ts";
 * import { loadLatents } from "../lib/data/latents.ts";
 * const split = notebookSplit(await loadLatents("runs/notebooks/latents-taesd.safetensors"));
 * ```
 */
export function notebookSplit(data: Pick<LatentDataset, "labels" | "metadata">): LatentSplit {
  for (const fraction of [HELD_OUT_FRACTION, 0.05, 0.1, 0.25, 0.5]) {
    const split = heldOutSplit(data, { fraction });
    if (split.heldOut.length > 0 && split.train.length > 0) return split;
  }
  throw new Error(
    `a cache of ${data.labels.length} latents is too small to hold a photo out: encode more ` +
      `photos (notebook 01)`,
  );
}

/**
 * Shows PNG bytes (or a raw mimebundle such as `{ "image/svg+xml": svg }`) in the notebook and
 * then yields for a moment. Why the pause: Deno's kernel can report a cell as finished before its
 * last display message has gone out, and headless runners (nbclient, used in CI) drop whatever
 * arrives after that — the image then vanishes at random.
 *
 * @example
 * ```ts
 * import { show } from "./_nb.ts";
 * await show(await Deno.readFile("grid.png"));
 * ```
 */
export async function show(value: Uint8Array | Record<string, string>): Promise<void> {
  if (value instanceof Uint8Array) await Deno.jupyter.display(Deno.jupyter.image(value));
  else await Deno.jupyter.display(value, { raw: true });
  await new Promise((resolve) => setTimeout(resolve, 250));
}
