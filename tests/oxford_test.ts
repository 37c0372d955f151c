// Oxford Flowers 102: the real label files and photo subset in shared/, plus a tiny synthetic
// dataset (MAT files written here, a .tgz made by GNU tar) served over 127.0.0.1.
import assert from "node:assert/strict";
import { downloadOxford, extractTarGz, loadOxford } from "../lib/data/oxford.ts";
import { sharedPath } from "./_shared.ts";
import { taskHint } from "../lib/cli/args.ts";

Deno.test("loadOxford: real labels and splits, and the shared train subset", async () => {
  const dir = sharedPath("data/oxford102");
  if (!dir) return;
  const ds = await loadOxford(dir);
  assert.equal(ds.labels.length, 8189);
  assert.equal(ds.splits.train.length, 1020);
  assert.equal(ds.splits.val.length, 1020);
  assert.equal(ds.splits.test.length, 6149);
  // Image 1 is Oxford label 77 ("passion flower"), i.e. class id 76.
  assert.equal(ds.labels[0], 76);
  // The subset holds exactly the 1,020 train photos: all found, every other id reported missing.
  assert.equal(ds.items.length, 1020);
  assert.equal(ds.missing, 1020 + 6149);
  assert(ds.items.every((it) => it.split === "train"));
  const perClass = new Array(102).fill(0);
  for (const it of ds.items) {
    perClass[it.label]++;
    assert.equal(it.label, ds.labels[it.id - 1]);
    assert(it.path.endsWith(`/jpg/image_${String(it.id).padStart(5, "0")}.jpg`));
  }
  assert(perClass.every((n) => n === 10), "10 photos per class in the train split");
  assert.deepEqual(
    ds.items.map((it) => it.id),
    [...ds.splits.train].sort((a, b) => a - b),
  );
  const first = ds.items[0];
  assert.deepEqual([first.id, first.label], [28, 76]);
  assert((await Deno.stat(first.path)).isFile);

  const onlyTest = await loadOxford(dir, { splits: ["test"] });
  assert.deepEqual([onlyTest.items.length, onlyTest.missing], [0, 6149]);
  await assert.rejects(() => loadOxford(dir, { splits: ["dev" as "val"] }), /unknown split "dev"/);
});

// ---- synthetic dataset ----

/** A little-endian, uncompressed MAT v5 file of double row vectors. */
function matFile(vars: Record<string, number[]>): Uint8Array {
  const parts: Uint8Array[] = [];
  const header = new Uint8Array(128).fill(0x20);
  header.set(new TextEncoder().encode("MATLAB 5.0 MAT-file, anthos test"), 0);
  header.fill(0, 116, 124);
  header.set([0x00, 0x01, 0x49, 0x4d], 124); // version 0x0100 (LE), "IM"
  parts.push(header);
  const el = (type: number, payload: Uint8Array) => {
    const out = new Uint8Array(8 + Math.ceil(payload.length / 8) * 8);
    const v = new DataView(out.buffer);
    v.setUint32(0, type, true);
    v.setUint32(4, payload.length, true);
    out.set(payload, 8);
    return out;
  };
  for (const [name, values] of Object.entries(vars)) {
    const flags = new Uint8Array(8);
    flags[0] = 6; // mxDOUBLE_CLASS
    const dims = new Uint8Array(new Int32Array([1, values.length]).buffer);
    const data = new Uint8Array(new Float64Array(values).buffer);
    const body = [el(6, flags), el(5, dims), el(1, new TextEncoder().encode(name)), el(9, data)];
    const len = body.reduce((n, b) => n + b.length, 0);
    const m = new Uint8Array(len);
    let off = 0;
    for (const b of body) m.set(b, off), off += b.length;
    parts.push(el(14, m));
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) out.set(p, off), off += p.length;
  return out;
}

const N = 6;
const LABELS = [1, 1, 2, 2, 3, 102];
const SETID = { trnid: [3, 1], valid: [2, 4], tstid: [6, 5] };
const photo = (id: number) => new Uint8Array(1000 + id).fill(id);

/** Writes the synthetic dataset's files into `dir`: the two .mat files and 102flowers.tgz. */
async function makeDataset(dir: string): Promise<void> {
  const src = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${src}/jpg`);
    for (let id = 1; id <= N; id++) {
      await Deno.writeFile(`${src}/jpg/image_${String(id).padStart(5, "0")}.jpg`, photo(id));
    }
    await Deno.writeTextFile(`${src}/README.txt`, "not a photo");
    const tar = await new Deno.Command("tar", {
      args: ["-C", src, "-czf", `${dir}/102flowers.tgz`, "jpg", "README.txt"],
    }).output();
    assert(tar.success, new TextDecoder().decode(tar.stderr));
  } finally {
    await Deno.remove(src, { recursive: true });
  }
  await Deno.writeFile(`${dir}/imagelabels.mat`, matFile({ labels: LABELS }));
  await Deno.writeFile(`${dir}/setid.mat`, matFile(SETID));
}

function checkSynthetic(ds: Awaited<ReturnType<typeof loadOxford>>): void {
  assert.equal(ds.missing, 0);
  assert.deepEqual(
    ds.items.map((it) => [it.id, it.label, it.split]),
    [[1, 0, "train"], [3, 1, "train"], [2, 0, "val"], [4, 1, "val"], [5, 2, "test"], [
      6,
      101,
      "test",
    ]],
  );
  assert.deepEqual([...ds.labels], LABELS.map((l) => l - 1));
}

Deno.test("loadOxford: extracts 102flowers.tgz on first use, then reads jpg/", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await makeDataset(dir);
    const ds = await loadOxford(dir);
    checkSynthetic(ds);
    assert.equal(ds.imagesDir, `${dir}/jpg`);
    for (const it of ds.items) assert.deepEqual(await Deno.readFile(it.path), photo(it.id));
    // Only jpg/ members are extracted, and no temporary folder is left.
    assert.deepEqual((await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort(), [
      "102flowers.tgz",
      "imagelabels.mat",
      "jpg",
      "setid.mat",
    ]);
    // A subset: photos removed from jpg/ are counted as missing, not an error.
    await Deno.remove(`${dir}/jpg/image_00004.jpg`);
    const sub = await loadOxford(dir, { splits: ["val", "test"] });
    assert.deepEqual(sub.items.map((it) => it.id), [2, 5, 6]);
    assert.equal(sub.missing, 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadOxford: missing files explain how to get them", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(
      () => loadOxford(dir),
      (e: Error) =>
        e.message.includes(`${dir}/imagelabels.mat not found`) &&
        e.message.includes("downloadOxford()") && e.message.includes("102flowers.tgz") &&
        !e.message.includes("deno task") && taskHint(e)!.includes("deno task encode"),
    );
    await makeDataset(dir);
    await Deno.remove(`${dir}/102flowers.tgz`);
    await assert.rejects(() => loadOxford(dir), /photos not found: no .*\/jpg\/ and no/);
    // A truncated archive is reported as such, and leaves no jpg/ behind.
    await makeDataset(dir);
    const tgz = await Deno.readFile(`${dir}/102flowers.tgz`);
    await Deno.writeFile(`${dir}/102flowers.tgz`, tgz.subarray(0, tgz.length >> 1));
    await assert.rejects(() => loadOxford(dir), /truncated or corrupt: delete it and download/);
    await assert.rejects(() => Deno.stat(`${dir}/jpg`), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("extractTarGz: gnu, pax and ustar archives, long names, nested folders, filter", async () => {
  const src = await Deno.makeTempDir();
  const out = await Deno.makeTempDir();
  try {
    const long = `${"d".repeat(60)}/${"f".repeat(90)}.bin`; // > 100 chars: a GNU 'L' entry
    await Deno.mkdir(`${src}/${long.slice(0, 60)}`);
    await Deno.writeFile(`${src}/${long}`, new Uint8Array(1537).map((_, i) => i % 256));
    await Deno.writeTextFile(`${src}/a.txt`, "hello");
    await Deno.writeTextFile(`${src}/skip.me`, "no");
    for (const format of ["gnu", "pax", "ustar"]) {
      // The long name is a GNU 'L' entry, a pax 'path' record, or ustar's prefix + name fields.
      const tgz = `${out}/${format}.tgz`;
      const tar = await new Deno.Command("tar", {
        args: [`--format=${format}`, "-C", src, "-czf", tgz, "."],
      }).output();
      assert(tar.success, new TextDecoder().decode(tar.stderr));
      const to = `${out}/${format}`;
      const n = await extractTarGz(tgz, to, { filter: (f) => !f.endsWith(".me") });
      assert.equal(n, 2, format);
      assert.equal(await Deno.readTextFile(`${to}/a.txt`), "hello");
      if (format !== "ustar") {
        assert.deepEqual(
          await Deno.readFile(`${to}/${long}`),
          await Deno.readFile(`${src}/${long}`),
        );
      }
      await assert.rejects(() => Deno.stat(`${to}/skip.me`), Deno.errors.NotFound);
    }
  } finally {
    await Deno.remove(src, { recursive: true });
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("downloadOxford: fetches from ANTHOS_OXFORD_URL, extracts, then works offline", async () => {
  const files = await Deno.makeTempDir();
  const cache = await Deno.makeTempDir();
  await makeDataset(files);
  const requests: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const name = new URL(req.url).pathname.replace(/^\/flowers\//, "");
    requests.push(name);
    try {
      return new Response(await Deno.readFile(`${files}/${name}`));
    } catch {
      return new Response("no", { status: 404 });
    }
  });
  const base = `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}/flowers`;
  const saved = Deno.env.get("ANTHOS_OXFORD_URL");
  try {
    // The official checksums reject the synthetic files.
    await assert.rejects(
      () => downloadOxford(`${cache}/strict`, { baseUrl: base }),
      /imagelabels\.mat failed \(got \d+ bytes, expected 502/,
    );

    Deno.env.set("ANTHOS_OXFORD_URL", base);
    const seen = new Set<string>();
    const dir = await downloadOxford(`${cache}/oxford102`, {
      verify: false,
      onProgress: (file) => seen.add(file),
    });
    assert.equal(dir, `${cache}/oxford102`);
    assert.deepEqual(seen, new Set(["imagelabels.mat", "setid.mat", "102flowers.tgz"]));
    checkSynthetic(await loadOxford(dir));
    // The archive is removed once extracted (keepArchive: false).
    await assert.rejects(() => Deno.stat(`${dir}/102flowers.tgz`), Deno.errors.NotFound);

    // Second call: everything is cached, the server is not asked again.
    const before = requests.length;
    await downloadOxford(dir, { verify: false });
    assert.equal(requests.length, before);

    // An unreachable server gives the offline hint naming the official URL and the destination.
    Deno.env.delete("ANTHOS_OXFORD_URL");
    await assert.rejects(
      () => downloadOxford(`${cache}/offline`, { baseUrl: `${base}/nothing-here` }),
      (e: Error) =>
        e.message.includes("HTTP 404") &&
        e.message.includes(
          `https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat on a connected ` +
            `machine and place it at ${cache}/offline/imagelabels.mat`,
        ),
    );
  } finally {
    if (saved === undefined) Deno.env.delete("ANTHOS_OXFORD_URL");
    else Deno.env.set("ANTHOS_OXFORD_URL", saved);
    await server.shutdown();
    await Deno.remove(files, { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("loadOxford: a jpg/ folder of symlinks to the photos counts as the photos", async () => {
  const src = sharedPath("data/oxford102");
  if (!src) return;
  // The usual way to reuse a shared copy: the .mat files and every photo linked, not copied.
  const dir = await Deno.makeTempDir({ prefix: "anthos-oxford-links-" });
  for (const f of ["imagelabels.mat", "setid.mat"]) {
    await Deno.symlink(`${src}/${f}`, `${dir}/${f}`);
  }
  await Deno.mkdir(`${dir}/jpg`);
  for await (const e of Deno.readDir(`${src}/jpg`)) {
    await Deno.symlink(`${src}/jpg/${e.name}`, `${dir}/jpg/${e.name}`);
  }
  const direct = await loadOxford(src, { splits: ["train"] });
  const linked = await loadOxford(dir, { splits: ["train"] });
  assert.equal(linked.items.length, direct.items.length);
  assert.equal(linked.missing, direct.missing);
  assert.deepEqual(linked.items.map((it) => it.id), direct.items.map((it) => it.id));
  // A dangling link is a missing photo, not a present one.
  const first = direct.items[0].path.split("/").pop()!;
  await Deno.remove(`${dir}/jpg/${first}`);
  await Deno.symlink(`${dir}/nowhere.jpg`, `${dir}/jpg/${first}`);
  const dangling = await loadOxford(dir, { splits: ["train"] });
  assert.equal(dangling.items.length, direct.items.length - 1);
  assert.equal(dangling.missing, direct.missing + 1);
  await Deno.remove(dir, { recursive: true });
});
