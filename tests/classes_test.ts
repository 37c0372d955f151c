// Class vocabulary: weights/classes.txt against the Oxford names, forgiving lookups, selections.
import assert from "node:assert/strict";
import { ClassNames, normalizeClassName, parseClassSelection } from "../lib/pipeline/classes.ts";
import { sharedPath } from "./_shared.ts";

const CLASSES = new URL("../weights/classes.txt", import.meta.url).pathname;

Deno.test("classes.txt: 102 official names, id = Oxford label - 1", async () => {
  const names = await ClassNames.load(CLASSES);
  assert.equal(names.size, 102);
  // Spot checks against the Oxford list (1-based labels in the comments).
  assert.equal(names.name(0), "pink primrose"); // 1
  assert.equal(names.name(3), "sweet pea"); // 4
  assert.equal(names.name(53), "sunflower"); // 54
  assert.equal(names.name(72), "water lily"); // 73
  assert.equal(names.name(73), "rose"); // 74
  assert.equal(names.name(77), "lotus"); // 78
  assert.equal(names.name(101), "blackberry lily"); // 102
});

Deno.test("classes.txt matches shared cat_to_name.json (except its 'lotus lotus' typo)", async () => {
  const p = sharedPath("data/oxford102/cat_to_name.json");
  if (!p) return;
  const json: Record<string, string> = JSON.parse(await Deno.readTextFile(p));
  const names = await ClassNames.load(CLASSES);
  assert.equal(Object.keys(json).length, names.size);
  for (let label = 1; label <= 102; label++) {
    const want = json[String(label)].trim();
    assert.equal(names.name(label - 1), want === "lotus lotus" ? "lotus" : want, `label ${label}`);
  }
});

Deno.test("ClassNames.id: case, spaces, hyphens, apostrophes and numeric strings", async () => {
  const names = await ClassNames.load(CLASSES);
  assert.equal(names.id("Sweet-Pea"), 3);
  assert.equal(names.id("  sweet   pea "), 3);
  assert.equal(names.id("GLOBE FLOWER"), 15); // "globe-flower"
  assert.equal(names.id("pink yellow dahlia"), 59);
  assert.equal(names.id("colts foot"), 11); // "colt's foot"
  assert.equal(names.id("73"), 73);
  assert.equal(names.id(" 0 "), 0);
  assert.equal(names.id(101), 101);
  assert.equal(normalizeClassName("Black-Eyed  Susan"), "black eyed susan");
});

Deno.test("ClassNames.id: unknown names list the 3 closest; bad ids say the range", async () => {
  const names = await ClassNames.load(CLASSES);
  assert.throws(
    () => names.id("sunflwer"),
    (e: Error) =>
      e.message.includes('unknown class "sunflwer"') &&
      e.message.includes('closest: "sunflower" (53)') &&
      (e.message.match(/\(\d+\)/g) ?? []).length === 3 &&
      e.message.includes(CLASSES),
  );
  assert.deepEqual(names.closest("rse", 3)[0], 73);
  for (const bad of [102, -1, 1.5, "102"]) {
    assert.throws(() => names.id(bad), /out of range: ids are integers 0\.\.101/);
  }
  assert.throws(() => names.name(500), /out of range/);
});

Deno.test("parseClassSelection: all, comma lists, arrays, single ids", async () => {
  const names = await ClassNames.load(CLASSES);
  const all = parseClassSelection("all", names);
  assert.deepEqual(all, Array.from({ length: 102 }, (_, i) => i));
  assert.deepEqual(parseClassSelection(" ALL ", names), all);
  assert.deepEqual(parseClassSelection("rose,sunflower,daffodil", names), [73, 53, 41]);
  assert.deepEqual(parseClassSelection(" Rose , water-lily,, 5 ", names), [73, 72, 5]);
  assert.deepEqual(parseClassSelection(["Rose", 0, "12"], names), [73, 0, 12]);
  assert.deepEqual(parseClassSelection(73, names), [73]);
  assert.deepEqual(parseClassSelection("rose,rose", names), [73, 73]);
  assert.throws(() => parseClassSelection(" , ", names), /no classes selected/);
  assert.throws(() => parseClassSelection([], names), /no classes selected/);
  assert.throws(() => parseClassSelection("rose,tulipp", names), /unknown class "tulipp"/);
  assert.throws(() => parseClassSelection(200, names), /out of range/);
});

Deno.test("ClassNames.parse: rejects malformed files with the line and the fix", () => {
  const ok = ClassNames.parse("# comment\n1\tb\n\n0\ta\r\n");
  assert.deepEqual(ok.names, ["a", "b"]);
  assert.throws(
    () => ClassNames.parse("0 a\n", { source: "x.txt" }),
    /x\.txt:1: expected "id<TAB>name"/,
  );
  assert.throws(() => ClassNames.parse("0\ta\n0\tb\n"), /class id 0 appears twice/);
  assert.throws(() => ClassNames.parse("0\ta\n2\tb\n"), /1 is missing/);
  assert.throws(() => ClassNames.parse("0\tSweet Pea\n1\tsweet-pea\n"), /same name/);
  assert.throws(() => ClassNames.parse(""), /no class names/);
});

Deno.test("ClassNames.load: a missing file says where the names come from", async () => {
  await assert.rejects(
    () => ClassNames.load("/nonexistent/classes.txt"),
    /cannot read class names from \/nonexistent\/classes\.txt.*weights\/classes\.txt/s,
  );
});
