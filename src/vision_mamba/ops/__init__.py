"""Functions without parameters: the selective scan, the causal conv, the bidirectional mixer op, Add -> RMSNorm."""
from .backend import BACKENDS, get_scan_backend, resolve_backend, scan_backend, set_scan_backend
from .conv1d import causal_conv1d_ref
from .mamba_inner import DirectionParams, bimamba_inner_composed, bimamba_inner_fn
from .rms_norm import add_rms_norm, add_rms_norm_ref
from .selective_scan import selective_scan_chunked, selective_scan_fn, selective_scan_ref

__all__ = [
    "BACKENDS", "get_scan_backend", "resolve_backend", "scan_backend", "set_scan_backend",
    "add_rms_norm", "add_rms_norm_ref", "causal_conv1d_ref", "DirectionParams", "bimamba_inner_composed", "bimamba_inner_fn",
    "selective_scan_chunked", "selective_scan_fn", "selective_scan_ref",
]
