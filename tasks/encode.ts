/**
 * `deno task encode`: Oxford Flowers 102 -> latent cache for training (photos + flips), resumable.
 *
 * @module
 */

import { exists } from "../lib/io/fs.ts";
import { loadAutoencoder } from "../lib/autoencoders/load.ts";
import { AUTOENCODER_KINDS, type AutoencoderKind } from "../lib/autoencoders/autoencoder.ts";
import { type BackendName, loadBackend } from "../lib/runtime/backend.ts";
import { BACKEND_OPTION, parseCommandLine, runMain, splitList } from "../lib/cli/args.ts";
import { stopOnSignals } from "../lib/cli/abort.ts";
import { env } from "../lib/runtime/env.ts";
import { anthosHome } from "../lib/io/download.ts";
import { encodeDataset } from "../lib/data/encode.ts";
import { downloadOxford, loadOxford, type OxfordSplit } from "../lib/data/oxford.ts";
import { formatDuration, ProgressBar } from "../lib/cli/progress.ts";

const SPEC = {
  name: "deno task encode",
  description: "Encodes every photo of Oxford Flowers 102 (and its horizontal flip) with the " +
    "autoencoder into one latent cache file for `deno task train`. Interrupted runs resume " +
    "from the finished chunks in <out>.parts/.",
  options: {
    data: {
      type: "string",
      placeholder: "DIR",
      description: "Oxford 102 folder (imagelabels.mat, setid.mat, jpg/) " +
        "[default: $ANTHOS_HOME/oxford102, downloaded if missing]",
    },
    splits: {
      type: "string",
      placeholder: "LIST",
      default: "train,val,test",
      description: "comma-separated splits to encode",
    },
    vae: {
      type: "string",
      choices: AUTOENCODER_KINDS,
      // The published model lives in the SD VAE's latent space; TAESD is the fast CPU choice.
      default: "sd-vae-ft-ema",
      description: "autoencoder",
    },
    "vae-dir": { type: "string", placeholder: "DIR", description: "local autoencoder files" },
    out: {
      type: "string",
      placeholder: "FILE",
      description: "latent cache to write [default: runs/latents-<vae>.safetensors]",
    },
    limit: { type: "integer", description: "encode only the first N photos" },
    batch: {
      type: "integer",
      description: "photos per autoencoder call (each with its flip) [taesd 8, sd-vae-ft-ema 2]",
    },
    chunk: { type: "integer", default: 64, description: "photos per resumable chunk" },
    dtype: { type: "string", choices: ["f16", "f32"], default: "f16", description: "storage type" },
    "no-flip": { type: "boolean", description: "skip the horizontally flipped copies" },
    backend: BACKEND_OPTION,
  },
  examples: [
    "deno task encode",
    "deno task encode --data ../shared/data/oxford102 --splits train --vae taesd --vae-dir ../shared/weights/taesd",
    "deno task encode --vae sd-vae-ft-ema --out runs/latents-sd.safetensors",
  ],
  epilog: "Environment: ANTHOS_HOME (cache root), ANTHOS_BACKEND, ANTHOS_QUICK=1 (16 photos).",
} as const;

async function main(): Promise<number> {
  const { values: o } = parseCommandLine(SPEC);
  const vaeName = o.vae as AutoencoderKind;
  const out = o.out ?? `runs/latents-${vaeName}.safetensors`;
  const splits = splitList(o.splits) as OxfordSplit[];
  const limit = o.limit ?? (env.quick ? 16 : undefined);

  let dataDir = o.data;
  if (dataDir === undefined) {
    dataDir = `${anthosHome()}/oxford102`;
    if (!(await exists(`${dataDir}/imagelabels.mat`)) || !(await exists(`${dataDir}/jpg`))) {
      console.error(`downloading Oxford Flowers 102 into ${dataDir} ...`);
      await downloadOxford(dataDir, {
        onProgress: (file, done, total) =>
          total && done === total && console.error(`  ${file}: ${(total / 1e6).toFixed(1)} MB`),
      });
    }
  }
  const ds = await loadOxford(dataDir, { splits });
  const items = limit !== undefined ? ds.items.slice(0, limit) : ds.items;
  if (ds.missing > 0) {
    console.error(`note: ${ds.missing} photo(s) of the chosen splits are not in ${ds.imagesDir}`);
  }

  const info = await loadBackend(o.backend as BackendName | undefined);
  const vae = await loadAutoencoder(vaeName, { dir: o.vaeDir });
  console.error(
    `encoding ${items.length} photo(s)${o.noFlip ? "" : " + flips"} from ${dataDir} ` +
      `(${splits.join(",")}) with ${vaeName} on ${info.name} -> ${out}`,
  );

  const stop = stopOnSignals({
    onStop: () =>
      console.error("\nstopping after the current chunk (Ctrl-C again to quit at once) ..."),
  });
  const bar = new ProgressBar(items.length, { label: "encode", unit: "img" });
  const t0 = performance.now();
  const res = await encodeDataset(items, vae, {
    out,
    // The SD VAE's 256x256x128 activations are 32 MB per image: small batches keep wasm in memory.
    batch: o.batch ?? (vaeName === "sd-vae-ft-ema" ? 2 : 8),
    chunk: o.chunk,
    dtype: o.dtype === "f32" ? "F32" : "F16",
    flip: !o.noFlip,
    signal: stop.signal,
    onLog: (m) => bar.log(m),
    onProgress: (done, _total, reused) => reused ? bar.skip(done - bar.done) : bar.update(done),
    metadata: {
      splits: splits.join(","),
      source: dataDir,
      ...(limit !== undefined ? { limit: String(limit) } : {}),
    },
  });
  stop.dispose();
  vae.dispose();
  const sec = (performance.now() - t0) / 1000;
  if (!res.complete) {
    bar.log(`stopped: finished chunks are kept in ${out}.parts/; run the same command to resume`);
    return 130;
  }
  bar.finish();
  if (res.skipped.length > 0) {
    const list = res.skipped.slice(0, 10).map((s) => s.path).join(", ");
    console.error(
      `skipped ${res.skipped.length} unreadable photo(s), not in the cache: ${list}` +
        `${res.skipped.length > 10 ? `, and ${res.skipped.length - 10} more` : ""} ` +
        `(reasons above; replace them and encode again to include them)`,
    );
  }
  const ms = res.encoded ? (sec * 1000) / res.encoded : 0;
  console.error(
    `wrote ${out}: ${res.count} latents [${res.latentShape}] in ${formatDuration(sec)}` +
      (res.encoded ? ` (${ms.toFixed(0)} ms/photo incl. flip)` : "") +
      (res.reusedChunks ? `, ${res.reusedChunks} chunk(s) reused` : ""),
  );
  return 0;
}

if (import.meta.main) runMain(main);
