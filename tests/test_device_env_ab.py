"""benchmarks/device_env_ab.sh, run here with a stand-in for python: which settings reach which run, and the
summary it prints from the runs' records."""
from __future__ import annotations

import json
import tarfile

# stands in for python: `-m vision_mamba.cli bench` writes a record per (res, batch) whose img/s encodes the
# settings it saw (VISION_MAMBA_TRITON_PREP_WEIGHTS=1 -> +10, ONEPASS_SHARE=32 -> +20, the baseline: 200); the
# summary script (python -) runs for real
STUB_PYTHON = r"""#!/usr/bin/env bash
if [ "$1" = - ]; then exec "$STUB_REAL_PYTHON" "$@"; fi
exec "$STUB_REAL_PYTHON" - "$@" <<'PY'
import json, os, sys
from pathlib import Path
argv = sys.argv[1:]
env = {k: v for k, v in os.environ.items() if k.startswith("VISION_MAMBA_")}
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({"argv": argv, "env": env}) + "\n")
if "bench" in argv:
    get = lambda k: argv[argv.index(k) + 1]
    model = get("--models")
    speed = 200.0 if model.startswith("deit") else 100.0
    speed += 10 * (env.get("VISION_MAMBA_TRITON_PREP_WEIGHTS") == "1")
    speed += 20 * (env.get("VISION_MAMBA_TRITON_ONEPASS_SHARE") == "32")
    recs = [dict(model=model, res=int(r), batch=int(b), dtype=get("--dtype"), img_s=speed)
            for r, b in zip(get("--res").split(","), get("--batch").split(","))]
    Path(get("--out"), get("--name") + ".json").write_text(json.dumps(recs))
PY
"""


def test_env_ab_runs_each_setting_and_summarises(tmp_path, run_device_script):
    out = tmp_path / "out"
    calls = run_device_script("device_env_ab.sh", STUB_PYTHON, OUT=str(out), TEST_K="prep", ROUNDS="2",
                              RES="1248,224", BATCH="1,128",
                              SETTINGS="- PREP_WEIGHTS=1 ONEPASS_SHARE=32,VISION_MAMBA_TRITON_GLUON_STAGED=32")
    tests, runs = calls[0], calls[1:]
    assert tests["argv"][-2:] == ["-k", "prep"]
    names = [c["argv"][c["argv"].index("--name") + 1] for c in runs]
    assert names == ["base", "s0_r1", "s1_r1", "s2_r1", "s0_r2", "s1_r2", "s2_r2"]
    # each setting's variables reach its own runs only
    want = [{}, {}, {"VISION_MAMBA_TRITON_PREP_WEIGHTS": "1"},
            {"VISION_MAMBA_TRITON_ONEPASS_SHARE": "32", "VISION_MAMBA_TRITON_GLUON_STAGED": "32"}]
    assert [c["env"] for c in runs[:4]] == want and [c["env"] for c in runs[4:]] == want[1:]
    assert runs[0]["argv"][runs[0]["argv"].index("--models") + 1] == "deit_tiny"
    with tarfile.open(out / "env_ab.tgz") as tar:
        summary = tar.extractfile("env_ab/summary.txt").read().decode()
        settings = tar.extractfile("env_ab/settings.txt").read().decode()
    assert settings.splitlines()[1] == "s1 PREP_WEIGHTS=1"
    assert "vim_tiny 1248 px / batch 1 bf16 (baseline 200.0 img/s)" in summary
    assert "s1 PREP_WEIGHTS=1: 110.0 / 110.0 img/s, 1.100x s0, 0.550x baseline" in summary
    assert "1.200x s0, 0.600x baseline" in summary
