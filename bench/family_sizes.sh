#!/usr/bin/env bash
# Output size of a 4-bit model against its bf16 input, on full-size checkpoints of real shapes
# (random weights; tests/fixtures/hf_families.py writes them with the published config.json, tensor
# names, dtypes, vocabulary and tokenizer): Llama-3.2-1B and Qwen2.5-0.5B by default, more with
# FAMILIES="qwen3-0.6b llama-3.1-8b ...". For each: RTN W4 g128 (the packed layout is the same for
# every method; GPTQ/AWQ change codes, not bytes), then again with --quantize-embeddings; prints
# input bytes, output bytes, the ratio, wall time and peak RSS.
#   bash bench/family_sizes.sh [WORK_DIR]      (default /tmp/mcompress-bench; needs ~8 GB of disk)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
BIN=$BUILD_DIR/tools/mcompress/mcompress
WORK=${1:-/tmp/mcompress-bench}
FAMILIES=${FAMILIES:-"llama-3.2-1b qwen2.5-0.5b"}
PY=/usr/bin/python3
mkdir -p "$WORK"
bytes() { du -cb "$1"/*.safetensors | tail -1 | cut -f1; }
printf "%-16s %-22s %12s %12s %7s %8s %9s\n" model variant input output ratio time peak_rss
for f in $FAMILIES; do
  src=$WORK/$f
  [[ -f $src/config.json ]] || $PY tests/fixtures/hf_families.py --family "$f" --size full -o "$src" >/dev/null 2>&1
  in_b=$(bytes "$src")
  for variant in "w4g128" "w4g128+emb"; do
    out=$WORK/$f-$variant
    rm -rf "$out"
    extra=()
    [[ $variant == *emb ]] && extra=(--quantize-embeddings)
    start=$(date +%s.%N)
    /usr/bin/time -f "%M" -o "$WORK/rss" "$BIN" quantize "$src" --method rtn --bits 4 --group-size 128 \
      "${extra[@]}" -o "$out" -q
    t=$(echo "$(date +%s.%N) - $start" | bc)
    out_b=$(bytes "$out")
    printf "%-16s %-22s %12s %12s %7.3f %7.1fs %7.2fGB\n" "$f" "$variant" "$in_b" "$out_b" \
      "$(echo "$out_b / $in_b" | bc -l)" "$t" "$(echo "$(cat "$WORK/rss") / 1048576" | bc -l)"
  done
done
