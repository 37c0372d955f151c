#!/usr/bin/env bash
# After a GPU slot: lands what the job brought back (run from the project root).
#   bash bench/gpu/land.sh FILES_AT [RUN_DIR=training/anthos] [WEIGHTS=weights]
# FILES_AT: the folder the device tool put the job's $OUT files in (its `files_at`). Checks that
# the run came back whole and continues the one in RUN_DIR, copies it over RUN_DIR, exports the EMA
# weights with their provenance (deno task convert), measures the validation loss and writes the
# evaluation grid (deno task eval, on wasm), then prints the ledger's new lines and the stages'
# RESULT lines for BENCHMARKS.md, TRAINING.md and the README's flagship section.
set -euo pipefail
FILES=${1:?usage: bash bench/gpu/land.sh FILES_AT [RUN_DIR] [WEIGHTS]}
RUN=${2:-training/anthos}
WEIGHTS=${3:-weights}
[ -f deno.json ] && [ -d bench/gpu ] || { echo "land.sh: run it from the project root" >&2; exit 2; }
NEW=$FILES/run
for f in checkpoint.safetensors run.json ledger.jsonl log.jsonl; do
  [ -s "$NEW/$f" ] || { echo "land.sh: $NEW/$f missing: the job trained nothing (see its 4_train.txt)" >&2; exit 1; }
done
# The ledger only grows: the one that came back must start with every line of ours.
if [ -f "$RUN/ledger.jsonl" ]; then
  n=$(wc -l < "$RUN/ledger.jsonl")
  head -n "$n" "$NEW/ledger.jsonl" | cmp -s - "$RUN/ledger.jsonl" || {
    echo "land.sh: $NEW/ledger.jsonl does not continue $RUN/ledger.jsonl: another run? Nothing copied." >&2
    exit 1
  }
else
  n=0
fi
mkdir -p "$RUN"
cp "$NEW"/checkpoint.safetensors "$NEW"/run.json "$NEW"/ledger.jsonl "$NEW"/log.jsonl "$RUN/"
echo "== the ledger's new lines ($RUN/ledger.jsonl)"
tail -n +"$((n + 1))" "$RUN/ledger.jsonl"
echo "== export ($WEIGHTS)"
deno task convert --checkpoint "$RUN/checkpoint.safetensors" --out "$WEIGHTS"
echo "== validation loss and the evaluation grid ($WEIGHTS/samples.png)"
deno task eval "$WEIGHTS" --grid "$WEIGHTS/samples.png" --grid-tile 128 --quiet
echo "== the stages' results"
cat "$FILES/summary.txt" 2>/dev/null || grep -h '^RESULT' "$FILES"/*.txt || true
echo "== now: record the numbers (BENCHMARKS.md, TRAINING.md, README's flagship section), commit"
