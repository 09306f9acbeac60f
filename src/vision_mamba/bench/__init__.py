"""Benchmarks: Vim against DeiT (timm), speed and memory, as in the paper's Figure 1.

``vision-mamba bench`` is the command (:mod:`.command`); :mod:`.core` measures one case at a time and formats the
table; :mod:`.plot` draws the figure.
"""
from .core import (ATTENTIONS, DTYPES, MODEL_ALIASES, MODES, BenchConfigError, Case, Settings, display_name,
                   format_table, make_cases, read_records, resolve_model_name, run_case, run_cases, set_attention,
                   write_records)

__all__ = [
    "ATTENTIONS", "DTYPES", "MODEL_ALIASES", "MODES", "BenchConfigError", "Case", "Settings", "display_name",
    "format_table", "make_cases", "read_records", "resolve_model_name", "run_case", "run_cases", "set_attention",
    "write_records",
]
