#!/usr/bin/env bash
# The inference option onepass_tpc (session 22: long sequences' scan in one pass, a channel's states over 2 or 4
# lanes, instead of chunked; by default (-1) where a chunked launch has at least onepass_min_channels channels:
# 24,576 in session 23, 13,056 in session 24, 12,288 from session 26, 7,680 in session 34, 6,144 since session 35
# (and 1,536 up to 577 tokens), with 2 lanes, or 4 since session 33 where triton_scan._lanes_tpc picks them;
# docs/kernels.md) measured on the device in one call.
# PARTS (default all, in this order):
#   tests  its GPU tests (tests/test_triton.py -k "onepass_tpc");
#   scan   the scan kernel alone where the plan chunks (1248 / 16, 1024 / 16, 738 / 32, 512 / 32, 1248 / 1): the
#          chunked launches ({"onepass_tpc": 0}) against one pass at 2 and 4 lanes a channel, staged and not;
#   bench  Vim-Ti's graphed bf16 inference at 224 / 128, 512 / 32, 738 / 32, 1024 / 16 and 1248 / 16 under each
#          onepass_tpc setting in SETTINGS (0: chunked; -1: the default rule; 2, 4: lanes a channel; T:U also sets
#          the staged kernels' steps a pass, onepass_unroll and gluon_staged_unroll, to U, and T:U:S onepass_share
#          to S, the shared kernel's steps a pass, 0: off; a field left out or empty, as in T::S, keeps the code's
#          default), ROUNDS times in turn,
#          and DeiT-Ti (FlashAttention) once; each run checks Vim's output against the torch backend before
#          timing it.
# TEST_K picks the tests (default "onepass_tpc"), FORWARD_CONFIGS the scan's launch settings (a JSON list).
#
#   OUT=/path PYTHON=python3 bash benchmarks/device_inference_ab.sh
#   OUT=/path PYTHON=python3 PARTS="bench" SETTINGS="0 2" ROUNDS=2 bash benchmarks/device_inference_ab.sh
#   OUT=/path PYTHON=python3 PARTS="scan bench" SHAPES=1248:24,1248:32 BENCH_RES=1248,1248 BENCH_BATCH=24,32 \
#       bash benchmarks/device_inference_ab.sh   (other shapes: SHAPES for the scan, BENCH_RES / BENCH_BATCH for
#       the models, MODELS / BASELINE for which: default vim_tiny / deit_tiny)
#
# Writes $OUT/tests.txt, $OUT/scan_tpc.json, $OUT/bench_tpc<setting>_<round>.json (+ .log),
# $OUT/bench_deit.json and $OUT/gpu.txt, then packs them into $OUT/inference_ab.tgz (a device call brings back 8
# files at most; PACK=0 leaves them loose).
. "$(dirname "$0")/device_common.sh"  # strict mode, OUT, the repository root, PYTHONPATH, PY
PARTS=${PARTS:-tests scan bench}
SETTINGS=${SETTINGS:-0 -1 2}
ROUNDS=${ROUNDS:-1}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
part() { [[ " $PARTS " == *" $1 "* ]]; }
if part tests; then
  timeout "${TEST_SECONDS:-240}" "$PY" -u -m pytest -q -p no:cacheprovider tests/test_triton.py \
    -k "${TEST_K:-onepass_tpc}" > "$OUT/tests.txt" 2>&1
  echo "tests: exit $? ($(tail -1 "$OUT/tests.txt"))"
fi
LANE_CONFIGS='[{"onepass_tpc": 0}, {"onepass_tpc": 2}, {"onepass_tpc": 4}, {"onepass_tpc": 4, "onepass_cpt": 2},
               {"onepass_tpc": 2, "gluon_staged": 0}, {"onepass_tpc": 4, "gluon_staged": 0}]'
if part scan; then
  rows=(); [ "${SCAN_ROWS_FP32:-1}" = 1 ] && rows=(--rows-fp32)  # (SCAN_ROWS_FP32=0: the kernel reads bf16 rows)
  timeout "${SCAN_SECONDS:-200}" "$PY" benchmarks/scan_kernels.py --no-conv "${rows[@]}" \
    --shapes "${SHAPES:-1248:16,1024:16,738:32,512:32,1248:1}" --backward-configs '[]' \
    --forward-configs "${FORWARD_CONFIGS:-$LANE_CONFIGS}" \
    --out "$OUT/scan_tpc.json" 2>&1 | tail -40
fi
bench() {  # name, models, onepass_tpc[:unroll[:share]] (a field left out keeps the code's default)
  local tpc unroll share
  local -a env=()
  IFS=: read -r tpc unroll share <<< "$3"
  [ -n "$unroll" ] && env+=("VISION_MAMBA_TRITON_ONEPASS_UNROLL=$unroll"
                            "VISION_MAMBA_TRITON_GLUON_STAGED_UNROLL=$unroll")
  [ -n "$share" ] && env+=("VISION_MAMBA_TRITON_ONEPASS_SHARE=$share")
  env "${env[@]}" VISION_MAMBA_TRITON_ONEPASS_TPC="$tpc" timeout 150 "$PY" -m vision_mamba.cli bench \
    --device cuda --models "$2" --res "${BENCH_RES:-224,512,738,1024,1248}" --batch "${BENCH_BATCH:-128,32,32,16,16}" \
    --dtype bf16 --attn flash \
    --mode infer --graph on --max-row-time 6 --out "$OUT" --name "$1" --no-plot > "$OUT/$1.log" 2>&1
  echo "$1: exit $?"; grep -E "vim_|deit_" "$OUT/$1.log" | tail -6
}
if part bench; then
  bench bench_deit "${BASELINE:-deit_tiny}" 0
  for round in $(seq 1 "$ROUNDS"); do
    for setting in $SETTINGS; do
      bench "bench_tpc${setting//:/_}_$round" "${MODELS:-vim_tiny}" "$setting"
    done
  done
fi
if [ "${PACK:-1}" = 1 ]; then  # (only the files written here)
  cd "$OUT" && files=$(ls tests.txt scan_tpc.json gpu.txt bench_*.json bench_*.log 2>/dev/null; true)
  [ -n "$files" ] && tar czf inference_ab.tgz $files && rm -f $files
fi
