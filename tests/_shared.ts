// Test helpers: where ../shared lives, and a loud failure (never a silent skip) under CI.
import { fileURLToPath } from "node:url";
import { type BackendName, loadBackend } from "../lib/runtime/backend.ts";
import { blasStatus, loadBlas, setBlasEnabled } from "../lib/runtime/blas.ts";
import { startOpStats, stopOpStats } from "../lib/runtime/opstats.ts";

/** Root of the shared reference material: $ANTHOS_SHARED, else ../shared beside the project. */
export const SHARED: string = Deno.env.get("ANTHOS_SHARED") ??
  fileURLToPath(new URL("../../shared", import.meta.url));

/** True when running under CI (CI=true), where nothing may be skipped. */
export const IN_CI: boolean = Deno.env.get("CI") === "true";

/**
 * Absolute path of `rel` under shared/, or null when shared/ is absent outside CI (the caller then
 * skips, and this prints why). Under CI a missing file throws, so CI never skips silently.
 */
export function sharedPath(rel: string): string | null {
  const p = `${SHARED}/${rel}`;
  try {
    Deno.statSync(p);
    return p;
  } catch {
    const msg = `missing ${p}: tests need ../shared (or ANTHOS_SHARED pointing at it)`;
    if (IN_CI) throw new Error(msg);
    console.warn(`SKIP: ${msg}`);
    return null;
  }
}

/** Max relative error |a-b| / max|b| over two arrays (the parity measure used everywhere). */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / Math.max(den, 1e-30);
}

/**
 * Loads a backend for a parity run. webgpu may lack an adapter outside CI: then this prints a
 * SKIP line and returns false; under CI the error is thrown, so CI never skips silently.
 */
export async function useBackend(name: BackendName): Promise<boolean> {
  try {
    await loadBackend(name);
    return true;
  } catch (e) {
    if (IN_CI) throw e;
    console.warn(`SKIP ${name}: ${(e as Error).message}`);
    return false;
  }
}

/** How the wasm backend computes its matrix products: the system BLAS (FFI) or XNNPACK. */
export type Products = "blas" | "xnnpack";

/**
 * Starts wasm and routes its products to `products` for the test body, then restores the
 * previous setting. Without a loadable BLAS the "blas" run prints a SKIP line outside CI and
 * fails under CI (where .ci/setup.sh installs libopenblas0-pthread).
 */
export async function withProducts(products: Products, fn: () => Promise<void>): Promise<void> {
  await loadBackend("wasm");
  if (products === "blas" && loadBlas() === null) {
    const msg = `SKIP BLAS run: ${blasStatus().reason}`;
    if (IN_CI) throw new Error(msg);
    console.warn(msg);
    return;
  }
  const before = setBlasEnabled(products === "blas");
  const ops = startOpStats();
  try {
    await fn();
  } finally {
    stopOpStats();
    setBlasEnabled(before);
  }
  // The products really ran where they were sent (counted by lib/model/matmul.ts).
  const blasCalls = [...ops].filter(([k]) => k.endsWith("(blas)")).reduce(
    (n, [, s]) => n + s.calls,
    0,
  );
  if ((products === "blas") !== blasCalls > 0) {
    throw new Error(`products on ${products}, but ${blasCalls} BLAS product call(s) were made`);
  }
}

/**
 * A temporary repo folder whose `weights/` holds the golden test weights (random, for parity, not
 * flowers), the real classes.txt and a TAESD config.json; `weights: false` leaves `weights/` empty.
 */
export async function goldenWeightsRepo(
  options: { prefix?: string; weights?: boolean } = {},
): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: options.prefix ?? "anthos-" });
  await Deno.mkdir(`${dir}/weights`);
  if (options.weights === false) return dir;
  const golden = sharedPath("spec/golden/weights.safetensors");
  if (golden === null) throw new Error("golden weights missing: see the SKIP line above");
  await Deno.copyFile(golden, `${dir}/weights/model.safetensors`);
  await Deno.copyFile(
    fileURLToPath(new URL("../weights/classes.txt", import.meta.url)),
    `${dir}/weights/classes.txt`,
  );
  await Deno.writeTextFile(
    `${dir}/weights/config.json`,
    JSON.stringify({ format: "anthos", vae: { name: "taesd", scalingFactor: 1 } }),
  );
  return dir;
}

/** Gives the config.json of a {@link goldenWeightsRepo} a training record (as an export writes). */
export async function setTrainingRecord(
  repo: string,
  training: Record<string, unknown>,
): Promise<void> {
  const path = `${repo}/weights/config.json`;
  const config = JSON.parse(await Deno.readTextFile(path));
  await Deno.writeTextFile(path, JSON.stringify({ ...config, training }));
}
