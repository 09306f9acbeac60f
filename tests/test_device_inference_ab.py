"""benchmarks/device_inference_ab.sh, run here with a stand-in for python: which tests, scan settings and
environment each part passes on."""
from __future__ import annotations

import json

# stands in for python: logs, one JSON line a call, the arguments and the scan's launch settings in the environment
STUB_PYTHON = r"""#!/usr/bin/env bash
exec "$STUB_REAL_PYTHON" - "$@" <<'EOF'
import json, os, sys
keys = ("ONEPASS_TPC", "ONEPASS_UNROLL", "GLUON_STAGED_UNROLL", "ONEPASS_SHARE")
env = {k: os.environ.get("VISION_MAMBA_TRITON_" + k) for k in keys}
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "env": env}) + "\n")
EOF
"""


def test_inference_ab_passes_the_settings_on(tmp_path, run_device_script):
    calls = run_device_script("device_inference_ab.sh", STUB_PYTHON, OUT=str(tmp_path / "out"), PACK="0",
                              TEST_K="lanes_share", SETTINGS="0 -1 2:4 -1::8 4:4:0")
    tests, scan, benches = calls[0], calls[1], calls[2:]
    assert tests["argv"][:3] == ["-u", "-m", "pytest"] and tests["argv"][-2:] == ["-k", "lanes_share"]
    # the scan's default launch settings are a JSON list (the default sits in a variable: braces inside ${...:-}
    # would end the expansion early)
    configs = json.loads(scan["argv"][scan["argv"].index("--forward-configs") + 1])
    assert configs[0] == {"onepass_tpc": 0} and len(configs) == 6
    # DeiT first, then each setting T:U:S; a field left out or empty keeps the code's default (unset)
    assert benches[0]["argv"][benches[0]["argv"].index("--models") + 1] == "deit_tiny"
    got = [(b["env"]["ONEPASS_TPC"], b["env"]["ONEPASS_UNROLL"], b["env"]["GLUON_STAGED_UNROLL"],
            b["env"]["ONEPASS_SHARE"], b["argv"][b["argv"].index("--name") + 1]) for b in benches[1:]]
    assert got == [("0", None, None, None, "bench_tpc0_1"), ("-1", None, None, None, "bench_tpc-1_1"),
                   ("2", "4", "4", None, "bench_tpc2_4_1"), ("-1", None, None, "8", "bench_tpc-1__8_1"),
                   ("4", "4", "4", "0", "bench_tpc4_4_0_1")]
