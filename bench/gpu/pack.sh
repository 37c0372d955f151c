#!/usr/bin/env bash
# Builds the GPU job's kit on this machine (run from the project root):
#   bash bench/gpu/pack.sh [RUN_DIR [DATA]]
# RUN_DIR: the run to continue (default training/anthos, see TRAINING.md). Without a checkpoint
# there, DATA (comma-separated latent caches) makes the job start the run (--preset anthos).
# Writes (all ignored by git):
#   .gpu-kit/       Deno (xz), a minimal offline npm cache, libvulkan1/libegl1/libglvnd0 debs,
#                   the PyTorch anchor (torch_anchor.py + dit_ref.py from $ANTHOS_SHARED), and
#                   run/ = the run folder's resumable state (checkpoint, run.json, logs)
#   .gpu-data-N/    the run's latent caches, tarred and cut into parts of <= 60 MiB: one device
#                   call each stages them (`bash bench/gpu/job.sh stage .gpu-data-N`)
# Each folder fits one device call (<= 64 MiB). See bench/gpu/README.md for the device calls.
set -euo pipefail
RUN=${1:-training/anthos}
NEW_DATA=${2:-}
SHARED=${ANTHOS_SHARED:-../shared}
KIT=.gpu-kit
LIMIT=$((64 * 1024 * 1024))
PART=$((60 * 1024 * 1024))
[ -f deno.json ] && [ -d bench/gpu ] || { echo "pack.sh: run it from the project root" >&2; exit 2; }
[ -f "$SHARED/gpu_probe/torch_anchor.py" ] || {
  echo "pack.sh: $SHARED/gpu_probe/torch_anchor.py missing: set ANTHOS_SHARED to the shared folder" >&2
  exit 2
}
mkdir -p "$KIT"
rm -rf "$KIT/run" "$KIT/run.path" "$KIT/run.fresh" "$KIT/debs" "$KIT/npm.tar.xz" .gpu-data-*

# Deno, xz-compressed (95 MB -> ~31 MB); kept between packs while the version is the same.
DENO_BIN=$(readlink -f "$(command -v deno)")
VERSION=$(deno --version | head -1)
if [ "$(cat "$KIT/deno.version" 2>/dev/null)" != "$VERSION" ] || [ ! -f "$KIT/deno.xz" ]; then
  echo "compressing $VERSION ..."
  nice xz -T2 -6 -c "$DENO_BIN" > "$KIT/deno.xz.tmp" && mv "$KIT/deno.xz.tmp" "$KIT/deno.xz"
  echo "$VERSION" > "$KIT/deno.version"
fi

# A minimal offline npm cache: what the job's entry points import, for linux-x64 only.
DD=$(mktemp -d)
trap 'rm -rf "$DD"' EXIT
DENO_DIR="$DD" deno cache --quiet --node-modules-dir=none \
  tasks/train.ts tasks/bench.ts bench/gpu/adapter.ts 2>/dev/null
( cd "$DD/npm" && {
    find registry.npmjs.org -maxdepth 3 -name registry.json
    find registry.npmjs.org/@tensorflow -path '*/4.22.0/package.json'
    find registry.npmjs.org/@tensorflow -maxdepth 5 -path '*/dist/*.node.js'
    find registry.npmjs.org/@tensorflow/tfjs-backend-wasm -maxdepth 4 -path '*/dist/*.wasm'
    find registry.npmjs.org/@img -mindepth 1 -maxdepth 1 -type d \
      \( -name colour -o -name sharp-linux-x64 -o -name sharp-libvips-linux-x64 \) \
      -exec find {} -type f \;
    find registry.npmjs.org/@img -maxdepth 3 -name package.json
    find registry.npmjs.org -mindepth 1 -maxdepth 1 -type d ! -name @tensorflow ! -name @img \
      ! -name core-js ! -name @types -exec find {} -type f ! -name '*.map' ! -name '*.d.ts' \
      ! -name '*.md' \;
    find registry.npmjs.org/core-js registry.npmjs.org/@types -maxdepth 3 -name package.json
  } | sort -u | tar -cf - -T - | xz -T2 -6 ) > "$KIT/npm.tar.xz"
cp deno.lock "$KIT/deno.lock" 2>/dev/null || true

# Vulkan loader and EGL for the NVIDIA ICD (the GPU machine has the driver, not the loader).
mkdir -p "$KIT/debs"
( cd "$KIT/debs" && apt-get download libvulkan1 libegl1 libglvnd0 >/dev/null )

# The PyTorch reference on the same GPU.
cp "$SHARED/gpu_probe/torch_anchor.py" "$SHARED/spec/dit_ref.py" "$KIT/"
cp bench/gpu/job.sh "$KIT/job.sh.packed" # the job as packed (job.sh runs from the checkout)

# The run to continue, and its data.
DATA=()
if [ -f "$RUN/checkpoint.safetensors" ]; then
  mkdir -p "$KIT/run"
  for f in checkpoint.safetensors run.json log.jsonl ledger.jsonl; do
    [ -f "$RUN/$f" ] && cp "$RUN/$f" "$KIT/run/"
  done
  echo "$RUN" > "$KIT/run.path"
  # The caches named by run.json, stored by index with their recorded paths (resume checks them).
  mapfile -t DATA < <(deno eval 'const i = JSON.parse(Deno.readTextFileSync(Deno.args[0]));
    for (const f of (typeof i.data === "string" ? [i.data] : i.data)) console.log(f)' \
    "$RUN/run.json")
elif [ -n "$NEW_DATA" ]; then
  IFS=, read -r -a DATA <<< "$NEW_DATA"
  echo "$NEW_DATA" > "$KIT/run.fresh"
  echo "$RUN" > "$KIT/run.path"
  echo "no checkpoint in $RUN: the job starts the run (--preset anthos) on $NEW_DATA"
fi
if [ "${#DATA[@]}" -gt 0 ]; then
  STAGE="$DD/data"
  mkdir -p "$STAGE"
  : > "$STAGE/paths.txt"
  for k in "${!DATA[@]}"; do
    f=${DATA[$k]}
    src=$f
    [ -f "$src" ] || src="$RUN/$f"
    [ -f "$src" ] || { echo "pack.sh: data file $f of $RUN/run.json not found" >&2; exit 1; }
    ln -s "$(readlink -f "$src")" "$STAGE/data$k.safetensors"
    echo "data$k.safetensors $f" >> "$STAGE/paths.txt"
  done
  ( cd "$STAGE" && sha256sum data*.safetensors > sha256.txt
    tar -chf - paths.txt sha256.txt data*.safetensors ) | split -b "$PART" -d -a 1 - "$DD/part"
  n=$(ls "$DD"/part* | wc -l)
  i=1
  for p in "$DD"/part*; do
    mkdir -p ".gpu-data-$i"
    mv "$p" ".gpu-data-$i/part"
    echo "$i $n" > ".gpu-data-$i/index"
    i=$((i + 1))
  done
else
  echo "note: no $RUN/checkpoint.safetensors and no DATA: the kit benchmarks only"
fi

for d in "$KIT" .gpu-data-*; do
  [ -d "$d" ] || continue
  size=$(du -sb "$d" | cut -f1)
  echo "$d: $((size / 1024 / 1024)) MiB"
  [ "$size" -le "$LIMIT" ] || { echo "pack.sh: $d is over 64 MiB: one device call cannot carry it" >&2; exit 1; }
done
