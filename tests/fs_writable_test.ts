// checkWritable: an output path is checked before long work, with the user's path in the error.
import { checkWritable } from "../lib/io/fs.ts";
import { assertEquals, assertRejects } from "./_assert.ts";

Deno.test("checkWritable: folders, files under files, /proc and missing folders", async () => {
  const dir = await Deno.makeTempDir({ prefix: "anthos-fs-" });
  await Deno.writeTextFile(`${dir}/f.txt`, "x");
  await checkWritable(`${dir}/out.png`);
  await checkWritable(`${dir}/f.txt`); // an existing file is replaced atomically
  await checkWritable(`${dir}/new/deeper/out.png`); // folders are created when writing
  await checkWritable(`${dir}/pages`, { dir: true });
  await checkWritable(dir, { dir: true });
  await assertRejects(
    () => checkWritable(dir, { what: "--out" }),
    Error,
    `cannot write --out ${dir}: it is a folder; give a file name, e.g. ${dir}/samples.png`,
  );
  await assertRejects(
    () => checkWritable(`${dir}/f.txt/x.png`, { what: "--out" }),
    Error,
    `cannot write --out ${dir}/f.txt/x.png: ${dir}/f.txt is a file, not a folder`,
  );
  await assertRejects(
    () => checkWritable(`${dir}/f.txt`, { what: "--out-dir", dir: true }),
    Error,
    `cannot write --out-dir ${dir}/f.txt: it is a file, not a folder`,
  );
  await assertRejects(
    () => checkWritable("/proc/x.png", { what: "--out" }),
    Error,
    "cannot write --out /proc/x.png: /proc does not accept new files",
  );
  // Nothing is left behind: no probe files, no created folders.
  assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["f.txt"]);
  await Deno.remove(dir, { recursive: true });
});
