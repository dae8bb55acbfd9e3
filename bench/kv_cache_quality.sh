#!/usr/bin/env bash
# KV-cache quantization (quantize --kv-bits 8 --kv-format int8|fp8) on the real stories260K model
# (../shared/data): bits per byte on held-out TinyStories text (validation_100.txt, 128-token windows, first
# window of each story) with the cache float, int8 and fp8 (static per-kv-head scales calibrated on 128 x 128
# tokens of tiny-shakespeare, seed 0; never the evaluation text), on top of near-lossless int8 RTN weights
# (so the rows show what the cache costs) and of GPTQ int4 g32; each 8-bit cache also with --kv-hadamard (each
# head's keys and values rotated by a Hadamard before rounding). Prints a Markdown table (OUT/kv.md).
# Usage: bench/kv_cache_quality.sh [OUT]   (BUILD_DIR selects the build, default build)
set -euo pipefail
cd "$(dirname "$0")/.."
MC=${BUILD_DIR:-build}/tools/mcompress/mcompress
SHARED=${MC_SHARED_DATA:-../shared/data}
OUT=${1:-bench/out/kv}
MODEL=$SHARED/stories260K/stories260K.bin
if [[ ! -f $MODEL ]]; then echo "skipped: $MODEL not found"; exit 0; fi
mkdir -p "$OUT"
EVAL=(--eval "$SHARED/tinystories/validation_100.txt" --window 128 --truncate)
CALIB=(--calib "$SHARED/tinyshakespeare/input.txt" --calib-samples 128 --calib-seqlen 128 --seed 0)
bpb() {
  /usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1]));
m=[m for m in r["metrics"] if m["name"]=="bits per byte"][0]; print("%.4f %.4f" % (m["baseline"], m["compressed"]))' "$1"
}
{
  echo "stories260K, bits per byte on validation_100 (lower is better); KV scales calibrated on tiny-shakespeare 128 x 128"
  echo
  echo "| weights | KV cache float | KV int8 | KV fp8 (E4M3) | KV int8 + Hadamard | KV fp8 + Hadamard |"
  echo "|---|---:|---:|---:|---:|---:|"
  for w in "rtn --bits 8 --per-channel" "gptq --bits 4 --group-size 32"; do
    line="| ${w/ --bits / int} |"
    for kv in "" "--kv-bits 8 --kv-format int8" "--kv-bits 8 --kv-format fp8" "--kv-bits 8 --kv-format int8 --kv-hadamard" \
      "--kv-bits 8 --kv-format fp8 --kv-hadamard"; do
      dir=$OUT/$(echo "$w $kv" | tr -d ' -')
      # shellcheck disable=SC2086
      "$MC" quantize "$MODEL" --method $w $kv "${CALIB[@]}" "${EVAL[@]}" -o "$dir" -q
      read -r base got <<<"$(bpb "$dir/report.json")"
      line+=" $got |"
    done
    echo "$line"
  done
  echo
  echo "float baseline: $base bits per byte"
} | tee "$OUT/kv.md"
