#!/usr/bin/env bash
# AutoRound as the value optimizer behind GGUF Q4_K export (quantize --method autoround --autoround-kquant), on
# stories260K widened with zeros to rows of 256 (tests/fixtures/pad_llama2c.py: the same function up to the
# RMSNorm epsilon; the real stories260K rows, 64 and 172, are shorter than a Q4_K super-block). Every row is a
# GGUF file written by `mcompress export --format gguf:q4_k` and evaluated as a file (bits per byte on held-out
# TinyStories text, validation_100.txt, 128-token windows, first window of each story):
#   float -> q4_k              llama.cpp's own fit of the float weights (our port of make_qkx2_quants)
#   float -> q4_k + imatrix    the same weighted by an imatrix (`mcompress imatrix`)
#   gptq / autoround -> q4_k   int4 asym g32 packed models, their values re-fitted to Q4_K by the encoder
#   autoround --autoround-kquant -> q4_k   tuned on the Q4_K lattice itself, written block for block
# and, for the quantized models, the packed file's own figure (the report's) and its gguf:auto export (the
# embedding kept in F16, each linear layer in the type its grid maps to exactly: Q4_1 for int4 asym g32, Q4_K
# for the K-quant lattice), which shows what the re-fit costs: gguf:q4_k also stores the embedding as Q4_K.
# Calibration (imatrix, gptq, autoround): tiny-shakespeare, 128 x 128 tokens, seed 0, never the evaluation text.
# Usage: bench/autoround_kquant_quality.sh [OUT]   (BUILD_DIR selects the build; ITERS the AutoRound steps, 200)
set -euo pipefail
cd "$(dirname "$0")/.."
MC=${BUILD_DIR:-build}/tools/mcompress/mcompress
SHARED=${MC_SHARED_DATA:-../shared/data}
OUT=${1:-bench/out/autoround_kquant}
MODEL=$SHARED/stories260K/stories260K.bin
TOK=$SHARED/stories260K/tok512.bin
EVAL=$SHARED/tinystories/validation_100.txt
if [[ ! -f $MODEL ]]; then echo "skipped: $MODEL not found"; exit 0; fi
mkdir -p "$OUT"
/usr/bin/python3 tests/fixtures/pad_llama2c.py "$MODEL" "$OUT/stories256.bin"
M=$OUT/stories256.bin
CALIB=(--calib "$SHARED/tinyshakespeare/input.txt" --calib-samples 128 --calib-seqlen 128 --seed 0)
ITERS=${ITERS:-200}

bpb_of_file() {  # bits per byte of a model file read back
  "$MC" eval "$1" --data "$EVAL" --tokenizer "$TOK" --window 128 --truncate --json |
    /usr/bin/python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["result"]["bits_per_byte"])'
}
report() {  # field of a report: bpb (compressed) | seconds (quantize step)
  /usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))
if sys.argv[2] == "bpb":
    print("%.4f" % [m for m in r["metrics"] if m["name"] == "bits per byte"][0]["compressed"])
else:
    print("%.1f" % sum(s["seconds"] for s in r["steps"] if s["name"].startswith("quantize")))' "$1" "$2"
}

rows=()
float=$(bpb_of_file "$M")
"$MC" export "$M" --format gguf:q4_k -o "$OUT/float-q4_k.gguf" --tokenizer "$TOK" -q
rows+=("| float -> q4_k | - | $(bpb_of_file "$OUT/float-q4_k.gguf") | - | - |")
"$MC" imatrix "$M" --tokenizer "$TOK" "${CALIB[@]}" -o "$OUT/imatrix.gguf" >/dev/null
"$MC" export "$M" --format gguf:q4_k --imatrix "$OUT/imatrix.gguf" -o "$OUT/float-q4_k-imatrix.gguf" --tokenizer "$TOK" -q
rows+=("| float -> q4_k + imatrix | - | $(bpb_of_file "$OUT/float-q4_k-imatrix.gguf") | - | - |")
for run in "gptq" "autoround" "autoround --autoround-kquant"; do
  name=${run// /}
  # shellcheck disable=SC2086
  "$MC" quantize "$M" --method $run --bits 4 --asym --group-size 32 --autoround-iters "$ITERS" "${CALIB[@]}" \
    --eval "$EVAL" --tokenizer "$TOK" --window 128 --truncate -o "$OUT/$name" -q >/dev/null
  "$MC" export "$OUT/$name/model.safetensors" --format gguf:q4_k -o "$OUT/$name-q4_k.gguf" --tokenizer "$TOK" -q
  "$MC" export "$OUT/$name/model.safetensors" --format gguf:auto -o "$OUT/$name-auto.gguf" --tokenizer "$TOK" -q
  auto_types=$("$MC" inspect "$OUT/$name-auto.gguf" | awk '$1 ~ /^(Q[0-9]_[0-9K]|Q[0-9]_K)$/ {printf "%s%s", sep, $1; sep="+"}')
  rows+=("| $run -> q4_k | $(report "$OUT/$name/report.json" bpb) | $(bpb_of_file "$OUT/$name-q4_k.gguf") | $(bpb_of_file "$OUT/$name-auto.gguf") ($auto_types) | $(report "$OUT/$name/report.json" seconds) |")
  echo "  $run done" >&2
done
{
  echo "stories260K widened to rows of 256, bits per byte on validation_100 (float $float; lower is better); AutoRound $ITERS steps"
  echo
  echo "| model -> GGUF | packed file (report) | gguf:q4_k file | gguf:auto file (linear types) | quantize seconds |"
  echo "|---|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
} | tee "$OUT/quality.md"
