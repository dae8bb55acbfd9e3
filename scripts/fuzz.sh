#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) in build-fuzz/ and runs each parser's fuzzer
# for SECONDS (default 60), as many at once as there are cores, starting from a seed corpus written
# by the project's own writers. The growing corpus is kept in fuzz-corpus/ (ignored by git), so
# repeated runs continue where the last one stopped. Exits non-zero on any finding; crash inputs
# are left in fuzz-findings/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
bash scripts/install_deps.sh
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/mcompress-ccache}
B=build-fuzz
if [[ ! -f $B/build.ninja ]]; then
  CC=clang CXX=clang++ cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMCOMPRESS_BUILD_FUZZ=ON >/dev/null
fi
ninja -C $B >/dev/null
TARGETS=(safetensors torch_zip gguf llama2c)
mkdir -p fuzz-corpus fuzz-findings
$B/tests/fuzz/fuzz_seeds fuzz-corpus/seeds >/dev/null
status=0
run_one() {
  local t=$1
  mkdir -p "fuzz-corpus/$t" "fuzz-findings/$t"
  if "$B/tests/fuzz/fuzz_$t" -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=10 \
      -artifact_prefix="fuzz-findings/$t/" -print_final_stats=1 \
      "fuzz-corpus/$t" "fuzz-corpus/seeds/$t" >"fuzz-findings/$t.log" 2>&1; then
    local execs; execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz-findings/$t.log" | grep -o '[0-9]*$' || echo "?")
    echo "[fuzz] $t: ${SECONDS_PER_TARGET}s, $execs inputs, no finding"
  else
    echo "[fuzz] $t: FINDING, see fuzz-findings/$t.log and fuzz-findings/$t/" >&2
    tail -30 "fuzz-findings/$t.log" >&2
    return 1
  fi
}
jobs_max=$(nproc)
# Run in batches of one target per core.
for ((i = 0; i < ${#TARGETS[@]}; i += jobs_max)); do
  pids=()
  for t in "${TARGETS[@]:i:jobs_max}"; do run_one "$t" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || status=1; done
done
exit $status
