#!/usr/bin/env bash
# HQQ (calibration-free) against RTN and imatrix on the real stories260K model (../shared/data): bits per
# byte on held-out TinyStories text (validation_100.txt, 128-token windows, first window of each story)
# at int4 and int3, groups of 32. RTN and HQQ see no data. imatrix is calibrated on TinyStories-like text
# sampled from the float model itself (STORIES stories, default 120, of up to 256 tokens after "Once upon
# a time", temperature 1, seeds 1..STORIES; kept in OUT/calib_sampled.txt), never on the evaluation text;
# 128 x 128 calibration tokens, seed 0. Prints a Markdown table (and writes it to OUT/hqq.md).
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
EVAL=(--eval "$SHARED/tinystories/validation_100.txt" --window 128 --truncate)
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
CALIB=(--calib "$SAMPLED" --calib-samples 128 --calib-seqlen 128 --seed 0)

bpb() {  # bits per byte (compressed) from a report
  /usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1]));
print("%.4f" % [m for m in r["metrics"] if m["name"]=="bits per byte"][0][sys.argv[2]])' "$1" "$2"
}

declare -A ROW
methods=("rtn" "rtn --asym" "hqq" "imatrix" "imatrix --asym")
grids=("4 --group-size 32" "3 --group-size 32")
baseline=""
for m in "${methods[@]}"; do
  for g in "${grids[@]}"; do
    read -r bits grid <<<"$g"
    name="${m// /}-w${bits}${grid// /}"
    extra=()
    [[ $m == imatrix* ]] && extra=("${CALIB[@]}")
    # shellcheck disable=SC2086
    "$MC" quantize "$MODEL" --method $m --bits "$bits" $grid "${extra[@]}" "${EVAL[@]}" -o "$OUT/$name" -q
    ROW["$m|$g"]=$(bpb "$OUT/$name/report.json" compressed)
    [[ -n $baseline ]] || baseline=$(bpb "$OUT/$name/report.json" baseline)
    echo "  $m, int$bits $grid: ${ROW["$m|$g"]}" >&2
  done
done
{
  echo "stories260K, bits per byte on validation_100 (float baseline $baseline; lower is better)"
  echo
  echo "| method | data | int4 g32 | int3 g32 |"
  echo "|---|---|---:|---:|"
  for m in "${methods[@]}"; do
    data="none"
    [[ $m == imatrix* ]] && data="sampled stories"
    line="| $m | $data |"
    for g in "${grids[@]}"; do line+=" ${ROW["$m|$g"]} |"; done
    echo "$line"
  done
} | tee "$OUT/hqq.md"
