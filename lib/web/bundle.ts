/**
 * The browser bundle of the demo page: `web/app.ts` (the page) and `web/worker.ts` (generation:
 * the library's own pipeline, model, sampler and TAESD decoder) bundled by `deno bundle` for the
 * browser. The Deno-only modules the pipeline imports on demand (folder loading, sharp grids) are
 * left out, and the `node:` built-ins that shared modules import statically get browser stand-ins
 * (`web/shims/`). Any static import left in the output is an error, so a change that drags Deno
 * code into the browser fails here instead of in a visitor's browser.
 *
 * @module
 */

import { fileURLToPath } from "node:url";

/** The repository root (where `web/` and `deno.json` live). */
export const REPO_ROOT: string = fileURLToPath(new URL("../../", import.meta.url));

/** Modules reached only through `await import()` from browser code, never run there. */
const DENO_ONLY = ["lib/pipeline/local.ts", "lib/io/image.ts"];

/** Browser stand-ins for the `node:` built-ins that shared modules import statically. */
const BROWSER_SHIMS: Record<string, string> = { "node:path": "web/shims/node_path.ts" };

/** The bundled files, by the name the page loads them with (`app.js`, `worker.js`). */
export type DemoBundle = Map<string, Uint8Array>;

/** Options of {@link bundleDemo}. */
export interface BundleOptions {
  /** Minify (default true: 1.5 MB instead of 3.6 MB). */
  minify?: boolean;
}

/**
 * Bundles the page and its worker with `deno bundle --platform browser`.
 *
 * @example
 * ```ts
 * import { bundleDemo } from "./bundle.ts";
 * const files = await bundleDemo();
 * files.get("worker.js")!.length; // about 1.5 MB
 * ```
 */
export async function bundleDemo(options: BundleOptions = {}): Promise<DemoBundle> {
  const out = await Deno.makeTempDir({ prefix: "anthos-web-" });
  try {
    // The project's import map plus the browser shims (an --import-map replaces deno.json's).
    const config = JSON.parse(await Deno.readTextFile(`${REPO_ROOT}deno.json`));
    const shims = Object.fromEntries(
      Object.entries(BROWSER_SHIMS).map(([k, v]) => [k, `${REPO_ROOT}${v}`]),
    );
    const importMap = `${out}/import_map.json`;
    await Deno.writeTextFile(
      importMap,
      JSON.stringify({ imports: { ...config.imports, ...shims } }),
    );
    const args = ["bundle", "--quiet", "--platform", "browser", "--outdir", `${out}/dist`];
    args.push("--import-map", importMap);
    for (const m of DENO_ONLY) args.push("--external", `${REPO_ROOT}${m}`);
    if (options.minify ?? true) args.push("--minify");
    args.push(`${REPO_ROOT}web/app.ts`, `${REPO_ROOT}web/worker.ts`);
    const res = await new Deno.Command(Deno.execPath(), {
      args,
      cwd: REPO_ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    if (!res.success) {
      throw new Error(
        `deno bundle failed (exit ${res.code}):\n${dec.decode(res.stderr)}${
          dec.decode(res.stdout)
        }`,
      );
    }
    const files: DemoBundle = new Map();
    for (const name of ["app.js", "worker.js"]) {
      const bytes = await Deno.readFile(`${out}/dist/${name}`);
      checkBrowserSafe(name, dec.decode(bytes));
      files.set(name, bytes);
    }
    return files;
  } finally {
    await Deno.remove(out, { recursive: true });
  }
}

/**
 * Throws when bundled code statically imports a Deno-only module (`node:*`, sharp, the modules of
 * {@link DENO_ONLY}): those imports would break the page on load.
 */
function checkBrowserSafe(name: string, code: string): void {
  const bad = [
    ...code.matchAll(/(?:^|[;\n}])\s*import\s*(?:[\w*{}\s,$]+from\s*)?["']([^"']+)["']/g),
  ]
    .map((m) => m[1]);
  if (bad.length > 0) {
    throw new Error(
      `the browser bundle ${name} statically imports ${[...new Set(bad)].join(", ")}: ` +
        `browser code must reach Deno-only modules through \`await import()\` only ` +
        `(see lib/pipeline/pipeline.ts)`,
    );
  }
}
