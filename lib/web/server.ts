/**
 * The demo web server (`deno task serve`): one page (`web/index.html`, `web/style.css`), its
 * browser bundle ({@link bundleDemo}), tfjs's wasm binaries, and the model files the page runs in
 * the browser: `weights/config.json`, `weights/model.safetensors`, `weights/classes.txt` and
 * TAESD's decoder. Generation happens in the visitor's browser; the server only serves files.
 *
 * Caching: every response carries an ETag (content hash for the page and bundle, size + mtime for
 * model files) and `Cache-Control: no-cache`, so browsers keep the 4 MB of weights but revalidate
 * (a 304) on every visit and never run a stale model after `deno task convert`. tfjs's wasm files
 * are versioned by the package and cached for a day. A missing file is a 404 whose text says what
 * is missing and how to get it; the page shows that text.
 *
 * The page is cross-origin isolated (COOP/COEP headers), so tfjs's wasm backend can use threads.
 *
 * @module
 */

import { bundleDemo, type DemoBundle, REPO_ROOT } from "./bundle.ts";
import { AUTOENCODERS } from "../autoencoders/autoencoder.ts";
import { isFile } from "../io/fs.ts";
import { sharedTaesdDir } from "../io/download.ts";

/** Options of {@link demoHandler} and {@link serveDemo}. */
export interface DemoOptions {
  /** Folder holding `weights/` (default "."). */
  repoDir?: string;
  /** Folder holding `taesd_decoder.safetensors` (default `$ANTHOS_SHARED/weights/taesd`). */
  vaeDir?: string;
  /** A prebuilt bundle (tests reuse one); default: bundle at start. */
  bundle?: DemoBundle;
}

/** Options of {@link serveDemo}. */
export interface ServeDemoOptions extends DemoOptions {
  /** Port (default 8000; 0 = any free port). */
  port?: number;
  /** Interface to listen on (default "127.0.0.1"). */
  hostname?: string;
  /** Stops the server when aborted. */
  signal?: AbortSignal;
  /** Called once listening, with the page's URL. */
  onListen?: (url: string) => void;
}

const MODEL_FILES = ["config.json", "model.safetensors", "classes.txt"] as const;
const TAESD_DECODER = AUTOENCODERS.taesd.files[1];
const WASM_FILES = [
  "tfjs-backend-wasm.wasm",
  "tfjs-backend-wasm-simd.wasm",
  "tfjs-backend-wasm-threaded-simd.wasm",
];

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  css: "text/css; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  json: "application/json; charset=utf-8",
  txt: "text/plain; charset=utf-8",
  wasm: "application/wasm",
  safetensors: "application/octet-stream",
  png: "image/png",
};

/**
 * The default TAESD folder: the shared reference folder's, as `loadAutoencoder` finds it
 * (`$ANTHOS_SHARED/weights/taesd`, else `../shared/weights/taesd` beside the repository).
 *
 * @example
 * ```ts
 * import { defaultVaeDir } from "./server.ts";
 * defaultVaeDir(); // "/work/shared/weights/taesd"
 * ```
 */
export function defaultVaeDir(): string {
  return sharedTaesdDir() ?? `${REPO_ROOT}../shared/weights/taesd`;
}

/**
 * The request handler of the demo (for `Deno.serve`, or to call in tests).
 *
 * @example
 * ```ts
 * import { demoHandler } from "./server.ts";
 * const handler = await demoHandler({ repoDir: "." });
 * const res = await handler(new Request("http://localhost/weights/classes.txt"));
 * res.status; // 200, or 404 with how to get the file
 * ```
 */
export async function demoHandler(
  options: DemoOptions = {},
): Promise<(req: Request) => Promise<Response>> {
  const repoDir = (options.repoDir ?? ".").replace(/\/+$/, "") || "/";
  const vaeDir = (options.vaeDir ?? defaultVaeDir()).replace(/\/+$/, "") || "/";
  const bundle = options.bundle ?? await bundleDemo();
  const bundleTags = new Map<string, string>();
  for (const [k, v] of bundle) bundleTags.set(k, await contentTag(v));
  const wasmDir = `${REPO_ROOT}node_modules/@tensorflow/tfjs-backend-wasm/dist`;

  return async (req: Request): Promise<Response> => {
    const url = new URL(req.url);
    let path: string;
    try {
      path = decodeURIComponent(url.pathname);
    } catch {
      return text(400, `malformed URL path ${url.pathname}`);
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      return text(405, `${req.method} is not supported: this server only serves files (GET)`);
    }
    if (path === "/" || path === "/index.html") {
      return await file(req, `${REPO_ROOT}web/index.html`, "no-cache", "the page web/index.html");
    }
    if (path === "/style.css") {
      return await file(req, `${REPO_ROOT}web/style.css`, "no-cache", "web/style.css");
    }
    const name = path.slice(1);
    const js = bundle.get(name);
    if (js) return bytes(req, js, bundleTags.get(name)!, "js", "no-cache");
    if (path === "/status.json") return await status(repoDir, vaeDir);
    const w = path.match(/^\/weights\/([^/]+)$/);
    if (w && (MODEL_FILES as readonly string[]).includes(w[1])) {
      return await file(req, `${repoDir}/weights/${w[1]}`, "no-cache", missingModelHint(repoDir));
    }
    if (path === `/vae/${TAESD_DECODER}`) {
      return await file(req, `${vaeDir}/${TAESD_DECODER}`, "no-cache", missingVaeHint(vaeDir));
    }
    const m = path.match(/^\/tfjs-wasm\/([^/]+)$/);
    if (m && WASM_FILES.includes(m[1])) {
      return await file(
        req,
        `${wasmDir}/${m[1]}`,
        "public, max-age=86400",
        `tfjs's wasm binary ${m[1]} is missing from ${wasmDir}: run \`deno install\``,
      );
    }
    return text(
      404,
      `not found: ${path}. This server serves the demo page (/), its bundle, ` +
        `/weights/{${MODEL_FILES.join(",")}} and /vae/${TAESD_DECODER}.`,
    );
  };
}

/**
 * Bundles the page and serves the demo until `signal` aborts.
 *
 * @example
 * ```ts
 * import { serveDemo } from "./server.ts";
 * const server = await serveDemo({ port: 8000, repoDir: ".", onListen: (u) => console.log(u) });
 * await server.finished;
 * ```
 */
export async function serveDemo(options: ServeDemoOptions = {}): Promise<Deno.HttpServer> {
  const handler = await demoHandler(options);
  const hostname = options.hostname ?? "127.0.0.1";
  return Deno.serve({
    port: options.port ?? 8000,
    hostname,
    signal: options.signal,
    onListen: ({ port }) => options.onListen?.(`http://${hostname}:${port}/`),
  }, handler);
}

/** Which model files exist, and the hint for the missing ones (the page reads this first). */
async function status(repoDir: string, vaeDir: string): Promise<Response> {
  const missing: string[] = [];
  for (const f of MODEL_FILES) {
    if (!(await isFile(`${repoDir}/weights/${f}`))) missing.push(`${repoDir}/weights/${f}`);
  }
  const hints: string[] = [];
  if (missing.length > 0) hints.push(missingModelHint(repoDir));
  const vaePath = `${vaeDir}/${TAESD_DECODER}`;
  if (!(await isFile(vaePath))) {
    missing.push(vaePath);
    hints.push(missingVaeHint(vaeDir));
  }
  return json({ ok: missing.length === 0, missing, hint: hints.join("\n") });
}

function missingModelHint(repoDir: string): string {
  return `No trained model in ${repoDir}/weights/ (it needs config.json, model.safetensors and ` +
    `classes.txt). Train and export one (\`deno task train\`, then \`deno task convert\`), or put ` +
    `published weights there, or restart with \`deno task serve --repo-dir DIR\` (the folder ` +
    `that holds weights/).`;
}

function missingVaeHint(vaeDir: string): string {
  return `TAESD's decoder ${TAESD_DECODER} is not in ${vaeDir}. Get it from ` +
    `https://github.com/madebyollin/taesd (taesd_decoder.safetensors) and restart with ` +
    `\`deno task serve --vae-dir DIR\`, or set ANTHOS_SHARED to the shared folder that holds ` +
    `weights/taesd.`;
}

const SECURITY = {
  "cross-origin-opener-policy": "same-origin",
  "cross-origin-embedder-policy": "require-corp",
  "x-content-type-options": "nosniff",
};

function text(status: number, body: string): Response {
  return new Response(body + "\n", {
    status,
    headers: { "content-type": TYPES.txt, "cache-control": "no-store", ...SECURITY },
  });
}

function json(value: unknown): Response {
  return new Response(JSON.stringify(value), {
    headers: { "content-type": TYPES.json, "cache-control": "no-store", ...SECURITY },
  });
}

function typeOf(path: string): string {
  return TYPES[path.slice(path.lastIndexOf(".") + 1)] ?? "application/octet-stream";
}

function notModified(req: Request, etag: string): boolean {
  const inm = req.headers.get("if-none-match");
  return inm !== null && inm.split(/\s*,\s*/).some((t) => t === etag || t === "*");
}

function bytes(req: Request, data: Uint8Array, etag: string, ext: string, cache: string): Response {
  const headers = { etag, "cache-control": cache, ...SECURITY };
  if (notModified(req, etag)) return new Response(null, { status: 304, headers });
  return new Response(req.method === "HEAD" ? null : data as Uint8Array<ArrayBuffer>, {
    headers: { ...headers, "content-type": TYPES[ext], "content-length": String(data.length) },
  });
}

/** Serves a file (streamed) with an ETag of its size and mtime; 404 with `hint` when missing. */
async function file(req: Request, path: string, cache: string, hint: string): Promise<Response> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return text(404, `missing ${path}. ${hint}`);
    throw e;
  }
  if (!info.isFile) return text(404, `${path} is not a file. ${hint}`);
  const etag = `W/"${info.size.toString(16)}-${(info.mtime?.getTime() ?? 0).toString(16)}"`;
  const headers = { etag, "cache-control": cache, ...SECURITY };
  if (notModified(req, etag)) return new Response(null, { status: 304, headers });
  const body = req.method === "HEAD" ? null : (await Deno.open(path)).readable;
  return new Response(body, {
    headers: { ...headers, "content-type": typeOf(path), "content-length": String(info.size) },
  });
}

async function contentTag(data: Uint8Array): Promise<string> {
  const hash = new Uint8Array(
    await crypto.subtle.digest("SHA-256", data as Uint8Array<ArrayBuffer>),
  );
  return `"${Array.from(hash.subarray(0, 12), (b) => b.toString(16).padStart(2, "0")).join("")}"`;
}
