#!/usr/bin/env bash
# Distillation on the real models (../shared/data), the figures of the distillation issue:
#  1. stories260K teacher -> two students, each trained for the same steps on the same data twice:
#     with the teacher (forward KL, T 1) and without it (cross-entropy on the tokens alone).
#     Data: sequences sampled from the teacher (data-free: the only TinyStories text we have is the
#     evaluation set). Students: every 2nd block of the teacher (3 of 5 blocks, init from its weights)
#     and a config student of about a quarter of the parameters (dim 32, 4 blocks, random init).
#  2. Recovery fine-tuning of 2:4 SparseGPT and 3-bit GPTQ (g32) stories260K: fraction of the bits
#     per byte gap to the float model closed, masks and grids kept.
#  3. MNIST: a 784-100-10 student of the 784-500-10 MLP teacher, initialised with the teacher's 100
#     most important hidden channels, trained on test images 0..7999, evaluated on 8000..9999.
# Held-out: tinystories/validation_100.txt (never trained on), 128-token windows, first window per
# story. Prints a Markdown table (and writes it to OUT/distill.md).
# Usage: bench/distill_table.sh [OUT] [STEPS]   (BUILD_DIR selects the build, default build)
set -euo pipefail
cd "$(dirname "$0")/.."
MC=${MC_BIN:-${BUILD_DIR:-build}/tools/mcompress/mcompress}
SHARED=${MC_SHARED_DATA:-../shared/data}
OUT=${1:-bench/out/distill}
STEPS=${2:-1200}
MODEL=$SHARED/stories260K/stories260K.bin
if [[ ! -f $MODEL ]]; then echo "skipped: $MODEL not found"; exit 0; fi
mkdir -p "$OUT"
EVAL=(--eval "$SHARED/tinystories/validation_100.txt" --window 128 --truncate)
CALIB=(--calib "$SHARED/tinyshakespeare/input.txt" --calib-samples 128 --calib-seqlen 128 --seed 0)
TRAIN=(--steps "$STEPS" --batch 32 --seq-len 128 --eval-every 200 --checkpoint-every 200 -q)

metric() {  # report.json, metric name, column
  /usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1]));
print("%.4f" % [m for m in r["metrics"] if m["name"]==sys.argv[2]][0][sys.argv[3]])' "$1" "$2" "$3"
}
setting() {
  /usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["settings"].get(sys.argv[2], ""))' "$1" "$2"
}
run() {  # name, args...: skipped when its report exists
  local name=$1; shift
  if [[ ! -f $OUT/$name/report.json ]]; then
    local t0=$SECONDS
    "$MC" distill "$@" -o "$OUT/$name" "${EVAL[@]}"
    echo "  $name: $((SECONDS - t0)) s" >&2
  fi
}

# Teacher samples, shared by every language-model run (4000 sequences of 257 tokens).
if [[ ! -f $OUT/generated.u32 ]]; then
  run gen --teacher "$MODEL" --student-init prune:every=1 --generate 4000 --gen-length 257 --steps 1 -q
  cp "$OUT/gen/generated.u32" "$OUT/generated.u32"
fi
DATA=(--data "$OUT/generated.u32" --tokens-u32)
cat > "$OUT/quarter.yaml" <<'EOF'
dim: 32
n_layers: 4
n_heads: 4
n_kv_heads: 2
hidden_dim: 96
EOF
run half-kd --teacher "$MODEL" --student-init prune:every=2 "${DATA[@]}" --loss kl=1,T=1 --lr 1e-3 "${TRAIN[@]}"
run half-ce --teacher "$MODEL" --student-init prune:every=2 "${DATA[@]}" --loss ce=1 --lr 1e-3 "${TRAIN[@]}"
run quarter-kd --teacher "$MODEL" --student-config "$OUT/quarter.yaml" "${DATA[@]}" --loss kl=1,T=1 --lr 3e-3 "${TRAIN[@]}"
run quarter-ce --teacher "$MODEL" --student-config "$OUT/quarter.yaml" "${DATA[@]}" --loss ce=1 --lr 3e-3 "${TRAIN[@]}"

# Compressed models to recover.
[[ -f $OUT/sgpt24/model.safetensors ]] || "$MC" prune "$MODEL" --method sparsegpt --pattern 2:4 "${CALIB[@]}" -o "$OUT/sgpt24" -q
[[ -f $OUT/gptq3/model.safetensors ]] || "$MC" quantize "$MODEL" --method gptq --bits 3 --group-size 32 "${CALIB[@]}" -o "$OUT/gptq3" -q
RSTEPS=$((STEPS / 2))
run sgpt24-recovered --teacher "$MODEL" --student "$OUT/sgpt24/model.safetensors" "${DATA[@]}" --loss kl=1,T=1 --lr 5e-4 \
  --steps "$RSTEPS" --batch 32 --seq-len 128 --eval-every 200 --checkpoint-every 200 -q
run gptq3-recovered --teacher "$MODEL" --student "$OUT/gptq3/model.safetensors" "${DATA[@]}" --loss kl=1,T=1 --lr 3e-4 \
  --steps "$RSTEPS" --batch 32 --seq-len 128 --eval-every 200 --checkpoint-every 200 -q

# MNIST.
MNIST=$SHARED/mnist
if [[ ! -f $OUT/mnist/report.json ]]; then
  "$MC" distill --teacher "$MNIST/mnist_mlp.state_dict" --arch data/mnist_mlp.yaml --student-init prune:hidden=100 \
    --data "$MNIST" --data-range 0:8000 --generate 16000 --eval "$MNIST" --eval-range 8000:10000 \
    --loss kl=1,T=300 --lr 1e-3 --steps 3000 --batch 128 --eval-every 500 --checkpoint-every 1000 -o "$OUT/mnist" -q
fi

T=$OUT/distill.md
{
  echo "| student | params | with teacher (KD) | without teacher (CE) | teacher |"
  echo "|---|---:|---:|---:|---:|"
  for s in half quarter; do
    kd=$OUT/$s-kd/report.json ce=$OUT/$s-ce/report.json
    echo "| $s | $(setting "$kd" parameters | sed 's/ teacher, /\//; s/ student//') | $(metric "$kd" "bits per byte" compressed) | $(metric "$ce" "bits per byte" compressed) | $(metric "$kd" "bits per byte" baseline) |"
  done
  echo
  echo "| recovery | before | after | float | gap closed |"
  echo "|---|---:|---:|---:|---:|"
  for s in sgpt24 gptq3; do
    r=$OUT/$s-recovered/report.json
    echo "| $s | $(metric "$r" "bits per byte (student before training)" compressed) | $(metric "$r" "bits per byte" compressed) | $(metric "$r" "bits per byte" baseline) | $(setting "$r" "gap to the teacher closed") |"
  done
  echo
  r=$OUT/mnist/report.json
  echo "MNIST 784-100-10 student (train 0..7999, held-out 8000..9999): top-1 $(metric "$r" "top-1 accuracy" compressed) (teacher $(metric "$r" "top-1 accuracy" baseline)), $(setting "$r" parameters)"
} | tee "$T"
