#!/usr/bin/env bash
# Executes every notebook (notebooks/0*.ipynb, in name order) headlessly with Deno's Jupyter
# kernel, then checks the executed copies: no error outputs, and every cell tagged "expect-image"
# shows a PNG or SVG. ANTHOS_QUICK=1 (the default here) keeps the whole run to a few minutes.
#
# Needs the Debian packages jupyter-nbconvert, python3-nbclient and jupyter-client (installed
# here when missing and we are root or have sudo). The kernelspec is written to a private
# JUPYTER_PATH folder (kernel name "deno", running this machine's deno), so an existing
# `deno jupyter --install` setup is neither needed nor touched.
#
# Usage: .ci/notebooks.sh [NOTEBOOK...]     (default: all; executed copies go to $NB_OUT or a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(jupyter-nbconvert python3-nbclient jupyter-client)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo"
  if [ "$(id -u)" -ne 0 ] && [ -z "$sudo" ]; then
    echo "error: missing Debian packages: ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "installing Debian packages: ${missing[*]}" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
PY=/usr/bin/python3 # Debian's python, which has nbformat/nbclient (not a pyenv/venv one)

# A private kernelspec "deno" (what `deno jupyter --install` writes), found first via JUPYTER_PATH.
kdir="$(mktemp -d)"
out="${NB_OUT:-$(mktemp -d)}"
runs="$(mktemp -d)"
trap 'rm -rf "$kdir" "$runs"' EXIT
mkdir -p "$kdir/kernels/deno" "$out"
cat >"$kdir/kernels/deno/kernel.json" <<EOF
{"argv": ["$(command -v deno)", "jupyter", "--kernel", "--conn", "{connection_file}"],
 "display_name": "Deno", "language": "typescript"}
EOF
export JUPYTER_PATH="$kdir${JUPYTER_PATH:+:$JUPYTER_PATH}"
export ANTHOS_QUICK="${ANTHOS_QUICK:-1}"
# A fresh runs folder: 02 trains on what 01 encoded, 03 plots what 02 logged, nothing stale.
export ANTHOS_NB_RUNS="${ANTHOS_NB_RUNS:-$runs}"

if [ $# -gt 0 ]; then notebooks=("$@"); else notebooks=(notebooks/0*.ipynb); fi
total_start=$SECONDS
for nb in "${notebooks[@]}"; do
  start=$SECONDS
  echo "== $nb" >&2
  status=0
  jupyter nbconvert --to notebook --execute \
    --ExecutePreprocessor.kernel_name=deno \
    --ExecutePreprocessor.timeout=600 \
    --output-dir "$out" "$nb" >"$kdir/log" 2>&1 || status=$?
  grep -v '"deno jupyter" is unstable' "$kdir/log" >&2 || true
  if [ "$status" -ne 0 ]; then
    echo "error: $nb failed (exit $status; see the cell error above)" >&2
    exit 1
  fi
  [ -f "$out/$(basename "$nb")" ] || { echo "error: $nb was not executed" >&2; exit 1; }
  echo "   $nb: $((SECONDS - start)) s" >&2
done

"$PY" - "$out" "${notebooks[@]}" <<'EOF'
import base64, json, sys
out, notebooks = sys.argv[1], sys.argv[2:]
bad = []
for path in notebooks:
    name = path.rsplit("/", 1)[-1]
    nb = json.load(open(f"{out}/{name}"))
    expected = 0
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        where = f"{name} cell {i}"
        outputs = cell.get("outputs", [])
        for o in outputs:
            if o["output_type"] == "error":
                bad.append(f"{where}: {o['ename']}: {o['evalue']}")
        if "expect-image" not in cell.get("metadata", {}).get("tags", []):
            continue
        expected += 1
        images = [o["data"] for o in outputs if "image/png" in o.get("data", {})
                  or "image/svg+xml" in o.get("data", {})]
        if not images:
            bad.append(f"{where}: expected an image output, got {[o['output_type'] for o in outputs]}")
        for d in images:
            if "image/png" in d:
                png = base64.b64decode(d["image/png"])
                if png[:8] != b"\x89PNG\r\n\x1a\n" or len(png) < 1000:
                    bad.append(f"{where}: image/png output is not a real PNG ({len(png)} bytes)")
            else:
                svg = d["image/svg+xml"]
                svg = "".join(svg) if isinstance(svg, list) else svg
                if "<svg" not in svg or "<polyline" not in svg:
                    bad.append(f"{where}: image/svg+xml output holds no chart")
    if expected == 0:
        bad.append(f"{name}: no cell is tagged expect-image")
    print(f"   {name}: {expected} image cell(s) checked", file=sys.stderr)
if bad:
    print("notebook check failed:\n  " + "\n  ".join(bad), file=sys.stderr)
    sys.exit(1)
EOF
echo "notebooks ok: ${#notebooks[@]} executed in $((SECONDS - total_start)) s (outputs in $out)" >&2
