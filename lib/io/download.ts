/**
 * Downloads into the Anthos cache: resumable, checksummed, atomic.
 *
 * A file is streamed to `dest + ".part"`, hashed while it streams, flushed to disk and only then
 * renamed to `dest`, so `dest` is either absent or complete. An interrupted download keeps its
 * `.part` file and the next call resumes it with an HTTP `Range` request (a server that ignores
 * the range and answers 200 simply restarts it). Every failure names the URL, what went wrong and
 * where the file can be placed by hand, because the cache is often filled on offline machines.
 *
 * @module
 */

import { createHash, type Hash } from "node:crypto";
import { homedir } from "node:os";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { env } from "../runtime/env.ts";

/** Options of {@link downloadFile}. */
export interface DownloadOptions {
  /** Expected SHA-256 of the whole file, lowercase hex. Checked on the cached file too. */
  sha256?: string;
  /** Expected MD5, lowercase hex: only for files whose published checksum is an MD5. */
  md5?: string;
  /** Expected size in bytes. */
  size?: number;
  /** Called as bytes arrive: bytes done so far (resumed bytes included) and the total if known. */
  onProgress?: (done: number, total: number | null) => void;
  /** What to tell the user on failure, e.g. "download X from Y and place it at Z". */
  manualHint?: string;
  /** The fetch to use (tests, proxies); defaults to the global fetch. */
  fetch?: typeof fetch;
}

/**
 * The shared reference folder's TAESD files: `$ANTHOS_SHARED/weights/taesd`, else
 * `../shared/weights/taesd` beside a local checkout; null for a remote import without
 * `$ANTHOS_SHARED`. The second place `loadAutoencoder("taesd")` looks (after the cache), and the
 * demo server's default.
 *
 * @example
 * ```ts
 * import { sharedTaesdDir } from "./download.ts";
 * sharedTaesdDir(); // e.g. "/work/shared/weights/taesd"
 * ```
 */
export function sharedTaesdDir(): string | null {
  const beside = import.meta.url.startsWith("file:")
    ? fileURLToPath(new URL("../../../shared", import.meta.url))
    : undefined;
  const shared = env.shared ?? beside;
  return shared ? `${shared.replace(/\/+$/, "")}/weights/taesd` : null;
}

/**
 * The Anthos cache root: `$ANTHOS_HOME`, else `$XDG_CACHE_HOME/anthos`, else `~/.cache/anthos`.
 * A root that exists but is not a folder is an error naming the variable and the fix.
 *
 * @example
 * ```ts
 * import { anthosHome } from "./download.ts";
 * const dir = `${anthosHome()}/oxford102`;
 * ```
 */
export function anthosHome(): string {
  const home = env.home;
  const setHome = "point ANTHOS_HOME at a folder (it is created if missing)";
  if (home) return checkHome(home, `ANTHOS_HOME=${home}`, `${setHome}, or unset it`);
  const xdg = env.xdgCacheHome;
  const fix = `move that file away, or ${setHome}`;
  if (xdg) return checkHome(`${xdg}/anthos`, `the cache root ${xdg}/anthos (XDG_CACHE_HOME)`, fix);
  return checkHome(`${homedir()}/.cache/anthos`, `the cache root ${homedir()}/.cache/anthos`, fix);
}

/** The cache root must be a folder, or not exist yet (it is created on first use). */
function checkHome(dir: string, what: string, fix: string): string {
  let isDir = true;
  try {
    isDir = Deno.statSync(dir).isDirectory;
  } catch (e) {
    // A path under a file is no folder either; without read permission, let later calls say so.
    if (e instanceof Deno.errors.NotADirectory) isDir = false;
  }
  if (!isDir) {
    throw new Error(
      `${what} is not a folder (it is a file, or lies under one); the Anthos cache root ` +
        `holds datasets and autoencoder weights: ${fix}`,
    );
  }
  return dir;
}

/**
 * Downloads `url` to `dest` unless `dest` already exists (with the right checksum when one is
 * given), and returns `dest`. Resumes a previous partial download when the server supports ranges.
 *
 * @example
 * ```ts
 * import { downloadFile } from "./download.ts";
 * // A stand-in server (options.fetch); without it, the global fetch downloads the real file.
 * const fetch = () => Promise.resolve(new Response("labels", { headers: { "content-length": "6" } }));
 * const dest = `${await Deno.makeTempDir()}/oxford102/imagelabels.mat`;
 * await downloadFile("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat", dest, {
 *   manualHint: `download imagelabels.mat by hand and place it at ${dest}`,
 *   size: 6,
 *   fetch,
 * });
 * if ((await Deno.readTextFile(dest)) !== "labels") throw new Error("downloaded");
 * ```
 */
export async function downloadFile(
  url: string,
  dest: string,
  options: DownloadOptions = {},
): Promise<string> {
  const want = {
    sha256: options.sha256?.toLowerCase(),
    md5: options.md5?.toLowerCase(),
  };
  if (await isCached(dest, options.size, want)) return dest;

  await Deno.mkdir(dirname(dest), { recursive: true });
  const part = `${dest}.part`;
  const fail = (what: string, cause?: unknown): Error => {
    const hint = options.manualHint ?? `download ${url} by hand and place it at ${dest}`;
    const reason = cause === undefined ? "" : `: ${cause instanceof Error ? cause.message : cause}`;
    return new Error(
      `download of ${url} failed (${what}${reason}).\n` +
        `If this machine is offline or the server is unreachable, ${hint}.`,
      { cause },
    );
  };

  // Bytes already on disk from an earlier, interrupted attempt.
  let have = await fileSize(part);
  if (options.size !== undefined && have > options.size) {
    await Deno.remove(part);
    have = 0;
  }

  const doFetch = options.fetch ?? fetch;
  let res: Response;
  try {
    const headers: HeadersInit = have > 0 ? { Range: `bytes=${have}-` } : {};
    res = await doFetch(url, { headers });
    if (res.status === 416 && have > 0) {
      // The range starts at or past the end: the part file is complete or stale; start over.
      await res.body?.cancel();
      await Deno.remove(part);
      have = 0;
      res = await doFetch(url);
    }
  } catch (err) {
    throw fail("network error", err);
  }
  if (res.status !== 200 && res.status !== 206) {
    await res.body?.cancel();
    throw fail(`HTTP ${res.status} ${res.statusText}`.trim());
  }
  if (!res.body) throw fail("empty response body");

  let resume = res.status === 206 && have > 0;
  if (resume) {
    // Only append when the server really continues where the part file stops.
    const range = /bytes (\d+)-/.exec(res.headers.get("content-range") ?? "");
    if (!range || Number(range[1]) !== have) resume = false;
    if (!resume) {
      await res.body.cancel();
      throw fail(`server answered an unexpected range (${res.headers.get("content-range")})`);
    }
  }
  if (!resume) have = 0;

  const length = Number(res.headers.get("content-length") ?? NaN);
  const total = options.size ?? (Number.isFinite(length) ? have + length : null);
  const hashes = { sha256: createHash("sha256"), md5: createHash("md5") };
  if (resume) await hashFile(part, Object.values(hashes));

  let done = have;
  const file = await Deno.open(part, {
    write: true,
    create: true,
    append: resume,
    truncate: !resume,
  });
  try {
    for await (const chunk of res.body) {
      for (let off = 0; off < chunk.length;) off += await file.write(chunk.subarray(off));
      hashes.sha256.update(chunk);
      hashes.md5.update(chunk);
      done += chunk.length;
      options.onProgress?.(done, total);
    }
    await file.sync();
  } catch (err) {
    // The part file stays: the next call resumes from it.
    throw fail(`connection lost after ${done} bytes; the next call resumes`, err);
  } finally {
    file.close();
  }

  if (total !== null && done !== total) {
    if (done > total || options.size !== undefined) await Deno.remove(part).catch(() => {});
    throw fail(`got ${done} bytes, expected ${total}`);
  }
  for (const algo of ["sha256", "md5"] as const) {
    const digest = hashes[algo].digest("hex");
    if (want[algo] && digest !== want[algo]) {
      await Deno.remove(part).catch(() => {});
      throw fail(
        `checksum mismatch: ${algo} ${digest}, expected ${want[algo]}; the download was deleted`,
      );
    }
  }
  await Deno.rename(part, dest);
  return dest;
}

/**
 * SHA-256 of a file as lowercase hex, streamed (large archives never sit in memory whole).
 *
 * @example
 * ```ts
 * import { sha256File } from "./download.ts";
 * const hex = await sha256File("weights/classes.txt");
 * ```
 */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  await hashFile(path, [hash]);
  return hash.digest("hex");
}

async function hashFile(path: string, hashes: Hash[]): Promise<void> {
  const file = await Deno.open(path, { read: true });
  for await (const chunk of file.readable) for (const h of hashes) h.update(chunk);
}

async function fileSize(path: string): Promise<number> {
  try {
    return (await Deno.stat(path)).size;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return 0;
    throw err;
  }
}

async function isCached(
  dest: string,
  size: number | undefined,
  want: { sha256?: string; md5?: string },
): Promise<boolean> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(dest);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
  if (!stat.isFile) throw new Error(`${dest} exists but is not a file; remove it and retry`);
  if (size !== undefined && stat.size !== size) return false;
  if (!want.sha256 && !want.md5) return true;
  const hashes = { sha256: createHash("sha256"), md5: createHash("md5") };
  await hashFile(dest, Object.values(hashes));
  if (want.sha256 && hashes.sha256.digest("hex") !== want.sha256) return false;
  if (want.md5 && hashes.md5.digest("hex") !== want.md5) return false;
  return true;
}
