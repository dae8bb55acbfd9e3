#!/usr/bin/env bash
# EoRA (quantize --eora RANK) on the real stories260K model (../shared/data): bits per byte on held-out
# TinyStories text (validation_100.txt, 128-token windows, first window of each story) of GPTQ at int3 / int4
# g32 and int3 per channel, alone and with a rank 8 / 16 adapter; the adapter's size in bits per adapted
# weight (float32 on top of the model file's). GPTQ and EoRA are calibrated on tiny-shakespeare (128 x 128
# tokens, seed 0), never on the evaluation text. Prints a Markdown table (and OUT/eora.md).
# stories260K is tiny (dim 64, hidden 172): a rank-16 adapter is a large fraction of each layer there, so
# compare rows at equal total bits, not equal rank. Usage: bench/eora_quality.sh [OUT] (BUILD_DIR: the build)
set -euo pipefail
cd "$(dirname "$0")/.."
MC=${BUILD_DIR:-build}/tools/mcompress/mcompress
SHARED=${MC_SHARED_DATA:-../shared/data}
OUT=${1:-bench/out/eora}
MODEL=$SHARED/stories260K/stories260K.bin
if [[ ! -f $MODEL ]]; then echo "skipped: $MODEL not found"; exit 0; fi
mkdir -p "$OUT"
EVAL=(--eval "$SHARED/tinystories/validation_100.txt" --window 128 --truncate)
CALIB=(--calib "$SHARED/tinyshakespeare/input.txt" --calib-samples 128 --calib-seqlen 128 --seed 0)
row() {  # report -> "bpb file | bpb with adapter | model bits/weight | adapter bits/weight"
  /usr/bin/python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m = {x["name"]: x for x in r["metrics"]}
base = m["bits per byte"]["baseline"]
plain = m["bits per byte"]["compressed"]
fixed = next((x["compressed"] for n, x in m.items() if n.startswith("bits per byte (with the EoRA")), None)
bits = sum(l["bits_per_weight"] * l["params"] for l in r["layers"]) / sum(l["params"] for l in r["layers"])
ad = r["settings"].get("EoRA adapter", "")
ad_bits = float(ad.split(": ")[1].split(" ")[0]) if ad else 0.0
print(f"{base:.4f}|{plain:.4f}|{'' if fixed is None else f'{fixed:.4f}'}|{bits:.3f}|{ad_bits:.3f}")
PY
}
{
  echo "stories260K GPTQ + EoRA, bits per byte on validation_100 (lower is better); calibration: tiny-shakespeare 128 x 128, seed 0"
  echo
  echo "| grid | rank | bpb, model file alone | bpb with the adapter | model bits/weight | + adapter bits/weight |"
  echo "|---|---|---|---|---|---|"
  for grid in "3 --group-size 32" "3 --per-channel" "4 --group-size 32"; do
    for rank in 0 8 16; do
      dir=$OUT/$(echo "$grid" | tr -d ' -')_r$rank
      # shellcheck disable=SC2086
      "$MC" quantize "$MODEL" --method gptq --bits $grid --eora "$rank" "${CALIB[@]}" "${EVAL[@]}" -o "$dir" -q
      IFS='|' read -r base plain fixed bits adb <<<"$(row "$dir/report.json")"
      echo "| int$grid | $rank | $plain | ${fixed:-} | $bits | $adb |" | sed 's/ --group-size / g/; s/ --per-channel/ per-channel/'
    done
  done
  echo
  echo "float baseline: $base bits per byte"
} | tee "$OUT/eora.md"
