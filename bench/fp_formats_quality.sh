#!/usr/bin/env bash
# Floating-point weight formats on the real stories260K model (../shared/data): bits per byte on held-out
# TinyStories text (validation_100.txt, 128-token windows, first window of each story) for fp8 (E4M3 per
# tensor, per channel, per 128x128 block), mxfp4 and nvfp4 (quantize --scheme: weights only, evaluated with
# the dequantized weights in process), beside the float32 baseline and int4 RTN g32 (symmetric, fp16
# scales) from the same binary. No method here calibrates: every scale comes from the weights, so no text
# (least of all the evaluation text) shapes the result. Prints a Markdown table (also OUT/fp_quality.md).
# Usage: bench/fp_formats_quality.sh [OUT]   (BUILD_DIR selects the build, default build)
set -euo pipefail
cd "$(dirname "$0")/.."
MC=${BUILD_DIR:-build}/tools/mcompress/mcompress
SHARED=${MC_SHARED_DATA:-../shared/data}
OUT=${1:-bench/out/fp_quality}
MODEL=$SHARED/stories260K/stories260K.bin
if [[ ! -f $MODEL ]]; then echo "skipped: $MODEL not found"; exit 0; fi
mkdir -p "$OUT"
EVAL=(--eval "$SHARED/tinystories/validation_100.txt" --window 128 --truncate)

field() {  # a metric of a report: bits per byte (baseline|compressed), or the mean stored bits per weight
  /usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1]));
if sys.argv[2] == "bpw":
    ls = r["layers"]; print("%.3f" % (sum(l["bits_per_weight"] * l["params"] for l in ls) / sum(l["params"] for l in ls)))
else:
    print("%.4f" % [m for m in r["metrics"] if m["name"] == "bits per byte"][0][sys.argv[2]])' "$1" "$2"
}

rows=()
run() {  # label, then the quantize options
  local label=$1 dir
  shift
  dir="$OUT/${label// /_}"
  "$MC" quantize "$MODEL" "$@" "${EVAL[@]}" -o "$dir" -q >/dev/null
  rows+=("| $label | $(field "$dir/report.json" bpw) | $(field "$dir/report.json" compressed) |")
  [[ -n ${baseline:-} ]] || baseline=$(field "$dir/report.json" baseline)
  echo "  $label: $(field "$dir/report.json" compressed)" >&2
}
run "int4 rtn g32" --method rtn --bits 4 --group-size 32
for s in fp8 fp8-channel fp8-block mxfp4 nvfp4; do run "$s" --scheme "$s"; done
{
  echo "stories260K, bits per byte on validation_100 (lower is better); weights only, no calibration"
  echo
  echo "| weights | stored bits per weight (quantized layers) | bits per byte |"
  echo "|---|---:|---:|"
  echo "| float32 (baseline) | 32 | $baseline |"
  printf '%s\n' "${rows[@]}"
} | tee "$OUT/fp_quality.md"
