#!/usr/bin/env bash
# Vim-Ti vs DeiT-Ti + UperNet on COCO-128 semantic (100 train / 100 val images, 133 classes): same budget, same
# initialisation, same adapter / heads / data / schedule, one GPU.
#
#   OUT=/some/folder bash benchmarks/device_coco128_seg.sh [VIM_INIT.safetensors DEIT_INIT.safetensors]
#
# Run from the repository root with the data at .data/coco128 (images/{train,val}2017, semantic/). Without
# arguments both backbones start from scratch (layer-wise lr decay off: every layer has to learn); with both,
# from those classification checkpoints (head dropped, pos_embed resized to the crop's grid; layer decay 0.92 as
# in the paper).
#
# Budget: Vim-Ti trains first with a wall-clock budget of TRAIN_SECONDS (the loop times its iterations 5-25 and
# fits the poly schedule into the budget, capped at MAX_ITERS); DeiT-Ti then trains with Vim-Ti's schedule
# (length, warm-up) and stops where Vim-Ti stopped, so both see the same number of batches under the same
# learning rates (its own time limit, 1.5 x TRAIN_SECONDS, is only a safety net; the record says if it was hit).
# Batch BATCH of CROP x CROP crops.
# Each run: ~15 s start-up + TRAIN_SECONDS + ~15 s evaluation (val and train mIoU, 256x256 sliding windows);
# with the two overlays, about 4 minutes in all at the default TRAIN_SECONDS=60.
#
# Writes three files: $OUT/seg/coco128_semantic.json (one record per backbone: backbone, init, iters, val_miou,
# train_miou, command, ...) and $OUT/seg/overlay_vim_tiny.png, $OUT/seg/overlay_deit_tiny.png (three val images:
# image, ground truth, prediction, legend). Run directories stay under $WORK. Then, on the development machine:
#   python benchmarks/seg_results.py publish <fetched>/seg
set -uo pipefail

: "${OUT:?set OUT to the output folder}"
VIM_INIT="${1:-}"
DEIT_INIT="${2:-}"
DATA="${DATA:-.data/coco128}"
PY="${PYTHON:-python3}"
TRAIN_SECONDS="${TRAIN_SECONDS:-60}"
MAX_ITERS="${MAX_ITERS:-4000}"
BATCH="${BATCH:-16}"
CROP="${CROP:-256}"
WORKERS="${WORKERS:-8}"
WORK="${WORK:-runs/device_seg}"
read -r -a EXTRA_SETS <<< "${EXTRA:-}"  # more overrides for both runs, e.g. EXTRA="lr=2e-4 head_channels=256"
export PYTHONPATH="${PYTHONPATH:-src}"
export PYTHONUNBUFFERED=1

if [ -n "$VIM_INIT" ] && [ -n "$DEIT_INIT" ]; then
  INIT=imagenette
  LAYER_DECAY=0.92
elif [ -z "$VIM_INIT" ] && [ -z "$DEIT_INIT" ]; then
  INIT=scratch
  LAYER_DECAY=1.0
else
  echo "give both classification checkpoints (Vim-Ti and DeiT-Ti) or neither, for a fair comparison" >&2
  exit 2
fi
for f in "$VIM_INIT" "$DEIT_INIT"; do
  if [ -n "$f" ] && [ ! -f "$f" ]; then echo "checkpoint not found: $f" >&2; exit 2; fi
done
if [ ! -d "$DATA/images/val2017" ] || [ ! -f "$DATA/semantic/classes.json" ]; then
  echo "COCO-128 semantic not found under $DATA (images/{train,val}2017, semantic/{train,val}2017," \
       "semantic/classes.json)" >&2
  exit 2
fi

mkdir -p "$OUT/seg" "$WORK"
# Three val images for the overlays: the first three by name (not picked by result).
mapfile -t STEMS < <(ls "$DATA/semantic/val2017" | sort | head -n 3 | sed 's/\.png$//')
IMAGES=(); MASKS=()
for s in "${STEMS[@]}"; do IMAGES+=("$DATA/images/val2017/$s.jpg"); MASKS+=("$DATA/semantic/val2017/$s.png"); done

common=(--data-root "$DATA" --batch-size "$BATCH" --num-workers "$WORKERS"
        --set "crop_size=$CROP" --set "layer_decay=$LAYER_DECAY" --set eval_train=true)
for item in ${EXTRA_SETS[@]+"${EXTRA_SETS[@]}"}; do common+=(--set "$item"); done

summary_field() {  # summary_field RUN_DIR KEY
  "$PY" -c "import json, sys; print(json.load(open(sys.argv[1] + '/summary.json'))[sys.argv[2]])" "$1" "$2"
}

status=0
runs=()
for name in vim_tiny deit_tiny; do
  init_path="$VIM_INIT"
  [ "$name" = deit_tiny ] && init_path="$DEIT_INIT"
  args=(seg-train --config "configs/segmentation/coco128_${name}.yaml" --output "$WORK/$name" "${common[@]}")
  if [ "$name" = vim_tiny ]; then
    args+=(--iters "$MAX_ITERS" --time-budget "$TRAIN_SECONDS")
  elif [ -f "$WORK/vim_tiny/summary.json" ]; then
    # Vim-Ti's schedule (planned length and warm-up) and where it ended (earlier if its time ran out)
    planned=$(summary_field "$WORK/vim_tiny" planned_iters)
    iters=$(summary_field "$WORK/vim_tiny" iters)
    warmup=$(summary_field "$WORK/vim_tiny" warmup_iters)
    args+=(--iters "$planned" --set "stop_iter=$iters" --set "warmup_iters=$warmup"
           --time-budget "$(awk "BEGIN {print 1.5 * $TRAIN_SECONDS}")")
  else  # Vim-Ti failed: DeiT-Ti still runs on the time budget, and the records say so
    args+=(--iters "$MAX_ITERS" --time-budget "$TRAIN_SECONDS")
  fi
  [ -n "$init_path" ] && args+=(--init-checkpoint "$init_path")
  rm -rf "${WORK:?}/$name"
  echo "== $name ($INIT): $PY -m vision_mamba.cli ${args[*]}"
  start=$SECONDS
  if ! "$PY" -m vision_mamba.cli "${args[@]}"; then
    echo "!! $name: seg-train failed" >&2
    status=1
  fi
  echo "== $name: $((SECONDS - start)) s"
  runs+=("$WORK/$name")
  if [ -f "$WORK/$name/model.safetensors" ]; then
    "$PY" -m vision_mamba.cli seg-predict --checkpoint "$WORK/$name/model.safetensors" --image "${IMAGES[@]}" \
      --mask "${MASKS[@]}" --output "$OUT/seg/overlay_${name}.png" --width 320 || status=1
  fi
done

"$PY" benchmarks/seg_results.py collect --init "$INIT" --output "$OUT/seg/coco128_semantic.json" "${runs[@]}" \
  || status=1
exit $status
