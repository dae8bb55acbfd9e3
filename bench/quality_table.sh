#!/usr/bin/env bash
# Quality of the weight-quantization methods on the real stories260K model (../shared/data):
# bits per byte on held-out TinyStories text (validation_100.txt, 128-token windows, first window of
# each story) at 4 and 3 bits, groups of 32 and per output channel, for RTN (symmetric and asymmetric)
# and HQQ, which see no data, and imatrix, AWQ and GPTQ with and without act-order. Calibration: 128 x
# 128 tokens of tiny-shakespeare (seed 0), a different text from the evaluation (bench/hqq_quality.sh
# runs it with imatrix calibrated on TinyStories-like text instead). Prints a Markdown table (and writes it to OUT/quality.md).
# Usage: bench/quality_table.sh [OUT]   (BUILD_DIR selects the build, default build; METHODS and GRIDS,
# ';'-separated, replace the rows and columns, CALIB_TEXT the calibration text). A second table gives each
# method's quantize time (the report's step, all columns summed) and its ratio to GPTQ's.
set -euo pipefail
cd "$(dirname "$0")/.."
MC=${BUILD_DIR:-build}/tools/mcompress/mcompress
SHARED=${MC_SHARED_DATA:-../shared/data}
OUT=${1:-bench/out/quality}
MODEL=$SHARED/stories260K/stories260K.bin
if [[ ! -f $MODEL ]]; then echo "skipped: $MODEL not found"; exit 0; fi
mkdir -p "$OUT"
EVAL=(--eval "$SHARED/tinystories/validation_100.txt" --window 128 --truncate)
CALIB_TEXT=${CALIB_TEXT:-$SHARED/tinyshakespeare/input.txt}
CALIB=(--calib "$CALIB_TEXT" --calib-samples 128 --calib-seqlen 128 --seed 0)

bpb() {  # bits per byte (compressed) from a report
  /usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1]));
print("%.4f" % [m for m in r["metrics"] if m["name"]=="bits per byte"][0][sys.argv[2]])' "$1" "$2"
}

quantize_seconds() {  # seconds of the report's quantize step
  /usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1]));
print("%.2f" % sum(s["seconds"] for s in r["steps"] if s["name"].startswith("quantize")))' "$1"
}

declare -A ROW SECONDS_OF
IFS=';' read -r -a methods <<<"${METHODS:-rtn;rtn --asym;hqq;imatrix;awq;gptq;gptq --act-order}"
IFS=';' read -r -a grids <<<"${GRIDS:-4 --group-size 32;4 --per-channel;3 --group-size 32;3 --per-channel}"
label() {  # "4 --group-size 32" -> "int4 g32", "3 --per-channel" -> "int3 per-channel"
  local bits grid
  read -r bits grid <<<"$1"
  grid=${grid/--group-size /g}
  echo "int$bits ${grid#--}"
}
baseline=""
for m in "${methods[@]}"; do
  for g in "${grids[@]}"; do
    read -r bits grid <<<"$g"
    name="${m// /}-w${bits}${grid// /}"
    extra=()
    [[ $m == rtn* || $m == hqq* ]] || extra=("${CALIB[@]}")
    # shellcheck disable=SC2086
    "$MC" quantize "$MODEL" --method $m --bits "$bits" $grid "${extra[@]}" "${EVAL[@]}" -o "$OUT/$name" -q
    ROW["$m|$g"]=$(bpb "$OUT/$name/report.json" compressed)
    SECONDS_OF[$m]=$(/usr/bin/python3 -c "print('%.2f' % (${SECONDS_OF[$m]:-0} + $(quantize_seconds "$OUT/$name/report.json")))")
    [[ -n $baseline ]] || baseline=$(bpb "$OUT/$name/report.json" baseline)
    echo "  $m, int$bits $grid: ${ROW["$m|$g"]}" >&2
  done
done
{
  echo "stories260K, bits per byte on validation_100 (float baseline $baseline; lower is better)"
  echo
  echo "calibrated methods (all but rtn, hqq): $(basename "$CALIB_TEXT"), 128 x 128 tokens, seed 0"
  echo
  head="| method |"
  rule="|---|"
  for g in "${grids[@]}"; do head+=" $(label "$g") |"; rule+="---:|"; done
  echo "$head"
  echo "$rule"
  for m in "${methods[@]}"; do
    line="| $m |"
    for g in "${grids[@]}"; do line+=" ${ROW["$m|$g"]} |"; done
    echo "$line"
  done
  # Time of each method's quantize step (all grids together; this machine, one process per run, so compare
  # ratios), relative to GPTQ's when GPTQ is a row.
  echo
  echo "| method | quantize seconds (all columns) | relative to gptq |"
  echo "|---|---:|---:|"
  for m in "${methods[@]}"; do
    ratio=""
    [[ -n ${SECONDS_OF[gptq]:-} ]] && ratio=$(/usr/bin/python3 -c "print('%.2f' % (${SECONDS_OF[$m]} / ${SECONDS_OF[gptq]}))")
    echo "| $m | ${SECONDS_OF[$m]} | $ratio |"
  done
} | tee "$OUT/quality.md"
