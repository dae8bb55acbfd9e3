#!/usr/bin/env bash
# HQQ (calibration-free) against RTN and imatrix on the real stories260K model (../shared/data): bits per
# byte on held-out TinyStories text (validation_100.txt, 128-token windows, first window of each story)
# at int4 and int3, groups of 32. RTN and HQQ see no data. imatrix is calibrated on TinyStories-like text
# sampled from the float model itself (STORIES stories, default 120, of up to 256 tokens after "Once upon
# a time", temperature 1, seeds 1..STORIES; kept in OUT/calib_sampled.txt), never on the evaluation text;
# 128 x 128 calibration tokens, seed 0. Prints quality_table.sh's Markdown table (OUT/quality.md).
# Usage: bench/hqq_quality.sh [OUT]   (BUILD_DIR selects the build, default build)
set -euo pipefail
cd "$(dirname "$0")/.."
MC=${BUILD_DIR:-build}/tools/mcompress/mcompress
SHARED=${MC_SHARED_DATA:-../shared/data}
OUT=${1:-bench/out/hqq}
MODEL=$SHARED/stories260K/stories260K.bin
TOK=$SHARED/stories260K/tok512.bin
if [[ ! -f $MODEL ]]; then echo "skipped: $MODEL not found"; exit 0; fi
mkdir -p "$OUT"
SAMPLED=$OUT/calib_sampled.txt
if [[ ! -s $SAMPLED ]]; then
  echo "sampling ${STORIES:-120} calibration stories from the float model ..." >&2
  for seed in $(seq 1 "${STORIES:-120}"); do
    "$MC" generate "$MODEL" --tokenizer "$TOK" --prompt "Once upon a time" --max-tokens 256 --temperature 1 \
      --seed "$seed" --json | /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["prompt"]+j["text"])'
    echo "<|endoftext|>"
  done >"$SAMPLED.tmp"
  mv "$SAMPLED.tmp" "$SAMPLED"
fi
# The table itself is quality_table.sh's, with these rows, columns and calibration text.
METHODS="rtn;rtn --asym;hqq;imatrix;imatrix --asym" GRIDS="4 --group-size 32;3 --group-size 32" \
  CALIB_TEXT="$SAMPLED" exec bash bench/quality_table.sh "$OUT"
