#!/usr/bin/env bash
# GGUF low-bit types on the real stories260K model (../shared/data): bits per byte on held-out TinyStories text
# (validation_100.txt, 128-token windows, first window of each story) of the exported file read back, and the
# bits per weight the file stores for the linear layers (2-D weights but the embedding), for q4_0 (the
# reference), q2_k, q3_k, iq4_nl, iq4_xs and q4_k, each fitted to the float model's weights with plain squared
# error and with an imatrix (`mcompress imatrix`, calibrated on tiny-shakespeare, 128 x 128 tokens, seed 0 —
# never the evaluation text). stories260K's rows (64, 172) are shorter than a 256-value super-block, so the
# file holds what llama.cpp's fallbacks give (Q2_K/Q3_K -> Q4_0, IQ4_XS -> IQ4_NL, Q4_K -> Q5_0, and F16 for
# ffn_down, whose 172 columns are not a multiple of 32): the "holds" column says so. The second table is the
# same model widened with zeros to rows of 256 (tests/fixtures/pad_llama2c.py; the same function up to the
# RMSNorm epsilon), where every linear weight really is of the type asked for; its bits per weight count the
# zeros too (each 256-row holds 64 or 172 real values), so only its bits per byte compare with the first table.
# Usage: bench/gguf_lowbit_quality.sh [OUT]   (BUILD_DIR selects the build, default build)
set -euo pipefail
cd "$(dirname "$0")/.."
MC=${BUILD_DIR:-build}/tools/mcompress/mcompress
SHARED=${MC_SHARED_DATA:-../shared/data}
OUT=${1:-bench/out/gguf_lowbit}
MODEL=$SHARED/stories260K/stories260K.bin
TOK=$SHARED/stories260K/tok512.bin
EVAL=$SHARED/tinystories/validation_100.txt
CALIB=$SHARED/tinyshakespeare/input.txt
if [[ ! -f $MODEL ]]; then echo "skipped: $MODEL not found"; exit 0; fi
mkdir -p "$OUT"
/usr/bin/python3 tests/fixtures/pad_llama2c.py "$MODEL" "$OUT/stories256.bin"
row() {  # model, type, imatrix file or "": one line "type fit JSON" of the export's result
  local m=$1 t=$2 im=$3 tag=plain
  [[ -n $im ]] && tag=imatrix
  printf '%s %s ' "$t" "$tag"
  "$MC" export --format "gguf:$t" "$m" -o "$OUT/$(basename "$m" .bin)-$t-$tag.gguf" --tokenizer "$TOK" \
    ${im:+--imatrix "$im"} --eval "$EVAL" --truncate -q --log-json | grep '"result"' | tail -1
}
for m in "$MODEL" "$OUT/stories256.bin"; do
  name=$(basename "$m" .bin)
  "$MC" imatrix "$m" --tokenizer "$TOK" --calib "$CALIB" --calib-samples 128 --calib-seqlen 128 \
    -o "$OUT/$name.imatrix.gguf" >&2
  for t in q4_0 q2_k q3_k iq4_nl iq4_xs q4_k; do
    row "$m" "$t" ""
    [[ $t != q4_0 ]] && row "$m" "$t" "$OUT/$name.imatrix.gguf"
  done >"$OUT/$name.rows.txt"
  echo
  echo "$name"
  echo
  /usr/bin/python3 - "$OUT/$name.rows.txt" <<'PY'
import json, sys
print("| --format | fit | holds (linear layers) | bits/weight (linear) | file bytes | bits per byte | float |")
print("|---|---|---|---|---|---|---|")
for line in open(sys.argv[1]):
    t, tag, js = line.split(" ", 2)
    ev = json.loads(js)
    r = ev if "tensors" in ev else json.loads(ev.get("fields", "{}")) if isinstance(ev.get("fields"), str) else ev.get("fields", ev)
    lin = [x for x in r["tensors"] if x["name"].startswith("blk.") and "norm" not in x["name"]]
    holds = sorted({x["type"] for x in lin})
    bpw = 8 * sum(x["bytes"] for x in lin) / sum(x["params"] for x in lin)
    m = next(v for k, v in r["metrics"].items() if "byte" in k)
    print(f"| gguf:{t} | {tag} | {', '.join(holds)} | {bpw:.3f} | {r['bytes_after']} | {m['after']:.4f} | {m['before']:.4f} |")
PY
done | tee "$OUT/quality.md"
