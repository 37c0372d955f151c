/**
 * Text helpers for messages: edit distance for "did you mean" hints.
 *
 * @module
 */

/**
 * Levenshtein distance (insert, delete, substitute: cost 1 each), for "did you mean" hints.
 *
 * @example
 * ```ts
 * import { editDistance } from "./text.ts";
 * if (editDistance("rose", "roses") !== 1) throw new Error("one insertion");
 * if (editDistance("kitten", "sitting") !== 3) throw new Error("the textbook case is 3");
 * ```
 */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}

/**
 * The candidate closest to `text` by {@link editDistance}, if it is close enough to be a likely
 * typo (at most `max(2, text.length / 3)` edits); ties go to the earlier candidate.
 *
 * @example
 * ```ts
 * import { closestMatch } from "./text.ts";
 * if (closestMatch("stpes", ["steps", "seed"]) !== "steps") throw new Error("steps");
 * if (closestMatch("xyzzy", ["steps", "seed"]) !== undefined) throw new Error("nothing close");
 * ```
 */
export function closestMatch(text: string, candidates: Iterable<string>): string | undefined {
  const limit = Math.max(2, Math.floor(text.length / 3));
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = editDistance(c, text);
    if (d <= limit && d < bestD) [best, bestD] = [c, d];
  }
  return best;
}
