/**
 * Oxford Flowers 102 (Nilsback & Zisserman, 2008): the official files, read as they are published.
 *
 * A dataset folder holds `imagelabels.mat` (variable `labels`: class 1..102 of image i),
 * `setid.mat` (`trnid`, `valid`, `tstid`: 1-based image ids of the train/val/test splits) and the
 * photos, either extracted as `jpg/image_00001.jpg` ... or as the official `102flowers.tgz`
 * (which {@link loadOxford} extracts to `jpg/` on first use, streaming). Subsets work: only ids
 * whose photo exists become items, and the count of the others is reported.
 *
 * Labels here are 0-based class ids (Oxford label - 1), the ids of `weights/classes.txt`.
 *
 * @module
 */

import { anthosHome, downloadFile } from "../io/download.ts";
import { isDir, isFile } from "../io/fs.ts";
import { env } from "../runtime/env.ts";
import { loadMat, type MatArray } from "../io/matlab.ts";
import { markMissing } from "../runtime/errors.ts";

/** The three official splits. */
export type OxfordSplit = "train" | "val" | "test";

/** One photo of the dataset. */
export interface OxfordItem {
  /** 1-based image number, as in `image_00001.jpg`. */
  id: number;
  /** Path of the JPEG. */
  path: string;
  /** Class id 0..101 (Oxford label - 1). */
  label: number;
  /** The official split it belongs to. */
  split: OxfordSplit;
}

/** What {@link loadOxford} returns. */
export interface OxfordDataset {
  /** The dataset folder. */
  dir: string;
  /** The folder holding the JPEGs. */
  imagesDir: string;
  /** Photos found on disk in the requested splits, by split (train, val, test) then id. */
  items: OxfordItem[];
  /** Ids of the requested splits whose photo is not on disk (a subset of the dataset). */
  missing: number;
  /** Class id 0..101 of every image, indexed by image id - 1 (all 8,189, found or not). */
  labels: Int32Array;
  /** The official 1-based image ids of each split, in file order. */
  splits: Record<OxfordSplit, number[]>;
}

/** Where the official files live; override with the `baseUrl` option or `ANTHOS_OXFORD_URL`. */
export const OXFORD_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102";

/** Number of Oxford Flowers 102 classes. */
const NUM_LABELS = 102;
const SPLIT_VARS: Record<OxfordSplit, string> = { train: "trnid", val: "valid", test: "tstid" };
const ALL_SPLITS: OxfordSplit[] = ["train", "val", "test"];

// The official files. The .mat sizes and SHA-256 were measured on copies whose MD5 matches the
// MD5 published for the official files (the same MD5s torchvision checks); for the archive only
// its published MD5 is known.
const FILES = {
  labels: {
    name: "imagelabels.mat",
    size: 502,
    sha256: "4903e94206bac23bf772aadf06451916df56b58fc483a62db32a97b82656651d",
    md5: "e0620be6f572b9609742df49c70aed4d",
  },
  setid: {
    name: "setid.mat",
    size: 14989,
    sha256: "46b8678f91fd95d3c8f4feab80d271a6c834a1dd896fe29fd3e6ad9ce5c8dccd",
    md5: "a5357ecc9cb78c4bef273ce3793fc85c",
  },
  images: {
    name: "102flowers.tgz",
    size: undefined,
    sha256: undefined,
    md5: "52808999861908f626f3c1f4e79d11fa",
  },
} as const;

function howToGet(dir: string): string {
  return `Call downloadOxford() (it downloads and checks them), or download ` +
    `${FILES.images.name}, ${FILES.labels.name} and ${FILES.setid.name} from ${OXFORD_URL}/ ` +
    `and place them in ${dir}/ (the photos may also be an extracted ${dir}/jpg/ folder)`;
}

/**
 * Reads the dataset in `dir`: labels, splits and the photos present on disk.
 *
 * @example
 * ```ts
 * import { loadOxford } from "./oxford.ts";
 * const ds = await loadOxford("../shared/data/oxford102", { splits: ["train"] });
 * console.log(ds.items.length, ds.items[0]); // 1020 { id, path, label, split: "train" }
 * ```
 */
export async function loadOxford(
  dir: string,
  options: { splits?: OxfordSplit[] } = {},
): Promise<OxfordDataset> {
  const wanted = options.splits ?? ALL_SPLITS;
  for (const s of wanted) {
    if (!(s in SPLIT_VARS)) {
      throw new Error(`unknown split "${s}"; the Oxford splits are ${ALL_SPLITS.join(", ")}`);
    }
  }
  const labelsVar = await readVar(dir, FILES.labels.name, "labels");
  const labels = new Int32Array(labelsVar.data.length);
  labelsVar.data.forEach((v, i) => {
    if (!Number.isInteger(v) || v < 1 || v > NUM_LABELS) {
      throw new Error(
        `${dir}/${FILES.labels.name}: image ${i + 1} has label ${v}, expected 1..${NUM_LABELS}; ` +
          `the file is not the official one, download it again`,
      );
    }
    labels[i] = v - 1;
  });

  const splits = {} as Record<OxfordSplit, number[]>;
  for (const s of ALL_SPLITS) {
    const ids = Array.from((await readVar(dir, FILES.setid.name, SPLIT_VARS[s])).data);
    const bad = ids.find((id) => !Number.isInteger(id) || id < 1 || id > labels.length);
    if (bad !== undefined) {
      throw new Error(
        `${dir}/${FILES.setid.name}: ${SPLIT_VARS[s]} holds image id ${bad}, but ` +
          `${FILES.labels.name} has ${labels.length} images; the two files do not belong together`,
      );
    }
    splits[s] = ids;
  }

  const imagesDir = await ensureImages(dir);
  const present = new Set<string>();
  for await (const e of Deno.readDir(imagesDir)) {
    // A folder of symlinks (e.g. into a shared copy) counts: a link is followed to its file.
    if (e.isFile || (e.isSymlink && (await isFile(`${imagesDir}/${e.name}`)))) present.add(e.name);
  }

  const items: OxfordItem[] = [];
  let missing = 0;
  for (const split of wanted) {
    for (const id of [...splits[split]].sort((a, b) => a - b)) {
      const file = imageName(id);
      if (!present.has(file)) {
        missing++;
        continue;
      }
      items.push({ id, path: `${imagesDir}/${file}`, label: labels[id - 1], split });
    }
  }
  return { dir, imagesDir, items, missing, labels, splits };
}

/** Options of {@link downloadOxford}. */
export interface DownloadOxfordOptions {
  /** Where the files are served; default `$ANTHOS_OXFORD_URL`, else the official site. */
  baseUrl?: string;
  /** Check the published checksums (default true; turn off only for test or private mirrors). */
  verify?: boolean;
  /** Keep `102flowers.tgz` after extracting it (default false: it would double the disk use). */
  keepArchive?: boolean;
  /** Progress of each file's download. */
  onProgress?: (file: string, done: number, total: number | null) => void;
  /** The fetch to use (tests, proxies). */
  fetch?: typeof fetch;
}

/**
 * Downloads the official dataset into `dir` (default `${anthosHome()}/oxford102`) unless it is
 * already there, extracts the photos to `dir/jpg/`, and returns `dir` for {@link loadOxford}.
 *
 * @example
 * ```ts
 * import { downloadOxford, loadOxford } from "./oxford.ts";
 * const ds = await loadOxford(await downloadOxford());
 * ```
 */
export async function downloadOxford(
  dir: string = `${anthosHome()}/oxford102`,
  options: DownloadOxfordOptions = {},
): Promise<string> {
  const base = (options.baseUrl ?? env.oxfordUrl ?? OXFORD_URL)
    .replace(/\/+$/, "");
  const verify = options.verify ?? true;
  const hasImages = await isDir(`${dir}/jpg`);
  for (const f of [FILES.labels, FILES.setid, FILES.images]) {
    if (f === FILES.images && hasImages) continue; // photos already extracted
    const url = `${base}/${f.name}`;
    const dest = `${dir}/${f.name}`;
    await downloadFile(url, dest, {
      ...(verify ? { size: f.size, sha256: f.sha256, md5: f.md5 } : {}),
      onProgress: options.onProgress && ((done, total) => options.onProgress!(f.name, done, total)),
      fetch: options.fetch,
      manualHint: `download ${OXFORD_URL}/${f.name} on a connected machine and place it at ` +
        `${dest}` + (f === FILES.images ? ` (or put the extracted jpg/ folder at ${dir}/jpg)` : ""),
    });
  }
  if (!hasImages) {
    await ensureImages(dir);
    if (!options.keepArchive) await Deno.remove(`${dir}/${FILES.images.name}`);
  }
  return dir;
}

/**
 * Extracts the regular files of a `.tar.gz` archive into `destDir`, streaming (the archive is
 * never in memory whole). Understands ustar, GNU long names and pax paths; refuses entries that
 * would land outside `destDir`. Returns the number of files written.
 *
 * @example
 * ```ts
 * import { extractTarGz } from "./oxford.ts";
 * const n = await extractTarGz("102flowers.tgz", "/tmp/flowers", {
 *   filter: (name) => name.endsWith(".jpg"),
 * });
 * ```
 */
export async function extractTarGz(
  archive: string,
  destDir: string,
  options: { filter?: (name: string) => boolean } = {},
): Promise<number> {
  const file = await Deno.open(archive, { read: true });
  const reader = new ByteReader(file.readable.pipeThrough(new DecompressionStream("gzip")));
  const made = new Set<string>();
  let count = 0;
  let longName: string | null = null;
  try {
    while (true) {
      const header = await reader.read(512);
      if (!header || header.every((b) => b === 0)) break; // end-of-archive blocks (or none)
      if (header.length < 512) throw new Error(`truncated tar header`);
      const size = octal(header.subarray(124, 136));
      const type = String.fromCharCode(header[156] || 48); // "\0" is an old-style regular file
      let name = longName ?? tarName(header);
      longName = null;
      const padded = Math.ceil(size / 512) * 512;
      if (type === "L" || type === "x") {
        // GNU long name, or pax extended header: the name of the next entry.
        const body = await reader.readAll(padded);
        const text = new TextDecoder().decode(body.subarray(0, size));
        longName = type === "L" ? text.replace(/\0.*$/s, "") : /(?:^|\n)\d+ path=([^\n]*)\n/
          .exec(text)?.[1] ?? null;
        continue;
      }
      name = name.replace(/^\.\//, "");
      if ((type !== "0" && type !== "7") || !(options.filter?.(name) ?? true)) {
        await reader.skip(padded);
        continue;
      }
      if (name.startsWith("/") || name.split("/").includes("..")) {
        throw new Error(`refusing tar entry "${name}": it would be written outside ${destDir}`);
      }
      const out = `${destDir}/${name}`;
      const parent = out.slice(0, out.lastIndexOf("/"));
      if (!made.has(parent)) {
        await Deno.mkdir(parent, { recursive: true });
        made.add(parent);
      }
      await Deno.writeFile(out, await reader.readAll(size));
      await reader.skip(padded - size);
      count++;
    }
  } catch (err) {
    throw new Error(
      `cannot extract ${archive} (${(err as Error).message}); the archive is truncated or ` +
        `corrupt: delete it and download it again`,
      { cause: err },
    );
  } finally {
    await reader.cancel();
  }
  return count;
}

/** Returns the folder of JPEGs, extracting `102flowers.tgz` first when only the archive exists. */
async function ensureImages(dir: string): Promise<string> {
  const jpg = `${dir}/jpg`;
  if (await isDir(jpg)) return jpg;
  const archive = `${dir}/${FILES.images.name}`;
  if (!(await isFile(archive))) {
    throw markMissing(
      new Error(
        `Oxford Flowers 102 photos not found: no ${jpg}/ and no ${archive}. ` + howToGet(dir),
      ),
      "oxford",
    );
  }
  // Extract beside the target and rename at the end: a jpg/ folder is always complete.
  const tmp = `${dir}/.jpg-extract-${Deno.pid}`;
  try {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    const n = await extractTarGz(archive, tmp, { filter: (name) => /^jpg\/[^/]+$/.test(name) });
    if (n === 0) throw new Error(`${archive} holds no jpg/ files; it is not ${FILES.images.name}`);
    await Deno.rename(`${tmp}/jpg`, jpg);
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
  return jpg;
}

async function readVar(dir: string, file: string, name: string): Promise<MatArray> {
  const path = `${dir}/${file}`;
  if (!(await isFile(path))) {
    throw markMissing(
      new Error(`Oxford Flowers 102 label file ${path} not found. ` + howToGet(dir)),
      "oxford",
    );
  }
  const v = (await loadMat(path)).get(name);
  if (!v) throw new Error(`${path} has no variable "${name}"; it is not the official ${file}`);
  return v;
}

/** `image_00001.jpg` for id 1. */
function imageName(id: number): string {
  return `image_${String(id).padStart(5, "0")}.jpg`;
}

function tarName(h: Uint8Array): string {
  const str = (a: number, b: number) =>
    new TextDecoder().decode(h.subarray(a, b)).replace(/\0.*$/s, "");
  const name = str(0, 100);
  const prefix = str(257, 263) === "ustar" ? str(345, 500) : "";
  return prefix ? `${prefix}/${name}` : name;
}

function octal(field: Uint8Array): number {
  if (field[0] & 0x80) throw new Error("tar entries over 8 GiB (base-256 sizes) are not supported");
  const text = new TextDecoder().decode(field).replace(/\0.*$/s, "").trim();
  const n = parseInt(text || "0", 8);
  if (!Number.isFinite(n)) throw new Error(`bad tar size field "${text}"`);
  return n;
}

/** Exact-size reads from a byte stream (tar needs 512-byte blocks, streams give any size). */
class ByteReader {
  #it: ReadableStreamDefaultReader<Uint8Array>;
  #buf: Uint8Array = new Uint8Array(0);
  #done = false;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.#it = stream.getReader();
  }

  /** Up to `n` bytes (fewer only at the end of the stream; null when nothing is left). */
  async read(n: number): Promise<Uint8Array | null> {
    while (this.#buf.length < n && !this.#done) {
      const { value, done } = await this.#it.read();
      if (done) this.#done = true;
      else this.#buf = this.#buf.length ? concat(this.#buf, value) : value;
    }
    if (this.#buf.length === 0) return null;
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(out.length);
    return out;
  }

  /** At most `max` bytes, without waiting for more than one chunk (null at the end). */
  async readSome(max: number): Promise<Uint8Array | null> {
    if (this.#buf.length === 0 && !this.#done) {
      const { value, done } = await this.#it.read();
      if (done) this.#done = true;
      else this.#buf = value;
    }
    if (this.#buf.length === 0) return null;
    const out = this.#buf.subarray(0, max);
    this.#buf = this.#buf.subarray(out.length);
    return out;
  }

  /** Exactly `n` bytes, or an error naming the shortfall. */
  async readAll(n: number): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    let off = 0;
    while (off < n) {
      const chunk = await this.readSome(n - off);
      if (!chunk) throw new Error(`unexpected end of archive (${n - off} bytes short)`);
      out.set(chunk, off);
      off += chunk.length;
    }
    return out;
  }

  async skip(n: number): Promise<void> {
    while (n > 0) {
      const chunk = await this.readSome(n);
      if (!chunk) throw new Error(`unexpected end of archive (${n} bytes short)`);
      n -= chunk.length;
    }
  }

  async cancel(): Promise<void> {
    await this.#it.cancel().catch(() => {});
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
