#!/usr/bin/env bash
# Vim's graphed inference under several settings of the Triton backend's environment variables, each run in its
# own process, ROUNDS times in turn, next to DeiT (FlashAttention) in the same call; optionally GPU tests first.
# Every Vim run checks its output against the torch backend before timing it (`vision-mamba bench`).
#
#   OUT=/path PYTHON=python3 SETTINGS="- PREP_WEIGHTS=1 ONEPASS_SHARE=32,GLUON_STAGED=32" \
#       bash benchmarks/device_env_ab.sh
#
# SETTINGS: settings separated by spaces; each a comma list of NAME=VALUE (the prefix VISION_MAMBA_TRITON_ is added
#   to a NAME without it), or "-" for the code's defaults. Setting i's runs are named s<i>_r<round>; the settings
#   themselves are written to settings.txt.
# ROUNDS (2), MODELS (vim_tiny), BASELINE (deit_tiny; "none": no baseline), RES and BATCH (paired comma lists;
#   1248,224 and 1,128), DTYPE (bf16), MAX_ROW_TIME (4 seconds a row), TEST_K (pytest -k for tests/test_triton.py
#   first; unset: no tests).
# Writes $OUT/env_ab/{settings.txt, tests.txt, s<i>_r<round>.json / .log, base.json / .log, summary.txt} and packs
# them into $OUT/env_ab.tgz (PACK=0 leaves them loose). summary.txt: img/s per row and setting, each round, and the
# ratio of the rounds' median to the first setting's and to the baseline's.
. "$(dirname "$0")/device_common.sh"  # strict mode, OUT, the repository root, PYTHONPATH, PY
SETTINGS=${SETTINGS:--}
ROUNDS=${ROUNDS:-2}
RES=${RES:-1248,224}
BATCH=${BATCH:-1,128}
DIR="$OUT/env_ab"
mkdir -p "$DIR"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader > "$DIR/gpu.txt" 2>&1 || true
if [ -n "${TEST_K:-}" ]; then
  timeout "${TEST_SECONDS:-150}" "$PY" -u -m pytest -q -p no:cacheprovider tests/test_triton.py -k "$TEST_K" \
    > "$DIR/tests.txt" 2>&1
  echo "tests: exit $? ($(tail -1 "$DIR/tests.txt"))"
fi
bench() {  # name, models, extra arguments...
  local name=$1 models=$2
  shift 2
  timeout "${BENCH_SECONDS:-120}" "$PY" -m vision_mamba.cli bench --device cuda --models "$models" \
    --res "$RES" --batch "$BATCH" --dtype "${DTYPE:-bf16}" --mode infer --graph on \
    --max-row-time "${MAX_ROW_TIME:-4}" --out "$DIR" --name "$name" --no-plot "$@" > "$DIR/$name.log" 2>&1
  echo "$name: exit $?"
}
i=0
: > "$DIR/settings.txt"
for setting in $SETTINGS; do echo "s$i $setting" >> "$DIR/settings.txt"; i=$((i + 1)); done
[ "${BASELINE:-deit_tiny}" != none ] && bench base "${BASELINE:-deit_tiny}" --attn flash
for round in $(seq 1 "$ROUNDS"); do
  i=0
  for setting in $SETTINGS; do
    (  # (a subshell: the setting's variables for this run only)
      if [ "$setting" != - ]; then
        IFS=, read -r -a pairs <<< "$setting"
        for pair in "${pairs[@]}"; do
          [[ $pair == VISION_MAMBA_* ]] || pair="VISION_MAMBA_TRITON_$pair"
          export "${pair?}"
        done
      fi
      bench "s${i}_r$round" "${MODELS:-vim_tiny}"
    )
    i=$((i + 1))
  done
done
"$PY" - "$DIR" <<'EOF' | tee "$DIR/summary.txt"
import json, statistics, sys
from pathlib import Path
d = Path(sys.argv[1])
names = dict(line.split(" ", 1) for line in (d / "settings.txt").read_text().splitlines() if line.strip())
def rows(path):
    try:
        return {(r["model"], r["res"], r["batch"], r["dtype"]): r.get("img_s") for r in json.loads(path.read_text())}
    except (OSError, ValueError):
        return {}
base = {(k[1], k[2], k[3]): v for k, v in rows(d / "base.json").items()}
runs = {s: [rows(p) for p in sorted(d.glob(f"{s}_r*.json"))] for s in names}
keys = sorted({k for rs in runs.values() for r in rs for k in r})
for key in keys:
    print(f"{key[0]} {key[1]} px / batch {key[2]} {key[3]}" + (f" (baseline {base[key[1:]]:.1f} img/s)"
                                                                if base.get(key[1:]) else ""))
    for s, rs in runs.items():
        vals = [r.get(key) for r in rs if r.get(key)]
        if not vals:
            print(f"  {s} {names[s]}: no number")
            continue
        med = statistics.median(vals)
        ref = statistics.median([r[key] for r in runs[next(iter(runs))] if r.get(key)] or [med])
        vs_base = f", {med / base[key[1:]]:.3f}x baseline" if base.get(key[1:]) else ""
        print(f"  {s} {names[s]}: " + " / ".join(f"{v:.1f}" for v in vals) + f" img/s, {med / ref:.3f}x s0{vs_base}")
EOF
if [ "${PACK:-1}" = 1 ]; then
  cd "$OUT" && tar czf env_ab.tgz env_ab && rm -rf env_ab
fi
