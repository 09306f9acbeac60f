#!/usr/bin/env bash
# The inference forward of long sequences in one pass, a channel's states over several lanes (onepass_tpc,
# docs/kernels.md "Session 22"), on the device in one call (about 6 - 8 minutes):
#   1. its GPU tests (tests/test_triton.py -k onepass_tpc: against the fp32 reference and the chunked launches);
#   2. the scan kernel alone at the shapes the plan chunks (1248 / 16, 1024 / 16, 738 / 32, 512 / 32, 1248 / 1),
#      the chunked launches ({}) against one pass at 2 and 4 lanes a channel, staged and not;
#   3. Vim-Ti's graphed bf16 inference at those shapes with VISION_MAMBA_TRITON_ONEPASS_TPC=0 / 2 / 4, twice in
#      turn, and DeiT-Ti (FlashAttention) once, in the same call (each run checks Vim's output against the torch
#      backend before timing it).
#
#   OUT=/path PYTHON=python3 bash benchmarks/device_tpc.sh
#
# Writes $OUT/tests.txt, $OUT/scan_tpc.json, $OUT/bench_tpc<N>_<round>.json (+ .log) and $OUT/gpu.txt.
. "$(dirname "$0")/device_common.sh"  # strict mode, OUT, the repository root, PYTHONPATH, PY
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
timeout "${TEST_SECONDS:-240}" "$PY" -u -m pytest -q -p no:cacheprovider tests/test_triton.py -k onepass_tpc \
  > "$OUT/tests.txt" 2>&1
echo "tests: exit $? ($(tail -1 "$OUT/tests.txt"))"
timeout "${SCAN_SECONDS:-200}" "$PY" benchmarks/scan_kernels.py --no-conv --rows-fp32 \
  --shapes "${SHAPES:-1248:16,1024:16,738:32,512:32,1248:1}" --backward-configs '[]' \
  --forward-configs '[{}, {"onepass_tpc": 2}, {"onepass_tpc": 4}, {"onepass_tpc": 4, "onepass_cpt": 2},
                      {"onepass_tpc": 2, "gluon_staged": 0}, {"onepass_tpc": 4, "gluon_staged": 0}]' \
  --out "$OUT/scan_tpc.json" 2>&1 | tail -40
bench() {  # name, models, then the environment's setting
  VISION_MAMBA_TRITON_ONEPASS_TPC=$3 timeout 150 "$PY" -m vision_mamba.cli bench --device cuda --models "$2" \
    --res 512,738,1024,1248 --batch 32,32,16,16 --dtype bf16 --attn flash --mode infer --graph on \
    --max-row-time 10 --out "$OUT" --name "$1" --no-plot > "$OUT/$1.log" 2>&1
  echo "$1: exit $?"; grep -E "vim_tiny|deit_tiny" "$OUT/$1.log" | tail -8
}
bench deit deit_tiny 0
for round in 1 2; do
  for tpc in 0 2 4; do bench "bench_tpc${tpc}_$round" vim_tiny "$tpc"; done
done
