#!/usr/bin/env bash
# Vim-Ti vs DeiT-Ti in a ViTDet-style Mask R-CNN on COCO-128: same budget, same initialisation, one GPU.
#
#   OUT=/some/folder bash benchmarks/device_coco128_det.sh [VIM_INIT.safetensors DEIT_INIT.safetensors]
#
# Run from the repository root with the data at .data/coco128 (images/{train2017,val2017}, annotations/).
# Without arguments both backbones start from scratch; with both, from those classification checkpoints
# (head and class token dropped, pos_embed resized to the detection grid).
# The budget is ITERS iterations of BATCH images at IMG_SIZE px for both; TRAIN_MINUTES is a safety limit
# that ends training cleanly (then it still evaluates; the record says how many iterations were done).
# Each run takes about 2 minutes on one H200 (training <= TRAIN_MINUTES, plus ~30 s start-up and evaluation).
#
# BACKBONES: "vim_tiny deit_tiny" (default) or one of them (then collect the two outputs' records together).
# EXTRA: more config overrides for both runs, e.g. EXTRA="eval.max_images=20 model.box_batch_size_per_image=256".
#
# Writes exactly three files: $OUT/det/coco128_detection.json (one record per backbone) and
# $OUT/det/pred_vim_tiny.png, $OUT/det/pred_deit_tiny.png (predictions drawn on one val image).
# Run directories (checkpoints, curves, TensorBoard) stay under $WORK. Then, on the development machine:
#   python benchmarks/det_results.py publish <fetched>/det/coco128_detection.json
set -uo pipefail

: "${OUT:?set OUT to the output folder}"
VIM_INIT="${1:-}"
DEIT_INIT="${2:-}"
DATA="${DATA:-.data/coco128}"
PY="${PYTHON:-python}"
ITERS="${ITERS:-400}"
BATCH="${BATCH:-8}"
IMG_SIZE="${IMG_SIZE:-512}"
TRAIN_MINUTES="${TRAIN_MINUTES:-1.2}"
BACKBONES="${BACKBONES:-vim_tiny deit_tiny}"  # one of them alone when both do not fit into one call
WORKERS="${WORKERS:-6}"
WORK="${WORK:-runs/device_det}"
read -r -a EXTRA_SETS <<< "${EXTRA:-}"
PRED_IMAGE="${PRED_IMAGE:-$DATA/images/val2017/000000000139.jpg}"
export PYTHONPATH="${PYTHONPATH:-src}"

if [ -n "$VIM_INIT" ] && [ -n "$DEIT_INIT" ]; then
  INIT=imagenette
  LAYER_DECAY=0.9  # a pretrained backbone: lower layers move less (ViTDet's layer-wise decay)
elif [ -z "$VIM_INIT" ] && [ -z "$DEIT_INIT" ]; then
  INIT=scratch
  LAYER_DECAY=1.0  # from scratch every layer has to learn
else
  echo "give both classification checkpoints (Vim-Ti and DeiT-Ti) or neither, for a fair comparison" >&2
  exit 2
fi
for name in $BACKBONES; do
  f="$VIM_INIT"
  [ "$name" = deit_tiny ] && f="$DEIT_INIT"
  if [ -n "$f" ] && [ ! -f "$f" ]; then echo "checkpoint not found: $f" >&2; exit 2; fi
done
if [ ! -d "$DATA/images/train2017" ] || [ ! -f "$DATA/annotations/instances_val2017.json" ]; then
  echo "COCO-128 not found under $DATA (images/train2017, annotations/instances_*.json)" >&2
  exit 2
fi

mkdir -p "$OUT/det" "$WORK"
status=0
runs=()
for name in $BACKBONES; do
  init_path="$VIM_INIT"
  [ "$name" = deit_tiny ] && init_path="$DEIT_INIT"
  args=(det-train --config "configs/detection/coco128_${name}.yaml" --data-root "$DATA" --output "$WORK/$name"
        --no-progress --set "train.iters=$ITERS" "train.batch_size=$BATCH" "model.img_size=$IMG_SIZE"
        "train.time_limit_minutes=$TRAIN_MINUTES" "train.layer_decay=$LAYER_DECAY" "data.workers=$WORKERS"
        ${EXTRA_SETS[@]+"${EXTRA_SETS[@]}"})
  [ -n "$init_path" ] && args+=(--init "$init_path")
  rm -rf "${WORK:?}/$name"
  echo "== $name ($INIT): $PY -m vision_mamba.cli ${args[*]}"
  start=$SECONDS
  if ! "$PY" -m vision_mamba.cli "${args[@]}"; then
    echo "!! $name: det-train failed" >&2
    status=1
  fi
  echo "== $name: $((SECONDS - start)) s"
  runs+=("$WORK/$name")
  if [ -f "$WORK/$name/model.safetensors" ] && [ -f "$PRED_IMAGE" ]; then
    "$PY" -m vision_mamba.cli det-predict --checkpoint "$WORK/$name/model.safetensors" --image "$PRED_IMAGE" \
      --output "$OUT/det/pred_${name}.png" --score-thresh 0.3 --max-detections 30 || status=1
  fi
done

"$PY" benchmarks/det_results.py collect --init "$INIT" --output "$OUT/det/coco128_detection.json" "${runs[@]}" \
  || status=1
exit $status
