/// <reference lib="webworker" />
/**
 * The demo's generation worker: loads the model files the server publishes, starts tfjs on
 * WebGPU (when `navigator.gpu` gives an adapter) or wasm, and runs the library's own
 * `AnthosPipeline` (the same DiT, sampler and TAESD decoder as Deno). Off the page's thread, so
 * the progress bar moves while it samples.
 *
 * Messages in: {@link Request}. Messages out: {@link Reply}.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-wasm";
import { setWasmPaths } from "@tensorflow/tfjs-backend-wasm";
import { AnthosPipeline } from "../lib/pipeline/pipeline.ts";
import { ClassNames } from "../lib/pipeline/classes.ts";
import { DiT } from "../lib/model/dit.ts";
import { Taesd } from "../lib/autoencoders/taesd.ts";
import { parseWeightsConfig } from "../lib/model/weights.ts";
import { loadBackend } from "../lib/runtime/backend.ts";
import { CFG_SCALE_RANGE, type SamplerName } from "../lib/model/flow.ts";

/** What the page asks. */
export type Request =
  | { type: "init"; backend?: "webgpu" | "wasm" }
  | {
    type: "generate";
    classes: number[];
    nPerClass: number;
    seed: number;
    steps: number;
    cfgScale: number;
    sampler: SamplerName;
  };

/** One generated image, pixels as RGB bytes. */
export interface ImageReply {
  classId: number;
  className: string;
  index: number;
  width: number;
  height: number;
  pixels: Uint8Array;
  png: Uint8Array;
}

/** What the worker answers. */
export type Reply =
  | { type: "status"; text: string }
  | { type: "missing"; message: string }
  | {
    type: "ready";
    backend: string;
    detail: string;
    classes: string[];
    sampling: { steps: number; cfgScale: number; sampler: SamplerName };
    cfgRange: { min: number; max: number };
    /** How far the model's training got (weights/config.json), if it says. */
    status: { complete: boolean; text: string } | null;
  }
  | { type: "progress"; done: number; total: number; phase: "sample" | "decode" }
  | { type: "result"; images: ImageReply[]; seconds: number }
  | { type: "error"; message: string };

const scope = self as unknown as DedicatedWorkerGlobalScope;
let pipe: AnthosPipeline | null = null;

function send(reply: Reply, transfer: Transferable[] = []): void {
  scope.postMessage(reply, transfer);
}

/** Fetches a file the server publishes; a 404 carries the server's explanation. */
async function fetchFile(path: string, missing: string[]): Promise<Response | null> {
  const res = await fetch(path);
  if (res.status === 404) {
    missing.push(await res.text());
    return null;
  }
  if (!res.ok) throw new Error(`GET ${path}: HTTP ${res.status} ${await res.text()}`);
  return res;
}

async function startBackend(wanted?: "webgpu" | "wasm"): Promise<[string, string]> {
  let why = "";
  if (wanted !== "wasm") {
    try {
      const info = await loadBackend("webgpu");
      return ["webgpu", info.adapter ?? ""];
    } catch (e) {
      why = (e as Error).message;
      if (wanted === "webgpu") throw e;
    }
  }
  setWasmPaths("/tfjs-wasm/");
  await tf.setBackend("wasm");
  await tf.ready();
  const threads = crossOriginIsolated ? "multi-threaded" : "single-threaded";
  return ["wasm", `${threads}${why ? `; no WebGPU: ${why.split(":")[0]}` : ""}`];
}

async function init(wanted?: "webgpu" | "wasm"): Promise<void> {
  send({ type: "status", text: "checking the model files…" });
  const missing: string[] = [];
  const [configRes, classesRes, weightsRes, decoderRes] = [
    await fetchFile("/weights/config.json", missing),
    await fetchFile("/weights/classes.txt", missing),
    await fetchFile("/weights/model.safetensors", missing),
    await fetchFile("/vae/taesd_decoder.safetensors", missing),
  ];
  if (missing.length > 0) {
    send({ type: "missing", message: missing.join("\n") });
    return;
  }
  send({ type: "status", text: "starting TensorFlow.js…" });
  const [backend, detail] = await startBackend(wanted);
  send({ type: "status", text: `loading the model on ${backend}…` });
  const config = parseWeightsConfig(await configRes!.text(), { source: "weights/config.json" });
  const classes = ClassNames.parse(await classesRes!.text(), { source: "weights/classes.txt" });
  const bytes = async (r: Response) => new Uint8Array(await r.arrayBuffer());
  const model = await DiT.load(await bytes(weightsRes!), { config: config.model });
  const vae = await Taesd.load({ decoder: await bytes(decoderRes!) });
  pipe = AnthosPipeline.fromParts({ model, vae, classes, config });
  send({
    type: "ready",
    backend,
    detail,
    classes: [...classes.names],
    sampling: { ...config.sampling },
    cfgRange: { ...CFG_SCALE_RANGE },
    status: pipe.status && { complete: pipe.status.complete, text: pipe.status.text },
  });
}

async function generate(r: Extract<Request, { type: "generate" }>): Promise<void> {
  if (!pipe) throw new Error("the model is not loaded yet");
  const t0 = performance.now();
  const images = await pipe.generate(r.classes, {
    nPerClass: r.nPerClass,
    seed: r.seed,
    steps: r.steps,
    cfgScale: r.cfgScale,
    sampler: r.sampler,
    onProgress: (p) => send({ type: "progress", done: p.done, total: p.total, phase: p.phase }),
  });
  const out: ImageReply[] = [];
  for (const im of images) {
    out.push({
      classId: im.classId,
      className: im.className,
      index: im.index,
      width: im.width,
      height: im.height,
      pixels: im.pixels,
      png: await im.png(),
    });
  }
  const seconds = (performance.now() - t0) / 1000;
  send(
    { type: "result", images: out, seconds },
    out.flatMap((o) => [o.pixels.buffer, o.png.buffer]),
  );
}

scope.onmessage = async (ev: MessageEvent<Request>) => {
  try {
    if (ev.data.type === "init") await init(ev.data.backend);
    else await generate(ev.data);
  } catch (e) {
    send({ type: "error", message: (e as Error).message ?? String(e) });
  }
};
