#!/usr/bin/env bash
# Quality of the weight-quantization methods on the real MNIST MLP (../shared/data/mnist: ggml's 784-500-10
# MLP, published 98.31% top-1 on the 10,000 test images): top-1 accuracy at 2, 3 and 4 bits, groups of 32 and
# of 128 input columns, for RTN and HQQ (no data) and imatrix, AWQ, GPTQ and AutoRound (calibrated).
# The shared data has only the MNIST test set, so it is split: every calibrated method calibrates on test
# images 0..4999 (--calib-range 0:5000, 512 of them drawn with seed 0) and every figure is measured on
# images 5000..9999 (--eval-range 5000:10000), which no method sees. (The published 98.31% is over all
# 10,000; the float model's accuracy on the held-out half is the baseline column.) Both layers are
# quantized (fc2, the classifier, with --quantize-classifier) except where a method's plan says otherwise.
# Prints a Markdown table (also OUT/mnist_quality.md) and each method's quantize time relative to GPTQ's.
# Usage: bench/mnist_quality.sh [OUT]   (BUILD_DIR selects the build; METHODS and GRIDS, ';'-separated, as
# in bench/quality_table.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
MC=${BUILD_DIR:-build}/tools/mcompress/mcompress
SHARED=${MC_SHARED_DATA:-../shared/data}
OUT=${1:-bench/out/mnist_quality}
MODEL=$SHARED/mnist/mnist_mlp.state_dict
if [[ ! -f $MODEL ]]; then echo "skipped: $MODEL not found"; exit 0; fi
mkdir -p "$OUT"
EVAL=(--eval "$SHARED/mnist" --eval-range 5000:10000)
CALIB=(--calib "$SHARED/mnist" --calib-range 0:5000 --calib-samples 512 --seed 0)

field() {  # top-1 accuracy (baseline|compressed) in %, or the quantize step's seconds
  /usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1]));
if sys.argv[2] == "seconds":
    print("%.2f" % sum(s["seconds"] for s in r["steps"] if s["name"].startswith("quantize")))
else:
    m = [m for m in r["metrics"] if m["name"].startswith("top-1")][0]
    print("%.2f" % (100 * m[sys.argv[2]] if m[sys.argv[2]] <= 1 else m[sys.argv[2]]))' "$1" "$2"
}

declare -A ROW SECS
IFS=';' read -r -a methods <<<"${METHODS:-rtn;rtn --asym;hqq;imatrix;awq;gptq;autoround}"
IFS=';' read -r -a grids <<<"${GRIDS:-4 --group-size 32;4 --group-size 128;3 --group-size 32;3 --group-size 128;2 --group-size 32;2 --group-size 128}"
baseline=""
for m in "${methods[@]}"; do
  for g in "${grids[@]}"; do
    read -r bits grid <<<"$g"
    name="${m// /}-w${bits}${grid// /}"
    extra=()
    [[ $m == rtn* || $m == hqq* ]] || extra=("${CALIB[@]}")
    if [[ ! -f $OUT/$name/report.json ]]; then
      # shellcheck disable=SC2086
      "$MC" quantize "$MODEL" --arch data/mnist_mlp.yaml --method $m --bits "$bits" $grid --quantize-classifier \
        "${extra[@]}" "${EVAL[@]}" -o "$OUT/$name" -q >/dev/null
    fi
    ROW["$m|$g"]=$(field "$OUT/$name/report.json" compressed)
    SECS[$m]=$(/usr/bin/python3 -c "print('%.2f' % (${SECS[$m]:-0} + $(field "$OUT/$name/report.json" seconds)))")
    [[ -n $baseline ]] || baseline=$(field "$OUT/$name/report.json" baseline)
    echo "  $m, int$bits $grid: ${ROW["$m|$g"]}%" >&2
  done
done
{
  echo "MNIST MLP, top-1 % on test images 5000..9999 (float baseline $baseline%; higher is better)"
  echo
  echo "calibrated methods: test images 0..4999, 512 drawn (seed 0); rtn and hqq see no data"
  echo
  head="| method |"
  rule="|---|"
  for g in "${grids[@]}"; do
    read -r bits grid <<<"$g"
    head+=" int$bits ${grid/--group-size /g} |"
    rule+="---:|"
  done
  echo "$head"
  echo "$rule"
  for m in "${methods[@]}"; do
    line="| $m |"
    for g in "${grids[@]}"; do line+=" ${ROW["$m|$g"]} |"; done
    echo "$line"
  done
  echo
  echo "| method | quantize seconds (all columns) | relative to gptq |"
  echo "|---|---:|---:|"
  for m in "${methods[@]}"; do
    ratio=""
    [[ -n ${SECS[gptq]:-} ]] && ratio=$(/usr/bin/python3 -c "print('%.2f' % (${SECS[$m]} / ${SECS[gptq]}))")
    echo "| $m | ${SECS[$m]} | $ratio |"
  done
} | tee "$OUT/mnist_quality.md"
