#!/usr/bin/env bash
# Installs the Debian packages the test suite needs when they are missing:
#   mesa-vulkan-drivers  a CPU Vulkan adapter (lavapipe), so the webgpu backend runs without a GPU
#   fonts-dejavu-core    a font for the class-name captions of image grids
#   libopenblas0-pthread the system BLAS that the wasm backend's products use through FFI
#                        (tests run them with it and without it)
#   chromium             the headless browser of the demo page's test (tests/web_test.ts)
# Needs root (or sudo) and apt; elsewhere it says what to install and carries on.
set -euo pipefail
pkgs=(mesa-vulkan-drivers fonts-dejavu-core libopenblas0-pthread chromium)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo"
if [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "warning: missing Debian packages ${missing[*]} (apt-get install ${missing[*]}); webgpu, BLAS and browser tests will be skipped (under CI=true they fail)" >&2
fi
