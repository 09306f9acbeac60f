#!/usr/bin/env bash
# A longer Imagenette-160 run than one 10-minute device call allows: the recipe of configs/imagenette/<model>_tiny.yaml
# with a fixed number of epochs, trained over several calls on one warm machine. Each call trains for at most
# CALL_SECONDS; then SIGINT makes the trainer finish its step and write last.pth, and the next call continues from
# it (--resume auto: the run in --output). Every call copies what the run has so far into $OUT.
#
#   OUT=/path MODEL=vim EPOCHS=300 CALL_SECONDS=470 PYTHON=python3 bash benchmarks/device_imagenette_long.sh
#   (again, within the machine's warm window, until the log says the run finished)
#
# MODEL: vim, deit (configs/imagenette/<model>_tiny.yaml) or vim_s8 (vim_tiny_stride8.yaml, from scratch);
# teacher (resnet50d_teacher.yaml), then vim_kd / deit_kd (<model>_tiny_distill.yaml: hard labels) or vim_kds /
# deit_kds (<model>_tiny_distill_soft.yaml: the teacher's softmax), distilled from the teacher of the same RUNS
# folder: all on one warm machine, since the teacher's weights stay there; vim_kds_s8ft continues the weights in
# FINETUNE (a vim_kds run's final.safetensors) at stride 8, still distilled (vim_tiny_stride8_ft_distill.yaml);
# deit_kds_ft240 is DeiT-Ti's counterpart: a deit_kds run's weights in FINETUNE continued at 240 px, as many tokens
# (deit_tiny_ft240_distill.yaml); vim_kds_s8ft_160 / deit_kds_ft240_304 continue those two at the images' own 160 px
# (Vim-Ti) or 304 px (DeiT-Ti, as many tokens) for a third stage (vim_tiny_stride8_ft160_distill.yaml,
# deit_tiny_ft304_distill.yaml).
# DATA defaults to .data/imagenette-160 (extracted from .data/imagenette-160.zip when only the zip is there).
# Afterwards, here: python benchmarks/imagenette_results.py publish --from <fetched folder> [--from <other>]
# (A device call brings back at most 8 files: device_imagenette_chain.sh runs several MODELs in turn, as many as
# fit in a call, and packs their files into one.)
. "$(dirname "$0")/device_common.sh"  # strict mode, OUT, the repository root, PYTHONPATH, PY, extract_data
MODEL=${MODEL:-vim}
EPOCHS=${EPOCHS:-300}
CALL_SECONDS=${CALL_SECONDS:-540}
DATA=${DATA:-.data/imagenette-160}
RUNS=${RUNS:-runs/imagenette_long}
EXTRA=${EXTRA:-}  # more train arguments, e.g. EXTRA="--set drop_path=0.05" (split on spaces)
EVAL_SIZES=${EVAL_SIZES-160}   # test sizes for the final weights of the other MODELs (the images are 160 px),
                               # each without and with hflip test-time augmentation; EVAL_SIZES="" for none
RUN="$RUNS/$MODEL"

extract_data "$DATA"
extra=()
case "$MODEL" in
  vim|deit) cfg="configs/imagenette/${MODEL}_tiny.yaml" ;;
  vim_s8) cfg="configs/imagenette/vim_tiny_stride8.yaml" ;;
  teacher) cfg="configs/imagenette/resnet50d_teacher.yaml" ;;
  vim_kd|deit_kd|vim_kds|deit_kds)
    case "$MODEL" in *_kds) cfg="configs/imagenette/${MODEL%_kds}_tiny_distill_soft.yaml" ;;
                     *) cfg="configs/imagenette/${MODEL%_kd}_tiny_distill.yaml" ;; esac
    extra=(--teacher-checkpoint "$RUNS/teacher/final.safetensors")
    [ -f "$RUNS/teacher/final.safetensors" ] || { echo "error: train MODEL=teacher first (no $RUNS/teacher/final.safetensors)"; exit 2; } ;;
  vim_kds_s8ft|deit_kds_ft240|vim_kds_s8ft_160|deit_kds_ft240_304)
    case "$MODEL" in vim_kds_s8ft) cfg="configs/imagenette/vim_tiny_stride8_ft_distill.yaml" ;;
                     deit_kds_ft240) cfg="configs/imagenette/deit_tiny_ft240_distill.yaml" ;;
                     vim_kds_s8ft_160) cfg="configs/imagenette/vim_tiny_stride8_ft160_distill.yaml" ;;
                     *) cfg="configs/imagenette/deit_tiny_ft304_distill.yaml" ;; esac
    [ -f "${FINETUNE:-}" ] || { echo "error: MODEL=$MODEL needs FINETUNE=<${MODEL%_*} final.safetensors>"; exit 2; }
    [ -f "$RUNS/teacher/final.safetensors" ] || { echo "error: train MODEL=teacher first (no $RUNS/teacher/final.safetensors)"; exit 2; }
    extra=(--teacher-checkpoint "$RUNS/teacher/final.safetensors" --finetune "$FINETUNE") ;;
  *) echo "error: MODEL must be vim, vim_s8, deit, teacher, vim_kd, deit_kd, vim_kds, deit_kds, vim_kds_s8ft, deit_kds_ft240, vim_kds_s8ft_160 or deit_kds_ft240_304, got '$MODEL'"; exit 2 ;;
esac
cmd=("$PY" -m vision_mamba.cli train --config "$cfg" --data "$DATA" --output "$RUN" --epochs "$EPOCHS"
     --resume auto --set export_dtype=float16 "${extra[@]}" $EXTRA)
mkdir -p "$OUT" "$RUN"
part=$(( $(find "$RUN" -maxdepth 1 -name 'part*.log' | wc -l) + 1 ))
echo "${cmd[*]}  # over several calls of at most ${CALL_SECONDS} s (benchmarks/device_imagenette_long.sh)" \
  > "$RUN/command.txt"
start=$(date +%s)
# --foreground: the signal goes to the trainer alone, not also to its process group (a stop delivered twice; the
# trainer now takes an echo within 2 s as the same stop, but one signal is simpler)
timeout --foreground --signal=INT --kill-after=30 "$CALL_SECONDS" "${cmd[@]}" > "$RUN/part$part.log" 2>&1
status=$?
before=$(cat "$RUN/wall_seconds.txt" 2>/dev/null || echo 0)
echo $(( before + $(date +%s) - start )) > "$RUN/wall_seconds.txt"
echo "$status" > "$RUN/exit_status.txt"
echo "== $MODEL part $part: exit $status after $(( $(date +%s) - start )) s"
grep -E "^epoch|final|stopped|resumed|error" "$RUN/part$part.log" | tail -4
tr "\r" "\n" < "$RUN/part$part.log" | grep -qE "^(stopped by|final:)" \
  || echo "warning: no clean stop in this part; the next one resumes from the last periodic checkpoint"
for f in metrics.csv curves.png results.json command.txt wall_seconds.txt "part$part.log"; do
  [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/${MODEL}_$f"
done
if [ -f "$RUN/results.json" ]; then
  [ -f "$RUN/final.safetensors" ] && cp "$RUN/final.safetensors" "$OUT/${MODEL}_imagenette_fp16.safetensors"
  case "$MODEL" in
    vim|deit) "$PY" benchmarks/imagenette_results.py collect --runs "$RUNS" --out "$OUT/imagenette.json" ;;
    *)  # the final weights at other test sizes (pos_embed resized), one JSON list: ${MODEL}_evals.json
      evals=()
      for size in $EVAL_SIZES; do
        for tta in none hflip; do
          "$PY" -m vision_mamba.cli eval --config "$RUN/config.yaml" --checkpoint "$RUN/final.safetensors" \
            --data "$DATA" --img-size "$size" --tta "$tta" --json "$RUN/eval_${size}_$tta.json" --no-progress 2>&1 | tail -1
          [ -f "$RUN/eval_${size}_$tta.json" ] && evals+=("$RUN/eval_${size}_$tta.json")
        done
      done
      [ ${#evals[@]} -gt 0 ] && "$PY" -c 'import json, sys; print(json.dumps([json.load(open(f)) for f in sys.argv[2:]], indent=2), file=open(sys.argv[1], "w"))' "$OUT/${MODEL}_evals.json" "${evals[@]}" ;;
  esac
fi
