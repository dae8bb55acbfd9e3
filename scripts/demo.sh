#!/usr/bin/env bash
# The main job: install, build, then run mcompress on a model the project generates itself
# (and on the real models in ../shared/data when they are there).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
BUILD_DIR=${BUILD_DIR:-build}
MC="$BUILD_DIR/tools/mcompress/mcompress"
OUT=${OUT:-out/demo}
mkdir -p "$OUT"

echo
echo "== 1. a deterministic example checkpoint (data/make_example) =="
"$BUILD_DIR/data/make_example" "$OUT/example.safetensors"
"$MC" inspect "$OUT/example.safetensors"

echo
echo "== 2. convert it to every writable format and back =="
"$MC" convert "$OUT/example.safetensors" "$OUT/example.pt"
"$MC" convert "$OUT/example.pt" "$OUT/example.h5"
"$MC" convert "$OUT/example.h5" "$OUT/example.f16.safetensors" --dtype f16
"$MC" convert "$OUT/example.h5" "$OUT/example.roundtrip.safetensors"
if cmp -s <("$MC" inspect "$OUT/example.safetensors" --json | grep -v '"file' ) \
          <("$MC" inspect "$OUT/example.roundtrip.safetensors" --json | grep -v '"file'); then
  echo "safetensors -> torch -> hdf5 -> safetensors: every tensor identical"
else
  echo "round trip changed the tensors" >&2; exit 1
fi
printf '%-40s %10s\n' file bytes
for f in "$OUT"/example*; do printf '%-40s %10s\n' "$f" "$(stat -c %s "$f")"; done

SHARED=${MC_SHARED_DATA:-../shared/data}
if [[ -f "$SHARED/mnist/mnist_mlp.state_dict" ]]; then
  echo
  echo "== 3. real checkpoints from $SHARED =="
  "$MC" inspect "$SHARED/mnist/mnist_mlp.state_dict"
  "$MC" convert "$SHARED/mnist/mnist_mlp.state_dict" "$OUT/mnist_mlp.f16.safetensors" --dtype f16
  echo
  "$MC" inspect "$SHARED/stories260K/stories260K.bin" --no-stats | head -20
else
  echo "(skipped the real checkpoints: $SHARED/mnist not found)"
fi
echo
echo "outputs are in $OUT/"
