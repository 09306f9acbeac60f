#!/usr/bin/env bash
# Session 22's two inference options, off by default until this measures them (docs/kernels.md, "Session 22"), on
# the device in one call:
#   - onepass_tpc: long sequences' scan in one pass, a channel's states over 2 or 4 lanes, instead of chunked;
#   - conv_xproj: the conv and x_proj in one kernel.
# PARTS (default all, in this order):
#   tests  their GPU tests (tests/test_triton.py -k "onepass_tpc or conv_xproj");
#   scan   the scan kernel alone where the plan chunks (1248 / 16, 1024 / 16, 738 / 32, 512 / 32, 1248 / 1): the
#          chunked launches ({}) against one pass at 2 and 4 lanes a channel, staged and not;
#   conv   the conv + x_proj kernel against the conv kernel and a batched matmul (benchmarks/conv_xproj_bench.py);
#   bench  Vim-Ti's graphed bf16 inference at 224 / 128, 512 / 32, 738 / 32, 1024 / 16 and 1248 / 16 under each
#          setting in SETTINGS ("TPC:XPROJ" pairs), ROUNDS times in turn, and DeiT-Ti (FlashAttention) once; each
#          run checks Vim's output against the torch backend before timing it.
#
#   OUT=/path PYTHON=python3 bash benchmarks/device_inference_ab.sh
#   OUT=/path PYTHON=python3 PARTS="bench" SETTINGS="0:0 2:1" ROUNDS=2 bash benchmarks/device_inference_ab.sh
#
# Writes $OUT/tests.txt, $OUT/scan_tpc.json, $OUT/conv_xproj.json, $OUT/bench_<setting>_<round>.json (+ .log),
# $OUT/bench_deit.json and $OUT/gpu.txt, then packs them into $OUT/inference_ab.tgz (a device call brings back 8
# files at most; PACK=0 leaves them loose).
. "$(dirname "$0")/device_common.sh"  # strict mode, OUT, the repository root, PYTHONPATH, PY
PARTS=${PARTS:-tests scan conv bench}
SETTINGS=${SETTINGS:-0:0 2:0 4:0 0:1 2:1}
ROUNDS=${ROUNDS:-1}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
part() { [[ " $PARTS " == *" $1 "* ]]; }
if part tests; then
  timeout "${TEST_SECONDS:-240}" "$PY" -u -m pytest -q -p no:cacheprovider tests/test_triton.py \
    -k "onepass_tpc or conv_xproj" > "$OUT/tests.txt" 2>&1
  echo "tests: exit $? ($(tail -1 "$OUT/tests.txt"))"
fi
if part scan; then
  timeout "${SCAN_SECONDS:-200}" "$PY" benchmarks/scan_kernels.py --no-conv --rows-fp32 \
    --shapes "${SHAPES:-1248:16,1024:16,738:32,512:32,1248:1}" --backward-configs '[]' \
    --forward-configs '[{}, {"onepass_tpc": 2}, {"onepass_tpc": 4}, {"onepass_tpc": 4, "onepass_cpt": 2},
                        {"onepass_tpc": 2, "gluon_staged": 0}, {"onepass_tpc": 4, "gluon_staged": 0}]' \
    --out "$OUT/scan_tpc.json" 2>&1 | tail -40
fi
if part conv; then
  timeout "${CONV_SECONDS:-120}" "$PY" benchmarks/conv_xproj_bench.py --out "$OUT/conv_xproj.json" 2>&1 | tail -25
fi
bench() {  # name, models, onepass_tpc, conv_xproj
  VISION_MAMBA_TRITON_ONEPASS_TPC=$3 VISION_MAMBA_TRITON_CONV_XPROJ=$4 timeout 150 "$PY" -m vision_mamba.cli bench \
    --device cuda --models "$2" --res 224,512,738,1024,1248 --batch 128,32,32,16,16 --dtype bf16 --attn flash \
    --mode infer --graph on --max-row-time 6 --out "$OUT" --name "$1" --no-plot > "$OUT/$1.log" 2>&1
  echo "$1: exit $?"; grep -E "vim_tiny|deit_tiny" "$OUT/$1.log" | tail -6
}
if part bench; then
  bench bench_deit deit_tiny 0 0
  for round in $(seq 1 "$ROUNDS"); do
    for setting in $SETTINGS; do
      bench "bench_tpc${setting%%:*}_xproj${setting##*:}_$round" vim_tiny "${setting%%:*}" "${setting##*:}"
    done
  done
fi
if [ "${PACK:-1}" = 1 ]; then  # (only the files written here)
  cd "$OUT" && files=$(ls tests.txt scan_tpc.json conv_xproj.json gpu.txt bench_*.json bench_*.log 2>/dev/null; true)
  [ -n "$files" ] && tar czf inference_ab.tgz $files && rm -f $files
fi
