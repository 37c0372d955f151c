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
#   .gpu-dawn/      Dawn's WebGPU addon (npm `webgpu`, linux-x64 only) for stage 2c: carried with
#                   the last data call when it fits
# Each folder fits one device call (<= 64 MiB). See bench/gpu/README.md for the device calls.
set -euo pipefail
RUN=${1:-training/anthos}
NEW_DATA=${2:-}
SHARED=${ANTHOS_SHARED:-../shared}
KIT=.gpu-kit
LIMIT=$((64 * 1024 * 1024))
MARGIN=$((512 * 1024))
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
  tasks/train.ts tasks/bench.ts bench/gpu/adapter.ts bench/gpu/ops.ts bench/gpu/check.ts \
  bench/gpu/dawn.ts 2>/dev/null
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

# Dawn's node-API addon (npm `webgpu`, linux-x64 only: the package holds every platform's, 51 MB)
# for the job's stage 2c, apart from the kit (it does not fit beside it); ~5 MB compressed.
rm -rf .gpu-dawn && mkdir -p .gpu-dawn
DAWN=$(sed -n 's/^export const DAWN_PACKAGE = "\(.*\)";$/\1/p' lib/runtime/backend.ts)
DD2=$(mktemp -d)
DENO_DIR="$DD2" deno cache --quiet --no-lock --node-modules-dir=none "$DAWN" 2>/dev/null
nice xz -T2 -6 -c "$(find "$DD2/npm" -path '*/dist/linux-x64/dawn.node' | head -1)" \
  > .gpu-dawn/dawn.node.xz
echo "${DAWN#npm:}" > .gpu-dawn/version
rm -rf "$DD2"

# Vulkan loader and EGL for the NVIDIA ICD (the GPU machine has the driver, not the loader).
mkdir -p "$KIT/debs"
( cd "$KIT/debs" && apt-get download libvulkan1 libegl1 libglvnd0 >/dev/null )

# The PyTorch reference on the same GPU.
cp "$SHARED/gpu_probe/torch_anchor.py" "$SHARED/spec/dit_ref.py" "$KIT/"
cp bench/gpu/job.sh "$KIT/job.sh.packed" # the job as packed (job.sh runs from the checkout)

# The run to continue, and its data.
DATA=()
if [ -f "$RUN/checkpoint.safetensors" ]; then
  # A run kept in the repository (training/anthos) travels with the checkout; any other (runs/,
  # ignored by git) goes into the kit.
  if [ -z "$(git ls-files "$RUN/checkpoint.safetensors")" ]; then
    mkdir -p "$KIT/run"
    for f in checkpoint.safetensors run.json log.jsonl ledger.jsonl; do
      [ -f "$RUN/$f" ] && cp "$RUN/$f" "$KIT/run/"
    done
  fi
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
    tar -chf - paths.txt sha256.txt data*.safetensors ) > "$DD/data.tar"
  # Every call carries the checkout too (tracked and untracked files git does not ignore: the
  # run's checkpoint and weights/ are in it). The first part rides with the kit in the call that
  # benches; each later part fills a call of its own.
  TREE=$(git ls-files -z -co --exclude-standard | xargs -0 stat -c %s 2>/dev/null |
    awk '{ s += $1 } END { print s + 0 }')
  KIT_SIZE=$(du -sb "$KIT" | cut -f1)
  FIRST=$((LIMIT - MARGIN - TREE - KIT_SIZE))
  REST=$((LIMIT - MARGIN - TREE))
  [ "$REST" -gt $((1024 * 1024)) ] || { echo "pack.sh: the checkout alone ($TREE bytes) fills a call" >&2; exit 1; }
  [ "$FIRST" -gt 0 ] || FIRST=0
  total=$(stat -c %s "$DD/data.tar")
  i=1
  off=0
  while [ "$off" -lt "$total" ]; do
    size=$([ "$i" -eq 1 ] && echo "$FIRST" || echo "$REST")
    [ "$size" -gt 0 ] || { i=$((i + 1)); continue; }
    mkdir -p ".gpu-data-$i"
    dd if="$DD/data.tar" of=".gpu-data-$i/part" bs=1M iflag=skip_bytes,count_bytes \
      skip="$off" count="$size" status=none
    off=$((off + size))
    i=$((i + 1))
  done
  n=$(ls -d .gpu-data-* | wc -l)
  k=1
  for d in $(ls -d .gpu-data-* | sort -t- -k3 -n); do
    [ "$d" = ".gpu-data-$k" ] || mv "$d" ".gpu-data-$k"
    echo "$k $n" > ".gpu-data-$k/index"
    k=$((k + 1))
  done
else
  echo "note: no $RUN/checkpoint.safetensors and no DATA: the kit benchmarks only"
fi

TREE=${TREE:-$(git ls-files -z -co --exclude-standard | xargs -0 stat -c %s 2>/dev/null |
  awk '{ s += $1 } END { print s + 0 }')}
echo "checkout: $((TREE / 1024 / 1024)) MiB (travels with every call)"
for d in "$KIT" .gpu-data-*; do
  [ -d "$d" ] || continue
  size=$(du -sb "$d" | cut -f1)
  echo "$d: $((size / 1024 / 1024)) MiB"
  [ $((size + TREE)) -le "$LIMIT" ] || { echo "pack.sh: $d + the checkout is over 64 MiB: one device call cannot carry it" >&2; exit 1; }
done
# The device calls, in order (back to back: the machine goes back after ~30 s idle).
parts=$(ls -d .gpu-data-* 2>/dev/null | sort -t- -k3 -n)
np=$(echo "$parts" | grep -c . || true)
echo "device calls:"
if [ "$np" -eq 0 ]; then
  echo "  1. run(command=\"bash bench/gpu/job.sh\", carry=[\".gpu-kit\"], timeout_s=600)"
else
  first=$([ -f .gpu-data-1/part ] && [ $(( $(du -sb "$KIT" | cut -f1) + $(du -sb .gpu-data-1 | cut -f1) + TREE )) -le "$LIMIT" ] && echo 1 || echo 0)
  c=1
  if [ "$first" = 1 ]; then
    echo "  $c. run(command=\"bash bench/gpu/job.sh stage .gpu-data-1; JOB_SECONDS=450 bash bench/gpu/job.sh\", carry=[\".gpu-kit\", \".gpu-data-1\"], timeout_s=480)"
  else
    echo "  $c. run(command=\"JOB_SECONDS=450 bash bench/gpu/job.sh\", carry=[\".gpu-kit\"], timeout_s=480)"
  fi
  for d in $parts; do
    k=${d#.gpu-data-}
    [ "$k" = 1 ] && [ "$first" = 1 ] && continue
    c=$((c + 1))
    if [ "$k" = "$np" ]; then
      # Dawn's try (stage 2c, ~1 minute before training) rides along when there is room.
      dawn=""
      [ $(( $(du -sb "$d" | cut -f1) + $(du -sb .gpu-dawn | cut -f1) + TREE )) -le "$LIMIT" ] &&
        dawn=", \".gpu-dawn\""
      echo "  $c. run(command=\"bash bench/gpu/job.sh stage $d; SKIP_BENCH=1 JOB_SECONDS=<budget_left_s - 60, at most 575> bash bench/gpu/job.sh\", carry=[\"$d\"$dawn], timeout_s=600)"
    else
      echo "  $c. run(command=\"bash bench/gpu/job.sh stage $d\", carry=[\"$d\"], timeout_s=120)"
    fi
  done
  echo "  then give_back(), or one more SKIP_BENCH=1 call to use what is left"
fi
