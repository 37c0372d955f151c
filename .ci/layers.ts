/**
 * The layer check: fails on an import circle in lib/ or an import that runs against the layer
 * order, and prints each offending edge (file:line -> file).
 *
 *   deno run -A .ci/layers.ts
 *
 * Layers, low -> high: runtime -> io -> model -> autoencoders -> data -> training -> pipeline ->
 * cli -> web (the demo server). A file may import its own folder and lower folders only. Also forbidden: model or
 * autoencoders -> io/image.ts (sharp); any lib file -> tasks/, notebooks/, bench/, tests/;
 * `Deno.jupyter` anywhere in lib/. Circles count runtime edges (static and dynamic imports);
 * type-only imports vanish at runtime, but they must respect the layer order too.
 *
 * The graph comes from `deno info --json` of one temporary module that imports every lib file.
 *
 * @module
 */

import { fileURLToPath, pathToFileURL } from "node:url";
import { relative } from "node:path";

/** The layer folders, low to high. */
export const LAYERS = [
  "runtime",
  "io",
  "model",
  "autoencoders",
  "data",
  "training",
  "pipeline",
  "cli",
  "web",
] as const;

/** Files no model or autoencoder code may reach (they load sharp / libvips). */
const IMAGE_DECODING = ["lib/io/image.ts"];

/** One import: `from` imports `to` at `line` (1-based); `kind` says how. */
export interface Edge {
  from: string;
  to: string;
  line: number;
  kind: "static" | "dynamic" | "type";
}

/** What is wrong with one edge, or with one circle. */
export interface Violation {
  message: string;
}

/** Every problem of an import graph over paths relative to the project root. */
export function checkLayers(
  edges: readonly Edge[],
  files: ReadonlyMap<string, string>,
): Violation[] {
  const out: Violation[] = [];
  const layerOf = (p: string) => LAYERS.indexOf(p.split("/")[1] as (typeof LAYERS)[number]);
  const where = (e: Edge) =>
    `${e.from}:${e.line} -> ${e.to}${e.kind === "static" ? "" : ` (${e.kind})`}`;
  for (const e of edges) {
    if (!e.from.startsWith("lib/")) continue;
    if (/^(tasks|notebooks|bench|tests)\//.test(e.to)) {
      out.push({ message: `lib imports a front end or test: ${where(e)}` });
      continue;
    }
    if (!e.to.startsWith("lib/")) continue;
    const a = layerOf(e.from);
    const b = layerOf(e.to);
    if (a < 0) out.push({ message: `${e.from} is in no layer folder (${LAYERS.join(", ")})` });
    else if (b < 0) out.push({ message: `${e.to} is in no layer folder: ${where(e)}` });
    else if (b > a) {
      out.push({
        message: `upward import ${LAYERS[a]} -> ${LAYERS[b]}: ${where(e)} ` +
          `(order: ${LAYERS.join(" -> ")})`,
      });
    }
    const fromFolder = LAYERS[a];
    if (
      (fromFolder === "model" || fromFolder === "autoencoders") && IMAGE_DECODING.includes(e.to)
    ) {
      out.push({ message: `${fromFolder} must not import image decoding (sharp): ${where(e)}` });
    }
  }
  for (const [path, text] of files) {
    if (!path.startsWith("lib/")) continue;
    const i = text.indexOf("Deno.jupyter");
    if (i >= 0) {
      const line = text.slice(0, i).split("\n").length;
      out.push({
        message: `Deno.jupyter in lib (notebook display belongs in notebooks/): ${path}:${line}`,
      });
    }
  }
  for (const circle of circles(edges.filter((e) => e.kind !== "type"))) {
    out.push({ message: `import circle: ${circle.map(where).join(", ")}` });
  }
  return out;
}

/** The circles among lib files (one per strongly connected component), as lists of edges. */
export function circles(edges: readonly Edge[]): Edge[][] {
  const lib = edges.filter((e) => e.from.startsWith("lib/") && e.to.startsWith("lib/"));
  const next = new Map<string, Edge[]>();
  for (const e of lib) next.set(e.from, [...(next.get(e.from) ?? []), e]);
  // Tarjan's strongly connected components.
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const comps: string[][] = [];
  let counter = 0;
  const visit = (v: string) => {
    index.set(v, counter);
    low.set(v, counter++);
    stack.push(v);
    onStack.add(v);
    for (const e of next.get(v) ?? []) {
      if (!index.has(e.to)) {
        visit(e.to);
        low.set(v, Math.min(low.get(v)!, low.get(e.to)!));
      } else if (onStack.has(e.to)) low.set(v, Math.min(low.get(v)!, index.get(e.to)!));
    }
    if (low.get(v) === index.get(v)) {
      const comp: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        comp.push(w);
      } while (w !== v);
      const selfLoop = (next.get(v) ?? []).some((e) => e.to === v);
      if (comp.length > 1 || selfLoop) comps.push(comp);
    }
  };
  for (const v of new Set(lib.map((e) => e.from))) if (!index.has(v)) visit(v);
  // One concrete circle per component: a shortest path back to its first file.
  return comps.map((comp) => {
    const inComp = new Set(comp);
    const start = comp.sort()[0];
    const prev = new Map<string, Edge>();
    const queue = [start];
    const seen = new Set([start]);
    while (queue.length) {
      const v = queue.shift()!;
      for (const e of next.get(v) ?? []) {
        if (!inComp.has(e.to)) continue;
        if (e.to === start) {
          const path = [e];
          let cur = v;
          while (cur !== start) {
            const p = prev.get(cur)!;
            path.unshift(p);
            cur = p.from;
          }
          return path;
        }
        if (!seen.has(e.to)) {
          seen.add(e.to);
          prev.set(e.to, e);
          queue.push(e.to);
        }
      }
    }
    return [];
  });
}

/** The import graph of every .ts file under `root/lib` (paths relative to `root`). */
export async function libGraph(
  root: string,
): Promise<{ edges: Edge[]; files: Map<string, string> }> {
  const files = new Map<string, string>();
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(dir)) {
      const p = `${dir}/${e.name}`;
      if (e.isDirectory) await walk(p);
      else if (e.name.endsWith(".ts")) files.set(relative(root, p), await Deno.readTextFile(p));
    }
  };
  await walk(`${root}/lib`);
  const tmp = await Deno.makeTempFile({ suffix: ".ts" });
  try {
    await Deno.writeTextFile(
      tmp,
      [...files.keys()].map((p) => `import "${pathToFileURL(`${root}/${p}`).href}";`).join("\n"),
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", "--config", `${root}/deno.json`, tmp],
      cwd: root,
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) throw new Error(`deno info failed: ${new TextDecoder().decode(out.stderr)}`);
    const info = JSON.parse(new TextDecoder().decode(out.stdout)) as {
      modules: {
        specifier: string;
        dependencies?: {
          code?: { specifier: string; span: { start: { line: number } } };
          type?: { specifier: string; span: { start: { line: number } } };
          isDynamic?: boolean;
        }[];
      }[];
    };
    const rel = (spec: string) =>
      spec.startsWith("file:") ? relative(root, fileURLToPath(spec)) : spec;
    const edges: Edge[] = [];
    for (const m of info.modules) {
      const from = rel(m.specifier);
      if (!from.startsWith("lib/")) continue;
      for (const d of m.dependencies ?? []) {
        if (d.code) {
          edges.push({
            from,
            to: rel(d.code.specifier),
            line: d.code.span.start.line + 1,
            kind: d.isDynamic ? "dynamic" : "static",
          });
        } else if (d.type) {
          edges.push({
            from,
            to: rel(d.type.specifier),
            line: d.type.span.start.line + 1,
            kind: "type",
          });
        }
      }
    }
    return { edges, files };
  } finally {
    await Deno.remove(tmp);
  }
}

if (import.meta.main) {
  const root = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");
  const { edges, files } = await libGraph(root);
  const problems = checkLayers(edges, files);
  for (const p of problems) console.error(`layers: ${p.message}`);
  if (problems.length) {
    console.error(`layers: ${problems.length} problem(s) in ${files.size} lib files`);
    Deno.exit(1);
  }
  const libEdges = edges.filter((e) => e.to.startsWith("lib/")).length;
  console.error(`layers: ok (${files.size} lib files, ${libEdges} imports between them)`);
}
