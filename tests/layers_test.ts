// The layer rule of lib/ (runtime -> io -> model -> autoencoders -> data -> training -> pipeline ->
// cli): the checker finds each kind of violation in a made-up graph, the real graph has none, and
// the model subpath loads neither sharp nor the pipeline.
import { assert, assertEquals } from "./_assert.ts";
import { fileURLToPath } from "node:url";
import { checkLayers, circles, type Edge, libGraph } from "../.ci/layers.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");
const e = (from: string, to: string, kind: Edge["kind"] = "static"): Edge => ({
  from,
  to,
  line: 3,
  kind,
});

Deno.test("checkLayers: each kind of violation is named with its edge", () => {
  const none = new Map<string, string>();
  const messages = (edges: Edge[], files = none) => checkLayers(edges, files).map((v) => v.message);
  assertEquals(messages([e("lib/model/dit.ts", "lib/io/fs.ts")]), []);
  assertEquals(messages([e("lib/model/dit.ts", "lib/model/flow.ts")]), []);
  const up = messages([e("lib/model/flow.ts", "lib/training/trainer.ts", "type")]);
  assertEquals(up.length, 1);
  assert(up[0].includes("upward import model -> training"), up[0]);
  assert(up[0].includes("lib/model/flow.ts:3 -> lib/training/trainer.ts (type)"), up[0]);
  const img = messages([e("lib/autoencoders/taesd.ts", "lib/io/image.ts")]);
  assertEquals(img.length, 1);
  assert(img[0].includes("must not import image decoding"), img[0]);
  const front = messages([e("lib/cli/args.ts", "tasks/train.ts")]);
  assert(front[0]?.includes("lib imports a front end"), String(front));
  const jup = messages(
    [],
    new Map([["lib/pipeline/pipeline.ts", "a\nb\nDeno.jupyter.display(x)"]]),
  );
  assertEquals(jup, [
    "Deno.jupyter in lib (notebook display belongs in notebooks/): lib/pipeline/pipeline.ts:3",
  ]);
  const stray = messages([e("lib/misc.ts", "lib/io/fs.ts")]);
  assert(stray[0]?.includes("in no layer folder"), String(stray));
});

Deno.test("circles: found through static and dynamic imports, not through type-only ones", () => {
  const ring = [
    e("lib/model/a.ts", "lib/model/b.ts"),
    e("lib/model/b.ts", "lib/model/c.ts", "dynamic"),
    e("lib/model/c.ts", "lib/model/a.ts"),
    e("lib/model/c.ts", "lib/model/d.ts"),
  ];
  const found = circles(ring);
  assertEquals(found.length, 1);
  assertEquals(found[0].map((x) => x.from), ["lib/model/a.ts", "lib/model/b.ts", "lib/model/c.ts"]);
  const msgs = checkLayers(ring, new Map()).map((v) => v.message);
  assert(
    msgs.some((m) => m.startsWith("import circle: lib/model/a.ts:3 -> lib/model/b.ts")),
    String(msgs),
  );
  const typeOnly = [
    e("lib/model/a.ts", "lib/model/b.ts"),
    e("lib/model/b.ts", "lib/model/a.ts", "type"),
  ];
  assertEquals(checkLayers(typeOnly, new Map()), []);
  assertEquals(circles([e("lib/io/x.ts", "lib/io/x.ts")]).length, 1); // a file importing itself
});

Deno.test("lib/: no import circle, no upward import, no Deno.jupyter (the real graph)", async () => {
  const { edges, files } = await libGraph(ROOT);
  assert(files.size > 30 && edges.length > 100, `graph too small: ${files.size} files`);
  assertEquals(checkLayers(edges, files).map((v) => v.message), []);
});

/** Every module `deno info` says `entry` loads (npm packages as `npm:/name@version`). */
async function loads(entry: string): Promise<string[]> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", entry],
    cwd: ROOT,
    stdout: "piped",
  }).output();
  const info = JSON.parse(new TextDecoder().decode(out.stdout));
  return info.modules.map((m: { specifier: string }) => m.specifier);
}

Deno.test("the model and autoencoders subpaths load neither sharp nor the pipeline", async () => {
  for (const entry of ["lib/model/mod.ts", "lib/autoencoders/mod.ts"]) {
    const mods = await loads(entry);
    const own = entry.replace("mod.ts", entry.includes("model") ? "dit.ts" : "taesd.ts");
    assert(mods.some((m) => m.endsWith(own)), `${entry}: ${mods.length} modules`);
    const bad = mods.filter((m) => m.includes("sharp") || m.includes("/pipeline/"));
    assertEquals(bad, [], `${entry} loads ${bad.join(", ")}`);
  }
  // The check can fail: the root module does load sharp (through io/image.ts).
  assert((await loads("mod.ts")).some((m) => m.includes("sharp")), "mod.ts should load sharp");
});

Deno.test("deno.json exports a subpath per layer, each file re-exporting its folder", async () => {
  const cfg = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`));
  for (const name of ["model", "autoencoders", "data", "training", "pipeline", "io", "runtime"]) {
    assertEquals(cfg.exports[`./${name}`], `./lib/${name}/mod.ts`);
    await Deno.stat(`${ROOT}/lib/${name}/mod.ts`);
  }
  assertEquals(cfg.exports["."], "./mod.ts");
});
