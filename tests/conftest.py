"""Shared test plumbing: real data through $VISION_MAMBA_DATA, clean skips for GPU / Triton / data tests."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

# Without a GPU, the Triton kernels are tested under Triton's interpreter on the CPU. The variable must be set
# before triton is first imported (importing torch or timm imports it), or its own library functions are
# compiled-mode and cannot run in the interpreter.
if not glob.glob("/dev/nvidia[0-9]*") and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

import vision_mamba  # noqa: F401,E402  (registers the models with timm)

torch.set_num_threads(min(2, torch.get_num_threads()))


def data_root() -> Optional[Path]:
    """The folder holding imagenette-160/ and coco128/ (set VISION_MAMBA_DATA), or None."""
    value = os.environ.get("VISION_MAMBA_DATA")
    return Path(value) if value and Path(value).is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("real-data test: set VISION_MAMBA_DATA to the folder holding imagenette-160/ and coco128/")
    return root


@pytest.fixture
def run_device_script(tmp_path):
    """Runs ``benchmarks/<script>`` here with a stand-in for python: ``stub``, a bash script that logs each call as
    a JSON line to $STUB_LOG (the real python is $STUB_REAL_PYTHON). No VISION_MAMBA_ variable of this process
    reaches the script. Returns the logged calls; fails the test if the script does."""
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and timeout")

    def run(script: str, stub: str, **env_vars: str) -> list:
        python = tmp_path / "python"
        python.write_text(stub)
        python.chmod(0o755)
        log = tmp_path / "calls.log"
        env = dict(os.environ, PYTHON=str(python), STUB_REAL_PYTHON=shutil.which("python3") or shutil.which("python"),
                   STUB_LOG=str(log), **env_vars)
        env = {k: v for k, v in env.items() if not k.startswith("VISION_MAMBA_")}
        proc = subprocess.run(["bash", str(Path(__file__).resolve().parents[1] / "benchmarks" / script)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return run


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_triton = pytest.mark.skip(reason="needs Triton")
    skip_data = pytest.mark.skip(reason="real-data test: set VISION_MAMBA_DATA")
    _skip_slow(config, items)
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "triton" in item.keywords and not _triton_importable():
            item.add_marker(skip_triton)
        if "data" in item.keywords and data_root() is None:
            item.add_marker(skip_data)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure(config):
    if config.getoption("--runslow"):
        return
    # slow tests are skipped by default; `pytest --runslow` (or -m slow) runs them
    markexpr = config.getoption("-m", default="")
    if "slow" in (markexpr or ""):
        config.option.runslow_from_marker = True


def _skip_slow(config, items):
    if config.getoption("--runslow") or getattr(config.option, "runslow_from_marker", False):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
