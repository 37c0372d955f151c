/**
 * `deno task serve`: the interactive demo. Serves one page that generates flowers in the
 * visitor's browser (WebGPU, else wasm) with the model in <repo-dir>/weights/.
 *
 * @module
 */

import { parseCommandLine, runMain } from "../lib/cli/args.ts";
import { defaultVaeDir, serveDemo } from "../lib/web/server.ts";

const SPEC = {
  name: "deno task serve",
  description:
    "Serves the demo page: pick flower classes, seed, steps, guidance and sampler; the " +
    "images are generated in the browser (tfjs WebGPU, else wasm) from <repo-dir>/weights/ " +
    "(config.json, model.safetensors, classes.txt) and TAESD's decoder.",
  options: {
    port: { type: "integer", short: "p", default: 8000, description: "port (0 = any free port)" },
    host: {
      type: "string",
      placeholder: "ADDR",
      default: "127.0.0.1",
      description: "interface to listen on (0.0.0.0 = every interface)",
    },
    "repo-dir": {
      type: "string",
      placeholder: "DIR",
      default: ".",
      description: "folder holding weights/",
    },
    "vae-dir": {
      type: "string",
      placeholder: "DIR",
      description:
        "folder holding taesd_decoder.safetensors [default: $ANTHOS_SHARED/weights/taesd]",
    },
  },
  examples: [
    "deno task serve",
    "deno task serve --port 8080 --repo-dir ../anthos-release",
  ],
} as const;

async function main(): Promise<number> {
  const { values: o } = parseCommandLine(SPEC);
  console.error("bundling the page (deno bundle)…");
  const server = await serveDemo({
    port: o.port,
    hostname: o.host,
    repoDir: o.repoDir,
    vaeDir: o.vaeDir ?? defaultVaeDir(),
    onListen: (url) => console.error(`demo at ${url} (Ctrl-C stops)`),
  });
  await server.finished;
  return 0;
}

if (import.meta.main) runMain(main);
