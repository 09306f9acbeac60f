#!/usr/bin/env bash
# Several runs of device_imagenette_long.sh in turn, as many as fit in one device call, each continuing where the
# previous call left it: the same command again on the same warm machine until every run is done. A run is done
# when its exit_status.txt says 0 (a finished `vision-mamba train`); the others resume with --resume auto. A run
# that does not finish ends the call (a later run may need its weights).
#
#   OUT=/path BUDGET=575 bash benchmarks/device_imagenette_chain.sh teacher:200 deit_kds:450 deit_kds_ft240:140
#
# Arguments: MODEL:EPOCHS of device_imagenette_long.sh, in order (a later one may need an earlier one's weights:
# the distilled MODELs need the teacher; FINETUNE defaults to $RUNS/<MODEL without its _suffix>/final.safetensors,
# e.g. deit_kds for deit_kds_ft240). BUDGET: seconds for the whole call (keep it under the call's limit); a run
# starts only with at least 100 s left and is stopped (SIGINT, a checkpoint) 50 s before the budget ends.
# RUNS (default runs/imagenette_fm), PYTHON, EVAL_SIZES (default none) pass through. Each run's files of this
# call go to a folder under /tmp, packed into $OUT/chain.tar at the end (a call brings back 8 files at most, of
# 16 MiB each: the students' weights, ~11-14 MB each in fp16, go to $OUT beside the tar, not in it), the
# teacher's weights left out (ResNet-50-D in fp16: 51 MB, over the 16 MiB a returned file may have). KEEP_TEACHER=1
# brings them back in parts instead ($OUT/teacher_fp16.safetensors.part00, 01, ...: `cat` them together here); a
# later call carries the whole file and names it in TEACHER=<path> (with TEACHER_SHA256 to check it), which makes
# it $RUNS/teacher/final.safetensors, a finished run: "teacher: already done", no teacher trained again.
. "$(dirname "$0")/device_common.sh"  # strict mode, OUT, the repository root, PYTHONPATH, PY
START=$(date +%s)
BUDGET=${BUDGET:-575}
export PYTHON=${PYTHON:-python3} RUNS=${RUNS:-runs/imagenette_fm} EVAL_SIZES=${EVAL_SIZES-}
[ $# -gt 0 ] || { echo "error: give MODEL:EPOCHS arguments, e.g. teacher:200 deit_kds:450"; exit 2; }
if [ -n "${TEACHER:-}" ] && [ "$(cat "$RUNS/teacher/exit_status.txt" 2>/dev/null)" != 0 ]; then
  [ -f "$TEACHER" ] || { echo "error: TEACHER=$TEACHER: no such file"; exit 2; }
  if [ -n "${TEACHER_SHA256:-}" ] && [ "$(sha256sum "$TEACHER" | cut -d' ' -f1)" != "$TEACHER_SHA256" ]; then
    echo "error: TEACHER=$TEACHER does not have the sha256 $TEACHER_SHA256"; exit 2
  fi
  mkdir -p "$RUNS/teacher" && cp "$TEACHER" "$RUNS/teacher/final.safetensors" && echo 0 > "$RUNS/teacher/exit_status.txt"
  echo "== teacher: the weights in $TEACHER"
fi
staging=$(mktemp -d)
for job in "$@"; do
  model=${job%%:*}; epochs=${job##*:}
  [[ "$epochs" =~ ^[0-9]+$ ]] || { echo "error: expected MODEL:EPOCHS, got '$job'"; exit 2; }
  if [ "$(cat "$RUNS/$model/exit_status.txt" 2>/dev/null)" = 0 ]; then echo "== $model: already done"; continue; fi
  left=$(( BUDGET - ($(date +%s) - START) ))
  [ "$left" -ge 100 ] || { echo "== stop: $left s left, $model not started in this call"; break; }
  FINETUNE=${FINETUNE:-$RUNS/${model%_*}/final.safetensors} OUT="$staging/$model" MODEL=$model EPOCHS=$epochs \
    CALL_SECONDS=$(( left - 50 )) bash benchmarks/device_imagenette_long.sh
  status=$(cat "$RUNS/$model/exit_status.txt" 2>/dev/null || echo none)
  # (the later runs may need this one's weights: the next call continues from here)
  [ "$status" = 0 ] || { echo "== $model did not finish in this call (exit $status)"; break; }
done
rm -f "$staging"/teacher/*.safetensors
if [ "${KEEP_TEACHER:-0}" = 1 ] && [ "$(cat "$RUNS/teacher/exit_status.txt" 2>/dev/null)" = 0 ]; then
  mkdir -p "$OUT" && split -b 15M -d "$RUNS/teacher/final.safetensors" "$OUT/teacher_fp16.safetensors.part"
  sha256sum "$RUNS/teacher/final.safetensors" | cut -d' ' -f1 > "$OUT/teacher_fp16.sha256"
fi
mkdir -p "$OUT" && find "$staging" -name '*.safetensors' -exec mv -t "$OUT" {} +
tar cf "$OUT/chain.tar" -C "$staging" . && rm -rf "$staging"
echo "packed: $OUT/chain.tar"
