#!/usr/bin/env bash
# The main job: install, build, then compress a model end to end and show how much accuracy it kept.
#  1. the project's own default model: a generated corpus + tokenizer (data/make_corpus) and a small
#     LLaMA-architecture model trained on it by `mcompress train` (cached in out/demo after the first run);
#  2. INT4 (groups of 32, symmetric fp16 scales) round-to-nearest quantization of it with evaluation
#     before/after and a report;
#  3. when ../shared/data is there, the same for the real stories260K model (INT8 g64 and INT4 g32, the INT4
#     model exported to GGUF and read back, calibrated
#     INT3, W8A8, SparseGPT + recovery fine-tuning by distillation) and for the MNIST MLP (INT8 per channel,
#     a distilled 784-100-10 student).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
BUILD_DIR=${BUILD_DIR:-build}
MC="$BUILD_DIR/tools/mcompress/mcompress"
OUT=${OUT:-out/demo}
SHARED=${MC_SHARED_DATA:-../shared/data}
mkdir -p "$OUT"
start=$(date +%s)

echo
echo "== 1. the default model (generated corpus, trained here; cached) =="
if [[ ! -f "$OUT/corpus/tokenizer.bin" ]]; then
  "$BUILD_DIR/data/make_corpus" "$OUT/corpus"
fi
if [[ ! -f "$OUT/default-model/model.bin" ]]; then
  mkdir -p "$OUT/default-model"
  cp "$OUT/corpus/tokenizer.bin" "$OUT/default-model/tokenizer.bin"
  "$MC" train --data "$OUT/corpus/train.txt" --valid "$OUT/corpus/valid.txt" \
    --tokenizer "$OUT/corpus/tokenizer.bin" --dim 128 --layers 4 --heads 4 --kv-heads 2 \
    --steps ${DEMO_TRAIN_STEPS:-400} --batch 16 --seq-len 128 --eval-every 100 --seed 1 \
    -o "$OUT/default-model/model.bin"
else
  echo "using the cached $OUT/default-model/model.bin (delete it to train again)"
fi
"$MC" generate "$OUT/default-model/model.bin" --prompt "Once upon a time" --max-tokens 60 --seed 1

echo
echo "== 2. INT4 g32 round-to-nearest quantization of the default model =="
"$MC" quantize "$OUT/default-model/model.bin" --method rtn --bits 4 --group-size 32 --sym \
  --calib "$OUT/corpus/train.txt" --eval "$OUT/corpus/valid.txt" --window 128 -o "$OUT/default-w4g32"

if [[ -f "$SHARED/stories260K/stories260K.bin" ]]; then
  echo
  echo "== 3. the real stories260K model (published: 0.8132 bits per byte) =="
  EVAL=(--eval "$SHARED/tinystories/validation_100.txt" --window 128 --truncate)
  for spec in "8 64" "4 32"; do
    set -- $spec
    echo "-- INT$1, groups of $2 --"
    "$MC" quantize "$SHARED/stories260K/stories260K.bin" --bits "$1" --group-size "$2" "${EVAL[@]}" \
      --calib "$SHARED/tinyshakespeare/input.txt" -o "$OUT/stories260K-w$1g$2"
  done
  echo "-- the INT4 model exported for llama.cpp: GGUF, its codes carried over exactly as Q4_0 blocks, read back --"
  "$MC" export --format gguf:auto "$OUT/stories260K-w4g32/model.safetensors" -o "$OUT/stories260K-w4g32.gguf" \
    --tokenizer "$SHARED/stories260K/tok512.bin" "${EVAL[@]}" -q
  # Calibrated methods at 3 bits, where plain rounding breaks down; calibration text: tiny-shakespeare
  # (a different text from the evaluation's TinyStories). RTN at the same setting first, for comparison.
  "$MC" quantize "$SHARED/stories260K/stories260K.bin" --method rtn --bits 3 --group-size 32 "${EVAL[@]}" \
    -o "$OUT/stories260K-w3g32-rtn" -q >/dev/null
  rtn3=$(/usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1]));
print("%.4f" % [m for m in r["metrics"] if m["name"]=="bits per byte"][0]["compressed"])' "$OUT/stories260K-w3g32-rtn/report.json")
  for method in gptq awq; do
    echo "-- INT3, groups of 32, $method (RTN at this setting, measured just now: $rtn3 bits per byte) --"
    "$MC" quantize "$SHARED/stories260K/stories260K.bin" --method $method --bits 3 --group-size 32 \
      --calib "$SHARED/tinyshakespeare/input.txt" "${EVAL[@]}" -o "$OUT/stories260K-w3g32-$method"
  done
  echo "-- W8A8 SmoothQuant (int8 weights per channel, int8 activations per token, real int8 matmuls) --"
  "$MC" quantize "$SHARED/stories260K/stories260K.bin" --method smoothquant \
    --calib "$SHARED/tinyshakespeare/input.txt" "${EVAL[@]}" -o "$OUT/stories260K-w8a8"
  echo "-- SparseGPT 50% unstructured, survivors INT4 g32 in the same pass (sparse packed file) --"
  "$MC" prune "$SHARED/stories260K/stories260K.bin" --method sparsegpt --sparsity 0.5 --bits 4 --group-size 32 \
    --calib "$SHARED/tinyshakespeare/input.txt" "${EVAL[@]}" -o "$OUT/stories260K-sparse50-w4"
  echo "-- recovery fine-tuning of that model: distilled from the float model on 1000 stories sampled from it, --"
  echo "-- its masks and INT4 grids kept (--resume: a second demo run reuses the finished training) --"
  "$MC" distill --teacher "$SHARED/stories260K/stories260K.bin" --student "$OUT/stories260K-sparse50-w4/model.safetensors" \
    --generate 1000 --gen-length 129 --loss kl=1,T=1 --lr 5e-4 --steps 200 --batch 16 --seq-len 128 --eval-every 100 \
    "${EVAL[@]}" --resume -o "$OUT/stories260K-sparse50-w4-recovered"
  echo
  echo "== 4. the MNIST MLP (published: 98.31% top-1), INT8 per output channel =="
  "$MC" quantize "$SHARED/mnist/mnist_mlp.state_dict" --arch data/mnist_mlp.yaml --bits 8 --per-channel \
    --eval "$SHARED/mnist" -o "$OUT/mnist-w8"
  echo "-- a 784-100-10 student (the teacher's 100 most important hidden channels, then distilled on test --"
  echo "-- images 0..7999 and mixups of them; evaluated on 8000..9999) --"
  "$MC" distill --teacher "$SHARED/mnist/mnist_mlp.state_dict" --arch data/mnist_mlp.yaml --student-init prune:hidden=100 \
    --data "$SHARED/mnist" --data-range 0:8000 --generate 16000 --eval "$SHARED/mnist" --eval-range 8000:10000 \
    --loss kl=1,T=300 --lr 1e-3 --steps 1500 --batch 128 --eval-every 500 --resume -o "$OUT/mnist-student"
else
  echo "(skipped the real models: $SHARED not found)"
fi
echo
echo "done in $(( $(date +%s) - start )) s; reports: $OUT/*/report.md"
