#!/usr/bin/env bash
# Issue 3, parts 2-3 on one H200 (about 4-5 minutes): Vim vs DeiT (timm) feature extraction and a training step.
#
#   OUT=/path/to/folder bash benchmarks/bench_h200.sh
#
# Runs `vision-mamba bench --plan figure1` from the source tree (PYTHONPATH=src):
#   - Vim-Ti vs DeiT-Ti (flash and explicit attention), bf16 autocast and fp32, at 224/b128, 512/b32, 640/b32,
#     738/b32, 1024/b16, 1248/b16 and 1248/b1; forward captured in a CUDA graph for both models;
#   - Vim-S vs DeiT-S at 224/b128 and 1248/b16, bf16, CUDA graphs;
#   - a training step (forward, cross-entropy, backward, fused AdamW), 224/b128, bf16: Vim-Ti and DeiT-Ti (flash);
#   - eager (no graph) Vim-Ti and DeiT-Ti flash at 224/b128 and 1248/b16, bf16.
# Rows not started within --total-time seconds are recorded as skipped, so the call ends in time; the JSON is
# rewritten after every row, so a killed run still leaves what it measured.
# Writes $OUT/bench_h200.json, $OUT/bench_h200.png, $OUT/bench_h200.log and $OUT/gpu.txt. Afterwards, here:
#   PYTHONPATH=src python benchmarks/bench_results.py FETCHED/bench_h200.json
set -euo pipefail
: "${OUT:?set OUT to the output folder}"
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT"
# The card as found (read only: nothing here changes its settings).
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu \
    --format=csv > "$OUT/gpu.txt" 2>&1 || true
"$PYTHON" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda)" \
    | tee -a "$OUT/gpu.txt"
"$PYTHON" -m vision_mamba.cli bench --plan figure1 --device cuda --total-time "${TOTAL_TIME:-240}" --max-row-time 12 \
    --out "$OUT" --name bench_h200 "$@" 2>&1 | tee "$OUT/bench_h200.log"
