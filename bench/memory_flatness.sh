#!/usr/bin/env bash
# Memory flatness of calibrated quantization: peak RSS of `mcompress quantize` on synthetic llama models
# of the same width and 4, 8, 16 blocks. Goal: peak RSS flat within 10% of the smallest model's, i.e. memory
# set by one block (plus the calibration activations), not by the whole model.
#
#   BUILD_DIR=build-mem bash bench/memory_flatness.sh
#
# Builds nothing: uses $BUILD_DIR/tools/mcompress/mcompress and $BUILD_DIR/bench/make_synthetic_llama.
# Environment (defaults): BUILD_DIR (build), BLOCKS ("4 8 16"), METHODS ("gptq rtn"), DIM (1024),
# HIDDEN (2816), VOCAB (512), HEADS (16), KV_HEADS (16), SAMPLES (32), SEQLEN (256), THREADS (0 = all),
# WORK_DIR (a fresh temp dir, removed at the end unless KEEP=1).
# Peak RSS is /usr/bin/time's "Maximum resident set size" (the kernel's VmHWM: anonymous memory plus
# resident file-backed pages, so an mmapped checkpoint counts as far as it was touched). Beside it, the
# peaks of RssAnon and RssFile sampled from /proc/PID/status every 0.1 s show which kind grows. Without
# /usr/bin/time, the sampled VmHWM is used. Always exits 0; prints FLAT or NOT FLAT per method.
set -uo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
BLOCKS=${BLOCKS:-"4 8 16"}
METHODS=${METHODS:-"gptq rtn"}
DIM=${DIM:-1024} HIDDEN=${HIDDEN:-2816} VOCAB=${VOCAB:-512} HEADS=${HEADS:-16} KV_HEADS=${KV_HEADS:-16}
SAMPLES=${SAMPLES:-32} SEQLEN=${SEQLEN:-256} THREADS=${THREADS:-0}
GOAL_PCT=10

MC=$BUILD_DIR/tools/mcompress/mcompress
GEN=$BUILD_DIR/bench/make_synthetic_llama
for exe in "$MC" "$GEN"; do
  if [[ ! -x $exe ]]; then
    echo "memory_flatness: $exe not found: build first (BUILD_DIR=$BUILD_DIR bash scripts/build.sh)"
    exit 0
  fi
done

if [[ -n ${WORK_DIR:-} ]]; then
  mkdir -p "$WORK_DIR"
  WORK=$WORK_DIR
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/mc-memflat.XXXXXX")
  [[ ${KEEP:-0} == 1 ]] || trap 'rm -rf "$WORK"' EXIT
fi
HAVE_TIME=0
[[ -x /usr/bin/time ]] && HAVE_TIME=1

kib_to_mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }

# run_measured LOG CMD...: runs CMD, sets RUN_RC, PEAK_KB (VmHWM), ANON_KB, FILE_KB (sampled peaks), WALL_S.
run_measured() {
  local log=$1; shift
  local tfile=$log.time
  local start end pid child=""
  start=$(date +%s.%N)
  if (( HAVE_TIME )); then
    /usr/bin/time -v -o "$tfile" "$@" >"$log" 2>&1 &
  else
    "$@" >"$log" 2>&1 &
  fi
  pid=$!
  ANON_KB=0 FILE_KB=0
  local hwm=0 target s a f h
  while kill -0 "$pid" 2>/dev/null; do
    target=$pid
    if (( HAVE_TIME )); then
      [[ -z $child ]] && child=$(cat /proc/"$pid"/task/*/children 2>/dev/null | awk '{ print $1; exit }')
      target=${child:-$pid}
    fi
    if s=$(cat /proc/"$target"/status 2>/dev/null); then
      a=$(awk '/^RssAnon:/ { print $2 }' <<<"$s"); f=$(awk '/^RssFile:/ { print $2 }' <<<"$s")
      h=$(awk '/^VmHWM:/ { print $2 }' <<<"$s")
      (( ${a:-0} > ANON_KB )) && ANON_KB=$a
      (( ${f:-0} > FILE_KB )) && FILE_KB=$f
      (( ${h:-0} > hwm )) && hwm=$h
    fi
    sleep 0.1
  done
  wait "$pid"
  RUN_RC=$?
  end=$(date +%s.%N)
  WALL_S=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  PEAK_KB=$hwm
  if (( HAVE_TIME )) && [[ -f $tfile ]]; then
    local k
    k=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$tfile")
    [[ -n $k ]] && PEAK_KB=$k
  fi
}

echo "memory_flatness: llama dim $DIM, hidden $HIDDEN, heads $HEADS/$KV_HEADS, vocab $VOCAB; blocks: $BLOCKS"
echo "memory_flatness: work dir $WORK; peak RSS from $([[ $HAVE_TIME == 1 ]] && echo '/usr/bin/time -v' || echo 'sampled VmHWM')"
TOKENS=$WORK/calib.u16
for b in $BLOCKS; do
  "$GEN" --blocks "$b" --dim "$DIM" --hidden "$HIDDEN" --vocab "$VOCAB" --heads "$HEADS" --kv-heads "$KV_HEADS" \
    --seed 0 -o "$WORK/llama-b$b.safetensors" --tokens "$TOKENS" --num-tokens 65536 >/dev/null ||
    { echo "memory_flatness: generating the $b-block model failed"; exit 0; }
done

declare -a REPORT
for method in $METHODS; do
  first_kb=""
  max_growth=0
  failed=0
  rows=()
  for b in $BLOCKS; do
    model=$WORK/llama-b$b.safetensors
    out=$WORK/q-$method-b$b
    log=$WORK/$method-b$b.log
    run_measured "$log" "$MC" quantize --threads "$THREADS" --method "$method" --bits 4 --group-size 128 \
      --calib "$TOKENS" --calib-samples "$SAMPLES" --calib-seqlen "$SEQLEN" "$model" -o "$out"
    size_mib=$(awk -v s="$(stat -c %s "$model")" 'BEGIN { printf "%.0f", s / 1048576 }')
    if (( RUN_RC != 0 )); then
      failed=1
      rows+=("$(printf '%-6s %6s %9s MiB   %s' "$method" "$b" "$size_mib" "FAILED (exit $RUN_RC), last lines of $log:")")
      while IFS= read -r line; do rows+=("    $line"); done < <(tail -n 5 "$log")
      continue
    fi
    [[ -z $first_kb ]] && first_kb=$PEAK_KB
    rel=$(awk -v p="$PEAK_KB" -v f="$first_kb" 'BEGIN { printf "%.2f", p / f }')
    growth=$(awk -v p="$PEAK_KB" -v f="$first_kb" 'BEGIN { printf "%.1f", 100 * (p / f - 1) }')
    max_growth=$(awk -v a="$max_growth" -v g="$growth" 'BEGIN { print (g > a ? g : a) }')
    out_mib=$(awk -v s="$(stat -c %s "$out/model.safetensors" 2>/dev/null || echo 0)" 'BEGIN { printf "%.0f", s / 1048576 }')
    rows+=("$(printf '%-6s %6s %9s MiB %9s MiB %11s MiB %7sx %9s MiB %9s MiB %8s s' "$method" "$b" "$size_mib" "$out_mib" \
      "$(kib_to_mib "$PEAK_KB")" "$rel" "$(kib_to_mib "$ANON_KB")" "$(kib_to_mib "$FILE_KB")" "$WALL_S")")
    rm -rf "$out"
  done
  echo
  printf '%-6s %6s %13s %13s %15s %8s %13s %13s %10s\n' method blocks "model file" "output file" "peak RSS" \
    "vs first" "peak anon" "peak file" "wall"
  for r in "${rows[@]}"; do echo "$r"; done
  if (( failed )); then
    verdict="UNKNOWN (a run failed)"
  elif awk -v g="$max_growth" -v goal="$GOAL_PCT" 'BEGIN { exit !(g <= goal) }'; then
    verdict="FLAT (max growth ${max_growth}% <= ${GOAL_PCT}%)"
  else
    verdict="NOT FLAT (${max_growth}% growth; goal <= ${GOAL_PCT}%)"
  fi
  echo "$method: $verdict"
  REPORT+=("$method: $verdict")
done
echo
echo "memory_flatness summary (goal: peak RSS within ${GOAL_PCT}% of the ${BLOCKS%% *}-block model's):"
for r in "${REPORT[@]}"; do echo "  $r"; done
exit 0
