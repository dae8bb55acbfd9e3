#!/usr/bin/env bash
# Hadamard rotations (quantize --rotate, QuaRot-style with fixed Hadamards) and quantized activations
# (--act-bits) on the real stories260K model (../shared/data): bits per byte on held-out TinyStories text
# (validation_100.txt, 128-token windows, first window of each story) for RTN and GPTQ at int4 g32
# (symmetric, fp16 scales), weights only (W4), W4A8 and W4A4 (per-token dynamic symmetric inputs of every
# quantized linear) and the FP activation formats (--act-format fp8 | mxfp4 | nvfp4, dynamic, simulated),
# each without rotation, with --rotate hadamard (R1 + R2, offline) and with
# --rotate hadamard-online (+ R4 on down_proj's input). GPTQ calibrates on tiny-shakespeare (128 x 128
# tokens, seed 0), never on the evaluation text; RTN reads no calibration data. Also the rotation pre-pass's
# time (the report's "rotate" step). Prints a Markdown table (also OUT/rotation_quality.md).
# Usage: bench/rotation_quality.sh [OUT]   (BUILD_DIR selects the build, default build; ACTS, space-separated,
# replaces the activation rows: none, a bit count for int, or an --act-format name)
set -euo pipefail
cd "$(dirname "$0")/.."
MC=${BUILD_DIR:-build}/tools/mcompress/mcompress
SHARED=${MC_SHARED_DATA:-../shared/data}
OUT=${1:-bench/out/rotation_quality}
MODEL=$SHARED/stories260K/stories260K.bin
if [[ ! -f $MODEL ]]; then echo "skipped: $MODEL not found"; exit 0; fi
mkdir -p "$OUT"
EVAL=(--eval "$SHARED/tinystories/validation_100.txt" --window 128 --truncate)
CALIB=(--calib "$SHARED/tinyshakespeare/input.txt" --calib-samples 128 --calib-seqlen 128 --seed 0)

field() {  # bits per byte (baseline|compressed), or the rotate step's seconds
  /usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1]));
if sys.argv[2] == "rotate":
    s = [x["seconds"] for x in r["steps"] if x["name"].startswith("rotate")]; print("%.3f" % s[0] if s else "-")
else:
    print("%.4f" % [m for m in r["metrics"] if m["name"] == "bits per byte"][0][sys.argv[2]])' "$1" "$2"
}

act_label() {  # none -> "", 8 -> "A8", nvfp4 -> " A-nvfp4"
  case $1 in
    none) ;;
    [0-9]) echo "A$1" ;;
    *) echo " A-$1" ;;
  esac
}

rows=()
times=()
for method in rtn gptq; do
  calib=()
  [[ $method == gptq ]] && calib=("${CALIB[@]}")
  for act in ${ACTS:-none 8 4 fp8 mxfp4 nvfp4}; do
    act_opt=()
    case $act in
      none) ;;
      [0-9]) act_opt=(--act-bits "$act") ;;
      *) act_opt=(--act-format "$act") ;;
    esac
    cells=""
    for rot in none hadamard hadamard-online; do
      dir="$OUT/$method-a$act-$rot"
      "$MC" quantize "$MODEL" --method "$method" --bits 4 --group-size 32 "${act_opt[@]}" --rotate "$rot" \
        "${calib[@]}" "${EVAL[@]}" -o "$dir" -q >/dev/null
      bpb=$(field "$dir/report.json" compressed)
      [[ -n ${baseline:-} ]] || baseline=$(field "$dir/report.json" baseline)
      [[ $rot != none ]] && times+=("$(field "$dir/report.json" rotate)")
      cells+=" $bpb |"
      echo "  $method W4$(act_label "$act") rotate $rot: $bpb" >&2
    done
    rows+=("| $method W4$(act_label "$act") g32 |$cells")
  done
done
{
  echo "stories260K, bits per byte on validation_100 (lower is better; float32 $baseline); int4 g32 symmetric weights"
  echo
  echo "| method | no rotation | --rotate hadamard | --rotate hadamard-online |"
  echo "|---|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "rotation pre-pass (report step \"rotate\"), seconds per run: ${times[*]}"
} | tee "$OUT/rotation_quality.md"
