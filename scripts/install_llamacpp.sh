#!/usr/bin/env bash
# Installs llama.cpp as npm ships it (node-llama-cpp with its prebuilt CPU binaries) into
# ${MCOMPRESS_NPM_DIR:-$HOME/.cache/mcompress-npm}, for tests/python/test_llamacpp_gguf.py: our GGUF
# files run by the real llama.cpp. Idempotent (skips when present); without network it says so and
# the test skips.
set -uo pipefail
DIR=${MCOMPRESS_NPM_DIR:-$HOME/.cache/mcompress-npm}
VERSION=3.22.1
if [[ -f "$DIR/node_modules/node-llama-cpp/package.json" ]] &&
   grep -q "\"version\": \"$VERSION\"" "$DIR/node_modules/node-llama-cpp/package.json"; then
  exit 0
fi
command -v npm >/dev/null || { echo "[install] npm not found: llama.cpp interop test will skip"; exit 0; }
mkdir -p "$DIR"
cd "$DIR" || exit 0
[[ -f package.json ]] || echo '{"name": "mcompress-llamacpp", "private": true}' > package.json
# --ignore-scripts: the postinstall would try to build llama.cpp from source; the prebuilt binaries
# come as optional dependencies (@node-llama-cpp/linux-x64).
if timeout 300 npm install --no-audit --no-fund --ignore-scripts "node-llama-cpp@$VERSION" >/dev/null 2>&1; then
  echo "[install] node-llama-cpp $VERSION (llama.cpp) in $DIR"
else
  echo "[install] could not install node-llama-cpp from npm: llama.cpp interop test will skip"
fi
exit 0
