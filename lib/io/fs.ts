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

/**
 * Checks, before any long work, that `path` can be written: a file (default) whose folder exists
 * or can be created, or with `{ dir: true }` a folder that can hold new files. Throws an error
 * naming `what` (e.g. "--out") and the user's path with what to do: the path is a folder (or a
 * file where a folder is wanted), a parent is a file, or the system refuses new files there
 * (permissions, read-only or virtual file systems such as /proc). Creates nothing that stays.
 *
 * @example
 * ```ts
 * import { checkWritable } from "./fs.ts";
 * await checkWritable("out/samples.png", { what: "--out" }); // ok: out/ will be created
 * await checkWritable("/proc/x.png", { what: "--out" }); // throws: cannot write --out /proc/x.png ...
 * ```
 */
export async function checkWritable(
  path: string,
  options: { what?: string; dir?: boolean } = {},
): Promise<void> {
  const label = options.what ? `${options.what} ${path}` : path;
  const wantDir = options.dir ?? false;
  const stat = await statOrNull(path);
  if (stat && wantDir && !stat.isDirectory) {
    throw new Error(`cannot write ${label}: it is a file, not a folder; give a folder's path`);
  }
  if (stat && !wantDir && stat.isDirectory) {
    throw new Error(
      `cannot write ${label}: it is a folder; give a file name, e.g. ` +
        `${path.replace(/\/+$/, "")}/samples.png`,
    );
  }
  // The nearest existing folder is where the file (or the folders leading to it) will be made.
  let folder = wantDir ? path : dirname(path);
  let fstat = await statOrNull(folder);
  while (!fstat && folder !== dirname(folder)) {
    folder = dirname(folder);
    fstat = await statOrNull(folder);
  }
  if (fstat && !fstat.isDirectory) {
    throw new Error(
      `cannot write ${label}: ${folder} is a file, not a folder; choose another path`,
    );
  }
  const probe = `${folder.replace(/\/+$/, "")}/.anthos-probe-${Deno.pid}-${
    crypto.randomUUID().slice(0, 8)
  }`;
  try {
    (await Deno.open(probe, { write: true, createNew: true })).close();
  } catch (e) {
    const why = e instanceof Deno.errors.PermissionDenied
      ? "permission denied"
      : e instanceof Deno.errors.NotFound
      ? "the system does not allow new files there"
      : (e as { code?: string }).code === "EROFS"
      ? "the file system is read-only"
      : (e as Error).name;
    throw new Error(
      `cannot write ${label}: ${folder} does not accept new files (${why}); ` +
        `choose a path in a folder you can write to`,
    );
  }
  await Deno.remove(probe).catch(() => {});
}

async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return null;
    throw e;
  }
}
