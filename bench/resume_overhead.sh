#!/usr/bin/env bash
# Resume at block granularity, measured: an uninterrupted `mcompress quantize` against the same run
# killed with SIGKILL once block K is journaled and then started again. Prints the wall times, the
# extra time the interruption cost, the journal's size, and whether the outputs are byte-identical.
# Usage: bench/resume_overhead.sh [OUT_DIR] [BLOCK] [extra quantize options...]
# (default: stories260K, GPTQ int4 g32, 128 x 128 calibration tokens from validation_100, block 2 of 5;
# MODEL=... CALIB=... take another model, e.g. one from build/bench/make_synthetic_llama)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/out/resume}; BLOCK=${2:-2}; shift 2 || true
BIN=${MCOMPRESS_BIN:-build/tools/mcompress/mcompress}
DATA=${MC_SHARED_DATA:-../shared/data}
MODEL=${MODEL:-$DATA/stories260K/stories260K.bin}
CALIB=${CALIB:-$DATA/tinystories/validation_100.txt}
[[ -f $MODEL ]] || { echo "stories260K not found under $DATA: skipped"; exit 0; }
OPTS=(--method gptq --bits 4 --group-size 32 "$@")
[[ $# -gt 0 ]] && OPTS=("$@")
COMMON=("$MODEL" --calib "$CALIB" -q)
rm -rf "$OUT" && mkdir -p "$OUT"
now() { date +%s.%N; }
t0=$(now); "$BIN" quantize "${OPTS[@]}" "${COMMON[@]}" -o "$OUT/full"; t1=$(now)
"$BIN" quantize "${OPTS[@]}" "${COMMON[@]}" -o "$OUT/part" & pid=$!
marker=$OUT/part/.resume/quantize-block-$BLOCK.safetensors
while kill -0 $pid 2>/dev/null && [[ ! -f $marker ]]; do sleep 0.005; done
journal=$(du -sk "$OUT/part/.resume" | cut -f1)
kill -9 $pid 2>/dev/null && wait $pid 2>/dev/null || true; t2=$(now)
"$BIN" quantize "${OPTS[@]}" "${COMMON[@]}" -o "$OUT/part"; t3=$(now)
python3 - "$t0" "$t1" "$t2" "$t3" "$journal" "$BLOCK" <<'PY'
import sys
t0, t1, t2, t3, kib, block = map(float, sys.argv[1:])
full, killed, rerun = t1 - t0, t2 - t1, t3 - t2
print(f"uninterrupted {full:.2f} s; killed after block {int(block)} at {killed:.2f} s, rerun {rerun:.2f} s; "
      f"extra {killed + rerun - full:+.2f} s ({(killed + rerun) / full:.2f}x); journal {kib / 1024:.1f} MiB at the kill")
PY
cmp "$OUT/full/model.safetensors" "$OUT/part/model.safetensors" && echo "outputs byte-identical"
