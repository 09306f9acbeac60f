#!/usr/bin/env bash
# Several processes, measured: the DDP tests, then one training recipe run three ways with the same global batch,
# side by side: one process with eager steps (what each DDP process runs), one process with its steps replayed
# from a CUDA graph (the single-GPU default), and NPROC processes under torchrun. Prints img/s and top-1 of each and
# writes $OUT/ddp_summary.json (and each run's log; at most 8 files come back from a device call).
#
#   OUT=/path PYTHON=python3 bash benchmarks/device_ddp.sh                      # on nvidia-h200-x2: NCCL
#   OUT=/tmp/ddp DEVICE=cpu CONFIG= DATA=synthetic EPOCHS=1 bash benchmarks/device_ddp.sh   # a CPU check (gloo)
#
# CONFIG defaults to configs/imagenette/vim_tiny.yaml and DATA to .data/imagenette-160 (extracted from
# .data/imagenette-160.zip when only the zip is there); EXTRA adds train arguments (split on spaces).
. "$(dirname "$0")/device_common.sh"  # strict mode, OUT, the repository root, PYTHONPATH, PY, extract_data
NPROC=${NPROC:-2}
EPOCHS=${EPOCHS:-5}
DEVICE=${DEVICE:-cuda}
CONFIG=${CONFIG-configs/imagenette/vim_tiny.yaml}
DATA=${DATA:-.data/imagenette-160}
RUNS=${RUNS:-runs/ddp}
EXTRA=${EXTRA:-}
TESTS=${TESTS:-1}
mkdir -p "$OUT" "$RUNS"

[ "$DATA" != synthetic ] && extract_data "$DATA"
# the workplace's multi-GPU machines keep NVLink multicast off (their KINDS.md): keep it so for every process
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ "$TESTS" = 1 ]; then
  # gloo always; NCCL where two GPUs are present; seg-train / det-train over gloo where pycocotools is installed
  tests=(tests/test_train_ddp.py)
  "$PY" -c "import pycocotools" 2>/dev/null && tests+=(tests/test_tasks_ddp.py)
  "$PY" -m pytest -q -rs "${tests[@]}" > "$OUT/ddp_tests.log" 2>&1
  echo "== DDP tests: exit $? ($(tail -1 "$OUT/ddp_tests.log"))"
fi

base=(--data "$DATA" --epochs "$EPOCHS" --device "$DEVICE" --no-progress --set export_dtype=float16)
[ -n "$CONFIG" ] && base=(--config "$CONFIG" "${base[@]}")
# shellcheck disable=SC2206
base+=($EXTRA)
run() {  # NAME, the launcher's words, then "--" and more train arguments
  local name=$1; shift
  local launcher=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do launcher+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  rm -rf "${RUNS:?}/$name"
  "${launcher[@]}" -m vision_mamba.cli train "${base[@]}" "$@" --output "$RUNS/$name" > "$RUNS/$name.log" 2>&1
  echo "== $name: exit $? ($(tr '\r' '\n' < "$RUNS/$name.log" | grep -E '^final:' | tail -1))"
  cp "$RUNS/$name.log" "$OUT/$name.log"
}
run one_graph "$PY"
run one_eager "$PY" -- --set cuda_graph=false
run ddp "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC"

# img/s: the median of the epochs after the first (start-up, compilation and graph capture left out)
"$PY" - "$RUNS" "$OUT/ddp_summary.json" <<'PY'
import json, statistics, sys
from pathlib import Path

runs, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = []
for name in ("one_graph", "one_eager", "ddp"):
    res, met = runs / name / "results.json", runs / name / "metrics.jsonl"
    if not res.is_file():
        rows.append(dict(run=name, error="no results.json (see the log)"))
        continue
    r = json.loads(res.read_text())
    epochs = [json.loads(line) for line in met.read_text().splitlines()] if met.is_file() else []
    rates = [e["img_per_s"] for e in epochs[1:]] or [e["img_per_s"] for e in epochs]
    rows.append(dict(run=name, world_size=r["world_size"], epochs=r["epochs"], top1=r["top1"],
                     img_per_s=round(statistics.median(rates)) if rates else None,
                     train_loss=[round(e["train_loss"], 4) for e in epochs]))
out.write_text(json.dumps(rows, indent=2) + "\n")
print(f"{'run':<10} {'procs':>5} {'epochs':>6} {'top-1':>7} {'img/s':>8}")
for row in rows:
    if "error" in row:
        print(f"{row['run']:<10} {row['error']}")
    else:
        top1 = "-" if row["top1"] is None else f"{row['top1']:.2f}"
        print(f"{row['run']:<10} {row['world_size']:>5} {row['epochs']:>6} {top1:>7} {row['img_per_s'] or '-':>8}")
PY
