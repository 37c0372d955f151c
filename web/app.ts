/// <reference lib="dom" />
/**
 * The demo page: the form (class picker, images per class, seed, steps, CFG scale, sampler), the
 * progress bar, the captioned result grid, the PNG download and the equivalent command. The
 * model runs in `worker.ts`; this file only talks to it and draws.
 *
 * `?backend=wasm` or `?backend=webgpu` forces a backend (default: WebGPU when the browser gives
 * an adapter, else wasm). `document.body.dataset.state` says where the page is ("loading",
 * "ready", "generating", "done", "missing", "error"), for people and for the browser test.
 *
 * @module
 */

import type { ImageReply, Reply, Request } from "./worker.ts";
import { checkSeed } from "../lib/runtime/rng.ts";
import { normalizeClassName } from "../lib/pipeline/classes.ts";
import { encodePng, gridLayout, type RawImage } from "../lib/io/pixels.ts";

/** Gap between tiles (and around the border) of the downloaded grid, as `deno task sample`. */
const PAD = 4;

const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page lacks #${id}`);
  return el as T;
};

const form = $<HTMLFormElement>("form");
const search = $<HTMLInputElement>("class-search");
const list = $<HTMLDivElement>("class-list");
const chips = $<HTMLDivElement>("chips");
const count = $<HTMLElement>("class-count");
const nInput = $<HTMLInputElement>("n-per-class");
const seedInput = $<HTMLInputElement>("seed");
const stepsInput = $<HTMLInputElement>("steps");
const cfgInput = $<HTMLInputElement>("cfg");
const samplerInput = $<HTMLSelectElement>("sampler");
const errorBox = $<HTMLParagraphElement>("form-error");
const generateButton = $<HTMLButtonElement>("generate");
const progressBox = $<HTMLDivElement>("progress-box");
const progress = $<HTMLProgressElement>("progress");
const progressText = $<HTMLSpanElement>("progress-text");
const badge = $<HTMLParagraphElement>("backend");

let classNames: string[] = [];
const picked: number[] = [];
let backend = "";
/** The guidance scales the library accepts (from the worker: flow.ts owns the range). */
let cfgRange = { min: 0, max: Infinity };
let last: { images: ImageReply[]; request: Extract<Request, { type: "generate" }> } | null = null;

function setState(state: string): void {
  document.body.dataset.state = state;
}

// ------------------------------------------------------------------ worker

const worker = new Worker("/worker.js", { type: "module" });
const wanted = new URLSearchParams(location.search).get("backend");
worker.postMessage(
  {
    type: "init",
    backend: wanted === "wasm" || wanted === "webgpu" ? wanted : undefined,
  } satisfies Request,
);
setState("loading");

worker.onerror = (e) => fail(`the generation worker failed to start: ${e.message}`);
worker.onmessage = (ev: MessageEvent<Reply>) => {
  const r = ev.data;
  switch (r.type) {
    case "status":
      badge.textContent = r.text;
      break;
    case "missing":
      $("missing").hidden = false;
      $("missing-text").textContent = r.message;
      badge.textContent = "no model";
      badge.dataset.state = "error";
      setState("missing");
      break;
    case "ready":
      ready(r);
      break;
    case "progress":
      progress.max = r.total;
      progress.value = r.done;
      // One unit per sampling step of each batch, plus one per batch decode.
      progressText.textContent = r.done === r.total
        ? "decoded"
        : `${r.phase === "decode" ? "decoded a batch" : "sampling"}: ${r.done} / ${r.total}`;
      break;
    case "result":
      show(r.images, r.seconds);
      break;
    case "error":
      showError(r.message);
      generateButton.disabled = classNames.length === 0;
      progressBox.hidden = true;
      setState(classNames.length ? "ready" : "error");
      break;
  }
};

function fail(message: string): void {
  badge.textContent = "error";
  badge.dataset.state = "error";
  showError(message);
  setState("error");
}

function ready(r: Extract<Reply, { type: "ready" }>): void {
  backend = r.backend;
  badge.textContent = r.backend === "webgpu"
    ? `running on WebGPU${r.detail ? ` (${r.detail})` : ""}`
    : `running on wasm (${r.detail})`;
  badge.dataset.state = r.backend;
  classNames = r.classes;
  cfgRange = r.cfgRange;
  cfgInput.min = String(r.cfgRange.min);
  cfgInput.max = String(r.cfgRange.max);
  stepsInput.value = String(r.sampling.steps);
  cfgInput.value = String(r.sampling.cfgScale);
  samplerInput.value = r.sampling.sampler;
  // An unfinished run's weights: say so before anyone judges the images.
  const note = document.getElementById("model-note")!;
  note.textContent = r.status ? `Model: ${r.status.text}.` : "";
  note.hidden = !r.status || r.status.complete;
  renderList();
  generateButton.disabled = false;
  setState("ready");
}

// ------------------------------------------------------------------ class picker

function renderList(): void {
  const q = normalizeClassName(search.value);
  list.replaceChildren();
  classNames.forEach((name, id) => {
    if (q && !normalizeClassName(name).includes(q) && String(id) !== q) return;
    const label = document.createElement("label");
    label.dataset.classId = String(id);
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = picked.includes(id);
    box.onchange = () => toggle(id, box.checked);
    const idSpan = document.createElement("span");
    idSpan.className = "id";
    idSpan.textContent = String(id);
    label.append(box, document.createTextNode(name), idSpan);
    list.append(label);
  });
  renderChips();
}

function renderChips(): void {
  chips.replaceChildren(...picked.map((id) => {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "chip";
    chip.textContent = classNames[id];
    chip.title = `remove ${classNames[id]}`;
    chip.onclick = () => toggle(id, false);
    return chip;
  }));
  count.textContent = picked.length ? `(${picked.length} picked)` : "(none picked)";
}

function toggle(id: number, on: boolean): void {
  const i = picked.indexOf(id);
  if (on && i < 0) picked.push(id);
  if (!on && i >= 0) picked.splice(i, 1);
  renderList();
}

search.oninput = renderList;
search.onkeydown = (e) => {
  // Enter picks the first match: type, Enter, type, Enter.
  if (e.key !== "Enter") return;
  e.preventDefault();
  const first = list.querySelector<HTMLLabelElement>("label");
  if (first) toggle(Number(first.dataset.classId), true);
  search.value = "";
  renderList();
};

$<HTMLButtonElement>("dice").onclick = () => {
  seedInput.value = String(crypto.getRandomValues(new Uint32Array(1))[0]);
};

// ------------------------------------------------------------------ form

/** The request of the form, or the message that says what to fix. */
function readForm(): Extract<Request, { type: "generate" }> | string {
  if (picked.length === 0) return "Pick at least one class (search, then tick it).";
  const nPerClass = Number(nInput.value);
  if (!Number.isInteger(nPerClass) || nPerClass < 1 || nPerClass > 16) {
    return `Images per class must be a whole number from 1 to 16, got "${nInput.value}".`;
  }
  const seed = seedInput.value.trim() === "" ? NaN : Number(seedInput.value);
  try {
    checkSeed(seed, "Seed");
  } catch (e) {
    return (e as Error).message.replace(/^Seed must/, "The seed must") +
      ` (got "${seedInput.value}")`;
  }
  const steps = stepsInput.value.trim() === "" ? NaN : Number(stepsInput.value);
  if (!Number.isInteger(steps) || steps < 1 || steps > 1000) {
    return `Steps must be a whole number from 1 to 1000, got "${stepsInput.value}" ` +
      `(the model's default is 50; fewer is faster).`;
  }
  const cfgScale = cfgInput.value.trim() === "" ? NaN : Number(cfgInput.value);
  if (!(cfgScale >= cfgRange.min && cfgScale <= cfgRange.max)) {
    return `CFG scale must be a number from ${cfgRange.min} to ${cfgRange.max}, got ` +
      `"${cfgInput.value}" (1 = no guidance, 4 = the model's default, about 1..10 is useful).`;
  }
  const sampler = samplerInput.value === "euler" ? "euler" : "heun";
  return { type: "generate", classes: [...picked], nPerClass, seed, steps, cfgScale, sampler };
}

function showError(message: string): void {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

form.onsubmit = (e) => {
  e.preventDefault();
  const req = readForm();
  if (typeof req === "string") {
    showError(req);
    return;
  }
  errorBox.hidden = true;
  generateButton.disabled = true;
  progress.value = 0;
  progressText.textContent = "starting…";
  progressBox.hidden = false;
  last = { images: [], request: req };
  setState("generating");
  worker.postMessage(req);
};

// ------------------------------------------------------------------ results

function cols(n: number, nPerClass: number): number {
  // As `deno task sample`: one row per class when there are several images per class.
  return nPerClass > 1 ? nPerClass : Math.ceil(Math.sqrt(n));
}

function show(images: ImageReply[], seconds: number): void {
  const req = last!.request;
  last = { images, request: req };
  const grid = $<HTMLDivElement>("grid");
  grid.style.gridTemplateColumns = `repeat(${cols(images.length, req.nPerClass)}, 1fr)`;
  grid.replaceChildren(...images.map((im) => {
    const fig = document.createElement("figure");
    const canvas = document.createElement("canvas");
    canvas.width = im.width;
    canvas.height = im.height;
    const rgba = new ImageData(im.width, im.height);
    for (let i = 0, j = 0; i < im.pixels.length; i += 3, j += 4) {
      rgba.data[j] = im.pixels[i];
      rgba.data[j + 1] = im.pixels[i + 1];
      rgba.data[j + 2] = im.pixels[i + 2];
      rgba.data[j + 3] = 255;
    }
    canvas.getContext("2d")!.putImageData(rgba, 0, 0);
    const cap = document.createElement("figcaption");
    cap.textContent = `${im.className} · #${im.index}`;
    fig.append(canvas, cap);
    return fig;
  }));
  $("timing").textContent = `${images.length} image(s) in ${seconds.toFixed(1)} s on ${backend}`;
  $("command").textContent = sampleCommand(req);
  $("code").textContent = pipelineCode(req);
  $("results").hidden = false;
  generateButton.disabled = false;
  setState("done");
}

function sampleCommand(r: Extract<Request, { type: "generate" }>): string {
  const names = r.classes.map((id) => classNames[id]).join(",");
  return `deno task sample "${names}" --n-per-class ${r.nPerClass} --seed ${r.seed} ` +
    `--steps ${r.steps} --cfg-scale ${r.cfgScale} --sampler ${r.sampler} --vae taesd ` +
    `--backend ${backend} --out anthos-${r.seed}.png`;
}

function pipelineCode(r: Extract<Request, { type: "generate" }>): string {
  return `import { AnthosPipeline } from "jsr:@glint/anthos";\n` +
    `const pipe = await AnthosPipeline.load({ backend: "${backend}", vae: "taesd" });\n` +
    `const images = await pipe.generate([${r.classes.join(", ")}], {\n` +
    `  nPerClass: ${r.nPerClass}, seed: ${r.seed}, steps: ${r.steps}, ` +
    `cfgScale: ${r.cfgScale}, sampler: "${r.sampler}",\n});`;
}

/** The images as one grid (tiles in the page's order and columns, 4 px white gaps). */
function gridImage(images: ImageReply[], nCols: number): RawImage {
  const tw = images[0].width;
  const th = images[0].height;
  const g = gridLayout(images.length, { tileWidth: tw, tileHeight: th, cols: nCols, pad: PAD });
  const data = new Uint8Array(g.width * g.height * 3).fill(255);
  images.forEach((im, i) => {
    const x0 = PAD + (i % g.cols) * (tw + PAD);
    const y0 = PAD + Math.floor(i / g.cols) * (th + PAD);
    for (let y = 0; y < th; y++) {
      data.set(im.pixels.subarray(y * tw * 3, (y + 1) * tw * 3), ((y0 + y) * g.width + x0) * 3);
    }
  });
  return { data, width: g.width, height: g.height, channels: 3 };
}

$<HTMLButtonElement>("download").onclick = async () => {
  if (!last || last.images.length === 0) return;
  const { images, request } = last;
  const png = await encodePng(gridImage(images, cols(images.length, request.nPerClass)));
  const url = URL.createObjectURL(
    new Blob([png as Uint8Array<ArrayBuffer>], { type: "image/png" }),
  );
  const a = document.createElement("a");
  a.href = url;
  a.download = `anthos-seed${request.seed}-${request.steps}steps.png`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
};
