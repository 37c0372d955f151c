/**
 * Every setting Anthos reads from the environment, in one place.
 *
 * Library code reads configuration only through {@link env}; nothing else in `lib/` calls
 * `Deno.env`. Each property reads its variable at the moment it is used (so a test or a notebook
 * can set a variable and see the effect), and a process without `--allow-env` simply sees every
 * variable as unset: importing the library never needs the permission.
 *
 * | property       | variable               | meaning                                           |
 * | -------------- | ---------------------- | ------------------------------------------------- |
 * | `backend`      | `ANTHOS_BACKEND`       | default tfjs backend (`wasm` when unset)          |
 * | `wasmThreads`  | `ANTHOS_WASM_THREADS`  | XNNPACK threads for `wasm`                        |
 * | `wgsl`         | `ANTHOS_WGSL`          | webgpu's own WGSL kernels: `0` = off (tf ops),    |
 * |                |                        | `no-attention` = all but the attention kernel,    |
 * |                |                        | `untiled-attention` = its untiled kernels         |
 * | `webgpu`       | `ANTHOS_WEBGPU`        | webgpu's WebGPU: `deno` (the runtime's own),      |
 * |                |                        | `dawn` (npm `webgpu`) or a `dawn.node` file       |
 * | `blas`         | `ANTHOS_BLAS`          | wasm products on the system BLAS: `0` = off, or a |
 * |                |                        | library file (lib/runtime/blas.ts)                |
 * | `home`         | `ANTHOS_HOME`          | cache root (downloads, weights, datasets)         |
 * | `xdgCacheHome` | `XDG_CACHE_HOME`       | cache root's parent when `ANTHOS_HOME` is unset   |
 * | `hfEndpoint`   | `ANTHOS_HF_ENDPOINT`   | Hugging Face mirror for the SD VAE files          |
 * | `oxfordUrl`    | `ANTHOS_OXFORD_URL`    | mirror of the Oxford Flowers 102 files            |
 * | `shared`       | `ANTHOS_SHARED`        | the shared reference folder (tests, notebooks)    |
 * | `notebookRuns` | `ANTHOS_NB_RUNS`       | where the notebooks write                         |
 * | `quick`        | `ANTHOS_QUICK`         | shrink tasks and notebooks to a CI-sized run      |
 * | `debug`        | `ANTHOS_DEBUG`         | print stack traces from the tasks                 |
 * | `ci`           | `CI`                   | running under CI (`CI=true`): never skip a test   |
 *
 * @example
 * ```ts
 * import { env } from "./env.ts";
 * Deno.env.set("ANTHOS_QUICK", "1");
 * if (!env.quick) throw new Error("ANTHOS_QUICK=1 should read as quick");
 * Deno.env.delete("ANTHOS_QUICK");
 * if (env.quick) throw new Error("unset ANTHOS_QUICK should read as not quick");
 * ```
 *
 * @module
 */

/** The environment variable behind each {@link env} property. */
export const ENV_VARS = {
  backend: "ANTHOS_BACKEND",
  wasmThreads: "ANTHOS_WASM_THREADS",
  blas: "ANTHOS_BLAS",
  wgsl: "ANTHOS_WGSL",
  webgpu: "ANTHOS_WEBGPU",
  home: "ANTHOS_HOME",
  xdgCacheHome: "XDG_CACHE_HOME",
  hfEndpoint: "ANTHOS_HF_ENDPOINT",
  oxfordUrl: "ANTHOS_OXFORD_URL",
  shared: "ANTHOS_SHARED",
  notebookRuns: "ANTHOS_NB_RUNS",
  quick: "ANTHOS_QUICK",
  debug: "ANTHOS_DEBUG",
  ci: "CI",
} as const;

/**
 * Reads one environment variable: `undefined` when it is unset, empty, or when the process has
 * no permission to read the environment (`--allow-env` not granted).
 *
 * @example
 * ```ts
 * import { readEnv } from "./env.ts";
 * Deno.env.set("ANTHOS_EXAMPLE", "x");
 * if (readEnv("ANTHOS_EXAMPLE") !== "x") throw new Error("expected x");
 * Deno.env.set("ANTHOS_EXAMPLE", "");
 * if (readEnv("ANTHOS_EXAMPLE") !== undefined) throw new Error("empty reads as unset");
 * ```
 */
export function readEnv(name: string): string | undefined {
  let v: string | undefined;
  try {
    v = Deno.env.get(name);
  } catch {
    return undefined; // NotCapable / PermissionDenied: behave as if unset
  }
  return v === undefined || v === "" ? undefined : v;
}

/**
 * Reads a boolean environment variable: true for `1`, `true`, `yes`, `on` (any case), else false
 * (also without env permission).
 *
 * @example
 * ```ts
 * import { envFlag } from "./env.ts";
 * Deno.env.set("ANTHOS_EXAMPLE_FLAG", "yes");
 * if (!envFlag("ANTHOS_EXAMPLE_FLAG")) throw new Error("yes is true");
 * Deno.env.set("ANTHOS_EXAMPLE_FLAG", "0");
 * if (envFlag("ANTHOS_EXAMPLE_FLAG")) throw new Error("0 is false");
 * ```
 */
export function envFlag(name: string): boolean {
  const v = readEnv(name);
  return v !== undefined && /^(1|true|yes|on)$/i.test(v.trim());
}

/** The configuration Anthos reads from the environment; see the module documentation. */
export interface AnthosEnv {
  /** `$ANTHOS_BACKEND`, raw (checked by `loadBackend`). */
  readonly backend: string | undefined;
  /** `$ANTHOS_WASM_THREADS`, raw (checked by `loadBackend`). */
  readonly wasmThreads: string | undefined;
  /** `$ANTHOS_BLAS`, raw (read by lib/runtime/blas.ts). */
  readonly blas: string | undefined;
  /** `$ANTHOS_WGSL`, raw (read by lib/model/kernels.ts). */
  readonly wgsl: string | undefined;
  /** `$ANTHOS_WEBGPU`, raw (checked by `loadBackend`). */
  readonly webgpu: string | undefined;
  /** `$ANTHOS_HOME`. */
  readonly home: string | undefined;
  /** `$XDG_CACHE_HOME`. */
  readonly xdgCacheHome: string | undefined;
  /** `$ANTHOS_HF_ENDPOINT`. */
  readonly hfEndpoint: string | undefined;
  /** `$ANTHOS_OXFORD_URL`. */
  readonly oxfordUrl: string | undefined;
  /** `$ANTHOS_SHARED`. */
  readonly shared: string | undefined;
  /** `$ANTHOS_NB_RUNS`. */
  readonly notebookRuns: string | undefined;
  /** `$ANTHOS_QUICK` is true-ish. */
  readonly quick: boolean;
  /** `$ANTHOS_DEBUG` is true-ish. */
  readonly debug: boolean;
  /** `$CI` is exactly `true` (what CI services set). */
  readonly ci: boolean;
}

/**
 * The environment configuration, read lazily at each access.
 *
 * @example
 * ```ts
 * import { env } from "./env.ts";
 * Deno.env.set("ANTHOS_HOME", "/tmp/anthos-home");
 * if (env.home !== "/tmp/anthos-home") throw new Error(`got ${env.home}`);
 * ```
 */
export const env: AnthosEnv = Object.freeze({
  get backend() {
    return readEnv(ENV_VARS.backend);
  },
  get wasmThreads() {
    return readEnv(ENV_VARS.wasmThreads);
  },
  get blas() {
    return readEnv(ENV_VARS.blas);
  },
  get wgsl() {
    return readEnv(ENV_VARS.wgsl);
  },
  get webgpu() {
    return readEnv(ENV_VARS.webgpu);
  },
  get home() {
    return readEnv(ENV_VARS.home);
  },
  get xdgCacheHome() {
    return readEnv(ENV_VARS.xdgCacheHome);
  },
  get hfEndpoint() {
    return readEnv(ENV_VARS.hfEndpoint);
  },
  get oxfordUrl() {
    return readEnv(ENV_VARS.oxfordUrl);
  },
  get shared() {
    return readEnv(ENV_VARS.shared);
  },
  get notebookRuns() {
    return readEnv(ENV_VARS.notebookRuns);
  },
  get quick() {
    return envFlag(ENV_VARS.quick);
  },
  get debug() {
    return envFlag(ENV_VARS.debug);
  },
  get ci() {
    return readEnv(ENV_VARS.ci) === "true";
  },
});
