#!/usr/bin/env bash
# How long will my model take, and how much memory: wall time and peak RSS of each step on full-size
# checkpoints of real shapes (random bf16 weights written by tests/fixtures/hf_families.py with the
# published config.json, tensor names and tokenizer), on this machine.
#   bash bench/scale.sh [WORK_DIR]        (default /tmp/mcompress-bench; the 8B shape needs 16 GB of disk)
#   FAMILIES="qwen2.5-0.5b llama-3.2-1b llama-3.1-8b"   which shapes (default: these three)
#   STEPS="eval eval-bf16 rtn gguf gptq awq model-free"  which steps (default: all but gptq and awq, which
#                                                        take hours at 128x512 calibration tokens on 8B)
# Steps: eval = 2,048 WikiText-2 test tokens (window 512) with the throughput ratio against at::matmul
# measured in the same process; eval-bf16 the same with --compute bf16; rtn = W4 g128; gptq / awq = W4 g128
# with 128 x 512 calibration tokens of WikiText-2 valid; model-free = RTN W4 g128 tensor by tensor
# (quantize --model-free, compressed-tensors); gguf = GGUF q4_0 of the bf16 input.
#   CALIB_SAMPLES=128   calibration sequences of 512 tokens for gptq / awq (fewer for a quick memory check:
#                       the peak holds the hidden states of all of them, the time grows with them)
#   COMPUTE=bf16        --compute for the gptq / awq calibration (bf16: forward and Hessians at bf16 GEMM
#                       speed; f32 for the float32 path)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
BIN=$BUILD_DIR/tools/mcompress/mcompress
WORK=${1:-/tmp/mcompress-bench}
FAMILIES=${FAMILIES:-"qwen2.5-0.5b llama-3.2-1b llama-3.1-8b"}
STEPS=${STEPS:-"eval eval-bf16 rtn gguf model-free"}
DATA=${MC_DATA:-../shared/data}
CALIB_SAMPLES=${CALIB_SAMPLES:-128}
COMPUTE=${COMPUTE:-bf16}
PY=/usr/bin/python3
mkdir -p "$WORK"
[[ -f $DATA/wikitext-2/test.txt ]] || { echo "bench/scale.sh: needs $DATA/wikitext-2 (see ../shared/data/README)"; exit 0; }

# Peak RSS by sampling the process's VmRSS every 0.1 s into $WORK/rss (KiB). Not /usr/bin/time's %M: the CLI
# resets the kernel's high-water mark at each report step (report.h take_peak_rss_mib, /proc/self/clear_refs),
# so %M is the last step's peak only (1B GPTQ: 1.24 GB reported, 3.3 GB sampled). report.json's steps keep
# each step's own peak.
peak() {
  "$@" & local pid=$! mx=0 r
  while kill -0 "$pid" 2>/dev/null; do
    r=$(awk '/^VmRSS/{print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [[ -n $r && $r -gt $mx ]] && mx=$r
    sleep 0.1
  done
  wait "$pid"
  echo "$mx" > "$WORK/rss"
}

printf "| %-14s | %-10s | %9s | %9s | %s |\n" model step wall peak_RSS notes
printf "|%s|%s|%s|%s|%s|\n" "----------------" "------------" "-----------" "-----------" "------"
for f in $FAMILIES; do
  src=$WORK/$f
  [[ -f $src/config.json ]] || $PY tests/fixtures/hf_families.py --family "$f" --size full -o "$src" >/dev/null 2>&1
  for step in $STEPS; do
    out=$WORK/$f-$step
    rm -rf "$out" "$out.gguf"
    notes=""
    start=$(date +%s.%N)
    case $step in
      eval|eval-bf16)
        extra=()
        [[ $step == eval-bf16 ]] && extra=(--compute bf16)
        peak "$BIN" eval "$src" --data "$DATA/wikitext-2/test.txt" \
          --window 512 --max-tokens 2048 "${extra[@]}" > "$WORK/eval.log"
        notes="$(grep -E '^(throughput|perplexity)' "$WORK/eval.log" | sed 's/  */ /g' | paste -sd ';' -)";;
      rtn)
        peak "$BIN" quantize "$src" --method rtn --bits 4 --group-size 128 -o "$out" -q > "$WORK/step.log";;
      gptq|awq)
        peak "$BIN" quantize "$src" --method "$step" --bits 4 --group-size 128 \
          --calib "$DATA/wikitext-2/valid.txt" --calib-samples "$CALIB_SAMPLES" --calib-seqlen 512 --compute "$COMPUTE" -o "$out" -q > "$WORK/step.log"
        notes="$CALIB_SAMPLES x 512 calibration tokens, --compute $COMPUTE";;
      model-free)
        peak "$BIN" quantize --model-free "$src" --bits 4 --group-size 128 -o "$out" -q > "$WORK/step.log";;
      gguf)
        peak "$BIN" export --format gguf:q4_0 "$src" -o "$out.gguf" -q > "$WORK/step.log";;
      *) echo "unknown step $step"; exit 2;;
    esac
    t=$(echo "$(date +%s.%N) - $start" | bc)
    printf "| %-14s | %-10s | %8.1fs | %7.2fGB | %s |\n" "$f" "$step" "$t" \
      "$(echo "$(cat "$WORK/rss") / 1048576" | bc -l)" "$notes"
    rm -rf "$out" "$out.gguf"
  done
done
