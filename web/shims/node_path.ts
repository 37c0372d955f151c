/**
 * Browser stand-in for the parts of `node:path` that modules shared with the browser bundle import
 * (`lib/io/fs.ts` uses `dirname` for its Deno-only writes). The bundle maps `node:path` here
 * (lib/web/bundle.ts); Deno uses the real module.
 *
 * @module
 */

/**
 * POSIX `dirname`, the same algorithm as Node's `path.posix.dirname`.
 *
 * @example
 * ```ts
 * import { dirname } from "./node_path.ts";
 * dirname("/a/b/c.txt"); // "/a/b"
 * ```
 */
export function dirname(path: string): string {
  if (path.length === 0) return ".";
  const hasRoot = path.charCodeAt(0) === 47;
  let end = -1;
  let matchedSlash = true;
  for (let i = path.length - 1; i >= 1; --i) {
    if (path.charCodeAt(i) === 47) {
      if (!matchedSlash) {
        end = i;
        break;
      }
    } else {
      matchedSlash = false;
    }
  }
  if (end === -1) return hasRoot ? "/" : ".";
  if (hasRoot && end === 1) return "//";
  return path.slice(0, end);
}
