/**
 * Atomic file writes: data goes to a temporary file beside the target, is flushed to disk, then
 * renamed over the target. A reader (or a crash) sees either the old file or the new one, never a
 * half-written file, which is what keeps checkpoints, caches and exported weights safe.
 *
 * @module
 */

/**
 * Writes `data` to `path` atomically (temp file in the same folder + fsync + rename).
 *
 * @example
 * ```ts
 * import { writeFileAtomic } from "./fs.ts";
 * await writeFileAtomic("/tmp/anthos-example.bin", new Uint8Array([1, 2, 3]));
 * ```
 */
export async function writeFileAtomic(
  path: string,
  data: Uint8Array | string,
  options: { mkdir?: boolean } = {},
): Promise<void> {
  const dir = dirname(path);
  if (options.mkdir ?? true) await Deno.mkdir(dir, { recursive: true });
  // The temp name is unique per process and call, so concurrent writers never share one.
  const tmp = `${path}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  try {
    const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
    try {
      let off = 0;
      while (off < bytes.length) off += await file.write(bytes.subarray(off));
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.rename(tmp, path);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw err;
  }
}

/**
 * The folder part of a path ("." when there is none).
 *
 * @example
 * ```ts
 * import { dirname } from "./fs.ts";
 * dirname("weights/model.safetensors"); // "weights"
 * ```
 */
export function dirname(path: string): string {
  const i = path.replace(/\/+$/, "").lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

/**
 * Whether a file or folder exists (other errors, e.g. permissions, are thrown).
 *
 * @example
 * ```ts
 * import { exists } from "./fs.ts";
 * if (!(await exists("weights/model.safetensors"))) console.log("no weights yet");
 * ```
 */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}
