/**
 * Class names: the model's vocabulary (`weights/classes.txt`, one `id<TAB>name` line per class,
 * ids 0..101 = Oxford label - 1) and forgiving lookups for what people type: any case, extra
 * spaces, hyphens or spaces ("Sweet-Pea" = "sweet pea"), and numeric ids. A name that is not
 * found fails with the closest names, so a typo is a one-step fix.
 *
 * @module
 */

import { editDistance as textEditDistance } from "../runtime/text.ts";

/**
 * Canonical form used for matching: lowercase, hyphens/underscores as spaces, apostrophes dropped,
 * whitespace collapsed.
 *
 * @example
 * ```ts
 * import { normalizeClassName } from "./classes.ts";
 * if (JSON.stringify(normalizeClassName("  Sweet-Pea ")) !== JSON.stringify("sweet pea")) throw new Error("expected 'sweet pea'");
 * ```
 */
export function normalizeClassName(name: string): string {
  return name.toLowerCase().replace(/['\u2019`]/g, "").replace(/[-_\s]+/g, " ").trim();
}

/**
 * The class vocabulary: id <-> name.
 *
 * @example
 * ```ts
 * import { ClassNames } from "./classes.ts";
 * const names = await ClassNames.load("weights/classes.txt");
 * if (JSON.stringify(names.id("Sweet-Pea")) !== JSON.stringify(3)) throw new Error("expected 3");
 * if (JSON.stringify(names.name(73)) !== JSON.stringify("rose")) throw new Error("expected 'rose'");
 * ```
 */
export class ClassNames {
  /** Names by id, as written in the file. */
  readonly names: readonly string[];
  /** Where the names came from, for error messages. */
  readonly source: string;
  readonly #byKey = new Map<string, number>();

  /**
   * Builds the vocabulary from names in id order.
   *
   * @example
   * ```ts
   * import { ClassNames } from "./classes.ts";
   * const names = new ClassNames(["pink primrose", "hard-leaved pocket orchid"]);
   * if (JSON.stringify(names.id("Hard Leaved Pocket Orchid")) !== JSON.stringify(1)) throw new Error("expected 1");
   * ```
   */
  constructor(names: readonly string[], options: { source?: string } = {}) {
    this.source = options.source ?? "the class list";
    if (names.length === 0) throw new Error(`${this.source} holds no class names`);
    names.forEach((name, id) => {
      const key = normalizeClassName(name);
      if (!key) throw new Error(`${this.source}: class ${id} has an empty name`);
      const other = this.#byKey.get(key);
      if (other !== undefined) {
        throw new Error(
          `${this.source}: classes ${other} ("${names[other]}") and ${id} ("${name}") have the ` +
            `same name once case, spaces and hyphens are ignored; rename one of them`,
        );
      }
      this.#byKey.set(key, id);
    });
    this.names = Object.freeze([...names]);
  }

  /**
   * Parses `classes.txt` text: one `id<TAB>name` line per class, ids 0..n-1 each exactly once.
   * Blank lines and lines starting with `#` are ignored.
   *
   * @example
   * ```ts
   * import { ClassNames } from "./classes.ts";
   * const names = ClassNames.parse("0\tpink primrose\n1\thard-leaved pocket orchid\n");
   * if (JSON.stringify(names.name(1)) !== JSON.stringify("hard-leaved pocket orchid")) throw new Error("expected 'hard-leaved pocket orchid'");
   * ```
   */
  static parse(text: string, options: { source?: string } = {}): ClassNames {
    const source = options.source ?? "classes.txt";
    const byId = new Map<number, string>();
    text.split(/\r?\n/).forEach((raw, i) => {
      const line = raw.trim();
      if (!line || line.startsWith("#")) return;
      const m = /^(\d+)\t+(.+)$/.exec(line);
      if (!m) {
        throw new Error(
          `${source}:${i + 1}: expected "id<TAB>name", got ${JSON.stringify(raw)}; ` +
            `each line is a class id (0-based), a tab, and the class name`,
        );
      }
      const id = Number(m[1]);
      if (byId.has(id)) throw new Error(`${source}:${i + 1}: class id ${id} appears twice`);
      byId.set(id, m[2].trim());
    });
    const names: string[] = [];
    for (let id = 0; id < byId.size; id++) {
      const name = byId.get(id);
      if (name === undefined) {
        throw new Error(
          `${source}: class ids must be 0..${byId.size - 1} without gaps, but ${id} is missing`,
        );
      }
      names.push(name);
    }
    return new ClassNames(names, { source });
  }

  /**
   * Reads a `classes.txt` file (see {@link ClassNames.parse}).
   *
   * @example
   * ```ts
   * import { ClassNames } from "./classes.ts";
   * const names = await ClassNames.load("weights/classes.txt");
   * if (JSON.stringify(names.id("Sunflower")) !== JSON.stringify(53)) throw new Error("expected 53");
   * ```
   */
  static async load(path: string): Promise<ClassNames> {
    let text: string;
    try {
      text = await Deno.readTextFile(path);
    } catch (err) {
      throw new Error(
        `cannot read class names from ${path} (${(err as Error).message}); it ships with the ` +
          `model as weights/classes.txt: pass the folder that holds weights/ (e.g. --repo-dir)`,
        { cause: err },
      );
    }
    return ClassNames.parse(text, { source: path });
  }

  /** Number of classes. */
  get size(): number {
    return this.names.length;
  }

  /**
   * The name of class `id`.
   *
   * @example
   * ```ts
   * import { ClassNames } from "./classes.ts";
   * const names = await ClassNames.load("weights/classes.txt");
   * if (JSON.stringify(names.name(73)) !== JSON.stringify("rose")) throw new Error("expected 'rose'");
   * ```
   */
  name(id: number): string {
    return this.names[this.#checkId(id)];
  }

  /**
   * The id of a class given by name (forgiving: case, spaces, hyphens) or by id (a number or a
   * numeric string such as "73"; ids are 0-based, as in classes.txt).
   *
   * @example
   * ```ts
   * import { ClassNames } from "./classes.ts";
   * const names = await ClassNames.load("weights/classes.txt");
   * if (JSON.stringify(names.id("Sweet-Pea")) !== JSON.stringify(3)) throw new Error("expected 3");
   * if (JSON.stringify(names.id(" 73 ")) !== JSON.stringify(73)) throw new Error("expected 73");
   * ```
   */
  id(nameOrId: string | number): number {
    if (typeof nameOrId === "number") return this.#checkId(nameOrId);
    const text = nameOrId.trim();
    if (/^\d+$/.test(text)) return this.#checkId(Number(text));
    const id = this.#byKey.get(normalizeClassName(text));
    if (id !== undefined) return id;
    const close = this.closest(text, 3).map((i) => `"${this.names[i]}" (${i})`);
    throw new Error(
      `unknown class ${JSON.stringify(nameOrId)}; closest: ${close.join(", ")}. ` +
        `All ${this.size} names are listed in ${this.source} (ids 0..${this.size - 1} work too)`,
    );
  }

  /**
   * Ids of the `k` names closest to `text` by edit distance (after normalizing both).
   *
   * @example
   * ```ts
   * import { ClassNames } from "./classes.ts";
   * const names = await ClassNames.load("weights/classes.txt");
   * if (JSON.stringify(names.closest("sunflowr", 1)) !== JSON.stringify([53])) throw new Error("expected [53]");
   * ```
   */
  closest(text: string, k = 3): number[] {
    const key = normalizeClassName(text);
    return this.names
      .map((name, id) => ({ id, d: textEditDistance(key, normalizeClassName(name)) }))
      .sort((a, b) => a.d - b.d || a.id - b.id)
      .slice(0, k)
      .map((c) => c.id);
  }

  #checkId(id: number): number {
    if (!Number.isInteger(id) || id < 0 || id >= this.size) {
      throw new Error(
        `class id ${id} is out of range: ids are integers 0..${this.size - 1} ` +
          `(see ${this.source}; Oxford labels 1..${this.size} are id + 1)`,
      );
    }
    return id;
  }
}

/**
 * Turns a user's class selection into ids: `"all"`, one id, a comma-separated string of names
 * and/or ids (`"rose, sunflower,42"`), or an array of names/ids. Order and repeats are kept.
 *
 * @example
 * ```ts
 * import { ClassNames, parseClassSelection } from "./classes.ts";
 * const names = await ClassNames.load("weights/classes.txt");
 * if (JSON.stringify(parseClassSelection("rose,sunflower,daffodil", names)) !== JSON.stringify([73, 53, 41])) throw new Error("expected [73, 53, 41]");
 * if (JSON.stringify(parseClassSelection("all", names).length) !== JSON.stringify(102)) throw new Error("expected 102");
 * ```
 */
export function parseClassSelection(
  spec: string | number | readonly (string | number)[],
  names: ClassNames,
): number[] {
  const all = () => Array.from({ length: names.size }, (_, i) => i);
  if (typeof spec === "number") return [names.id(spec)];
  const items = typeof spec === "string" ? spec.split(",") : [...spec];
  const ids: number[] = [];
  for (const item of items) {
    if (typeof item === "string" && item.trim() === "") continue;
    if (typeof item === "string" && item.trim().toLowerCase() === "all") ids.push(...all());
    else ids.push(names.id(item));
  }
  if (ids.length === 0) {
    throw new Error(
      `no classes selected in ${JSON.stringify(spec)}; give "all", class names separated by ` +
        `commas (e.g. "rose,sunflower") or ids 0..${names.size - 1}`,
    );
  }
  return ids;
}

/**
 * Levenshtein distance (moved to lib/runtime/text.ts).
 *
 * @deprecated Import `editDistance` from lib/runtime/text.ts.
 */
export const editDistance: (a: string, b: string) => number = textEditDistance;
