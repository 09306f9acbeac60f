"""Run directories: created once, with the resolved configuration saved next to the results."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import yaml


def save_config(config: Dict[str, Any], path: "str | Path") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def prepare_run_dir(output: "str | Path", config: Dict[str, Any], filename: str = "config.yaml") -> Path:
    """Create ``output`` and write the resolved ``config`` into it as YAML."""
    run_dir = Path(output)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / filename)
    return run_dir
