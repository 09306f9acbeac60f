#!/usr/bin/env bash
# Two versions of the code side by side in one call: the scan alone (benchmarks/scan_kernels.py) and Vim's
# graphed inference (`vision-mamba bench`, each run checked against the torch backend first), from an older source
# tree and from this checkout, alternating, with DeiT (FlashAttention) in the same call. For a change that no
# environment variable switches off (a kernel's code itself).
#
#   git archive 3348486 src | tar -x -C .ab/old          # here: the older tree, in an ignored folder
#   OUT=/path PYTHON=python3 OLD=.ab/old/src bash benchmarks/device_tree_ab.sh     # on the device (carry .ab)
#
# OLD: the older tree's src folder (required). SHAPES (res:batch list for the scan alone, 1248:16,1248:1; "none":
# skip), SCAN_CONFIGS (JSON list of launch settings for the newer tree, '[{}]'), RES and BATCH (paired lists,
# 1248,1248 and 16,1), MODELS (vim_tiny), BASELINE (deit_tiny; none: no baseline), ROUNDS (2), MAX_ROW_TIME (3).
# Writes $OUT/tree_ab/{scan_old.json/.txt, scan_new.json/.txt, base.json/.log, old_r<i>.json/.log,
# new_r<i>.json/.log, summary.txt} and packs them into $OUT/tree_ab.tgz (PACK=0 leaves them loose).
. "$(dirname "$0")/device_common.sh"  # strict mode, OUT, the repository root, PYTHONPATH, PY
: "${OLD:?set OLD to the src folder of the older tree}"
DIR="$OUT/tree_ab"
mkdir -p "$DIR"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader > "$DIR/gpu.txt" 2>&1 || true
SHAPES=${SHAPES:-1248:16,1248:1}
if [ "$SHAPES" != none ]; then
  for tree in old new; do
    src=src configs=${SCAN_CONFIGS:-}
    [ -z "$configs" ] || [ $tree = old ] && configs='[{}]'
    [ $tree = old ] && src=$OLD
    PYTHONPATH=$src timeout "${SCAN_SECONDS:-120}" "$PY" benchmarks/scan_kernels.py --no-conv --rows-fp32 \
      --shapes "$SHAPES" --backward-configs '[]' --forward-configs "$configs" --out "$DIR/scan_$tree.json" \
      > "$DIR/scan_$tree.txt" 2>&1
    echo "scan $tree: exit $?"
    grep forward "$DIR/scan_$tree.txt" | sed "s/^/$tree /"
  done
fi
bench() {  # name, source tree, models, extra arguments...
  local name=$1 src=$2 models=$3
  shift 3
  PYTHONPATH=$src timeout "${BENCH_SECONDS:-120}" "$PY" -m vision_mamba.cli bench --device cuda --models "$models" \
    --res "${RES:-1248,1248}" --batch "${BATCH:-16,1}" --dtype bf16 --mode infer --graph on \
    --max-row-time "${MAX_ROW_TIME:-3}" --out "$DIR" --name "$name" --no-plot "$@" > "$DIR/$name.log" 2>&1
  echo "$name: exit $?"
}
[ "${BASELINE:-deit_tiny}" != none ] && bench base src "${BASELINE:-deit_tiny}" --attn flash
for round in $(seq 1 "${ROUNDS:-2}"); do
  bench "old_r$round" "$OLD" "${MODELS:-vim_tiny}"
  bench "new_r$round" src "${MODELS:-vim_tiny}"
done
"$PY" - "$DIR" <<'EOF' | tee "$DIR/summary.txt"
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
def rows(path):
    try:
        return {(r["model"], r["res"], r["batch"]): r for r in json.loads(path.read_text())}
    except (OSError, ValueError):
        return {}
base = {k[1:]: r.get("img_s") for k, r in rows(d / "base.json").items()}
runs = {tree: [rows(p) for p in sorted(d.glob(f"{tree}_r*.json"))] for tree in ("old", "new")}
keys = sorted({k for rs in runs.values() for r in rs for k in r})
for key in keys:
    line = f"{key[0]} {key[1]} px / batch {key[2]}:"
    for tree, rs in runs.items():
        vals = [r[key]["img_s"] for r in rs if key in r and r[key].get("img_s")]
        line += f" {tree} " + " / ".join(f"{v:.1f}" for v in vals)
    if base.get(key[1:]):
        line += f" (baseline {base[key[1:]]:.1f})"
    print(line)
EOF
if [ "${PACK:-1}" = 1 ]; then
  tar czf "$OUT/tree_ab.tgz" -C "$OUT" tree_ab && rm -rf "$DIR"
fi
