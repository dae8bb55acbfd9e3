#!/usr/bin/env bash
# AutoRound against the other weight methods on the real stories260K model (../shared/data): bits per byte
# on held-out TinyStories text (validation_100.txt, 128-token windows, first window of each story) at 4, 3
# and 2 bits, groups of 32 and 128, for RTN and HQQ (no data), imatrix, AWQ, GPTQ and AutoRound
# (symmetric and asymmetric), all calibrated on 128 x 128 tokens of tiny-shakespeare (seed 0), never on
# the evaluation text; then each method's quantize time relative to GPTQ's. stories260K's rows are 64
# (dim) or 172 (hidden) columns long, so g128 is one group (or 128 + 44) per row. Prints quality_table.sh's
# Markdown tables (OUT/quality.md). Usage: bench/autoround_quality.sh [OUT]   (BUILD_DIR: the build)
set -euo pipefail
cd "$(dirname "$0")/.."
METHODS="${METHODS:-rtn;hqq;imatrix;awq;gptq;autoround;autoround --asym}" \
  GRIDS="${GRIDS:-4 --group-size 32;4 --group-size 128;3 --group-size 32;3 --group-size 128;2 --group-size 32;2 --group-size 128}" \
  exec bash bench/quality_table.sh "${1:-bench/out/autoround}"
