#!/usr/bin/env bash
# Byte-identity of outputs across a refactor: runs a fixed set of jobs on the real models in
# ../shared/data (the quality table's 20 quantize settings, the other quantize methods and options,
# every prune method, MNIST, every recipe but distillation's) with the given mcompress binary and writes
# OUT/manifest.txt: per job the sha256 of model.safetensors and the report's metric values.
# Run it with the old and the new binary and diff the manifests: the redesign must change no number.
#   bench/identity_check.sh build/tools/mcompress/mcompress OUT [JOBS...]   (JOBS: name filter, default all)
set -uo pipefail
cd "$(dirname "$0")/.."
MC=$(realpath "$1"); OUT=$2; shift 2
FILTER=${1:-}
S=${MC_SHARED_DATA:-../shared/data}
M=$S/stories260K/stories260K.bin
if [[ ! -f $M ]]; then echo "skipped: $M not found"; exit 0; fi
mkdir -p "$OUT"
EVAL=(--eval "$S/tinystories/validation_100.txt" --window 128 --truncate)
CAL=(--calib "$S/tinyshakespeare/input.txt" --calib-samples 128 --calib-seqlen 128 --seed 0)
SMALL=(--calib "$S/tinyshakespeare/input.txt" --calib-samples 32 --calib-seqlen 128 --seed 0)
MN=(--arch data/mnist_mlp.yaml)
MNM=$S/mnist/mnist_mlp.state_dict
declare -a JOBS=()
for m in rtn imatrix awq gptq "gptq --act-order"; do
  for g in "4 --group-size 32" "4 --per-channel" "3 --group-size 32" "3 --per-channel"; do
    read -r bits grid <<<"$g"
    extra=""; [[ $m == rtn ]] || extra="CAL"
    JOBS+=("q-${m// /}-w${bits}${grid// /}|quantize $M --method $m --bits $bits $grid|$extra")
  done
done
JOBS+=("q-smoothquant|quantize $M --method smoothquant|CAL")
JOBS+=("q-gptq-mixed|quantize $M --method gptq --bits 4 --target-bpw 3.5|SMALL")
JOBS+=("q-gptq-trueseq-asym|quantize $M --method gptq --bits 4 --group-size 16 --asym --true-sequential --mse-clip|SMALL")
JOBS+=("q-rtn-emb-override|quantize $M --method rtn --bits 4 --quantize-embeddings --override layers.0.*:bits=8,per-channel --ignore *.w2|")
JOBS+=("q-awq-asym-g64|quantize $M --method awq --bits 4 --group-size 64 --asym|SMALL")
JOBS+=("p-sparsegpt50|prune $M --method sparsegpt --sparsity 0.5|SMALL")
JOBS+=("p-sparsegpt24-w4|prune $M --method sparsegpt --pattern 2:4 --bits 4|SMALL")
JOBS+=("p-wanda-owl|prune $M --method wanda --sparsity 0.5 --distribution owl|SMALL")
JOBS+=("p-magnitude-global|prune $M --method magnitude --sparsity 0.4 --distribution global|SMALL")
JOBS+=("p-wanda-dense|prune $M --method wanda --sparsity 0.5 --storage dense --true-sequential|SMALL")
JOBS+=("p-structured|prune $M --structured ffn=0.25,heads=0.25|SMALL")
JOBS+=("mnist-q-gptq|quantize $MNM ${MN[*]} --method gptq --bits 4 --group-size 32 --calib $S/mnist --calib-samples 256|MNIST")
JOBS+=("mnist-q-rtn8|quantize $MNM ${MN[*]} --method rtn --bits 8 --per-channel|MNIST")
JOBS+=("mnist-p-sparsegpt|prune $MNM ${MN[*]} --method sparsegpt --sparsity 0.5 --calib $S/mnist --calib-samples 256|MNIST")
for r in demo sparse-2of4-w4 w3-mixed-precision w4-awq w4-g128-gptq w8a8-smoothquant; do
  JOBS+=("r-$r|run recipes/$r.yaml --model $M --calib $S/tinyshakespeare/input.txt|RUN")
done

: > "$OUT/manifest.txt"
for j in "${JOBS[@]}"; do
  IFS='|' read -r name cmd extra <<<"$j"
  [[ -z $FILTER || $name == *$FILTER* ]] || continue
  # shellcheck disable=SC2206
  args=($cmd)
  case $extra in
    CAL) args+=("${CAL[@]}" "${EVAL[@]}") ;;
    SMALL) args+=("${SMALL[@]}" "${EVAL[@]}") ;;
    MNIST) args+=(--eval "$S/mnist") ;;
    RUN) args+=("${EVAL[@]}") ;;
    *) args+=("${EVAL[@]}") ;;
  esac
  rm -rf "${OUT:?}/$name"
  "$MC" "${args[@]}" -o "$OUT/$name" -q --threads 2 >"$OUT/$name.log" 2>&1
  rc=$?
  if [[ $rc -ne 0 && $rc -ne 3 ]]; then  # 3: a recipe's gate missed, the outputs are still there
    echo "$name FAILED: $(tail -1 "$OUT/$name.log")" | tee -a "$OUT/manifest.txt"; continue
  fi
  h=$(sha256sum "$OUT/$name/model.safetensors" | cut -c1-16)
  metrics=$(/usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1]));
print(" ".join("%s=%r/%r" % (m["name"].replace(" ","_"), m.get("baseline"), m.get("compressed")) for m in r["metrics"]))' "$OUT/$name/report.json")
  echo "$name $h $metrics" | tee -a "$OUT/manifest.txt"
done
