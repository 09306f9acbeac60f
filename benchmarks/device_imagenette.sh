#!/usr/bin/env bash
# Vim-Ti vs DeiT-Ti from scratch on Imagenette-160, one GPU, both runs in one call of at most 10 minutes.
#
#   OUT=/path/to/outputs bash benchmarks/device_imagenette.sh          # from the repository root
#
# Same recipe for both (configs/imagenette/vim_tiny.yaml; deit_tiny.yaml changes only the model), same number of
# epochs, same budget: Vim-Ti runs first with its epochs fitted to TIME_LIMIT_MIN (measured in its first epoch,
# see docs/training.md); DeiT-Ti then trains for exactly as many epochs, with the same time limit as a cap.
#
# Environment (all optional except OUT):
#   DATA            ImageFolder root with train/ and val/        (default .data/imagenette-160)
#   TIME_LIMIT_MIN  wall-clock budget of each training run        (default 4.2; both runs + start-up < 10 min)
#   MODELS          "vim deit" (default), "vim" or "deit"
#   EPOCHS          a fixed epoch count for both runs (the time limit stays a cap)
#   EXTRA_ARGS      more `vision-mamba train` arguments for both runs, e.g. "--set lr=2e-3 --set drop_path=0.05"
#   RUNS            run directories                               (default runs/device_imagenette, emptied first)
#   PYTHON          the interpreter                               (default python)
#
# Writes into $OUT (8 files): imagenette.json, log.txt, vim_metrics.csv, deit_metrics.csv, vim_curves.png,
# deit_curves.png, vim_tiny_imagenette_fp16.safetensors, deit_tiny_imagenette_fp16.safetensors (final weights
# in float16, ~14 MB and ~11 MB; load them with vision_mamba.load_checkpoint, which casts to the model's dtype).
# Then, on the development machine: python benchmarks/imagenette_results.py publish --from <fetched folder>
. "$(dirname "$0")/device_common.sh"  # strict mode, OUT, the repository root, PYTHONPATH, PY, extract_data
DATA=${DATA:-.data/imagenette-160}
TIME_LIMIT_MIN=${TIME_LIMIT_MIN:-4.2}
MODELS=${MODELS:-vim deit}
RUNS=${RUNS:-runs/device_imagenette}
EXTRA_ARGS=${EXTRA_ARGS:-}

mkdir -p "$OUT"
LOG="$OUT/log.txt"
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }

if [ ! -d "$DATA/train" ] || [ ! -d "$DATA/val" ]; then
  say "error: no ImageFolder dataset at $DATA (expected $DATA/train and $DATA/val)"
  exit 2
fi
rm -rf "$RUNS"
mkdir -p "$RUNS"
say "== $(date -u '+%Y-%m-%d %H:%M:%S UTC')  Imagenette from scratch: models [$MODELS], ${TIME_LIMIT_MIN} min each"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$LOG" 2>&1 || true
"$PY" - >> "$LOG" 2>&1 <<'EOF'
import torch, timm, torchvision
try:
    import triton; tv = triton.__version__
except Exception:
    tv = "none"
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, triton {tv}, "
      f"cuda available {torch.cuda.is_available()}")
EOF

limit_s=$("$PY" -c "print(int(float('$TIME_LIMIT_MIN') * 60))")
vim_epochs=""
for m in $MODELS; do
  case "$m" in
    vim)  cfg=configs/imagenette/vim_tiny.yaml;  weights=vim_tiny_imagenette_fp16.safetensors ;;
    deit) cfg=configs/imagenette/deit_tiny.yaml; weights=deit_tiny_imagenette_fp16.safetensors ;;
    *) say "error: unknown model '$m' in MODELS (use vim and/or deit)"; exit 2 ;;
  esac
  epochs=()
  if [ -n "${EPOCHS:-}" ]; then
    epochs=(--epochs "$EPOCHS")
  elif [ "$m" = deit ] && [ -n "$vim_epochs" ]; then
    epochs=(--epochs "$vim_epochs")  # the same number of epochs as Vim-Ti
  fi
  # shellcheck disable=SC2206
  cmd=("$PY" -m vision_mamba.cli train --config "$cfg" --data "$DATA" --output "$RUNS/$m"
       --time-limit-min "$TIME_LIMIT_MIN" "${epochs[@]}" --set export_dtype=float16 $EXTRA_ARGS)
  say ""
  say "== $m: ${cmd[*]}"
  start=$(date +%s)
  # A hard stop shortly after the budget: SIGTERM makes the trainer save last.pth and exit cleanly.
  timeout --foreground --signal=TERM --kill-after=15 $((limit_s + 30)) "${cmd[@]}" >> "$LOG" 2>&1
  status=$?
  end=$(date +%s)
  mkdir -p "$RUNS/$m"
  echo "${cmd[*]}" > "$RUNS/$m/command.txt"
  echo "$((end - start))" > "$RUNS/$m/wall_seconds.txt"
  echo "$status" > "$RUNS/$m/exit_status.txt"
  say "== $m finished with status $status after $((end - start)) s"
  [ -f "$RUNS/$m/metrics.csv" ] && cp "$RUNS/$m/metrics.csv" "$OUT/${m}_metrics.csv"
  [ -f "$RUNS/$m/curves.png" ] && cp "$RUNS/$m/curves.png" "$OUT/${m}_curves.png"
  [ -f "$RUNS/$m/final.safetensors" ] && cp "$RUNS/$m/final.safetensors" "$OUT/$weights"
  if [ "$m" = vim ] && [ -f "$RUNS/vim/results.json" ]; then
    vim_epochs=$("$PY" -c "import json; print(json.load(open('$RUNS/vim/results.json'))['epochs'])")
  fi
done

"$PY" benchmarks/imagenette_results.py collect --runs "$RUNS" --out "$OUT/imagenette.json" 2>&1 | tee -a "$LOG"
say "== done $(date -u '+%H:%M:%S UTC'); outputs in $OUT: $(ls "$OUT" | tr '\n' ' ')"
