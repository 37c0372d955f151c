/**
 * Atomic file writes: data goes to a temporary file beside the target, is flushed to disk, then
 * renamed over the target. A reader (or a crash) sees either the old file or the new one, never a
 * half-written file, which is what keeps checkpoints, caches and exported weights safe.
 *
 * Also the one home of the small file-system predicates ({@link exists}, {@link isFile},
 * {@link isDir}) the library uses.
 *
 * @module
 */

import { dirname as pathDirname } from "node:path";

/**
 * Writes `data` to `path` atomically (temp file in the same folder + fsync + rename).
 *
 * @example
 * ```ts
 * import { writeFileAtomic } from "./fs.ts";
 * const path = `${await Deno.makeTempDir()}/sub/example.bin`; // missing folders are made
 * await writeFileAtomic(path, new Uint8Array([1, 2, 3]));
 * if ((await Deno.readFile(path)).length !== 3) throw new Error("expected 3 bytes");
 * ```
 */
export async function writeFileAtomic(
  path: string,
  data: Uint8Array | string,
  options: { mkdir?: boolean } = {},
): Promise<void> {
  const dir = pathDirname(path);
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
 * @deprecated Use `dirname` from `node:path` (this is a re-export of it).
 */
export const dirname: (path: string) => string = pathDirname;

/**
 * Whether a file or folder exists. A missing path (or a path through a file) is `false`; other
 * errors, e.g. permissions, are thrown.
 *
 * @example
 * ```ts
 * import { exists } from "./fs.ts";
 * if (!(await exists(import.meta.dirname!))) throw new Error("this folder exists");
 * if (await exists("/no/such/anthos/path")) throw new Error("this path does not");
 * ```
 */
export async function exists(path: string): Promise<boolean> {
  return (await statOrNull(path)) !== null;
}

/**
 * Whether `path` is a regular file (a symlink to one counts). Missing paths are `false`; other
 * errors are thrown.
 *
 * @example
 * ```ts
 * import { isFile } from "./fs.ts";
 * if (!(await isFile(new URL(import.meta.url).pathname))) throw new Error("this file is a file");
 * if (await isFile(import.meta.dirname!)) throw new Error("a folder is not a file");
 * ```
 */
export async function isFile(path: string): Promise<boolean> {
  return (await statOrNull(path))?.isFile ?? false;
}

/**
 * Whether `path` is a folder (a symlink to one counts). Missing paths are `false`; other errors
 * are thrown.
 *
 * @example
 * ```ts
 * import { isDir } from "./fs.ts";
 * if (!(await isDir(import.meta.dirname!))) throw new Error("this folder is a folder");
 * if (await isDir(new URL(import.meta.url).pathname)) throw new Error("a file is not a folder");
 * ```
 */
export async function isDir(path: string): Promise<boolean> {
  return (await statOrNull(path))?.isDirectory ?? false;
}

async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return null;
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
 * const dir = await Deno.makeTempDir();
 * await checkWritable(`${dir}/out/samples.png`, { what: "--out" }); // ok: out/ will be created
 * const refused = await checkWritable("/proc/x.png", { what: "--out" }).then(() => null, (e) => e);
 * if (!String(refused).includes("cannot write --out /proc/x.png")) throw new Error(String(refused));
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

/** Temp files of {@link writeFileAtomic}: `<name>.<pid>.<8 hex digits>.tmp`. */
const TEMP_PATTERN = /^(.+)\.(\d+)\.[0-9a-f]{8}\.tmp$/;

/**
 * Removes the temp files {@link writeFileAtomic} left in `dir` when a writer was killed (kill -9,
 * power loss): only names of its own pattern whose writing process is gone. Returns the removed
 * paths. Other files, and temps of another process still running, are left alone. Call it before
 * this process writes in `dir`.
 *
 * @example
 * ```ts
 * import { removeStaleTemps } from "./fs.ts";
 * const removed = await removeStaleTemps("runs/smoke");
 * if (removed.length) console.log(`removed ${removed.length} stale temp file(s)`);
 * ```
 */
export async function removeStaleTemps(dir: string): Promise<string[]> {
  const removed: string[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return removed;
    throw e;
  }
  const hasProc = await exists("/proc/self");
  for (const e of entries) {
    const m = e.isFile ? TEMP_PATTERN.exec(e.name) : null;
    if (!m) continue;
    const pid = Number(m[2]);
    const path = `${dir}/${e.name}`;
    let alive: boolean;
    // Our own pid counts as gone: call this before writing in `dir` (containers reuse pids).
    if (pid === Deno.pid) alive = false;
    else if (hasProc) alive = await exists(`/proc/${pid}`);
    else alive = Date.now() - ((await Deno.stat(path)).mtime?.getTime() ?? 0) < 3_600_000;
    if (alive) continue;
    await Deno.remove(path).catch(() => {});
    removed.push(path);
  }
  return removed;
}
