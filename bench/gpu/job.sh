#!/usr/bin/env bash
# The GPU job: one device call of <= 10 minutes on an NVIDIA machine without network.
#   bash bench/gpu/job.sh                   adapter, bench at batch 256 (ours, then PyTorch fp32
#                                           and bf16 on the same GPU), then the run continues
#                                           until the time is up; results in $OUT
#   bash bench/gpu/job.sh stage .gpu-data-N stages one data part (carried by that call)
# Needs .gpu-kit/ (bash bench/gpu/pack.sh). Env: JOB_SECONDS (default 560: the whole call, under
# the 600 s limit), TRAIN_SECONDS (cap on training), SMOKE=1 (a check on lavapipe: tiny sizes,
# no NVIDIA setup), BENCH_ARGS (replace the bench's arguments), TRAIN_ARGS (more train flags, e.g.
# `--batch-size 2 --limit 64` when the job starts a run for a check on lavapipe), SKIP_BENCH=1
# (train only: a second call on the same warm machine, after the one that benched).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
KIT=$ROOT/.gpu-kit
STAGED=$ROOT/.gpu-staged # not carried: stays on the machine between calls while it is kept
OUT=${OUT:-/tmp/gpu-job-out}
SMOKE=${SMOKE:-0}
JOB_SECONDS=${JOB_SECONDS:-560}
T0=$(date +%s)
mkdir -p "$OUT" "$STAGED"
elapsed() { echo $(($(date +%s) - T0)); }
stage() { echo "=== [$(elapsed)s] $*"; }

if [ "${1:-}" = "stage" ]; then
  part=${2:?usage: job.sh stage .gpu-data-N}
  [ -f "$ROOT/$part/index" ] || { echo "no $part/index: carry the folder made by pack.sh"; exit 2; }
  read -r i n < "$ROOT/$part/index"
  mkdir -p "$STAGED/parts"
  cp "$ROOT/$part/part" "$STAGED/parts/$i"
  have=$(ls "$STAGED/parts" | wc -l)
  echo "staged part $i of $n ($have present)"
  if [ "$have" -eq "$n" ]; then
    rm -rf "$STAGED/data" && mkdir -p "$STAGED/data"
    for k in $(seq 1 "$n"); do cat "$STAGED/parts/$k"; done | tar -xf - -C "$STAGED/data"
    (cd "$STAGED/data" && sha256sum -c --quiet sha256.txt) && echo "data complete and verified:" &&
      cat "$STAGED/data/paths.txt"
  fi
  exit 0
fi

[ -f "$KIT/deno.xz" ] || { echo "no .gpu-kit/: build it with bash bench/gpu/pack.sh and carry it"; exit 2; }
stage "setup"
if [ "$SMOKE" != 1 ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  for f in "$KIT"/debs/*.deb; do dpkg -x "$f" /; done
  ldconfig
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  [ -f "$VK_DRIVER_FILES" ] ||
    export VK_DRIVER_FILES=$(find / -name 'nvidia_icd*.json' -not -path '/proc/*' 2>/dev/null | head -1)
  echo "VK_DRIVER_FILES=$VK_DRIVER_FILES"
fi
J=/tmp/gpu-job
mkdir -p "$J/bin" "$J/denodir/npm"
[ -x "$J/bin/deno" ] || { xz -dc "$KIT/deno.xz" > "$J/bin/deno.tmp" && chmod +x "$J/bin/deno.tmp" &&
  mv "$J/bin/deno.tmp" "$J/bin/deno"; }
tar -xJf "$KIT/npm.tar.xz" -C "$J/denodir/npm"
export PATH=$J/bin:$PATH DENO_DIR=$J/denodir DENO_NO_UPDATE_CHECK=1 XDG_RUNTIME_DIR=/tmp
[ "$SMOKE" = 1 ] || export DENO_WEBGPU_BACKEND=vulkan
deno --version | head -1
D=(deno run -A --cached-only --node-modules-dir=none --v8-flags=--max-old-space-size=16384)
# run NAME LIMIT CMD...: a stage with its own time limit; full output in $OUT/NAME.txt.
run() {
  local name=$1 lim=$2
  shift 2
  stage "$name (limit ${lim}s)"
  timeout -k 60 "$lim" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "rc=$rc" >> "$OUT/$name.txt"
  grep -h '^RESULT\|^|\|rror\|^rc=\|step\b' "$OUT/$name.txt" | grep -v '^\s*$' | cut -c1-240 | tail -40
  return $rc
}

run 1_adapter 60 "${D[@]}" bench/gpu/adapter.ts || { echo "no adapter: stopping"; exit 1; }

if [ "${SKIP_BENCH:-0}" = 1 ]; then
  echo "SKIP_BENCH=1: no bench, no PyTorch (an earlier call on this machine ran them)"
elif [ "$SMOKE" = 1 ]; then
  BENCH_ARGS=${BENCH_ARGS:---batches 2 --steps 2 --sample-batch 2 --no-torch --no-vae}
  run 2_bench 300 "${D[@]}" tasks/bench.ts --backends webgpu $BENCH_ARGS
  run 2b_ops 120 env SMOKE=1 "${D[@]}" bench/gpu/ops.ts
  run 3_torch 120 env SMOKE=1 /usr/bin/python3 "$KIT/torch_anchor.py"
else
  BENCH_ARGS=${BENCH_ARGS:---batches 256 --steps 20 --sample-batch 64 --no-torch --no-vae}
  run 2_bench 200 "${D[@]}" tasks/bench.ts --backends webgpu $BENCH_ARGS
  run 2b_ops 120 "${D[@]}" bench/gpu/ops.ts # where a step's time goes (phases, products)
  run 3_torch 110 env PYTHONUNBUFFERED=1 python3 "$KIT/torch_anchor.py"
fi
# One measured try of Dawn in place of Deno's WebGPU (readback floor, training steps), once per
# machine, in the call that carries .gpu-dawn (pack.sh). A failure here does not stop the job.
if [ -f "$ROOT/.gpu-dawn/dawn.node.xz" ] && [ ! -f "$STAGED/dawn.done" ]; then
  echo "Dawn: $(cat "$ROOT/.gpu-dawn/version" 2>/dev/null)"
  xz -dc "$ROOT/.gpu-dawn/dawn.node.xz" > "$J/dawn.node"
  if [ "$SMOKE" = 1 ]; then
    run 2c_dawn 240 "${D[@]}" bench/gpu/dawn.ts dawn 2 1 "$J/dawn.node"
  else
    run 2c_dawn 90 "${D[@]}" bench/gpu/dawn.ts dawn 256 5 "$J/dawn.node"
  fi
  touch "$STAGED/dawn.done"
  # Train on Dawn (ANTHOS_WEBGPU) when its training steps beat stage 2's on Deno's WebGPU by 10%.
  dawn_rate=$(sed -n 's/^RESULT dawn train batch [0-9]*: \([0-9.]*\) steps.*/\1/p' "$OUT/2c_dawn.txt")
  deno_rate=$(sed -n 's/^| webgpu .*| train step | [0-9]* | \([0-9.]*\) steps.*/\1/p' \
    "$OUT/2_bench.txt" 2>/dev/null | tail -1)
  echo "training steps/s: Dawn ${dawn_rate:-none}, Deno's WebGPU ${deno_rate:-none}"
  if [ -n "$dawn_rate" ] && [ -n "$deno_rate" ] &&
    awk "BEGIN { exit !($dawn_rate > 1.1 * $deno_rate) }"; then
    echo "ANTHOS_WEBGPU=$J/dawn.node" > "$STAGED/webgpu.env"
  fi
fi
# Train with the fastest ANTHOS_WGSL setting of stage 2b (kept for later calls on this machine).
if [ "${SKIP_BENCH:-0}" != 1 ] && [ -f "$OUT/2b_ops.txt" ]; then
  grep -o 'ANTHOS_WGSL=[a-z0-9-]*' "$OUT/2b_ops.txt" | tail -1 > "$STAGED/wgsl.env" || true
fi

# The run: continue from its latest state on this machine (an earlier call's), else the kit's;
# or start it when the kit says so (pack.sh with DATA and no checkpoint).
RUN=$STAGED/run
FLAGS=()
# The run's state: in the kit (a run outside the repository) or in the checkout (training/anthos).
SRC=$KIT/run
[ -d "$SRC" ] || SRC=$ROOT/$(cat "$KIT/run.path" 2>/dev/null || echo training/anthos)
if [ -f "$RUN/checkpoint.safetensors" ] || [ -f "$SRC/checkpoint.safetensors" ]; then
  if [ ! -f "$RUN/checkpoint.safetensors" ]; then mkdir -p "$RUN" && cp "$SRC"/* "$RUN/"; fi
  FLAGS=(--resume)
elif [ -f "$KIT/run.fresh" ]; then
  FLAGS=(--preset anthos --data "$(cat "$KIT/run.fresh")")
fi
if [ "${#FLAGS[@]}" -eq 0 ]; then
  echo "no run in the kit: benchmarks only"
elif [ ! -f "$STAGED/data/paths.txt" ]; then
  echo "the run's data is not staged: call job.sh stage for each .gpu-data-N first (README)"
else
  # The run names its data by the paths recorded in run.json: make them point at the staged files.
  while read -r file path; do
    case $path in /*) dst=$path ;; *) dst=$ROOT/$path ;; esac
    mkdir -p "$(dirname "$dst")"
    [ -e "$dst" ] || ln -s "$STAGED/data/$file" "$dst"
  done < "$STAGED/data/paths.txt"
  left=$((JOB_SECONDS - $(elapsed) - 40)) # 40 s: start-up, final checkpoint, copy-out
  [ -n "${TRAIN_SECONDS:-}" ] && [ "$TRAIN_SECONDS" -lt "$left" ] && left=$TRAIN_SECONDS
  if [ -s "$STAGED/wgsl.env" ] && ! grep -q default "$STAGED/wgsl.env"; then
    export "$(cat "$STAGED/wgsl.env")"
  fi
  echo "training with ANTHOS_WGSL=${ANTHOS_WGSL:-default} (the fastest full step of stage 2b)"
  [ -s "$STAGED/webgpu.env" ] && export "$(cat "$STAGED/webgpu.env")"
  impl="Deno's WebGPU"
  [ -n "${ANTHOS_WEBGPU:-}" ] && impl="Dawn (ANTHOS_WEBGPU=$ANTHOS_WEBGPU)"
  echo "training on $impl (stage 2c)"
  # The guard (once per machine and WebGPU): webgpu must agree with wasm here before it trains.
  ok=$STAGED/check.ok${ANTHOS_WEBGPU:+.dawn}
  if [ ! -f "$ok" ]; then
    if run 3b_check 150 "${D[@]}" bench/gpu/check.ts; then
      touch "$ok"
    else
      echo "webgpu disagrees with wasm on this GPU (3b_check.txt): not training; the run is as it was"
      left=0
    fi
    left=$((left > 0 ? JOB_SECONDS - $(elapsed) - 40 : 0))
    [ -n "${TRAIN_SECONDS:-}" ] && [ "$TRAIN_SECONDS" -lt "$left" ] && left=$TRAIN_SECONDS
  fi
  if [ "$left" -gt 20 ]; then
    minutes=$(awk "BEGIN { printf \"%.2f\", ($left - 15) / 60 }")
    run 4_train $((left + 30)) "${D[@]}" tasks/train.ts "${FLAGS[@]}" --out "$RUN" \
      --export "$STAGED/weights" --backend webgpu --max-minutes "$minutes" --sample-every 0 \
      --log-every 100 ${TRAIN_ARGS:-}
    # The EMA weights are exported again here from the checkpoint (deno task convert), so only
    # the run comes back: at most 8 files leave the machine.
    mkdir -p "$OUT/run"
    cp "$RUN"/checkpoint.safetensors "$RUN"/*.json* "$OUT/run/" 2>/dev/null
    ls -la "$OUT/run"
  else
    echo "no time left to train ($left s)"
  fi
fi
stage "done"
grep -h '^RESULT\|^|' "$OUT"/*.txt > "$OUT/summary.txt" 2>/dev/null
true
