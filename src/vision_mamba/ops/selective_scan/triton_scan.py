"""Autograd functions and launch logic around the Triton kernels (``triton_kernels.py``): the ``triton`` backend.

Two entry points:
- :func:`selective_scan_triton`: the generic single-direction scan (same contract as ``selective_scan_ref``).
- :func:`bimamba_inner_triton`: Vim's whole bidirectional mixer between in_proj and out_proj: one conv launch
  for both directions, x_proj as one batched matmul, one scan launch for both directions with dt_proj + softplus, D,
  silu(z) folded in, and the (forward + backward) / 2 combine folded into out_proj.
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import triton
from torch import Tensor

from ..fast_launch import fast
from .triton_kernels import (
    adjoint_chunk_kernel,
    chunk_carry_kernel,
    conv_bwd_dir_kernel,
    conv_bwd_input_kernel,
    conv_bwd_walk_kernel,
    conv_fwd_kernel,
    conv_fwd_walk_kernel,
    mixer_weights_kernel,
    prep_weights_kernel,
    pair_sum_kernel,
    scan_bwd_kernel,
    scan_fwd_kernel,
)

SAVE_EVERY = 16  # the forward pass saves the state every SAVE_EVERY steps for the backward pass (the default)
# ... every SAVE_EVERY / 2 steps below SHORT_SEQUENCE and every 2 * SAVE_EVERY from LONG_SEQUENCE on. Measured in
# the whole Vim-Ti training step (docs/kernels.md, "Session 7"): at 224 px (197 tokens) 8 instead of 16 is 4.9%
# faster for 37% more memory (4.4 -> 6.0 GiB at batch 128); at 1248 px (6,085 tokens) 32 instead of 16 costs 1.2%
# of the speed for 21% less memory (16.2 -> 12.8 GiB at batch 16), at 512 px 2.6% for 21%.
SHORT_SEQUENCE = 1024
LONG_SEQUENCE = 4096
# Fused multiply-adds on, as every kernel here was measured and tested (Triton 3.9 warns that its default will turn
# them off in 3.10; asking explicitly keeps the numerics and the speed across versions).
FP_FUSION = dict(enable_fp_fusion=True)


def _cdiv(a: int, b: int) -> int:
    """ceil(a / b) for launch arithmetic on the host. (``triton.cdiv`` and ``triton.next_power_of_2`` are
    constexpr functions in Triton 3.6: called from Python they unwrap their arguments first, ~2-4 us a call on the
    H200's host, and planning one scan launch made dozens of such calls: 23 us for ``_forward_plan`` alone.)"""
    return -(-a // b)


def _next_pow2(n: int) -> int:
    """The smallest power of two >= n (n >= 1), on the host."""
    return 1 << (n - 1).bit_length()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


# Every environment variable the launch logic reads. _config() runs at every op call, and reading ~30 variables
# through os.environ each time was a visible part of an eager forward's host time (cProfile of Vim-Ti on the H200:
# 8,191 os.environ lookups per 10 forwards); the parsed dict is now cached on their raw values, read straight from
# os.environ's underlying dict where there is one.
_ENV_KEYS = ("VISION_MAMBA_POISON",) + tuple(
    "VISION_MAMBA_TRITON_" + k for k in (
        "BLOCK_E", "WARPS", "BWD_BLOCK_E", "BWD_WARPS", "PREFETCH", "AHEAD", "BWD_AHEAD", "DELTA", "CONV_BLOCK_L",
        "CONV_TILES", "CONV_WARPS", "CONV_BWD_ROWS", "CONV_BWD_WARPS", "CONV_BWD_INPUT_ROWS",
        "CONV_BWD_INPUT_WARPS", "CONV_BWD_INPUT_TILES", "CONV_BWD_PROGRAMS", "MAXNREG", "BWD_MAXNREG", "PARAMS_T",
        "BWD_PARAMS_T", "MIN_PROGRAMS", "SAVE_EVERY", "RECOMPUTE_CONV", "GLUON", "GLUON_BWD", "ROWS_FP32",
        "GLUON_SMEM_STEPS", "GLUON_ONEPASS", "GLUON_WALK_PREFETCH", "ROWS_PAD", "GLUON_STAGED",
        "GLUON_BWD_STAGED", "GLUON_BWD_PARTS", "GLUON_BWD_PART_MAX", "GLUON_BWD_STAGED_STEPS", "GLUON_BWD_ATOMIC_BC",
        "GLUON_BWD_STAGED_STEPS_WIDE", "GLUON_TRAIN_STAGED", "TRAIN_STAGED_MAXNREG", "GLUON_CHAIN",
        "ONEPASS_TPC", "ONEPASS_CPT", "ONEPASS_MIN_CHANNELS", "ONEPASS_MIN_CHANNELS_WIDE",
        "ONEPASS_UNROLL", "GLUON_STAGED_UNROLL", "ONEPASS_SHARE", "LANES_CHUNK_WARPS", "LANES_RANK_SPLIT",
        "LANES_TPC", "LANES_WARPS", "LANES_HIGH", "ONEPASS_MIN_CHANNELS_SHORT", "ONEPASS_SHORT_TOKENS",
        "LANES_ALWAYS", "STAGED_MIN_PROGRAMS", "GATE_TANH",
        "INTERLEAVE", "PREP_WEIGHTS", "CONV_WALK", "CONV_WALK_ROWS", "CONV_WALK_BLOCK_E", "CONV_WALK_WARPS",
        "CONV_BWD_WALK", "CONV_BWD_WALK_ROWS", "CONV_BWD_WALK_BLOCK_E", "CONV_BWD_WALK_WARPS"))
_ENV_KEYS_RAW = None
_CONFIG_CACHE = {}


def _env_values() -> tuple:
    """The raw values of :data:`_ENV_KEYS` (None where unset), cheaply."""
    global _ENV_KEYS_RAW
    data = getattr(os.environ, "_data", None)
    if os.name == "posix" and isinstance(data, dict):
        if _ENV_KEYS_RAW is None:
            _ENV_KEYS_RAW = tuple(os.environ.encodekey(k) for k in _ENV_KEYS)
        return tuple(map(data.get, _ENV_KEYS_RAW))
    return tuple(map(os.environ.get, _ENV_KEYS))


def _settings() -> dict:
    """The parsed launch parameters, shared: read them, never change them (:func:`_config` gives a copy)."""
    key = _env_values()
    cfg = _CONFIG_CACHE.get(key)
    if cfg is None:
        if len(_CONFIG_CACHE) > 64:
            _CONFIG_CACHE.clear()
        cfg = _CONFIG_CACHE[key] = _read_config()
    return cfg


def _config():
    """Launch parameters (overridable by environment variables, for tuning sweeps): a fresh dict, parsed again
    only when one of the variables changed."""
    return dict(_settings())


def _read_config():
    return dict(
        poison=os.environ.get("VISION_MAMBA_POISON") == "1",  # _new: kernel outputs filled with NaN (tests)
        # channels per program (one warp), forward and backward; 0: chosen per launch shape (_forward_block_e,
        # _backward_block_e)
        block_e=_env_int("VISION_MAMBA_TRITON_BLOCK_E", 0),
        num_warps=_env_int("VISION_MAMBA_TRITON_WARPS", 1),
        bwd_block_e=_env_int("VISION_MAMBA_TRITON_BWD_BLOCK_E", 0),
        bwd_num_warps=_env_int("VISION_MAMBA_TRITON_BWD_WARPS", 1),
        prefetch=_env_int("VISION_MAMBA_TRITON_PREFETCH", 1),  # forward: 1, 2 or 4 steps ahead
        # forward: delta and the gate of the next step computed during the current one (needs prefetch 1);
        # -1: where it measured faster (_forward_ahead)
        ahead=_env_int("VISION_MAMBA_TRITON_AHEAD", -1),
        # backward: its recomputed delta a step ahead, and the gate's gradient factors a step ahead in its walk
        # (measured as fast or faster at every shape)
        bwd_ahead=_env_int("VISION_MAMBA_TRITON_BWD_AHEAD", 1),
        # Vim's mixer: delta from a batched matmul before the scan ("matmul") or dt_proj folded into it ("fold")
        delta=os.environ.get("VISION_MAMBA_TRITON_DELTA", "fold"),
        # conv forward: rows per tile, tiles per program, warps
        conv_block_l=_env_int("VISION_MAMBA_TRITON_CONV_BLOCK_L", 16),
        conv_tiles=_env_int("VISION_MAMBA_TRITON_CONV_TILES", 2),
        conv_warps=_env_int("VISION_MAMBA_TRITON_CONV_WARPS", 2),
        # conv forward as a walk down the rows (conv_fwd_walk_kernel: each row of x loaded once, into a window of
        # seven rows in registers) instead of tiles (0): rows per program about this many (rounded to a multiple of
        # 8 that splits the sequence evenly), channels per program and warps. On since session 29 (H100, Vim-Ti
        # shapes: 0.032 -> 0.025 ms at 224 px / batch 128, 0.108 -> 0.094 at 1248 / 16)
        conv_walk=_env_int("VISION_MAMBA_TRITON_CONV_WALK", 1),
        conv_walk_rows=_env_int("VISION_MAMBA_TRITON_CONV_WALK_ROWS", 48),
        conv_walk_block_e=_env_int("VISION_MAMBA_TRITON_CONV_WALK_BLOCK_E", 64),
        conv_walk_warps=_env_int("VISION_MAMBA_TRITON_CONV_WALK_WARPS", 1),
        # conv backward as one walk down the rows (conv_bwd_walk_kernel: g_pre kept in registers, d x and the weight
        # sums in the same pass) instead of two passes over tiles (0): rows, channels per program, warps. On since
        # session 29 (H100: 0.090 -> 0.045 ms at 224 px / batch 128, 0.343 -> 0.142 at 1248 / 16)
        conv_bwd_walk=_env_int("VISION_MAMBA_TRITON_CONV_BWD_WALK", 1),
        conv_bwd_walk_rows=_env_int("VISION_MAMBA_TRITON_CONV_BWD_WALK_ROWS", 96),
        conv_bwd_walk_block_e=_env_int("VISION_MAMBA_TRITON_CONV_BWD_WALK_BLOCK_E", 64),
        conv_bwd_walk_warps=_env_int("VISION_MAMBA_TRITON_CONV_BWD_WALK_WARPS", 1),
        # inference: the conv's output (which the scan overwrites with y) stored [B, L, 2, E], a token's directions
        # side by side, so that out_proj((y_f + y_b) / 2) is one product with K = 2E instead of a product and an
        # accumulating one (which reads and writes its [B, L, D] output again); 0: stored [2, B, L, E]
        interleave=_env_int("VISION_MAMBA_TRITON_INTERLEAVE", 1),
        # inference under the Triton backend: every layer's mixer weights (in_proj's cast under autocast, x_proj's
        # padded pair, out_proj's halves) made in one launch a forward (prepare_inference_weights) instead of two or
        # three launches a layer; 0: a layer at a time. On since session 29 (H100, graphed Vim-Ti: +1.8% at 224 px /
        # batch 128, +3.3% at 1248 px / batch 1, +0.3% at 1248 / 16)
        prep_weights=_env_int("VISION_MAMBA_TRITON_PREP_WEIGHTS", 1),
        # conv backward: rows per tile and warps of the first pass (g_pre, weight gradients; rows of 8 keep its ten
        # accumulators in registers) and of the second (d x; also its tiles per program)
        conv_bwd_rows=_env_int("VISION_MAMBA_TRITON_CONV_BWD_ROWS", 8),
        conv_bwd_warps=_env_int("VISION_MAMBA_TRITON_CONV_BWD_WARPS", 2),
        conv_bwd_input_rows=_env_int("VISION_MAMBA_TRITON_CONV_BWD_INPUT_ROWS", 16),
        conv_bwd_input_warps=_env_int("VISION_MAMBA_TRITON_CONV_BWD_INPUT_WARPS", 2),
        conv_bwd_input_tiles=_env_int("VISION_MAMBA_TRITON_CONV_BWD_INPUT_TILES", 1),
        # conv backward's first pass: split the rows into chunks until there are this many programs (-1: as the
        # scan, min_programs)
        conv_bwd_programs=_env_int("VISION_MAMBA_TRITON_CONV_BWD_PROGRAMS", -1),
        # register cap per thread (0: the compiler's choice): fewer registers, more warps in flight per SM
        maxnreg=_env_int("VISION_MAMBA_TRITON_MAXNREG", 0),
        bwd_maxnreg=_env_int("VISION_MAMBA_TRITON_BWD_MAXNREG", 0),
        # how the parameter tiles are loaded (see _direction_params): -1 = what suits this Triton version
        params_t=_env_int("VISION_MAMBA_TRITON_PARAMS_T", -1),
        bwd_params_t=_env_int("VISION_MAMBA_TRITON_BWD_PARAMS_T", -1),
        # chunk-parallel forward and backward when there are fewer programs than this (0: never; -1: 8 per SM)
        min_programs=_env_int("VISION_MAMBA_TRITON_MIN_PROGRAMS", -1),
        # steps between the states the forward saves for the backward, which recomputes each block of this many
        # steps into a per-program scratch (its size sets how much of the scratch stays in L2); 0: by sequence
        # length (_save_every)
        save_every=_env_int("VISION_MAMBA_TRITON_SAVE_EVERY", 0),
        # training (dt_proj folded in): recompute the conv's output in the backward pass instead of keeping it
        # (1: -[2, B, L, E] activations per block for one conv launch more; 0: keep it)
        recompute_conv=_env_int("VISION_MAMBA_TRITON_RECOMPUTE_CONV", 1),
        # the scan in Gluon (gluon_kernels.py) for Vim's mixer on CUDA, forward and backward separately: 1 / 0;
        # -1, the default: where it measured faster (_gluon_forward_kind; the backward where a block's recomputed
        # states stay in shared memory: save intervals up to gluon_smem_steps; docs/kernels.md, "Session 8").
        # x_proj's rows in fp32: 1 / 0; -1: where a Gluon kernel reads them (rows_in_fp32)
        gluon=_env_int("VISION_MAMBA_TRITON_GLUON", -1),
        gluon_bwd=_env_int("VISION_MAMBA_TRITON_GLUON_BWD", -1),
        rows_fp32=_env_int("VISION_MAMBA_TRITON_ROWS_FP32", -1),
        # the Gluon backward keeps a block's recomputed states in shared memory up to this save interval (above
        # it, in a global scratch)
        gluon_smem_steps=_env_int("VISION_MAMBA_TRITON_GLUON_SMEM_STEPS", 8),
        # one-pass inference launches get the session-7 Gluon kernel (measured faster; 0: the general one)
        gluon_onepass=_env_int("VISION_MAMBA_TRITON_GLUON_ONEPASS", 1),
        # inference that the plan would split into chunks (long sequences, small batches) in one pass instead,
        # with each channel's states split over this many lanes (2, 4, 8, ...) and onepass_cpt channels a thread
        # (_onepass_tpc); 0: off (the chunked launches); -1: _lanes_tpc's lanes where the launch has at least
        # onepass_min_channels channels (batch x directions x E), else chunked. Measured on an H100 (docs/kernels.md,
        # "Session 23" and "Session 24"): Vim-Ti's scan at 512 px / batch 32 0.587 -> 0.268 ms, 738 px / batch 32
        # 1.195 -> 0.549 (24,576 channels), 512 px / batch 24 0.439 -> 0.266 (18,432), 1248 px / batch 20 2.126 ->
        # 1.302 (15,360), batch 17 1.761 -> 1.293 (13,056); at 1024 and 1248 px / batch 16 (12,288 channels) 8%
        # slower than chunked, at batch 1 7x slower. Since session 26 (the kernel below whose lanes share a
        # channel's work, onepass_share) 12,288: 1248 and 1024 px / batch 16 1.187 -> 0.853 and 0.809 -> 0.576 ms
        # (the smallest measured win then); at 6,144 channels (batch 8) 3% slower than chunked. Since session 34
        # 7,680: the whole model at 1248 px (H100, graphed bf16, against the chunked lanes kernel) batch 10 (7,680)
        # +17.2%, 11 +17.2%, 12 +3.5% (4 lanes), 13 +4.9% (2 lanes) / +7.7% (4); batch 8 +0.8% (one round: a tie, as
        # the scan alone in session 33); batch 9 not measured. With 2 lanes, batches 10 and 11 make 480 and 528 warps:
        # at most one a scheduler, and the chunked launch pays a second pass and the carry. Since session 35 6,144
        # (batch 8), and 1,536 (batch 2) for sequences of up to 577 tokens (384 px; onepass_min_channels_short,
        # onepass_short_tokens): the whole model, one pass against chunked (H100, graphed bf16; docs/kernels.md,
        # "Session 35"), at 6,144 channels 224 px +30.2%, 512 px +10.9%, 738 px +4.2%, 1024 px +1.0%, 1248 px +0.8%
        # (session 34); at 1,536 - 4,608 224 px batch 2 +7.6%, 3 +15.3%, 4 +25.8%, 320 px batch 4 +13.3%, 384 px
        # batch 4 +8.7%, 6 +3.9%; longer sequences lose there (512 px batch 4 -1.3%, 738 px batch 4 -11.1%), and so
        # does batch 1 (224 px -1.4%, 512 px -38.8%).
        # onepass_min_channels_wide: the same for a dt rank padded past 16 (Vim-S's 24, Vim-B's 48), whose chunked
        # launches are slower (twice the work for delta a step): Vim-S whole at 1248 px (docs/kernels.md, "Session
        # 25"), one pass against chunked: batch 2 0.61x, 4 and 5 1.00x, 6 (9,216 channels) 1.12x, 8 1.57x, 9 1.59x;
        # since session 37 from 6,144 channels, where one pass won at every length measured (H100, graphed bf16,
        # Vim-S batch 4: 224 px +29.7%, 384 px +20.6%, 512 px +13.6%, 738 px +5.2%, 1024 px +3.2%, 1248 px +2.4%;
        # docs/kernels.md, "Session 37"); Vim-B not measured
        onepass_tpc=_env_int("VISION_MAMBA_TRITON_ONEPASS_TPC", -1),
        onepass_cpt=_env_int("VISION_MAMBA_TRITON_ONEPASS_CPT", 1),
        onepass_min_channels=_env_int("VISION_MAMBA_TRITON_ONEPASS_MIN_CHANNELS", 6144),
        onepass_min_channels_short=_env_int("VISION_MAMBA_TRITON_ONEPASS_MIN_CHANNELS_SHORT", 1536),
        onepass_short_tokens=_env_int("VISION_MAMBA_TRITON_ONEPASS_SHORT_TOKENS", 577),
        onepass_min_channels_wide=_env_int("VISION_MAMBA_TRITON_ONEPASS_MIN_CHANNELS_WIDE", 6144),
        # steps a pass of the staged kernel's loop (scan_fwd_staged_gluon_kernel's UNROLL: straight code the
        # compiler can overlap, step after step) for those launches with lanes a channel (onepass_unroll), and
        # for one-pass inference launches with a thread a channel and a dt rank up to 16 (gluon_staged_unroll;
        # a wider rank: 1); 1: a step a pass. 4 for both, measured on an H100 (docs/kernels.md, "Session 26"): 2
        # lanes at 738 px / batch 32 0.549 -> 0.512 ms, 1248 px / batch 24 1.559 -> 1.458 ms; a thread a channel,
        # Vim-Ti at 224 px / batch 128 0.134 -> 0.132 ms (the whole model +0.6%; Vim-S there, its rank 24, -6%)
        onepass_unroll=_env_int("VISION_MAMBA_TRITON_ONEPASS_UNROLL", 4),
        gluon_staged_unroll=_env_int("VISION_MAMBA_TRITON_GLUON_STAGED_UNROLL", 4),
        # 1: inference launches that the plan does not split into chunks (short sequences at large batches) also
        # in the lanes kernel (onepass_tpc lanes a channel, or _lanes_tpc's), not a thread a channel; 0: off
        lanes_always=_env_int("VISION_MAMBA_TRITON_LANES_ALWAYS", 0),
        # and by default (-1) where the staged kernel's programs would not fill the SMs once (_staged_underfills); a
        # count of programs below which they do not; 0: never
        staged_min_programs=_env_int("VISION_MAMBA_TRITON_STAGED_MIN_PROGRAMS", -1),
        # one-pass inference launches (the staged and lanes kernels): 1: the gate's sigmoid by tanh.approx (one
        # special function, not two), where y is in 16 bits; 0: off (measured +0.5 - 1.4% on the whole model, one
        # round: docs/kernels.md, "Session 35")
        gate_tanh=_env_int("VISION_MAMBA_TRITON_GATE_TANH", 0),
        # those launches with lanes a channel (staged, a channel a thread) in scan_fwd_lanes_gluon_kernel instead,
        # where the lanes of a channel share its work of a step (delta and the gate, a step's lane each), with
        # onepass_share steps a pass (at least the lanes, at most the stage: _lanes_unroll); 0: off. 8 since
        # session 26 (docs/kernels.md, "Session 26"; H100, Vim-Ti's scan with 2 lanes, scan_fwd_staged_gluon_kernel
        # at 4 steps a pass -> this one at 8: 1248 px / batch 16 1.126 -> 0.853 ms, 1024 / 16 0.760 -> 0.576, 738 /
        # 32 0.513 -> 0.420, 512 / 32 0.251 -> 0.207, 1248 / 24 1.457 -> 1.170; with 4 lanes a channel it is slower
        # than the staged kernel)
        # Since session 28 16, cut to the stage (_lanes_unroll: 16 on bf16 activations, 8 on fp32); measured on an
        # H100 (docs/kernels.md, "Session 28"; Vim-Ti's scan 8 -> 16: 1248 px / batch 16 0.859 -> 0.779 ms, 1024 /
        # 16 0.580 -> 0.527, 738 / 32 0.422 -> 0.410; the whole model 1248 / 16 515.3 -> 554.8 img/s)
        onepass_share=_env_int("VISION_MAMBA_TRITON_ONEPASS_SHARE", 16),
        # inference that stays chunked (fewer channels than onepass_min_channels) in chunks of that kernel, 2 lanes
        # a channel (_launch_lanes_chunked: a first pass to each chunk's end state, the carry, a second pass that
        # writes y), cut into as many chunks as make this many one-warp programs an SM; 0: off (the Triton kernels'
        # chunks). Measured on an H100 (docs/kernels.md, "Session 27"; Vim-Ti's scan, the Triton chunks on bf16 rows
        # -> 24 warps an SM on fp32 rows): 1248 px / batch 1 0.124 -> 0.078 ms, batch 4 0.358 -> 0.265, batch 8
        # 0.615 -> 0.506, 738 px / batch 8 0.281 -> 0.188 (8 and 16 warps: up to 24% and 7% slower than 24; 32:
        # within 5%). The whole model at 1248 px / batch 1: 247.5 -> 345.4 img/s
        lanes_chunk_warps=_env_int("VISION_MAMBA_TRITON_LANES_CHUNK_WARPS", 24),
        # that kernel's W_dt dt_low over dt_low's R columns in two parts whose widths are powers of two
        # (_rank_split: Vim-Ti's 12 = 8 + 4), instead of over the next power of two (16, four of them zeros); 0:
        # off. Measured on an H100 (docs/kernels.md, "Session 31"; Vim-Ti's scan, off -> on): 738 px / batch 32
        # 0.381 -> 0.373 ms, 1248 px / batch 8 (chunks) 0.483 -> 0.468
        lanes_rank_split=_env_int("VISION_MAMBA_TRITON_LANES_RANK_SPLIT", 1),
        # inference that runs in one pass by the rule above (onepass_tpc -1): lanes_tpc lanes a channel, and
        # programs of that kernel (onepass_share) of lanes_warps warps (32 lanes_warps / tpc channels; one warp where
        # E is no multiple of that; -1: one warp for 2 lanes, 4 for more, _lanes_warps). lanes_tpc -1 (_lanes_tpc):
        # 4 where the busiest scheduler's warps, counted in whole waves, take less time than with 2 (a 4-lane warp's
        # pass ~0.6 of a 2-lane one's, _LANES4_COST), for a dt rank padded to 16 as Vim-Ti's (Vim-S's 24: 4 lanes
        # measured 2% slower at 1248 px / batch 8, 7.5% at 12), else 2: with 132 SMs, 4 lanes at 8,449 - 12,672
        # channels (Vim-Ti batches 12 - 16; and up to 4,224, kept chunked above). Measured on an H100
        # (docs/kernels.md, "Session 33" and "Session 34"; Vim-Ti, lanes_high on), 2 -> 4 lanes at 12,288 channels:
        # the scan at 1248 px / batch 16 0.687 -> 0.648 ms, 1024 / 16 0.465 -> 0.438, 738 / 16 0.242 -> 0.228; the
        # whole model at 1248 / 16 608 -> 629 img/s, 1024 / 16 896 -> 928; at 1248 px / batches 12, 13, 14 +3.6%,
        # +2.6%, +2.6%; batches 17, 18, 20 -11.6%, -11.3%, -9.3% (their busiest scheduler: 4 warps of 4 lanes against
        # 2 of 2 lanes), 10 and 11 -0.9% and -1.1% (2 against 1).
        # At 24,576 channels (738 px / batch 32) 2 lanes stay: 0.363 against 0.436 ms. Before lanes_high, 4 lanes
        # lost (1248 / 16: 1.038 ms; session 32: programs of 1, 2, 4 warps 1.137, 1.063, 1.037; one-warp programs
        # with 4 lanes need stages of 32 steps: 11 programs an SM by shared memory, two waves)
        lanes_tpc=_env_int("VISION_MAMBA_TRITON_LANES_TPC", -1),
        lanes_warps=_env_int("VISION_MAMBA_TRITON_LANES_WARPS", -1),
        # that kernel with a channel's lanes 32 / TPC apart in the warp instead of neighbours (LANE_HI,
        # _lanes_order); 0: neighbours. Nsight Compute at 1248 px / batch 16 (docs/kernels.md, "Session 32" and
        # "Session 33"): with neighbours the 16-byte loads of dt_low's staged rows conflict (a channel's lanes read
        # rows 8 or 4 steps apart in one phase: 8 wavefronts a load with 2 lanes, 16 with 4, ideal 4); 32 / TPC
        # apart they are broadcasts (no excess), 2 lanes' shared wavefronts 138 M -> 96 M, 4 lanes' short-scoreboard
        # stalls 61% -> 25% of samples. Vim-Ti's scan on an H100, 2 lanes: 1248 px / batch 16 0.695 -> 0.687 ms,
        # 738 / 32 0.374 -> 0.363, 1248 / 8 (chunks) 0.469 -> 0.460; the whole model at 1248 / 16 +0.7%
        lanes_high=_env_int("VISION_MAMBA_TRITON_LANES_HIGH", 1),
        # that kernel's inputs staged through shared memory this many steps at a time (asynchronous copies a chunk
        # ahead: scan_fwd_staged_gluon_kernel), where the tensors' alignment allows it (_staged_fits); 0: off.
        # 4 measured fastest (docs/kernels.md, "Session 17": the kernel at 224 px / batch 128 0.164 ms unstaged,
        # 0.147 at 8 steps, 0.134 at 4; the graphed Vim-Ti there 19,6xx -> 20,7xx -> 21,8xx img/s)
        gluon_staged=_env_int("VISION_MAMBA_TRITON_GLUON_STAGED", 4),
        # the Gluon backward (shared-memory scratch) with each block's inputs staged through shared memory by
        # asynchronous copies a block ahead (scan_bwd_staged_gluon_kernel), where the tensors allow it
        # (_bwd_staged_fits); 0: off. On since its GPU tests passed (docs/kernels.md, "Session 17": the kernel at
        # 224 px / batch 128 0.804 -> 0.791 ms, at 128 px / batch 512 1.071 -> 0.967 ms; 166 registers, not 254)
        gluon_bwd_staged=_env_int("VISION_MAMBA_TRITON_GLUON_BWD_STAGED", 1),
        # that kernel differentiates each block in this many parts, the last first, recomputing the block's
        # earlier steps for each; 1: the whole block at once. 2 since session 19 (docs/kernels.md, "Session 19"):
        # 15.4 instead of 24.6 KB of shared memory a program (12 programs an SM instead of 8) for ~11% more
        # instructions; H100, the kernel at 224 px / batch 128: 1 part 0.669 ms, 2 parts 0.616, 4 parts 0.732
        gluon_bwd_parts=_env_int("VISION_MAMBA_TRITON_GLUON_BWD_PARTS", 2),
        # ... and a part is at most this many steps (0: no cap), so that the long sequences' 16- and 32-step blocks
        # keep 8 steps of states in shared memory: 2 and 4 parts (docs/kernels.md, "Session 39": H100, the kernel
        # at 1248 px / batch 16 in 4 parts 5.27 ms, in 8 parts 7.0; at 512 px / batch 32 in 2 parts 1.35, in 4 1.44)
        gluon_bwd_part_max=_env_int("VISION_MAMBA_TRITON_GLUON_BWD_PART_MAX", 8),
        # the staged backward (which holds a part of a block's states in shared memory, not the block's) runs for
        # save intervals up to this, powers of two, whatever gluon_smem_steps says; the long sequences' 16- and
        # 32-step blocks took the Triton backward before session 39 (H100, that kernel at 1248 px / batch 16
        # 6.64 -> 5.27 ms, at 512 px / batch 32 2.07 -> 1.35 ms; the graphed Vim-Ti training step at 1248 px /
        # batch 8 60.7 -> 79.8 img/s, at 512 px / batch 32 401 -> 508 img/s); 8: as before
        gluon_bwd_staged_steps=_env_int("VISION_MAMBA_TRITON_GLUON_BWD_STAGED_STEPS", 32),
        # the same for a dt rank padded past 16 (Vim-S's 24, Vim-B's 48): 16 since session 41 (H100, the graphed
        # Vim-S training step at 512 px / batch 32, 16-step blocks, 210 -> 258 img/s; at 1248 px / batch 8,
        # 32-step blocks, the staged kernel lost: 32.2 -> 29.8 img/s with 32 here; docs/kernels.md, "Session 41")
        gluon_bwd_staged_steps_wide=_env_int("VISION_MAMBA_TRITON_GLUON_BWD_STAGED_STEPS_WIDE", 16),
        # that kernel adds its d B / d C sums over its channels into one fp32 [2, B, L, 2N] gradient by atomic adds
        # (in an order that varies from run to run, as for d A, d D and the delta bias), instead of writing a
        # partial per block of channels for a separate sum over them (E / 32 partials: 77 MB at Vim-Ti's 224 px /
        # batch 128, and a 37 us sum a block); 0: the partials. On since session 20 (docs/kernels.md, "Session
        # 20"; H100: the backward at 224 px / batch 128 0.609 -> 0.585 ms with the sum, the graphed Vim-Ti training
        # step +2%, Vim-S +2.4%)
        gluon_bwd_atomic_bc=_env_int("VISION_MAMBA_TRITON_GLUON_BWD_ATOMIC_BC", 1),
        # the training forward of a sequence in one pass (64 channels a program, states saved for the Gluon
        # backward) in scan_fwd_staged_gluon_kernel with this many steps staged at a time, where _staged_fits
        # allows (else scan_fwd_gluon_kernel); 0: off. 4 since session 18 (docs/kernels.md, "Session 18"; H100:
        # the kernel at 224 px / batch 128 0.249 -> 0.221 ms, 8 steps 0.224; the graphed training step +1.5%)
        gluon_train_staged=_env_int("VISION_MAMBA_TRITON_GLUON_TRAIN_STAGED", 4),
        # the staged one-pass forward (a channel a thread: its sum over a channel's 16 states), the staged
        # backward (those and over 16 dt_low columns) and the lanes kernel (W_dt dt_low + bias, a lane's part of
        # C . h) add as one chain into which the products fuse (FFMA), not by gl.sum; -1: where gl.sum adds a
        # thread's elements in a tree (Triton 3.7 on, whose tree's leaves alone fuse: sm_90, the staged backward's
        # walk 278 instructions a step against 258 chained, the lanes kernel 1,345 against 1,248 a pass of 16
        # steps; kernel_layouts.py --gluon --sass), so that those Tritons compile the order of 3.6, on which these
        # kernels were tuned. On Triton 3.6 (H100) chained or not times within 1% (docs/kernels.md, "Session 41")
        gluon_chain=_env_int("VISION_MAMBA_TRITON_GLUON_CHAIN", -1),
        # that launch's register cap: ptxas gives the kernel 168 registers by itself (12 warps an SM), 136 with this
        # cap and no spills (15 warps; 128: a 4-byte spill); 0: no cap (the three measured within 1% of each other)
        train_staged_maxnreg=_env_int("VISION_MAMBA_TRITON_TRAIN_STAGED_MAXNREG", 136),
        # the Gluon backward's walk prefetches B and C a step ahead (0: loads them in their own step)
        gluon_walk_prefetch=_env_int("VISION_MAMBA_TRITON_GLUON_WALK_PREFETCH", 1),
        # Vim's mixer: x_proj's rows laid out dt_low | zeros | B | C, dt_low's columns padded to a multiple of 8
        # (_rank_cols), so that the matrix products around the scan get 16-byte aligned operands (0: dt_low | B | C)
        rows_pad=_env_int("VISION_MAMBA_TRITON_ROWS_PAD", 1),
    )


def _save_every(cfg, length: int) -> int:
    """Steps between saved states for a sequence of ``length`` steps: the configured value, or by length: speed
    where the saved states are small, memory where they dominate a training step's (see SHORT_SEQUENCE)."""
    if cfg["save_every"]:
        return cfg["save_every"]
    if length < SHORT_SEQUENCE:
        return SAVE_EVERY // 2
    return 2 * SAVE_EVERY if length >= LONG_SEQUENCE else SAVE_EVERY


def _forward_ahead(cfg, block_e: int, save_states: bool, gluon: bool = False) -> bool:
    """Whether the forward computes delta and the gate a step ahead (AHEAD in scan_fwd_kernel): as configured,
    or where it measured faster (docs/kernels.md, "Session 7"): the 128-channel programs (their threads hold 4
    channels' chains; 1248 px / batch 16: 1.38 -> 1.25 ms) and the forward that saves states for training; the
    64-channel inference forward was 4 - 6% slower with it (224 px / batch 128: 0.189 -> 0.197 ms). The Gluon
    forward computes ahead everywhere (session 8: 224 px / batch 128 0.199 -> 0.188 ms, 128 px / batch 512 0.278
    -> 0.257, 1248 px / batch 16 equal, batch 1 0.145 -> 0.148)."""
    if cfg["ahead"] >= 0:
        if cfg["ahead"] and cfg["prefetch"] != 1:
            raise ValueError("VISION_MAMBA_TRITON_AHEAD=1 needs VISION_MAMBA_TRITON_PREFETCH=1")
        return bool(cfg["ahead"])
    return gluon or (cfg["prefetch"] == 1 and (block_e >= 128 or save_states))


def _params_t(value: int, backward: bool) -> bool:
    """PARAMS_T for a kernel (see triton_kernels._direction_params): the configured value, or by default the
    choice whose generated code keeps the time loop free of layout conversions on this Triton version."""
    if value >= 0:
        return bool(value)
    return _params_t_default(backward)


def _params_t_default(backward: bool) -> bool:
    # Read off the generated code (TTGIR / PTX for sm_90) of both kernels with Triton 3.6, 3.7, 3.8 and 3.9:
    # direct loads are conversion-free up to 3.6, transposed loads from 3.7 on (the other choice puts shuffles and
    # shared-memory round trips into the time loop; on 3.6 that doubled the forward's time).
    return _TRITON_VERSION >= (3, 7)


def _chain_sums(cfg) -> bool:
    """The Gluon kernels' CHAIN (see gluon_chain in :func:`_config`)."""
    value = cfg.get("gluon_chain", -1)
    return bool(value) if value >= 0 else _TRITON_VERSION >= (3, 7)


def _version(text: str) -> Tuple[int, int]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (2 - len(parts)))  # type: ignore[return-value]


_TRITON_VERSION = _version(triton.__version__)


def _maxnreg(value) -> dict:
    """The launch option capping registers per thread, when one is set."""
    return dict(maxnreg=int(value)) if value else {}


def _new(*shape, device, dtype) -> Tensor:
    """torch.empty for kernel outputs; filled with NaN when VISION_MAMBA_POISON=1, so that tests see any element a
    kernel failed to write."""
    out = torch.empty(*shape, device=device, dtype=dtype)
    if _settings()["poison"] and out.is_floating_point():
        out.fill_(float("nan"))
    return out


_SM_COUNT = {}


def _sm_count(device: torch.device) -> int:
    """The CUDA device's multiprocessor count (cached: get_device_properties costs the host ~10 us a call)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    count = _SM_COUNT.get(index)
    if count is None:
        count = _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return count


def _min_programs(device: torch.device, configured: int) -> int:
    if configured >= 0:
        return configured
    if device.type != "cuda":
        return 0
    return 8 * _sm_count(device)


def _chunking(programs: int, length: int, min_programs: int, save_every: int = SAVE_EVERY) -> Tuple[int, int]:
    """(number of chunks, steps per chunk) splitting a sequence so that at least ``min_programs`` programs run
    (chunks of at least 4 x 16 steps, a multiple of ``save_every``); (1, length rounded up) when the batch
    already fills the GPU."""
    n_chunks = 1
    min_steps = 4 * 16
    if min_programs and programs < min_programs and length > min_steps:
        n_chunks = min(_cdiv(min_programs, programs), _cdiv(length, min_steps))
    steps = _cdiv(_cdiv(length, n_chunks), save_every) * save_every
    return _cdiv(length, steps), steps


# Channels per program, by launch shape. Wider programs share each step's loads, bf16 unpacking and address
# arithmetic over more state updates, but they are fewer, and they hold more registers (the 128-channel forward:
# 255 per thread, 8 warps per SM). The rules below fit sweeps of both widths over ten Vim-Ti shapes on the H200
# (docs/kernels.md, "Session 5"):
# - forward, 128 vs 64 channels: 128 won only where the sequence is split into chunks anyway and the 128-channel
#   launch, chunked, still fills the GPU in exactly one wave (1024 and 1248 px at batch 16: -17% and -19%); it lost
#   where its chunked launch spilled into a second, mostly empty wave (512 - 738 px at batch 32), where it had
#   fewer programs than the 64-channel one (1248 px, batch 1), and wherever 64 channels ran unchunked.
# - backward, 64 vs 32 channels: 64 won where its launch (chunked if need be) has as many programs as the 32-channel
#   one or at least two waves' worth (1024 / 1248 px at batch 16, batch 256 at 224 px, batch 512 at 128 px: -14 to
#   -16%); it lost where it had fewer (512 - 738 px at batch 32), and tied at 224 px / batch 128.


def _programs(B: int, E: int, block: int, ND: int, L: int, min_programs: int) -> Tuple[int, int]:
    """(programs without chunking, programs after chunking) of a scan launch with ``block`` channels each."""
    programs = B * _cdiv(E, block) * ND
    return programs, programs * _chunking(programs, L, min_programs)[0]


def _fit(block: int, E: int) -> int:
    """Channels per program, no more than E needs (a power of two, at least 16)."""
    return min(block, max(16, _next_pow2(E)))


def _forward_block_e(cfg, B: int, E: int, L: int, ND: int, min_programs: int) -> int:
    if cfg["block_e"]:
        return _fit(cfg["block_e"], E)
    narrow = _fit(64, E)
    if E >= 128 and min_programs:
        base, narrow_total = _programs(B, E, narrow, ND, L, min_programs)
        _, wide_total = _programs(B, E, 128, ND, L, min_programs)
        if base < min_programs and wide_total <= min_programs and 10 * wide_total >= 9 * narrow_total:
            return 128
    return narrow


def _backward_block_e(cfg, B: int, E: int, L: int, ND: int, min_programs: int) -> int:
    if cfg["bwd_block_e"]:
        return _fit(cfg["bwd_block_e"], E)
    narrow = _fit(32, E)
    if E >= 64 and min_programs:
        _, narrow_total = _programs(B, E, narrow, ND, L, min_programs)
        _, wide_total = _programs(B, E, 64, ND, L, min_programs)
        if wide_total >= min(narrow_total, 2 * min_programs):
            return 64
    return narrow


def _rows(t: Tensor, length: int) -> Tuple[int, int]:
    """(batch stride, time stride) of a [B, L, C] or [B * L, C] tensor whose last dim is contiguous."""
    if t.dim() == 2:
        return length * t.stride(0), t.stride(0)
    return t.stride(0), t.stride(1)


def _last_contiguous(t: Optional[Tensor]) -> Optional[Tensor]:
    if t is None:
        return None
    return t if t.stride(-1) == 1 else t.contiguous()


class _ScanArgs:
    """Everything a scan launch needs, gathered once for forward and backward.

    x: [ND, B, L, E]; z: [B, L, E] or None. dt / B / C: per direction, rows of one tensor each (with dt_proj
    folded in: x_proj's output [B*L, R + 2N], dt_low | B | C; otherwise delta [B, L, E], B and C [B, L, N]).
    Direction 1's rows must sit a whole number of elements after direction 0's (``dir_off``), which holds for any
    two tensors of one dtype. Parameters come in (forward, backward) pairs."""

    def __init__(self, x, z, dt, bm, cm, w, bias, a, dskip, *, n_dirs, dir_base, dt_proj, softplus, a_is_log,
                 b_col=0, c_col=0):
        self.x, self.z = x, z
        self.dt, self.bm, self.cm = dt, bm, cm  # pairs
        self.w, self.bias, self.a, self.dskip = w, bias, a, dskip
        self.n_dirs, self.dir_base = n_dirs, dir_base
        self.dt_proj, self.softplus, self.a_is_log = dt_proj, softplus, a_is_log
        self.b_col, self.c_col = b_col, c_col
        _, self.B, self.L, self.E = x.shape
        self.N = a[0].shape[1]
        self.R = w[0].shape[1] if dt_proj else 1
        self.dir_off = _dir_offset(dt) if n_dirs == 2 else 0
        self.bc_dir_off = _dir_offset(bm) if n_dirs == 2 else 0
        assert n_dirs == 1 or _dir_offset(cm) == self.bc_dir_off, "B and C must sit at one offset between directions"

    def param_strides(self):
        """(A's channel and state strides, W_dt's channel and rank strides)."""
        w = self.w[0] if self.dt_proj else None
        return (self.a[0].stride(0), self.a[0].stride(1), w.stride(0) if w is not None else 0,
                w.stride(1) if w is not None else 0)

    def common(self):
        x, z = self.x, self.z
        dt_b, dt_l = _rows(self.dt[0], self.L)
        bc_b, bc_l = _rows(self.bm[0], self.L)
        zt = z if z is not None else x
        return dict(
            tensors=(x, zt, self.dt[0], self.bm[0], self.cm[0], self.dir_off, self.bc_dir_off,
                     self.w[0], self.w[1], self.bias[0], self.bias[1], self.a[0], self.a[1],
                     self.dskip[0], self.dskip[1]),
            strides=(x.stride(0), x.stride(1), x.stride(2), zt.stride(0), zt.stride(1), dt_b, dt_l, bc_b, bc_l),
            flags=dict(N=self.N, BLOCK_R=max(2, _next_pow2(self.R)), DT_PROJ=self.dt_proj,
                       HAS_BIAS=self.bias[0] is not None, SOFTPLUS=self.softplus, HAS_D=self.dskip[0] is not None,
                       HAS_Z=z is not None, A_IS_LOG=self.a_is_log, B_COL=self.b_col, C_COL=self.c_col),
        )


def _dir_offset(pair) -> int:
    """How many elements direction 1's tensor sits after direction 0's (the kernels read both through one base
    pointer and strides; any two tensors of one dtype and one set of strides qualify)."""
    first, second = pair
    assert first.dtype == second.dtype and first.stride() == second.stride(), "directions must share dtype and strides"
    diff = second.data_ptr() - first.data_ptr()
    assert diff % first.element_size() == 0
    return diff // first.element_size()


_DUMMIES = {}


def _dummy(device):
    """A one-element fp32 tensor passed for pointer arguments a launch does not use (its constexpr flags keep the
    kernel from touching it); one per device, cached: no allocation per launch."""
    key = str(device)
    t = _DUMMIES.get(key)
    if t is None:
        t = _DUMMIES[key] = torch.empty(1, device=device, dtype=torch.float32)
    return t


def _or(t, device):
    return t if t is not None else _dummy(device)


_ZEROS = {}


def _zero_state(E: int, N: int, device) -> Tensor:
    """A zero [N, E] state shared by every program that starts from zero (cached: no launch per call)."""
    key = (E, N, str(device))
    if key not in _ZEROS:
        _ZEROS[key] = torch.zeros(N, E, device=device, dtype=torch.float32)
    return _ZEROS[key]


def _forward_plan(cfg, B: int, L: int, E: int, ND: int, device):
    """A forward launch's (min_programs, channels per program, save interval, chunks, steps per chunk)."""
    min_programs = _min_programs(device, cfg["min_programs"])
    block_e = _forward_block_e(cfg, B, E, L, ND, min_programs)
    save_every = _save_every(cfg, L)
    n_chunks, steps = _chunking(B * _cdiv(E, block_e) * ND, L, min_programs, save_every)
    return min_programs, block_e, save_every, n_chunks, steps


def scan_forward(args: _ScanArgs, y_dtype: torch.dtype, save_states: bool, config=None,
                 out: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """y: [B, L, ND, E]; the states saved every ``save_every`` steps (:func:`_save_every`): [B, ND, ceil(L / save_every),
    N, E] fp32 (channels contiguous, or, ahead of the Gluon backward, a view of [..., E, N]: the backward takes
    either). ``out``: where to write y (any [B, L, ND, E] view with unit channel stride), e.g. over the scan's own
    input x ([ND, B, L, E] permuted): each element of x is read by the program that then writes the y element at
    the same place, before it does."""
    try:
        return _scan_forward(args, y_dtype, save_states, config, out)
    except _GluonFailed:  # (Gluon is off now: the same scan on the Triton kernels)
        return _scan_forward(args, y_dtype, save_states, config, out)


def _scan_forward(args: _ScanArgs, y_dtype: torch.dtype, save_states: bool, config=None,
                  out: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    cfg = config or _config()
    if cfg["prefetch"] not in (1, 2, 4):
        raise ValueError(f"VISION_MAMBA_TRITON_PREFETCH must be 1, 2 or 4, got {cfg['prefetch']}")
    B, L, E, N, ND = args.B, args.L, args.E, args.N, args.n_dirs
    dev = args.x.device
    min_programs, block_e, save_every, n_chunks, steps = _forward_plan(cfg, B, L, E, ND, dev)
    n_eb = _cdiv(E, block_e)
    if out is not None:
        assert out.shape == (B, L, ND, E) and out.stride(-1) == 1 and out.dtype == y_dtype
    y = out if out is not None else _new(B, L, ND, E, device=dev, dtype=y_dtype)
    n_save = _cdiv(L, save_every)
    kind = _gluon_forward_kind(cfg, args, dev, block_e, n_chunks, save_states)
    onepass = kind == "onepass" and n_chunks == 1 and not save_states  # (inference the plan does not chunk)
    lanes_always = onepass and (cfg.get("lanes_always", 0) or _staged_underfills(cfg, args, dev))
    tpc = _onepass_tpc(cfg, args, dev, lanes_always) if (n_chunks > 1 or lanes_always) and not save_states else 0
    if onepass and not tpc:  # (a thread a channel; none of the plan below is needed)
        # (steps a pass: for a dt rank up to 16, where it was measured faster)
        unroll = cfg.get("gluon_staged_unroll", 1) if _next_pow2(args.R) <= 16 else 1
        _launch_gluon_onepass(args, y, cfg.get("gluon_staged", 0), unroll=unroll, special=_special(cfg, y_dtype),
                              chain=_chain_sums(cfg))
        return y, None
    if tpc:  # (inference that would be chunked, or fill the GPU's SMs badly: one pass, a channel over lanes)
        _launch_gluon_onepass(args, y, cfg.get("gluon_staged", 0), tpc=tpc, cpt=cfg.get("onepass_cpt", 1),
                              unroll=cfg.get("onepass_unroll", 1), share=cfg.get("onepass_share", 0),
                              r_hi=_rank_split(cfg, args.R), warps=_lanes_warps(cfg, tpc),
                              high=bool(cfg.get("lanes_high", 1)), special=_special(cfg, y_dtype),
                              chain=_chain_sums(cfg))
        return y, None
    lanes_plan = _lanes_chunking(cfg, args, dev) if n_chunks > 1 and not save_states else None
    if lanes_plan is not None:  # (inference that stays chunked: in chunks of the lanes kernel)
        _launch_lanes_chunked(args, y, lanes_plan, r_hi=_rank_split(cfg, args.R),
                              high=bool(cfg.get("lanes_high", 1)), chain=_chain_sums(cfg))
        return y, None
    use_gluon = kind is not None
    ahead = _forward_ahead(cfg, block_e, save_states, gluon=use_gluon)
    # [B, ND, n_save, N, E]; for the Gluon backward each channel's states contiguous (a transposed view)
    states_en = save_states and use_gluon and _gluon_backward_applies(cfg, args, dev)
    hsave = None
    if save_states:
        hsave = _new(B, ND, n_save, E, N, device=dev, dtype=torch.float32).transpose(-1, -2) if states_en \
            else _new(B, ND, n_save, N, E, device=dev, dtype=torch.float32)
    common = args.common()
    t = [_or(v, dev) if not isinstance(v, int) else v for v in common["tensors"]]
    pstrides = args.param_strides()
    hs = hsave if hsave is not None else _dummy(dev)
    s_strides = (hs.stride(0), hs.stride(1), hs.stride(2)) if hsave is not None else (0, 0, 0)
    flags = common["flags"]

    def _launch_triton(hinit, hend, dsum, write_y, write_end, save):
        ref = hinit if hinit is not None else hend
        h_strides = (ref.stride(0), ref.stride(1), ref.stride(2)) if ref is not None else (0, 0, 0)
        fast(scan_fwd_kernel)[(B * n_eb, n_chunks, ND)](
            *t, y, hinit if hinit is not None else _zero_state(E, N, dev), _or(hend, dev), _or(dsum, dev), hs,
            L, E, args.R, steps, args.dir_base,
            *common["strides"], y.stride(0), y.stride(1), y.stride(2), *pstrides,
            *h_strides, *s_strides,
            BLOCK_E=block_e, SAVE_EVERY=save_every, PREFETCH=cfg["prefetch"], AHEAD=ahead,
            HAS_INIT=hinit is not None, WRITE_END=write_end, WRITE_Y=write_y, SAVE_STATES=save,
            num_warps=cfg["num_warps"], **FP_FUSION, **_maxnreg(cfg.get("maxnreg")),
            PARAMS_T=_params_t(cfg.get("params_t", -1), backward=False), EVEN_E=E % block_e == 0, **flags,
        )

    if (n_chunks == 1 and save_states and states_en and block_e == 64 and cfg["num_warps"] == 1
            and _launch_gluon_onepass(args, y, cfg.get("gluon_train_staged", 0), hsave, save_every,
                                      cfg.get("train_staged_maxnreg", 0), chain=_chain_sums(cfg))):
        return y, hsave  # (the training forward in one pass, staged: where it applies)

    def launch(hinit, hend, dsum, write_y, write_end, save):
        if kind == "onepass":
            return _launch_gluon_onepass(args, y, cfg.get("gluon_staged", 0), chain=_chain_sums(cfg))
        if use_gluon:
            return _launch_gluon_forward(args, y, hinit, hend, dsum, hs, n_chunks, steps, block_e, save_every,
                                         write_y, write_end, save, ahead, cfg["num_warps"], states_en)
        _launch_triton(hinit, hend, dsum, write_y, write_end, save)

    if n_chunks == 1:
        launch(None, None, None, True, False, save_states)
        return y, hsave
    # chunk-parallel: local end states, the carry across chunks, then every chunk again from its true start
    hend = _new(B, ND, n_chunks, N, E, device=dev, dtype=torch.float32)
    dsum = _new(B, ND, n_chunks, E, device=dev, dtype=torch.float32)
    hinit = _new(B, ND, n_chunks, N, E, device=dev, dtype=torch.float32)
    launch(None, hend, dsum, False, True, False)
    _chunk_carry(args, hend, dsum, hinit, n_chunks, reverse=False)
    launch(hinit, None, None, True, False, save_states)
    return y, hsave


def _chunk_carry(args: _ScanArgs, hend: Tensor, dsum: Tensor, hinit: Tensor, n_chunks: int, reverse: bool) -> None:
    """hinit [B, ND, n_chunks, N, E]: the state entering each chunk (with ``reverse``, the adjoint entering each chunk
    from its end), from each chunk's local end state ``hend`` and its sum of delta ``dsum`` [B, ND, n_chunks, E]
    (chunk_carry_kernel: all chunks at once, a parallel prefix over them)."""
    B, ND, E, N = args.B, args.n_dirs, args.E, args.N
    assert hend.is_contiguous() and dsum.is_contiguous() and hinit.stride() == hend.stride()
    nc = _next_pow2(n_chunks)
    block_e = max(16, min(64, 4096 // nc, _next_pow2(E)))  # (a program's [chunks, channels] tile: 4K values or less)
    fast(chunk_carry_kernel)[(B * _cdiv(E, block_e) * N, ND)](
        hend, dsum, hinit, args.a[0], args.a[1], E, n_chunks, hend.stride(0), hend.stride(1), hend.stride(2),
        *args.param_strides()[:2], N=N, BLOCK_E=block_e, NC=nc, A_IS_LOG=args.a_is_log, REVERSE=reverse,
        num_warps=4, **FP_FUSION)


class _GluonFailed(Exception):
    """A Gluon kernel failed to build here (Gluon is then off for the process): the scan runs again on Triton."""


def _compile_errors() -> tuple:
    from triton.compiler.errors import CompilationError
    from triton.runtime import errors

    return (CompilationError,) + tuple(getattr(errors, name) for name in ("OutOfResources", "PTXASError")
                                       if hasattr(errors, name))


def _gluon_launch(launch):
    """Guards a Gluon launch: where its kernel does not compile under the installed Triton (Gluon is experimental,
    and its API moves between releases: docs/kernels.md, "Session 25") or does not fit the device, the Gluon kernels
    are turned off for the rest of the process with a warning, and :class:`_GluonFailed` makes ``scan_forward`` /
    ``scan_backward`` run the scan again on the Triton kernels (slower, but a model that runs). A compile error
    comes before its kernel launches, so nothing was written."""
    @functools.wraps(launch)
    def guarded(*args, **kwargs):
        try:
            return launch(*args, **kwargs)
        except _compile_errors() as e:
            from . import gluon_kernels

            gluon_kernels.AVAILABLE = False
            lines = str(e).strip().splitlines()
            warnings.warn(f"the Gluon scan kernels do not compile with Triton {triton.__version__} here "
                          f"({type(e).__name__}: {lines[-1][:200] if lines else ''}); the Triton kernels run "
                          "instead from now on (slower). VISION_MAMBA_TRITON_GLUON=0 skips the attempt.",
                          RuntimeWarning, stacklevel=2)
            raise _GluonFailed() from e
    return guarded


def _gluon_common(cfg_value, args: _ScanArgs, device) -> bool:
    """Whether a Gluon kernel can run this scan: Vim's mixer (dt_proj folded in, both directions, softplus, A_log,
    D, z and the delta bias all given, x_proj's whole rows) on a CUDA device, with Gluon there."""
    from . import gluon_kernels

    return (cfg_value != 0 and gluon_kernels.AVAILABLE and _gluon_device(device) and args.dt_proj
            and args.n_dirs == 2 and args.dir_base == 0 and args.softplus and args.a_is_log and args.z is not None
            and args.bias[0] is not None and args.dskip[0] is not None and args.dt[0].dim() == 2
            and args.N in (4, 8, 16, 32))


def _gluon_device(device) -> bool:
    return device.type == "cuda"


def _gluon_forward_applies(cfg, args: _ScanArgs, device, block_e: int) -> bool:
    # (a channel block set by hand is a sweep of the Triton kernel's launches: it gets that kernel)
    return (_gluon_common(cfg.get("gluon", -1), args, device) and not cfg.get("block_e")
            and block_e % (32 * cfg["num_warps"]) == 0 and args.E % block_e == 0)


def _gluon_forward_kind(cfg, args: _ScanArgs, device, block_e: int, n_chunks: int,
                        save_states: bool) -> Optional[str]:
    """Which Gluon kernel runs this forward launch: "onepass" (scan_fwd_onepass_gluon_kernel), "general"
    (scan_fwd_gluon_kernel) or None (the Triton kernel). By default, where the H200 measured a Gluon kernel faster
    (docs/kernels.md, "Session 8"): the one-pass kernel for inference without chunks (224 px / batch 128: 0.164
    against 0.195 ms), the general one for the 128-channel programs of long sequences' inference (1248 px / batch
    16: 1.16 against 1.25 ms) and for training where the Gluon backward runs (it saves the states in that
    kernel's layout; the whole step at 224 px / batch 128: 2,901 against 2,735 img/s). Chunked 64-channel
    inference and the training forward before a Triton backward stay on Triton (the general Gluon kernel measured
    no faster at 64 channels a program; before a Triton backward, the fp32 rows it wants cost that backward as
    much as it saves). ``gluon=1`` forces the general kernel wherever it applies (but the one-pass one)."""
    if not _gluon_forward_applies(cfg, args, device, block_e):
        return None
    backward = save_states and _gluon_backward_applies(cfg, args, device)
    return _forward_rule(cfg, block_e, n_chunks, save_states, backward)


def _forward_rule(cfg, block_e: int, n_chunks: int, save_states: bool, gluon_backward: bool) -> Optional[str]:
    if n_chunks == 1 and not save_states and block_e == 64 and cfg["num_warps"] == 1 and cfg.get("gluon_onepass", 1):
        return "onepass"
    if cfg.get("gluon", -1) > 0 or (block_e >= 128 and not save_states) or gluon_backward:
        return "general"
    return None


# One-warp programs of the staged one-pass kernel with a thread a channel that fit an SM at once: 12 at its 167
# registers (Vim-Ti's launch, Triton 3.6, sm_90; Nsight Compute: docs/kernels.md, "Session 35")
_STAGED_PROGRAMS_PER_SM = 12


def _staged_underfills(cfg, args: _ScanArgs, device) -> bool:
    """Whether inference that the plan does not chunk runs in the lanes kernel rather than the staged kernel with a
    thread a channel: where the latter's 64-channel one-warp programs are fewer than ``staged_min_programs``, by
    default (-1) one of them for each place on the GPU's SMs (_STAGED_PROGRAMS_PER_SM an SM), for 16 states and a
    dt rank that pads to 16 (Vim-Ti's, where it was measured: the scan at 224 px / batch 96, 0.73 of such a wave,
    0.136 -> 0.103 ms; batch 128, 0.97 of a wave, 0.137 -> 0.136; batch 256 staged stays: 0.265 against 0.274;
    docs/kernels.md, "Session 35"); 0: never."""
    least = cfg.get("staged_min_programs", -1)
    if least < 0:
        if not (args.N == 16 and _next_pow2(args.R) == 16):
            return False
        try:
            least = _STAGED_PROGRAMS_PER_SM * _sm_count(device)
        except (RuntimeError, AssertionError):  # (no CUDA device to count, as in tests that fake one: staged)
            return False
    return args.B * args.n_dirs * args.E // 64 < least


def _special(cfg, y_dtype: torch.dtype) -> dict:
    """The one-pass inference kernels' GATE_TANH (``gate_tanh``, for 16-bit outputs only)."""
    return dict(GATE_TANH=bool(cfg.get("gate_tanh", 0)) and y_dtype in (torch.bfloat16, torch.float16))


def _onepass_tpc(cfg, args: _ScanArgs, device, always: bool = False) -> int:
    """The lanes a channel (scan_fwd_onepass_gluon_kernel's TPC; ``onepass_cpt`` channels a thread) with which an
    inference forward that the plan splits into chunks runs instead in one pass, or 0 (chunked): ``onepass_tpc``
    where set (a power of two from 2 up to N and dt_low's padded width), by default (-1) _lanes_tpc's where
    the launch has at least ``onepass_min_channels`` channels (``onepass_min_channels_wide`` for a dt rank over 16;
    ``onepass_min_channels_short`` for sequences of up to ``onepass_short_tokens`` and a rank up to 16), or
    ``always`` (inference that the plan does not chunk, _staged_underfills); E a multiple of the program's
    channels."""
    tpc, cpt = cfg.get("onepass_tpc", 0), cfg.get("onepass_cpt", 1)
    gluon = _gluon_common(cfg.get("gluon", -1), args, device)
    if tpc < 0:
        channels, wide = args.B * args.n_dirs * args.E, _next_pow2(args.R) > 16
        least = cfg.get("onepass_min_channels_wide", 6144) if wide else cfg.get("onepass_min_channels", 6144)
        if not wide and args.L <= cfg.get("onepass_short_tokens", 577):
            least = min(least, cfg.get("onepass_min_channels_short", 1536))
        if (channels < least and not always) or not gluon:
            return 0  # (chunked; and no SM count asked of a device without the Gluon kernels)
        tpc = _lanes_tpc(cfg, args, channels, device)
    if tpc < 2:
        return 0
    if tpc & (tpc - 1) or tpc > min(args.N, max(2, _next_pow2(args.R))) or cpt < 1 or cpt & (cpt - 1):
        raise ValueError(f"onepass_tpc must be 0 or a power of two from 2 to min(N, dt_low's padded width) and "
                         f"onepass_cpt a power of two, got {tpc} and {cpt}")
    block_e = 32 * cpt // tpc
    return tpc if gluon and block_e >= 1 and args.E % block_e == 0 else 0


# A warp's pass of the lanes kernel with 4 lanes a channel (8 channels a warp) against one with 2 (16 channels):
# 765 against 1,287 SASS instructions (Vim-Ti's launch, Triton 3.6, sm_90; docs/kernels.md, "Session 33")
_LANES4_COST = 0.6


def _lanes_tpc(cfg, args: _ScanArgs, channels: int, device) -> int:
    """The lanes a channel of a one-pass launch by the rule (onepass_tpc -1): ``lanes_tpc``, or by default (-1) the
    one, 2 or 4, whose busiest scheduler (4 an SM) finishes first, counting whole warps: 2 lanes put 16 channels
    (``onepass_cpt`` 1) in a warp, 4 lanes 8, and a 4-lane warp takes _LANES4_COST of a 2-lane warp's time. Where
    the last wave is part full the scheduler with one warp more sets the time (Vim-Ti at 1248 px on an H100, the
    whole model: batch 16, 2 lanes' busiest scheduler 2 warps, 4 lanes' 3, 4 lanes +3.5%; batch 17, 2 against 4,
    -11.6%; docs/kernels.md, "Session 34"). 4 only for 16 states and a dt rank that pads to 16 (Vim-Ti's 12, where
    it was measured and tested; Vim-S's 24 measured slower with 4; narrower ranks not measured)."""
    tpc = cfg.get("lanes_tpc", -1)
    if tpc > 0:
        return tpc
    if not (args.N == 16 and _next_pow2(args.R) == 16):
        return 2
    per_warp = 32 * cfg.get("onepass_cpt", 1)  # (channels a warp with one lane a channel)
    schedulers = 4 * _sm_count(device)
    busiest2, busiest4 = (_cdiv(channels, per_warp // lanes * schedulers) for lanes in (2, 4))
    return 4 if _LANES4_COST * busiest4 < busiest2 else 2


def _lanes_warps(cfg, tpc: int) -> int:
    """Warps a program of the one-pass lanes kernel: ``lanes_warps``, or by default (-1) 1 for 2 lanes a channel and 4
    for more (a program of one warp with 4 lanes needs a stage of 32 steps: two waves, see _config)."""
    warps = cfg.get("lanes_warps", -1)
    return warps if warps > 0 else (1 if tpc <= 2 else 4)


def _gluon_backward_applies(cfg, args: _ScanArgs, device) -> bool:
    return (_gluon_common(cfg.get("gluon_bwd", -1), args, device)
            and _gluon_backward_rule(cfg, args.L, args.E, args.N, args.R))


def _gluon_backward_rule(cfg, L: int, E: int, N: int, R: int) -> bool:
    setting = cfg.get("gluon_bwd", -1)
    save_every = _save_every(cfg, L)
    if setting == 0 or (setting < 0 and not (_gluon_smem(cfg, save_every)
                                             or _bwd_staged_interval(cfg, save_every, R))):
        return False  # (by default only where the block's states, or a part's, stay in shared memory)
    return not cfg.get("bwd_block_e") and N == 16 and E % GLUON_BWD_BLOCK_E == 0


def _gluon_smem(cfg, save_every: int) -> bool:
    """Whether the Gluon backward keeps a block's recomputed states in shared memory (else in a global scratch):
    save intervals up to ``gluon_smem_steps``, powers of two (a shared-memory tile's shape)."""
    return save_every <= cfg.get("gluon_smem_steps", 8) and save_every & (save_every - 1) == 0


def _bwd_staged_interval(cfg, save_every: int, R: int) -> bool:
    """Whether the staged Gluon backward is on for blocks of ``save_every`` steps: up to gluon_bwd_staged_steps
    (gluon_bwd_staged_steps_wide for a dt rank ``R`` padded past 16), powers of two. (Where its copies do not fit
    the tensors, ``_bwd_staged_fits``, the unstaged Gluon backward runs, with a global scratch above
    gluon_smem_steps.)"""
    most = cfg.get("gluon_bwd_staged_steps" if _next_pow2(R) <= 16 else "gluon_bwd_staged_steps_wide", 8)
    return bool(cfg.get("gluon_bwd_staged", 0)) and save_every <= most and save_every & (save_every - 1) == 0


def rows_in_fp32(cfg, device, dtype, B: int, L: int, E: int, N: int, training: bool, R: int = 16) -> bool:
    """Whether x_proj's rows are made in fp32 for Vim's mixer ([B, L, E] activations, N states, dt rank R; see
    :func:`_x_proj_pair`): as configured, or by default where a Gluon kernel reads them (half-precision activations on
    CUDA: the forward's kernel by :func:`_gluon_forward_kind`, or in training the Gluon backward); the Triton
    kernels read bf16 rows faster (224 px / batch 128: 0.189 against 0.195 ms)."""
    from . import gluon_kernels

    if cfg.get("rows_fp32", -1) >= 0:
        return bool(cfg["rows_fp32"])
    if not (gluon_kernels.AVAILABLE and _gluon_device(device) and dtype in (torch.bfloat16, torch.float16)
            and N in (4, 8, 16, 32)):
        return False
    backward = training and _gluon_backward_rule(cfg, L, E, N, R)
    if backward:
        return True
    if cfg.get("gluon", -1) == 0 or cfg.get("block_e"):
        return False
    _, block_e, _, n_chunks, _ = _forward_plan(cfg, B, L, E, 2, device)
    if (not training and n_chunks > 1 and cfg.get("onepass_share", 0) and cfg.get("gluon_staged", 0)
            and (cfg.get("lanes_chunk_warps", 0) > 0 or cfg.get("onepass_tpc", 0) != 0)):
        return True  # (scan_fwd_lanes_gluon_kernel, in one pass or in chunks, reads them faster: 1248 px / batch 8
        # in chunks 0.593 -> 0.506 ms, docs/kernels.md, "Session 27")
    if block_e % (32 * cfg["num_warps"]) or E % block_e:
        return False
    return _forward_rule(cfg, block_e, n_chunks, training, False) is not None


@_gluon_launch
def _launch_gluon_forward(args: _ScanArgs, y: Tensor, hinit, hend, dsum, hsave, n_chunks, steps, block_e,
                          save_every, write_y, write_end, save, ahead, num_warps, states_en) -> None:
    from . import gluon_kernels

    x, z, rows = args.x, args.z, args.dt[0]
    B, L, E, N, R = args.B, args.L, args.E, args.N, args.R
    dev = x.device
    assert args.dt[1].stride() == rows.stride()
    a_stride_e, a_stride_n, w_stride_e, w_stride_r = args.param_strides()
    ref = hinit if hinit is not None else hend
    h_strides = (ref.stride(0), ref.stride(1), ref.stride(2)) if ref is not None else (0, 0, 0)
    s_strides = (hsave.stride(0), hsave.stride(1), hsave.stride(2)) if save else (0, 0, 0)
    fast(gluon_kernels.scan_fwd_gluon_kernel)[(B * (E // block_e), n_chunks, 2)](
        x, z, rows, args.dt[1], args.w[0], args.w[1], args.bias[0], args.bias[1], args.a[0], args.a[1],
        args.dskip[0], args.dskip[1], y, _or(hinit, dev), _or(hend, dev), _or(dsum, dev), hsave,
        L, E, steps, x.stride(0), x.stride(1), x.stride(2), z.stride(0), z.stride(1), y.stride(0), y.stride(1),
        y.stride(2), a_stride_e, a_stride_n, w_stride_e, w_stride_r, *h_strides, *s_strides,
        stride_row=rows.stride(0), R=R, N=N, BLOCK_E=block_e, BLOCK_R=max(2, _next_pow2(R)),
        B_COL=args.b_col, C_COL=args.c_col, SAVE_EVERY=save_every, HAS_INIT=hinit is not None,
        WRITE_END=write_end, WRITE_Y=write_y, SAVE_STATES=save, AHEAD=ahead, STATES_EN=states_en,
        num_warps=num_warps, **FP_FUSION)


def _staged_fits(args: _ScanArgs, stage: int, rows: Tensor, block_e: int = 64,
                 num_warps: int = 1) -> Optional[Tuple[int, int, int]]:
    """(RW, VX, VR) for scan_fwd_staged_gluon_kernel where its 16-byte asynchronous copies apply: a power-of-two
    stage; x and z of one dtype; x, z and the rows 16-byte aligned, with strides (and direction 1's offset) that
    Triton knows to be multiples of 16 elements; rows whose width and stride are whole 16-byte vectors; programs of
    ``block_e`` channels (``num_warps`` warps) whose x and z rows are whole 16-byte vectors, and whose copies of a
    step's x / z / row, 16 bytes a thread, cover at most ``stage`` steps a program (a copy's layout no larger than
    its buffer). Else None (the one-pass kernel without staging runs). B and C must start at multiples of N columns
    (Gluon slices a shared row only at whole tiles): the model's padded rows (dt_low | zeros | B | C, _rank_cols)
    do."""
    from . import gluon_kernels

    x, z = args.x, args.z
    if gluon_kernels.async_copy is None:
        return None
    if stage < 2 or stage & (stage - 1) or z is None or z.dtype != x.dtype or x.element_size() not in (2, 4):
        return None
    vx, vr = 16 // x.element_size(), 16 // rows.element_size()
    rw = _next_pow2(args.c_col + args.N)
    ints = (x.stride(0), x.stride(1), x.stride(2), z.stride(0), z.stride(1), args.dir_off, args.E)
    if any(v % 16 for v in ints) or any(t.data_ptr() % 16 for t in (x, z, rows)):
        return None
    if rows.stride(0) % vr or (args.c_col + args.N) % vr or rw // vr > 32 or block_e % vx or block_e // vx > 32:
        return None
    if num_warps * 32 // (block_e // vx) > stage or num_warps * 32 // (rw // vr) > stage:
        return None
    if args.b_col % args.N or args.c_col % args.N:  # (B and C read as whole N-element tiles of a staged row)
        return None
    return rw, vx, vr


def _tpc_stage(args: _ScanArgs, stage: int, rows: Tensor, block_e: int, num_warps: int = 1) -> int:
    """The smallest power of two from ``stage`` up to 64 at which the staged kernel's copies fit programs of
    ``block_e`` channels over ``num_warps`` warps (:func:`_staged_fits`; narrow programs copy more steps at a
    time), or 0."""
    while stage <= 64:
        if _staged_fits(args, stage, rows, block_e, num_warps) is not None:
            return stage
        stage *= 2
    return 0


def _onepass_args(args: _ScanArgs, y: Tensor, block_e: int) -> Tuple[tuple, dict]:
    """The arguments the one-pass Gluon kernels share: tensors, sizes and strides; then the constexpr ones."""
    x, z, rows = args.x, args.z, args.dt[0]
    a_stride_e, a_stride_n, w_stride_e, w_stride_r = args.param_strides()
    common = (x, z, rows, args.dir_off, args.w[0], args.w[1], args.bias[0], args.bias[1], args.a[0], args.a[1],
              args.dskip[0], args.dskip[1], y,
              args.L, args.E, x.stride(0), x.stride(1), x.stride(2), z.stride(0), z.stride(1), y.stride(0),
              y.stride(1), y.stride(2), a_stride_e, a_stride_n, w_stride_e, w_stride_r)
    flags = dict(stride_row=rows.stride(0), R=args.R, N=args.N, BLOCK_E=block_e, BLOCK_R=max(2, _next_pow2(args.R)),
                 B_COL=args.b_col, C_COL=args.c_col, num_warps=1, **FP_FUSION)
    return common, flags


def _lanes_chunking(cfg, args: _ScanArgs, device, tpc: int = 2) -> Optional[Tuple[int, int, int, int]]:
    """(stage, steps a pass, chunks, steps a chunk) with which an inference forward that the plan splits into chunks
    runs as chunks of scan_fwd_lanes_gluon_kernel (``tpc`` lanes a channel, :func:`_launch_lanes_chunked`), or None:
    where the Gluon kernels apply and the lanes kernel's staged copies fit (as for one pass, ``onepass_share``
    and ``gluon_staged`` set), ``lanes_chunk_warps`` > 0, and the sequence splits into two chunks or more. Chunks
    are whole multiples of the stage, as many as make ``lanes_chunk_warps`` one-warp programs an SM."""
    warps, share, stage = cfg.get("lanes_chunk_warps", 0), cfg.get("onepass_share", 0), cfg.get("gluon_staged", 0)
    if warps <= 0 or not share or not stage or not _gluon_common(cfg.get("gluon", -1), args, device):
        return None
    block_e = 32 // tpc
    if args.E % block_e or tpc > min(args.N, max(2, _next_pow2(args.R))):
        return None
    stage = _tpc_stage(args, stage, args.dt[0], block_e)
    if not stage or tpc > stage:
        return None
    unroll = _lanes_unroll(share, tpc, stage)
    programs = args.B * (args.E // block_e) * args.n_dirs
    n_chunks = min(_cdiv(warps * _sm_count(device), programs), _cdiv(args.L, stage))
    steps = _cdiv(_cdiv(args.L, max(n_chunks, 1)), stage) * stage
    n_chunks = _cdiv(args.L, steps)
    return (stage, unroll, n_chunks, steps) if n_chunks > 1 else None


def _rank_split(cfg, R: int) -> int:
    """R_HI for scan_fwd_lanes_gluon_kernel: the width of the first of two parts, both powers of two, that make
    dt_low's R columns (Vim-Ti 12 = 8 + 4, Vim-S 24 = 16 + 8, Vim-B 48 = 32 + 16); 0 (over the next power of two)
    where R is one already, or is no such sum with a second part of 4 columns or more, or ``lanes_rank_split`` is
    off."""
    hi = 1 << (R.bit_length() - 1)
    lo = R - hi
    return hi if cfg.get("lanes_rank_split", 0) and lo >= 4 and not lo & (lo - 1) else 0


def _lanes_unroll(share: int, tpc: int, stage: int) -> int:
    """Steps a pass of scan_fwd_lanes_gluon_kernel (its U): ``onepass_share``, at least the lanes a channel (each
    computes a step's delta) and at most the stage (a pass reads one stage's staged rows): 16 for Vim-Ti in bf16
    (a stage of 16 steps), 8 for fp32 activations (a stage of 8)."""
    return min(max(share, tpc), stage)


@_gluon_launch
def _launch_lanes_chunked(args: _ScanArgs, y: Tensor, plan: Tuple[int, int, int, int], tpc: int = 2,
                          r_hi: int = 0, high: bool = False, chain: bool = False) -> None:
    """Inference in chunks of scan_fwd_lanes_gluon_kernel: each chunk but the last from a zero state to its end
    state and its sum of delta (no output), the carry across chunks (:func:`_chunk_carry`), then every chunk again
    from the state that truly enters it, writing y. ``r_hi``: the kernel's R_HI (:func:`_rank_split`); ``high``:
    its LANE_HI; ``chain`` its CHAIN (:func:`_chain_sums`)."""
    from . import gluon_kernels

    stage, unroll, n_chunks, steps = plan
    B, E, N = args.B, args.E, args.N
    dev = args.x.device
    block_e = 32 // tpc
    common, flags = _onepass_args(args, y, block_e)
    rw, vx, vr = _staged_fits(args, stage, args.dt[0], block_e)
    flags.update(STAGE=stage, RW=rw, VX=vx, VR=vr, TPC=tpc, U=unroll, R_HI=r_hi, LANE_HI=high, CHAIN=chain)
    f32 = dict(device=dev, dtype=torch.float32)
    hend, hinit = _new(B, 2, n_chunks, N, E, **f32), _new(B, 2, n_chunks, N, E, **f32)
    dsum = _new(B, 2, n_chunks, E, **f32)
    h_strides = (hend.stride(0), hend.stride(1), hend.stride(2))
    kernel = fast(gluon_kernels.scan_fwd_lanes_gluon_kernel)
    # (the last chunk's end state is never needed: its entries stay unwritten, and the carry reads none of them
    # into a state it stores)
    chunks = (hinit, hend, dsum, steps, *h_strides)
    kernel[(B * (E // block_e), n_chunks - 1, 2)](
        *common, *chunks, CHUNKS=True, HAS_INIT=False, WRITE_END=True, WRITE_Y=False, **flags)
    _chunk_carry(args, hend, dsum, hinit, n_chunks, reverse=False)
    kernel[(B * (E // block_e), n_chunks, 2)](
        *common, *chunks, CHUNKS=True, HAS_INIT=True, WRITE_END=False, WRITE_Y=True, **flags)


@_gluon_launch
def _launch_gluon_onepass(args: _ScanArgs, y: Tensor, stage: int = 0, hsave: Optional[Tensor] = None,
                          save_every: int = 0, maxnreg: int = 0, tpc: int = 1, cpt: int = 1,
                          unroll: int = 1, share: int = 0, r_hi: int = 0, warps: int = 1,
                          high: bool = False, special: Optional[dict] = None, chain: bool = False) -> bool:
    """The one-pass Gluon forward (64 channels a program, one warp): staged (scan_fwd_staged_gluon_kernel) where
    ``stage`` is set and _staged_fits allows, else scan_fwd_onepass_gluon_kernel. With ``hsave`` (the training
    forward: [B, 2, blocks, N, E] views of [..., E, N] storage) only the staged kernel saves states, under the
    register cap ``maxnreg`` (0: none): whether it ran is returned, and nothing is launched where it does not
    apply. ``tpc`` > 1 (inference only): either kernel with each channel's states split over that many lanes,
    ``cpt`` channels a thread (32 * cpt / tpc channels a program; :func:`_onepass_tpc`), staged at the
    stage :func:`_tpc_stage` finds from ``stage`` up. ``unroll`` (inference, staged): steps a pass of the staged
    kernel's loop, a power of two up to the stage. ``share`` (with ``tpc`` > 1, one channel a thread, staged):
    scan_fwd_lanes_gluon_kernel instead, max(share, tpc) steps a pass (a power of two up to the stage), and
    ``r_hi`` its R_HI (:func:`_rank_split`), in programs of ``warps`` warps (32 ``warps`` / ``tpc`` channels; one
    warp where E is no multiple of that or the staged copies do not fit), ``high`` its LANE_HI. ``special``
    (inference, staged and lanes kernels): their GATE_TANH (:func:`_special`). ``chain``: the CHAIN of the staged
    kernel with a channel a thread, and of the lanes kernel (:func:`_chain_sums`)."""
    from . import gluon_kernels

    if unroll < 1 or unroll & (unroll - 1) or share < 0 or share & (share - 1):
        raise ValueError(f"the staged kernels' steps a pass must be powers of two, got {unroll} and {share}")

    x, rows = args.x, args.dt[0]
    B, E = args.B, args.E
    block_e = 64 if tpc == 1 else 32 * cpt // tpc
    if tpc > 1:
        if hsave is not None:
            return False
        # staged: at least ``stage`` steps a copy, more where a program's copies of a step cover more rows
        staged, nw = 0, 1
        if share and cpt == 1 and stage and warps > 1 and args.E % (32 * warps // tpc) == 0:
            staged = _tpc_stage(args, stage, rows, 32 * warps // tpc, warps)  # (programs of several warps)
            if staged and tpc <= staged:
                block_e, nw = 32 * warps // tpc, warps
            else:
                staged = 0
        stage = staged or (_tpc_stage(args, stage, rows, block_e) if stage else 0)
        common, flags = _onepass_args(args, y, block_e)
        flags["num_warps"] = nw
        if stage and share and cpt == 1 and tpc <= stage:
            rw, vx, vr = _staged_fits(args, stage, rows, block_e, nw)
            dummy = _dummy(x.device)  # (one pass: no chunks, start states, end states or sums of delta)
            fast(gluon_kernels.scan_fwd_lanes_gluon_kernel)[(B * (E // block_e), 1, 2)](
                *common, dummy, dummy, dummy, 0, 0, 0, 0, STAGE=stage, RW=rw, VX=vx, VR=vr,
                TPC=tpc, U=_lanes_unroll(share, tpc, stage), R_HI=r_hi, LANE_HI=high, CHAIN=chain,
                **(special or {}), **flags)
        elif stage:
            rw, vx, vr = _staged_fits(args, stage, rows, block_e)
            fast(gluon_kernels.scan_fwd_staged_gluon_kernel)[(B * (E // block_e), 1, 2)](
                *common, _dummy(x.device), 0, 0, 0, STAGE=stage, RW=rw, VX=vx, VR=vr, SAVE_STATES=False,
                SAVE_EVERY=1, TPC=tpc, UNROLL=min(unroll, stage), **(special or {}), **flags)
        else:
            fast(gluon_kernels.scan_fwd_onepass_gluon_kernel)[(B * (E // block_e), 1, 2)](*common, TPC=tpc, **flags)
        return True
    common, flags = _onepass_args(args, y, block_e)
    staged = _staged_fits(args, stage, rows) if stage else None
    if staged is not None:
        rw, vx, vr = staged
        flags["CHAIN"] = chain
        if hsave is not None:
            save = dict(SAVE_STATES=True, SAVE_EVERY=save_every, **_maxnreg(maxnreg))
            s_args = (hsave, hsave.stride(0), hsave.stride(1), hsave.stride(2))
        else:
            save = dict(SAVE_STATES=False, SAVE_EVERY=1, UNROLL=min(unroll, stage), **(special or {}))
            s_args = (_dummy(x.device), 0, 0, 0)
        fast(gluon_kernels.scan_fwd_staged_gluon_kernel)[(B * (E // block_e), 1, 2)](
            *common, *s_args, STAGE=stage, RW=rw, VX=vx, VR=vr, **save, **flags)
        return True
    if hsave is not None:
        return False
    fast(gluon_kernels.scan_fwd_onepass_gluon_kernel)[(B * (E // block_e), 1, 2)](*common, **flags)
    return True


GLUON_BWD_BLOCK_E = 32  # channels per program of the Gluon backward (one warp, a channel a thread)


def scan_backward(args: _ScanArgs, hsave: Tensor, gy: Tensor, config=None):
    """Gradients of the scan: dx [ND, B, L, E]; dz per direction [ND, B, L, E] (or None); d(B | C) [ND, B, L, 2N]
    fp32 (summed over channel blocks); d raw delta [ND, B, L, E] (the gradient before softplus: of delta + bias,
    or, in x's dtype, of dt_proj's output when dt_proj is folded in); fp32 parameter gradients [ND, ...] for A (or
    A_log), D and the delta bias. With dt_proj folded in, :func:`dt_proj_grads` turns d raw delta into the
    gradients of dt_low and W_dt."""
    try:
        return _scan_backward(args, hsave, gy, config)
    except _GluonFailed:  # (Gluon is off now: the same gradients from the Triton kernels)
        return _scan_backward(args, hsave, gy, config)


def _scan_backward(args: _ScanArgs, hsave: Tensor, gy: Tensor, config=None):
    cfg = config or _config()
    B, L, E, N, ND = args.B, args.L, args.E, args.N, args.n_dirs
    dev = args.x.device
    min_programs = _min_programs(dev, cfg["min_programs"])
    use_gluon = _gluon_backward_applies(cfg, args, dev)
    block_e = GLUON_BWD_BLOCK_E if use_gluon else _backward_block_e(cfg, B, E, L, ND, min_programs)
    n_eb = _cdiv(E, block_e)
    gy = _last_contiguous(gy)
    f32 = dict(device=dev, dtype=torch.float32)
    gx = _new(ND, B, L, E, device=dev, dtype=args.x.dtype)
    gz = _new(ND, B, L, E, device=dev, dtype=args.z.dtype) if args.z is not None else _dummy(dev)
    save_every = _save_every(cfg, L)
    staged = None
    if use_gluon and cfg.get("gluon_bwd_staged", 0) and (_gluon_smem(cfg, save_every)
                                                         or _bwd_staged_interval(cfg, save_every, args.R)):
        staged = _bwd_staged_fits(args, gy, save_every)
    atomic_bc = staged is not None and bool(cfg.get("gluon_bwd_atomic_bc", 0))
    # the sums added atomically, zeroed in one launch: d A, d D, the delta bias and (with atomic_bc) d (B | C);
    # otherwise d (B | C) is a partial per block of channels, summed below
    n_bc = ND * B * L * 2 * N if atomic_bc else 0
    zeros = torch.zeros(n_bc + ND * (N + 2) * E, **f32)
    gbc = zeros[:n_bc].view(ND, 1, B, L, 2 * N) if atomic_bc else _new(ND, n_eb, B, L, 2 * N, **f32)
    ga, gd, gbias = zeros[n_bc:].split([ND * N * E, ND * E, ND * E])
    ga, gd, gbias = ga.view(ND, N, E), gd.view(ND, E), gbias.view(ND, E)
    # d raw delta: in x's dtype where it feeds the folded dt_proj's matmuls (as autograd would have it), otherwise
    # in delta's dtype
    graw = _new(ND, B, L, E, device=dev, dtype=args.x.dtype if args.dt_proj else args.dt[0].dtype)
    common = args.common()
    t = [_or(v, dev) if not isinstance(v, int) else v for v in common["tensors"]]
    params_t = _params_t(cfg.get("bwd_params_t", -1), backward=True)
    assert hsave.shape[2] == _cdiv(L, save_every), "the states were saved with another save_every"
    n_chunks, steps = _chunking(B * n_eb * ND, L, min_programs, save_every)
    muinit = None
    if n_chunks > 1:
        # chunk-parallel: each chunk's adjoint from a zero start, the reverse carry across chunks, then every
        # chunk differentiated from the adjoint that truly enters it
        muend = _new(B, ND, n_chunks, N, E, **f32)
        dsum = _new(B, ND, n_chunks, E, **f32)
        muinit = _new(B, ND, n_chunks, N, E, **f32)
        m_strides = (muend.stride(0), muend.stride(1), muend.stride(2))
        fast(adjoint_chunk_kernel)[(B * n_eb, n_chunks, ND)](
            *t, gy, _zero_state(E, N, dev), muend, dsum, L, E, args.R, steps, args.dir_base,
            *common["strides"], gy.stride(0), gy.stride(1), gy.stride(2), *args.param_strides(), *m_strides,
            BLOCK_E=block_e, PARAMS_T=params_t, EVEN_E=E % block_e == 0, num_warps=cfg["num_warps"], **FP_FUSION,
            **common["flags"])
        _chunk_carry(args, muend, dsum, muinit, n_chunks, reverse=True)
    else:
        m_strides = (0, 0, 0)
    if use_gluon:
        _launch_gluon_backward(args, cfg, gy, hsave, muinit, gx, gz, graw, gbc, ga, gd, gbias, n_chunks, steps,
                               save_every, staged, atomic_bc)
    else:
        _launch_triton_backward(args, cfg, t, common, gy, hsave, muinit, gx, gz, graw, gbc, ga, gd, gbias, n_chunks,
                                steps, save_every, block_e, params_t, m_strides)
    return dict(gx=gx, gz=gz if args.z is not None else None, gbc=gbc[:, 0] if atomic_bc else gbc.sum(1), graw=graw,
                ga=ga.transpose(1, 2), gd=gd, gbias=gbias)


def _launch_triton_backward(args, cfg, t, common, gy, hsave, muinit, gx, gz, graw, gbc, ga, gd, gbias, n_chunks,
                            steps, save_every, block_e, params_t, m_strides):
    B, L, E, N, ND = args.B, args.L, args.E, args.N, args.n_dirs
    hsave = hsave if hsave.stride(-1) == 1 else hsave.contiguous()  # (states saved by the Gluon forward)
    dev = args.x.device
    n_eb = _cdiv(E, block_e)
    scratch = torch.empty(B * 2 * n_eb * n_chunks * save_every * (N + 2) * block_e, device=dev,
                          dtype=torch.float32)  # states, delta, softplus'
    fast(scan_bwd_kernel)[(B * n_eb, ND, n_chunks)](
        *t, gy, hsave, scratch, muinit if muinit is not None else _dummy(dev),
        gx, gz, graw, gbc,
        ga, gd, gbias,
        L, E, args.R, steps, args.dir_base,
        *common["strides"], gy.stride(0), gy.stride(1), gy.stride(2),
        *args.param_strides(),
        hsave.stride(0), hsave.stride(1), hsave.stride(2),
        gx.stride(0), gx.stride(1), gx.stride(2),
        graw.stride(0), graw.stride(1), graw.stride(2),
        gbc.stride(0), gbc.stride(1), gbc.stride(2), gbc.stride(3), block_e, (N + 2) * block_e, *m_strides,
        BLOCK_E=block_e, SAVE_EVERY=save_every, num_warps=cfg["bwd_num_warps"], **FP_FUSION, **_maxnreg(cfg.get("bwd_maxnreg")),
        PARAMS_T=params_t, EVEN_E=E % block_e == 0, HAS_MU_INIT=muinit is not None, AHEAD=bool(cfg.get("bwd_ahead")),
        **common["flags"],
    )


@_gluon_launch
def _launch_gluon_backward(args, cfg, gy, hsave, muinit, gx, gz, graw, gbc, ga, gd, gbias, n_chunks, steps,
                           save_every, staged, atomic_bc):
    """The Gluon backward: the staged kernel where ``staged`` ((VX, VZ, VG, VR) of :func:`_bwd_staged_fits`) is
    given (``atomic_bc``: it adds d B / d C into ``gbc``'s one block of channels), else the unstaged one."""
    from . import gluon_kernels

    x, z, rows = args.x, args.z, args.dt[0]
    B, L, E, N, R = args.B, args.L, args.E, args.N, args.R
    dev = x.device
    block_e = GLUON_BWD_BLOCK_E
    n_eb = E // block_e
    smem = _gluon_smem(cfg, save_every)
    # (the global scratch, where the block's states do not stay in shared memory: [programs, steps, N + 2, block_e])
    scratch = _dummy(dev) if smem else torch.empty(B * 2 * n_eb * n_chunks * save_every * (N + 2) * block_e,
                                                   device=dev, dtype=torch.float32)
    m = muinit if muinit is not None else hsave
    if staged is not None:
        vx, vz, vg, vr = staged
        fast(gluon_kernels.scan_bwd_staged_gluon_kernel)[(B * n_eb, 2, n_chunks)](
            x, z, rows, args.dt[1], args.w[0], args.w[1], args.bias[0], args.bias[1], args.a[0], args.a[1],
            args.dskip[0], args.dskip[1], gy, hsave, m, gx, gz, graw, gbc, ga, gd, gbias,
            L, E, steps, x.stride(0), x.stride(1), x.stride(2), z.stride(0), z.stride(1),
            gy.stride(0), gy.stride(1), gy.stride(2), *args.param_strides(),
            hsave.stride(0), hsave.stride(1), hsave.stride(2), m.stride(0), m.stride(1), m.stride(2),
            gx.stride(0), gx.stride(1), gx.stride(2), graw.stride(0), graw.stride(1), graw.stride(2),
            gbc.stride(0), 0 if atomic_bc else gbc.stride(1), gbc.stride(2), gbc.stride(3),
            stride_row=rows.stride(0), R=R, N=N, BLOCK_E=block_e, BLOCK_R=max(2, _next_pow2(R)),
            B_COL=args.b_col, SAVE_EVERY=save_every, PART=_bwd_part(cfg, save_every), HAS_MU_INIT=muinit is not None,
            ATOMIC_BC=atomic_bc,
            STATES_EN=hsave.stride(-1) != 1, VX=vx, VZ=vz, VG=vg, VR=vr, CHAIN=_chain_sums(cfg),
            num_warps=1, **FP_FUSION,
            **_maxnreg(cfg.get("bwd_maxnreg")))
        return
    fast(gluon_kernels.scan_bwd_gluon_kernel)[(B * n_eb, 2, n_chunks)](
        x, z, rows, args.dt[1], args.w[0], args.w[1], args.bias[0], args.bias[1], args.a[0], args.a[1],
        args.dskip[0], args.dskip[1], gy, hsave, m, scratch, gx, gz, graw, gbc, ga, gd, gbias,
        L, E, steps, x.stride(0), x.stride(1), x.stride(2), z.stride(0), z.stride(1),
        gy.stride(0), gy.stride(1), gy.stride(2), *args.param_strides(),
        hsave.stride(0), hsave.stride(1), hsave.stride(2), m.stride(0), m.stride(1), m.stride(2),
        gx.stride(0), gx.stride(1), gx.stride(2), graw.stride(0), graw.stride(1), graw.stride(2),
        gbc.stride(0), gbc.stride(1), gbc.stride(2), gbc.stride(3),
        stride_row=rows.stride(0), R=R, N=N, BLOCK_E=block_e, BLOCK_R=max(2, _next_pow2(R)),
        B_COL=args.b_col, C_COL=args.c_col, SAVE_EVERY=save_every, HAS_MU_INIT=muinit is not None,
        SMEM_SCRATCH=smem, STATES_EN=hsave.stride(-1) != 1, WALK_PREFETCH=bool(cfg.get("gluon_walk_prefetch", 1)),
        num_warps=1, **FP_FUSION,
        **_maxnreg(cfg.get("bwd_maxnreg")))


def _bwd_part(cfg, save_every: int) -> int:
    """Steps of a part for scan_bwd_staged_gluon_kernel: its blocks of ``save_every`` steps split into
    ``gluon_bwd_parts`` parts (a power of two, at most the block), or more where a part would exceed
    ``gluon_bwd_part_max`` steps (a power of two; 0: no cap)."""
    parts = max(1, cfg.get("gluon_bwd_parts", 1))
    cap = cfg.get("gluon_bwd_part_max", 0)
    for name, value in (("gluon_bwd_parts", parts), ("gluon_bwd_part_max", cap)):
        if value & (value - 1) or value < 0:
            raise ValueError(f"{name} must be a power of two, not {value}")
    part = max(1, save_every // parts)
    return min(part, cap) if cap > 0 else part


def _bwd_staged_fits(args: _ScanArgs, gy: Tensor, save_every: int) -> Optional[Tuple[int, int, int, int]]:
    """(VX, VZ, VG, VR) for scan_bwd_staged_gluon_kernel where its 16-byte asynchronous copies apply, else None
    (the unstaged Gluon backward runs): x, z, the output gradient and the rows in 2- or 4-byte types, 16-byte
    aligned, with strides that Triton knows to be multiples of 16 elements; C right after B in the rows, B at a
    16-byte column; dt_low's BLOCK_R columns inside the row; and blocks of ``save_every`` steps (a power of two)
    that a warp's copies cover without repeating a row (the model's 8-step blocks under 1,024 tokens do)."""
    from . import gluon_kernels

    x, z, rows = args.x, args.z, args.dt[0]
    if gluon_kernels.async_copy is None or z is None or save_every < 2 or save_every & (save_every - 1):
        return None
    tensors = (x, z, gy, rows)
    if any(t.element_size() not in (2, 4) for t in tensors):
        return None
    vx, vz, vg, vr = (16 // t.element_size() for t in tensors)
    block_r = max(2, _next_pow2(args.R))
    for width, v in ((GLUON_BWD_BLOCK_E, vx), (GLUON_BWD_BLOCK_E, vz), (GLUON_BWD_BLOCK_E, vg), (block_r, vr),
                     (2 * args.N, vr)):
        if width % v or width // v > 32 or save_every * (width // v) < 32:
            return None
    if args.c_col != args.b_col + args.N or args.b_col % vr or block_r > rows.shape[-1] or rows.stride(0) % vr:
        return None
    ints = (x.stride(0), x.stride(1), x.stride(2), z.stride(0), z.stride(1), gy.stride(0), gy.stride(1),
            gy.stride(2), args.E)
    if any(v % 16 for v in ints) or any(t.data_ptr() % 16 for t in (x, z, gy, rows, args.dt[1])):
        return None
    if args.dt[1].stride() != rows.stride() or args.dt[1].dtype != rows.dtype:
        return None
    return vx, vz, vg, vr


def dt_proj_grads(graw: Tensor, dt_low: Tensor, weight: Tensor) -> Tuple[Tensor, Tensor]:
    """With delta = softplus(dt_low @ W^T + bias): (d dt_low [M, R'], d W [E, R] fp32) from d raw delta [M, E] (two
    matmuls in graw's dtype with fp32 accumulation, as autograd would do for the unfused dt_proj). ``dt_low`` may
    carry zero columns after its R ones (R' >= R, the padded rows of :func:`_rank_cols`): d dt_low then has R'
    columns (zero past R), and both products keep aligned operands."""
    R = weight.shape[1]
    extra = dt_low.shape[1] - R
    w = weight.to(graw.dtype)
    if extra:
        w = F.pad(w, (0, extra))
    return graw @ w, (graw.t() @ dt_low.to(graw.dtype))[:, :R].float()


def _row_stride(t: Tensor) -> int:
    """The stride between consecutive rows of ``t`` ([..., E], last dim contiguous) seen as [M, E], or -1 when its
    rows are not evenly spaced."""
    stride = t.stride(-2) if t.dim() > 1 else t.shape[-1]
    size = 1
    for dim in range(t.dim() - 2, -1, -1):
        if t.shape[dim] != 1 and t.stride(dim) != stride * size:
            return -1
        size *= t.shape[dim]
    return stride


def pair_sum(a: Tensor, b: Tensor, out: Optional[Tensor] = None, half: bool = False) -> Tensor:
    """a + b (or (a + b) / 2 with ``half``) in one pass, computed in fp32 and rounded once into ``out``'s dtype
    (default: a's), for [..., E] tensors whose rows may be strided (``pair_sum_kernel``); ``out`` may be a strided
    view too. Same values as ``(a.float() + b.float()).to(dtype)`` (halved exactly afterwards with ``half``)."""
    E = a.shape[-1]
    if out is None:
        out = torch.empty(a.shape, device=a.device, dtype=a.dtype)
    assert a.shape == b.shape == out.shape
    tensors = [a, b, out]
    for i, t in enumerate(tensors):
        if t.stride(-1) != 1 or _row_stride(t) < 0:
            if i == 2:
                raise ValueError("pair_sum: out's rows must be evenly spaced with contiguous columns")
            tensors[i] = t.contiguous()
    a, b, _ = tensors
    M = a.numel() // E if E else 0
    if M == 0 or E == 0:
        return out
    block_e = min(256, _next_pow2(E))
    block_m = max(1, 2048 // block_e)
    fast(pair_sum_kernel)[(_cdiv(M, block_m), _cdiv(E, block_e))](
        a, b, out, M, E, _row_stride(a), _row_stride(b), _row_stride(out), HALF=half, BLOCK_M=block_m,
        BLOCK_E=block_e, num_warps=4)
    return out


# ------------------------------------------------------------------------------------------------ generic scan
class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, grad_enabled):
        u, delta, B, C, z = (_last_contiguous(v) for v in (u, delta, B, C, z))
        if B.stride() != C.stride():  # the kernels read B and C with one set of strides
            B, C = B.contiguous(), C.contiguous()
        pair = lambda v: (v, v)  # noqa: E731  (one direction: both slots point at the same tensors)
        args = _ScanArgs(u.unsqueeze(0), z, pair(delta), pair(B), pair(C), (None, None), pair(delta_bias), pair(A),
                         pair(D), n_dirs=1, dir_base=1 if reverse else 0, dt_proj=False, softplus=delta_softplus,
                         a_is_log=False)
        # (ctx.needs_input_grad alone is true under inference_mode too when a parameter is passed in directly)
        needs_grad = grad_enabled and any(ctx.needs_input_grad[:8])
        cfg = _config()
        y, hsave = scan_forward(args, u.dtype, save_states=needs_grad, config=cfg)
        if needs_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, hsave)
            ctx.options = (delta_softplus, reverse)
            ctx.cfg = cfg
        return y.view(u.shape)

    @staticmethod
    def backward(ctx, grad):
        u, delta, A, B, C, D, z, delta_bias, hsave = ctx.saved_tensors
        delta_softplus, reverse = ctx.options
        pair = lambda v: (v, v)  # noqa: E731
        args = _ScanArgs(u.unsqueeze(0), z, pair(delta), pair(B), pair(C), (None, None), pair(delta_bias), pair(A),
                         pair(D), n_dirs=1, dir_base=1 if reverse else 0, dt_proj=False, softplus=delta_softplus,
                         a_is_log=False)
        g = scan_backward(args, hsave, grad.unsqueeze(2), config=ctx.cfg)
        N = A.shape[1]
        gbc = g["gbc"][0]
        return (g["gx"][0], g["graw"][0].to(delta.dtype), g["ga"][0].to(A.dtype), gbc[..., :N].to(B.dtype),
                gbc[..., N:].to(C.dtype), g["gd"][0].to(D.dtype) if D is not None else None,
                g["gz"][0] if z is not None else None,
                g["gbias"][0].to(delta_bias.dtype) if delta_bias is not None else None, None, None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, reverse=False):
    """The selective scan on the Triton kernels (same contract as ``selective_scan_ref``)."""
    return _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, torch.is_grad_enabled())


# ----------------------------------------------------------------------------------------- Vim's fused mixer
class _TritonBiScan(torch.autograd.Function):
    """ys[b, t, d, e] = silu(z) * (scan_d + D_d * x_d) with dt_proj + softplus folded in; both directions."""

    @staticmethod
    def forward(ctx, xs, z, dbl_f, dbl_b, w_f, w_b, bias_f, bias_b, alog_f, alog_b, d_f, d_b, grad_enabled, cfg):
        R, N = w_f.shape[1], alog_f.shape[1]
        args = _bi_args(xs, z, dbl_f, dbl_b, w_f, w_b, bias_f, bias_b, alog_f, alog_b, d_f, d_b, R, N)
        needs_grad = grad_enabled and any(ctx.needs_input_grad[:12])
        y, hsave = scan_forward(args, xs.dtype, save_states=needs_grad, config=cfg)
        if needs_grad:
            ctx.save_for_backward(xs, z, dbl_f, dbl_b, w_f, w_b, bias_f, bias_b, alog_f, alog_b, d_f, d_b, hsave)
            ctx.cfg = cfg
        return y

    @staticmethod
    def backward(ctx, gy):
        xs, z, dbl_f, dbl_b, w_f, w_b, bias_f, bias_b, alog_f, alog_b, d_f, d_b, hsave = ctx.saved_tensors
        R, N = w_f.shape[1], alog_f.shape[1]
        args = _bi_args(xs, z, dbl_f, dbl_b, w_f, w_b, bias_f, bias_b, alog_f, alog_b, d_f, d_b, R, N)
        g = scan_backward(args, hsave, gy, config=ctx.cfg)
        gz = pair_sum(g["gz"][0], g["gz"][1])
        gdbl, gw = [], []
        for i, (dbl, w) in enumerate(((dbl_f, w_f), (dbl_b, w_b))):
            rows = dbl.reshape(-1, dbl.shape[-1])
            rank_cols = rows.shape[1] - 2 * N  # (R, or the padded rows' dt_low | zeros: _rank_cols)
            g_low, g_w = dt_proj_grads(g["graw"][i].view(rows.shape[0], -1), rows[:, :rank_cols], w)
            gdbl.append(torch.cat([g_low.to(dbl.dtype), g["gbc"][i].view(rows.shape[0], 2 * N).to(dbl.dtype)],
                                  dim=1).view(dbl.shape))
            gw.append(g_w)
        cast = lambda v, ref: v.to(ref.dtype)  # noqa: E731
        return (g["gx"], gz, gdbl[0], gdbl[1], cast(gw[0], w_f), cast(gw[1], w_b),
                cast(g["gbias"][0], bias_f), cast(g["gbias"][1], bias_b), cast(g["ga"][0], alog_f),
                cast(g["ga"][1], alog_b), cast(g["gd"][0], d_f), cast(g["gd"][1], d_b), None, None)


def _bi_args(xs, z, dbl_f, dbl_b, w_f, w_b, bias_f, bias_b, alog_f, alog_b, d_f, d_b, R, N):
    # x_proj's outputs as whole rows (dt_low | B | C, or dt_low | zeros | B | C: B and C are the last 2N columns),
    # read at constant column offsets
    rows = (_last_contiguous(dbl_f.reshape(-1, dbl_f.shape[-1])), _last_contiguous(dbl_b.reshape(-1, dbl_b.shape[-1])))
    if rows[0].stride() != rows[1].stride():
        rows = (rows[0].contiguous(), rows[1].contiguous())
    width = rows[0].shape[-1]
    assert width >= R + 2 * N, "x_proj's rows are narrower than dt_low | B | C"
    return _ScanArgs(
        xs, z, rows, rows, rows, (w_f, w_b), (bias_f, bias_b), (alog_f, alog_b), (d_f, d_b),
        n_dirs=2, dir_base=0, dt_proj=True, softplus=True, a_is_log=True, b_col=width - 2 * N, c_col=width - N)


def _rank_cols(R: int, pad: bool, N: int = 16) -> int:
    """The columns dt_low takes in x_proj's rows: R, or with ``pad`` R rounded up to a multiple of 8 and of N
    (zero columns after it). Vim-Ti's rows are 12 + 16 + 16 = 44 wide: 88 bytes in bf16, so cuBLAS's products
    with them (x_proj itself, and in the backward pass d xs += d rows @ W, d W = d rows^T @ xs, the two dt_proj
    gradients) ran on its slow kernels for operands aligned to 2 - 8 bytes (10 - 29 us each at 224 px / batch
    128, ~4 ms of a training step). 16 + 16 + 16 = 48 makes every row, and B and C in it, 16-byte aligned.
    B at a multiple of N columns is what the staged forward needs (_staged_fits): Vim-S's 24 + 16 + 16 rows
    were aligned but kept Vim-S on the unstaged forward kernels; its dt_low now takes 32 columns. Vim-B's 48
    needs no padding."""
    step = math.lcm(8, N)
    return _cdiv(R, step) * step if pad else R


def xproj_weight_rows(weight: Tensor, R: int, rank_cols: int, dtype: torch.dtype) -> Tensor:
    """x_proj's weight [R + 2N, E] in ``dtype``, with zero rows after dt_low's up to ``rank_cols`` (the layout
    of :func:`_rank_cols`); differentiable."""
    weight = weight.to(dtype)
    if rank_cols == R:
        return weight
    return torch.cat([weight[:R], weight.new_zeros(rank_cols - R, weight.shape[1]), weight[R:]])


def xproj_grad_rows(grad: Tensor, R: int, rank_cols: int) -> Tensor:
    """The gradient of x_proj's weight from that of its padded form (:func:`xproj_weight_rows`): [W, E], or
    [..., W, E] for a stack of them."""
    return grad if rank_cols == R else torch.cat([grad[..., :R, :], grad[..., rank_cols:, :]], dim=-2)


_PAIR_INDEX = {}


def xproj_weight_pair(w_f: Tensor, w_b: Tensor, R: int, rank_cols: int, dtype: torch.dtype) -> Tensor:
    """Both directions' x_proj weights as :func:`xproj_weight_rows` makes them, stacked: [2, rank_cols + 2N, E] in
    ``dtype``, in three launches (a concatenation with a zero row, a row gather, the cast) instead of three per
    direction. Not differentiable; the mixer's autograd node computes x_proj's weight gradient itself. The gather's
    index and the zero row are constants cached per device and shape (made outside any CUDA graph capture: during
    one, an uncached shape takes the per-direction path)."""
    if rank_cols == R:
        return torch.stack([w_f, w_b]).to(dtype)
    rows, E = w_f.shape
    key = (str(w_f.device), w_f.dtype, rows, E, R, rank_cols)
    cached = _PAIR_INDEX.get(key)
    if cached is None:
        if w_f.is_cuda and torch.cuda.is_current_stream_capturing():
            return torch.stack([xproj_weight_rows(w, R, rank_cols, dtype) for w in (w_f, w_b)])
        zero_row = 2 * rows  # the zero row sits after both weights' rows
        order = []
        for base in (0, rows):
            order += [base + i for i in range(R)] + [zero_row] * (rank_cols - R) + [base + i for i in range(R, rows)]
        with torch.inference_mode(False), torch.no_grad():
            cached = (torch.tensor(order, device=w_f.device),
                      torch.zeros(1, E, device=w_f.device, dtype=w_f.dtype))
        _PAIR_INDEX[key] = cached
    index, zero = cached
    width = rank_cols + rows - R
    return torch.cat([w_f, w_b, zero]).index_select(0, index).to(dtype).view(2, width, E)


def mixer_weights(w_f: Tensor, w_b: Tensor, out_w: Optional[Tensor], R: int, rank_cols: int,
                  dtype: torch.dtype, copies: int = 1) -> Tuple[Tensor, Optional[Tensor]]:
    """An inference call's weights in one launch (``mixer_weights_kernel``): what :func:`xproj_weight_pair` makes
    ([2, rank_cols + 2N, E] in ``dtype``) and, for out_proj's weight ``out_w`` [D, E] (or None), what
    :func:`_half_weight` makes with ``copies`` ([D, copies * E] in ``dtype``), with the same rounding. Not
    differentiable."""
    rows, E = w_f.shape
    assert w_b.shape == w_f.shape and (out_w is None or out_w.shape[1] == E)
    if w_f.stride() != w_b.stride() or w_f.stride(1) != 1:  # (the kernel reads both with one row stride)
        w_f, w_b = w_f.contiguous(), w_b.contiguous()
    if out_w is not None and out_w.stride(1) != 1:
        out_w = out_w.contiguous()
    width = rank_cols + rows - R
    pair = torch.empty(2, width, E, device=w_f.device, dtype=dtype)
    D = out_w.shape[0] if out_w is not None else 0
    if copies not in (1, 2):
        raise ValueError(f"copies must be 1 or 2, got {copies}")
    half = torch.empty(D, copies * E, device=w_f.device, dtype=dtype) if out_w is not None else None
    block_r, block_e = 16, 128
    fast(mixer_weights_kernel)[(_cdiv(2 * width + D, block_r), _cdiv(E, block_e))](
        w_f, w_b, out_w if out_w is not None else w_f, pair, half if half is not None else pair, E, D,
        w_f.stride(0), out_w.stride(0) if out_w is not None else 0,
        R=R, RANK_COLS=rank_cols, ROWS=rows, HAS_OUT=out_w is not None, BLOCK_R=block_r, BLOCK_E=block_e,
        COPIES=copies, num_warps=4)
    return pair, half


_PREP_TABLES = {}


def prepare_inference_weights(mixers, dtype: Optional[torch.dtype]) -> Optional[list]:
    """The inference weights of every mixer in ``mixers`` (a model's layers, alike in shape), made in one launch
    (``prep_weights_kernel``) instead of two or three a layer: for each, (in_proj's weight in ``dtype``, or None
    where ``dtype`` is None: in_proj then runs as it is; x_proj's padded pair [2, W, E] and out_proj's [W, W] / 2
    [D, 2E], as :func:`mixer_weights` makes them, in ``dtype`` or fp32). None where it does not apply (the caller
    then runs each layer as before): ``prep_weights`` off, a setting whose inference path does not take these
    weights (``interleave`` off, the "matmul" delta), weights that are not fp32 and contiguous, layers of
    different shapes, or an uncached table of weight addresses during a CUDA graph capture (the table is a small
    int64 tensor made per set of weights, outside any capture)."""
    cfg = _config()
    if not (cfg["prep_weights"] and cfg["interleave"] and cfg["delta"] == "fold") or not mixers:
        return None
    first = mixers[0]
    dev = first.in_proj.weight.device
    shapes = None
    ptrs = []
    for m in mixers:
        ws = (m.in_proj.weight, m.x_proj.weight, m.x_proj_b.weight, m.out_proj.weight)
        if any(w.dtype != torch.float32 or not w.is_contiguous() or w.device != dev for w in ws):
            return None
        if m.in_proj.bias is not None or m.out_proj.bias is not None \
                or shapes not in (None, tuple(w.shape for w in ws) + (m.dt_rank,)):
            return None
        shapes = tuple(w.shape for w in ws) + (m.dt_rank,)
        ptrs += [w.data_ptr() for w in ws]
    key = (str(dev), tuple(ptrs))
    table = _PREP_TABLES.get(key)
    if table is None:
        if dev.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        if len(_PREP_TABLES) > 16:
            _PREP_TABLES.clear()
        with torch.inference_mode(False), torch.no_grad():
            table = _PREP_TABLES[key] = torch.tensor(ptrs, dtype=torch.int64, device=dev).view(len(mixers), 4)
    E2, D = first.in_proj.weight.shape
    E, R, N = E2 // 2, first.dt_rank, first.d_state
    rows = R + 2 * N
    rank_cols = _rank_cols(R, cfg["rows_pad"], N)
    width = rank_cols + rows - R
    out_dtype = dtype or torch.float32
    n_in = 2 * E * D if dtype is not None else 0
    n_pair, n_half = 2 * width * E, D * 2 * E
    n_layer = n_in + n_pair + n_half
    out = _new(len(mixers), n_layer, device=dev, dtype=out_dtype)
    block = 1024
    fast(prep_weights_kernel)[(_cdiv(n_layer, block), len(mixers))](
        table, out, n_layer, D=D, E=E, R=R, RANK_COLS=rank_cols, ROWS=rows, HAS_IN=dtype is not None,
        BLOCK=block, num_warps=4)
    made = []
    for flat in out:
        w_in = flat[:n_in].view(2 * E, D) if n_in else None
        made.append((w_in, flat[n_in:n_in + n_pair].view(2, width, E), flat[n_in + n_pair:].view(D, 2 * E)))
    return made


def _bc_width(R: int, N: int) -> int:
    """Width of x_proj's rows in the "matmul" layout [B | C | dt_low | zeros]: a multiple of 8 elements, so that
    with B and C first every row of B and C starts 16-byte aligned (vector loads in the scan)."""
    return _cdiv(2 * N + R, 8) * 8


def xproj_weights(w_f: Tensor, w_b: Tensor, R: int, N: int) -> Tensor:
    """Both directions' x_proj weights ([R + 2N, E], rows dt_low | B | C) as one [2, W, E] tensor with rows
    B | C | dt_low | zeros (see :func:`_bc_width`); differentiable (a permutation and a pad)."""
    pad = _bc_width(R, N) - (2 * N + R)
    return torch.stack([F.pad(torch.cat([w[R:], w[:R]]), (0, 0, 0, pad)) for w in (w_f, w_b)])


class _TritonBiScanDelta(torch.autograd.Function):
    """ys[b, t, d, e] = silu(z) * (scan_d + D_d * x_d), delta = softplus(delta_raw + bias) with delta_raw given
    ([2, M, E], dt_proj's output for both directions); B and C read from x_proj's rows ([2, M, W], B | C | ...)."""

    @staticmethod
    def forward(ctx, xs, z, dbl, delta, bias_f, bias_b, alog_f, alog_b, d_f, d_b, grad_enabled, cfg):
        args = _bi_delta_args(xs, z, dbl, delta, bias_f, bias_b, alog_f, alog_b, d_f, d_b)
        needs_grad = grad_enabled and any(ctx.needs_input_grad[:10])
        y, hsave = scan_forward(args, xs.dtype, save_states=needs_grad, config=cfg)
        if needs_grad:
            ctx.save_for_backward(xs, z, dbl, delta, bias_f, bias_b, alog_f, alog_b, d_f, d_b, hsave)
            ctx.cfg = cfg
        return y

    @staticmethod
    def backward(ctx, gy):
        xs, z, dbl, delta, bias_f, bias_b, alog_f, alog_b, d_f, d_b, hsave = ctx.saved_tensors
        args = _bi_delta_args(xs, z, dbl, delta, bias_f, bias_b, alog_f, alog_b, d_f, d_b)
        g = scan_backward(args, hsave, gy, config=ctx.cfg)
        N = alog_f.shape[1]
        gz = pair_sum(g["gz"][0], g["gz"][1])
        gdbl = torch.zeros_like(dbl)
        gdbl[..., :2 * N] = g["gbc"].view(2, -1, 2 * N)
        cast = lambda v, ref: v.to(ref.dtype)  # noqa: E731
        return (g["gx"], gz, gdbl, g["graw"].view(delta.shape), cast(g["gbias"][0], bias_f),
                cast(g["gbias"][1], bias_b), cast(g["ga"][0], alog_f), cast(g["ga"][1], alog_b),
                cast(g["gd"][0], d_f), cast(g["gd"][1], d_b), None, None)


def _bi_delta_args(xs, z, dbl, delta, bias_f, bias_b, alog_f, alog_b, d_f, d_b):
    N = alog_f.shape[1]
    pair = lambda t: (t[0], t[1])  # noqa: E731  (direction 1 one dim-0 stride after direction 0)
    return _ScanArgs(
        xs, z, pair(delta), pair(dbl), pair(dbl), (None, None), (bias_f, bias_b), (alog_f, alog_b), (d_f, d_b),
        n_dirs=2, dir_base=0, dt_proj=False, softplus=True, a_is_log=True, b_col=0, c_col=N)


def conv_forward(x: Tensor, w_f: Tensor, w_b: Tensor, bias_f: Optional[Tensor], bias_b: Optional[Tensor],
                 cfg, interleave: bool = False) -> Tensor:
    """silu(conv) of both directions in one launch: [2, B, L, E] from x [B, L, E] (see :class:`_TritonBiConv`).
    With ``interleave`` its storage is [B, L, 2, E] (a token's two directions side by side; the result is the
    [2, B, L, E] view of it), so that the scan's output written over it feeds out_proj as one [B, L, 2E] product."""
    x = _last_contiguous(x)
    B, L, E = x.shape
    K = w_f.shape[-1]
    if K != 4:
        raise NotImplementedError(f"the Triton conv kernel is written for kernel size 4, got {K}")
    if interleave:
        out = _new(B, L, 2, E, device=x.device, dtype=x.dtype).permute(2, 0, 1, 3)
    else:
        out = _new(2, B, L, E, device=x.device, dtype=x.dtype)
    if cfg["conv_walk"]:
        rows = _walk_rows(L, cfg["conv_walk_rows"])
        block_e = cfg["conv_walk_block_e"]
        fast(conv_fwd_walk_kernel)[(_cdiv(L, rows), _cdiv(E, block_e), B)](
            x, w_f, w_b, _or(bias_f, x.device), _or(bias_b, x.device), out, L, E, rows,
            x.stride(0), x.stride(1), out.stride(0), out.stride(1), out.stride(2),
            K=K, BLOCK_E=block_e, HAS_BIAS=bias_f is not None, num_warps=cfg["conv_walk_warps"], **FP_FUSION)
        return out
    block_l, block_e, tiles = cfg["conv_block_l"], 64, cfg["conv_tiles"]
    fast(conv_fwd_kernel)[(_cdiv(L, block_l * tiles), _cdiv(E, block_e), B)](
        x, w_f, w_b, _or(bias_f, x.device), _or(bias_b, x.device), out, L, E,
        x.stride(0), x.stride(1), out.stride(0), out.stride(1), out.stride(2),
        K=K, BLOCK_L=block_l, BLOCK_E=block_e, TILES=tiles, HAS_BIAS=bias_f is not None,
        num_warps=cfg["conv_warps"], **FP_FUSION)
    return out


def _walk_rows(L: int, target: int) -> int:
    """Rows per program of the conv's walk: the sequence split into about ``L / target`` equal parts, each rounded up
    to a multiple of 8 (the walk's rows an iteration)."""
    parts = max(1, round(L / max(target, 8)))
    return _cdiv(_cdiv(L, parts), 8) * 8


def _conv_and_rows(x: Tensor, forward, backward, R: int, rows_fp32: bool, cfg, weights: Optional[Tensor] = None,
                   interleave: bool = False):
    """The mixer's conv output xs [2, B, L, E] (stored [B, L, 2, E] with ``interleave``: :func:`conv_forward`),
    x_proj's rows of both directions [2, B, L, W] for the scan (padded as :func:`_rank_cols` says) and the padded
    x_proj weights [2, W, E] that made them (:func:`xproj_weight_pair`, unless given); ``forward`` / ``backward``:
    (x_proj weight, conv weight, conv bias) per direction."""
    if weights is None:
        N = (forward[0].shape[0] - R) // 2
        weights = xproj_weight_pair(forward[0], backward[0], R, _rank_cols(R, cfg["rows_pad"], N), x.dtype)
    xs = conv_forward(x, forward[1], backward[1], forward[2], backward[2], cfg, interleave=interleave)
    return xs, _x_proj_pair(xs, weights, rows_fp32), weights


def conv_backward(x: Tensor, w_f: Tensor, w_b: Tensor, bias_f: Optional[Tensor], bias_b: Optional[Tensor],
                  gout: Tensor, cfg, gx_out: Optional[Tensor] = None):
    """Gradients of :func:`conv_forward` for the output gradient ``gout`` [2, B, L, E]: (d x, d w_f, d w_b,
    d bias_f, d bias_b), each in its tensor's dtype (None for absent biases). ``gx_out``: where to write d x (a
    [B, L, E] view with contiguous channels, e.g. half of in_proj's output gradient)."""
    x = _last_contiguous(x)
    gout = _last_contiguous(gout)
    B, L, E = x.shape
    K = w_f.shape[-1]
    if gx_out is not None:
        assert gx_out.shape == (B, L, E) and gx_out.stride(-1) == 1 and gx_out.dtype == x.dtype
    if cfg["conv_bwd_walk"]:
        gx = gx_out if gx_out is not None else _new(B, L, E, device=x.device, dtype=x.dtype)
        sums = torch.zeros(2, 5, E, device=x.device, dtype=torch.float32)
        rows, block_e = _walk_rows(L, cfg["conv_bwd_walk_rows"]), cfg["conv_bwd_walk_block_e"]
        fast(conv_bwd_walk_kernel)[(_cdiv(L, rows), _cdiv(E, block_e), B)](
            x, w_f, w_b, _or(bias_f, x.device), _or(bias_b, x.device), gout, gx, sums, L, E, rows,
            x.stride(0), x.stride(1), gout.stride(0), gout.stride(1), gout.stride(2), gx.stride(0), gx.stride(1),
            K=K, BLOCK_E=block_e, HAS_BIAS=bias_f is not None, num_warps=cfg["conv_bwd_walk_warps"], **FP_FUSION)
        return _conv_grads(gx, sums, w_f, w_b, bias_f, bias_b)
    block_l, block_e = 32, 64
    n_eb, n_tiles = _cdiv(E, block_e), _cdiv(L, block_l)
    # weight gradients: each program sums the tiles of its chunk of rows; enough chunks to fill the GPU
    n_chunks = 1
    min_programs = _min_programs(x.device, cfg["min_programs"])
    if cfg.get("conv_bwd_programs", -1) >= 0:
        min_programs = cfg["conv_bwd_programs"]
    if min_programs and B * n_eb * 2 < min_programs:  # (a program a direction)
        n_chunks = min(_cdiv(min_programs, B * n_eb * 2), n_tiles)
    rows = _cdiv(n_tiles, n_chunks) * block_l
    n_chunks = _cdiv(L, rows)
    # g_pre in the activations' precision (bf16 gradients arrive in bf16 anyway; fp32 stays fp32); the weight
    # gradients are summed from the fp32 values inside the kernel
    gpre = _new(2, B, L, E, device=x.device, dtype=torch.float32 if x.dtype == torch.float32 else x.dtype)
    # the weight and bias gradients [2, 5, E] (taps 0-3, then the bias), added into by the programs
    sums = torch.zeros(2, 5, E, device=x.device, dtype=torch.float32)
    # (rows of 8: ten [rows, channels] accumulators stay in registers)
    fast(conv_bwd_dir_kernel)[(n_chunks, n_eb * 2, B)](
        x, w_f, w_b, _or(bias_f, x.device), _or(bias_b, x.device), gout, gpre, sums, L, E, rows,
        x.stride(0), x.stride(1), gout.stride(0), gout.stride(1), gout.stride(2),
        gpre.stride(0), gpre.stride(1), gpre.stride(2),
        K=K, BLOCK_L=cfg["conv_bwd_rows"], BLOCK_E=block_e,
        HAS_BIAS=bias_f is not None, num_warps=cfg["conv_bwd_warps"], **FP_FUSION)
    gx = gx_out if gx_out is not None else _new(B, L, E, device=x.device, dtype=x.dtype)
    in_rows, in_tiles = cfg["conv_bwd_input_rows"], cfg["conv_bwd_input_tiles"]
    fast(conv_bwd_input_kernel)[(_cdiv(L, in_rows * in_tiles), n_eb, B)](
        gpre, w_f, w_b, gx, L, E, gpre.stride(0), gpre.stride(1), gpre.stride(2), gx.stride(0), gx.stride(1),
        K=K, BLOCK_L=in_rows, BLOCK_E=block_e, TILES=in_tiles, num_warps=cfg["conv_bwd_input_warps"],
        **FP_FUSION)
    return _conv_grads(gx, sums, w_f, w_b, bias_f, bias_b)


def _conv_grads(gx: Tensor, sums: Tensor, w_f: Tensor, w_b: Tensor, bias_f: Optional[Tensor],
                bias_b: Optional[Tensor]):
    """:func:`conv_backward`'s result from d x and the sums [2, 5, E] (taps 0-3, then the bias, per direction)."""
    gw = sums[:, :4].transpose(1, 2).contiguous()
    gbias = sums[:, 4]
    gb = (lambda i, ref: gbias[i].to(ref.dtype) if ref is not None else None)
    return gx, gw[0].view_as(w_f).to(w_f.dtype), gw[1].view_as(w_b).to(w_b.dtype), gb(0, bias_f), gb(1, bias_b)


class _TritonBiConv(torch.autograd.Function):
    """xs[d] = silu(conv_d(x)): causal for d = 0, anti-causal (time-reversed) for d = 1. x: [B, L, E]."""

    @staticmethod
    def forward(ctx, x, w_f, w_b, bias_f, bias_b, cfg=None):
        cfg = cfg or _config()
        out = conv_forward(x, w_f, w_b, bias_f, bias_b, cfg)
        ctx.save_for_backward(x, w_f, w_b, bias_f, bias_b)
        ctx.cfg = cfg
        return out

    @staticmethod
    def backward(ctx, gout):
        x, w_f, w_b, bias_f, bias_b = ctx.saved_tensors
        return (*conv_backward(x, w_f, w_b, bias_f, bias_b, gout, ctx.cfg), None)


class _TritonBiMixer(torch.autograd.Function):
    """The conv, x_proj and the scan of both directions (dt_proj + softplus, D, silu(z) folded in) as one node of
    the autograd graph, for training: ys [B, L, 2, E] from in_proj's output xz [B, L, 2E] (x | z).

    What it keeps for the backward pass is xz (in_proj's output, kept anyway), x_proj's small outputs and the
    saved states, not the conv's output xs [2, B, L, E]: the backward recomputes xs with one conv launch (~0.03 ms
    at 224 px / batch 128, against the 0.9 GiB that 24 blocks' xs take there). Its gradient collects the scan's and
    x_proj's contributions before the conv's backward, as autograd would for the unfused ops. It takes xz whole,
    not its two halves, so that the backward writes d x and d z (the two directions' sum) straight into one
    [B, L, 2E] gradient: no concatenation by autograd, no fp32 round trip for d z."""

    @staticmethod
    def forward(ctx, xz, cw_f, cw_b, cb_f, cb_b, xw_f, xw_b, w_f, w_b, bias_f, bias_b, alog_f, alog_b, d_f, d_b,
                cfg):
        E = xz.shape[-1] // 2
        x, z = xz[..., :E], xz[..., E:]
        # x_proj in the activations' dtype, as autocast runs F.linear on bf16 activations and fp32 weights (with
        # its output in fp32 where the Gluon kernels read it: _x_proj_pair), its rows padded for aligned products
        R, N = w_f.shape[1], alog_f.shape[1]
        fp32_rows = rows_in_fp32(cfg, x.device, x.dtype, *z.shape, N, training=True, R=R)
        pair = mixer_weights(xw_f, xw_b, None, R, _rank_cols(R, cfg["rows_pad"], N), x.dtype)[0]  # one launch
        xs, rows, xw_pair = _conv_and_rows(x, (xw_f, cw_f, cb_f), (xw_b, cw_b, cb_b), R, fp32_rows, cfg, weights=pair)
        args = _bi_args(xs, z, rows[0], rows[1], w_f, w_b, bias_f, bias_b, alog_f, alog_b, d_f, d_b, R, N)
        needs_grad = any(ctx.needs_input_grad[:15])
        y, hsave = scan_forward(args, xs.dtype, save_states=needs_grad, config=cfg)
        if needs_grad:
            # (the padded x_proj weights kept too: the backward's d xs product needs them, ~74 KB a block)
            ctx.save_for_backward(xz, cw_f, cw_b, cb_f, cb_b, xw_f, xw_b, w_f, w_b, bias_f, bias_b, alog_f, alog_b,
                                  d_f, d_b, rows, hsave, xw_pair)
            ctx.cfg = cfg
        return y

    @staticmethod
    def backward(ctx, gy):
        (xz, cw_f, cw_b, cb_f, cb_b, xw_f, xw_b, w_f, w_b, bias_f, bias_b, alog_f, alog_b, d_f, d_b, rows,
         hsave, xw_pair) = ctx.saved_tensors
        cfg = ctx.cfg
        E = xz.shape[-1] // 2
        x, z = xz[..., :E], xz[..., E:]
        xs = conv_forward(x, cw_f, cw_b, cb_f, cb_b, cfg)  # the conv's output again, bit for bit
        R, N = w_f.shape[1], alog_f.shape[1]
        args = _bi_args(xs, z, rows[0], rows[1], w_f, w_b, bias_f, bias_b, alog_f, alog_b, d_f, d_b, R, N)
        g = scan_backward(args, hsave, gy, config=cfg)
        gxz = torch.empty(xz.shape, device=xz.device, dtype=xz.dtype)
        pair_sum(g["gz"][0], g["gz"][1], out=gxz[..., E:])  # d z: both directions' parts
        gxs = g["gx"]  # [2, B, L, E] in xs's dtype: the scan's part of d xs, x_proj's added below
        gxw, gw = _proj_grads(rows, xs, gxs, g["graw"], g["gbc"], xw_pair, w_f, w_b, R, N)
        del xs
        _, gcw_f, gcw_b, gcb_f, gcb_b = conv_backward(x, cw_f, cw_b, cb_f, cb_b, gxs, cfg, gx_out=gxz[..., :E])
        cast = lambda v, ref: v.to(ref.dtype) if ref is not None else None  # noqa: E731
        return (gxz, gcw_f, gcw_b, gcb_f, gcb_b, cast(gxw[0], xw_f), cast(gxw[1], xw_b), cast(gw[0], w_f),
                cast(gw[1], w_b),
                cast(g["gbias"][0], bias_f), cast(g["gbias"][1], bias_b), cast(g["ga"][0], alog_f),
                cast(g["ga"][1], alog_b), cast(g["gd"][0], d_f), cast(g["gd"][1], d_b), None)


_MM_OUT_DTYPE = [True]  # whether torch.bmm takes out_dtype (bf16 / fp16 inputs, fp32 output on CUDA)


def _proj_grads(rows: Tensor, xs: Tensor, gxs: Tensor, graw: Tensor, gbc: Tensor, xw_pair: Tensor, w_f: Tensor,
                w_b: Tensor, R: int, N: int):
    """The mixer's backward through x_proj and the folded dt_proj: adds x_proj's part of d xs into ``gxs``
    [2, B, L, E] and returns ([d x_proj weight] x 2 as [R + 2N, E] fp32, [d dt_proj weight] x 2 as [E, R] fp32).

    rows: x_proj's rows [2, B, L, W] (dt_low | zeros | B | C, W = rank_cols + 2N); xs: the conv's output;
    graw: d raw delta [2, B, L, E] in xs's dtype; gbc: d (B | C) [2, B, L, 2N] fp32; xw_pair: the padded x_proj
    weights [2, W, E] in xs's dtype. With delta_raw = dt_low @ W_dt^T: d dt_low = graw @ W_dt (zero in the padding
    columns, whose x_proj rows are zero too) and d W_dt = graw^T @ dt_low; then with d rows = d dt_low | d B | d C:
    d xs += d rows @ W_x and d W_x = d rows^T @ xs. The products run in xs's dtype with fp32 accumulation, as
    autograd would run the unfused ops under autocast.

    Launches: the weights, casts and concatenations are made for both directions at once (16 launches a block,
    against 24 for a loop over the directions). The three products with a long inner dimension or a large output
    stay a direction each: batched over the directions (torch.bmm, fp32 output) cuBLAS ran the two weight
    gradients on kernels without split-K, 40 us each instead of ~10 (H100, 224 px / batch 128, session 21)."""
    _, B, L, W = rows.shape
    E = xs.shape[-1]
    M, rank_cols, dt = B * L, W - 2 * N, xs.dtype
    w2 = torch.stack([w_f, w_b])  # [2, E, R]
    if rank_cols > R:
        w2 = F.pad(w2, (0, rank_cols - R))
    g2, x2, gx2 = graw.view(2, M, E), xs.view(2, M, E), gxs.view(2, M, E)
    g_low = torch.bmm(g2, w2.to(dt))  # [2, M, rank_cols]
    dt_low = rows.view(2, M, W)[..., :rank_cols].to(dt)
    # (in the activations' dtype, whatever the rows' dtype: as autograd would have it for bf16 rows)
    gdbl = torch.cat([g_low, gbc.view(2, M, 2 * N).to(dt)], dim=2)  # [2, M, W]
    g_w = torch.empty(2, E, rank_cols, device=xs.device, dtype=dt)
    g_x = torch.empty(2, W, E, device=xs.device, dtype=dt)
    for i in range(2):
        torch.mm(g2[i].t(), dt_low[i], out=g_w[i])
        gx2[i].addmm_(gdbl[i], xw_pair[i].to(dt))
        torch.mm(gdbl[i].t(), x2[i], out=g_x[i])
    g_w = g_w[..., :R].float().contiguous()
    g_x = xproj_grad_rows(g_x, R, rank_cols).float()  # [2, R + 2N, E]
    return (g_x[0], g_x[1]), (g_w[0], g_w[1])


def _x_proj_pair(xs: Tensor, weights: Tensor, rows_fp32) -> Tensor:
    """x_proj's rows (dt_low | B | C, or dt_low | zeros | B | C: see :func:`_rank_cols`) of both directions,
    [2, B, L, W], from xs [2, B, L, E] and the weights [2, W, E] in xs's dtype: one batched product. With
    ``rows_fp32`` and half-precision activations on CUDA, the product is written in fp32 (cuBLAS accumulates in
    fp32 anyway): the scan then reads B, C and dt_low without unpacking them from bf16 at every step (the Triton
    forward's loop: 375 -> 352 instructions, 669 -> 610 for 128-channel programs; the Gluon one: 350 -> 275).
    Otherwise in xs's dtype, as autocast runs F.linear."""
    flat = xs.reshape(2, -1, xs.shape[-1])
    wt = weights.transpose(1, 2)
    out = None
    if rows_fp32 and _MM_OUT_DTYPE[0] and xs.is_cuda and xs.dtype in (torch.bfloat16, torch.float16):
        try:
            out = torch.bmm(flat, wt, out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # a torch without out_dtype for bmm
            _MM_OUT_DTYPE[0] = False
    if out is None:
        out = torch.bmm(flat, wt)
    return out.view(*xs.shape[:-1], out.shape[-1])


def _bi_scan_inplace(xs: Tensor, z: Tensor, dbl_f: Tensor, dbl_b: Tensor, forward, backward, cfg) -> Tensor:
    """The fused scan without autograd, its output written over xs ([2, B, L, E]); returns xs."""
    R, N = forward.dt_proj_weight.shape[1], forward.A_log.shape[1]
    args = _bi_args(xs, z, dbl_f, dbl_b, forward.dt_proj_weight, backward.dt_proj_weight, forward.dt_proj_bias,
                    backward.dt_proj_bias, forward.A_log, backward.A_log, forward.D, backward.D, R, N)
    scan_forward(args, xs.dtype, save_states=False, config=cfg, out=xs.permute(1, 2, 0, 3))
    return xs


def _half_weight(weight: Tensor, dtype: torch.dtype, copies: int = 1) -> Tensor:
    """weight / 2 in ``dtype``, rounded once from the fp32 product (as ``(weight * 0.5).to(dtype)``), one launch;
    with ``copies`` = 2, [W / 2, W / 2] side by side ([D, 2E] for a [D, E] weight)."""
    D, E = weight.shape
    out = torch.empty(D, copies, E, device=weight.device, dtype=dtype)
    torch.mul(weight.unsqueeze(1).expand(D, copies, E), 0.5, out=out)
    return out.view(D, copies * E)


def _out_proj_directions(ys: Tensor, weight: Tensor, bias: Optional[Tensor], half: Optional[Tensor] = None) -> Tensor:
    """out_proj((y_f + y_b) / 2) for y [2, B, L, E], in y's dtype (``half``: the weight / 2 in y's dtype, if
    already made: [D, E], or [D, 2E] as [W, W] / 2). Where y is stored [B, L, 2, E] (the conv's ``interleave``),
    one product [y_f | y_b] @ ([W, W] / 2)^T, accumulated in fp32 by the GEMM; otherwise two accumulating
    matmuls."""
    _, B, L, E = ys.shape
    if ys.permute(1, 2, 0, 3).is_contiguous():
        w2 = half if half is not None and half.shape[1] == 2 * E else _half_weight(weight, ys.dtype, copies=2)
        return F.linear(ys.permute(1, 2, 0, 3).view(B, L, 2 * E), w2, bias.to(ys.dtype) if bias is not None
                        else None)
    if half is not None and half.shape[1] != E:
        half = None
    w = (half if half is not None else _half_weight(weight, ys.dtype)).t()
    out = torch.matmul(ys[0], w)
    out.view(-1, out.shape[-1]).addmm_(ys[1].reshape(-1, ys.shape[-1]), w)
    return out if bias is None else out.add_(bias.to(out.dtype))


class _OutProjCombine(torch.autograd.Function):
    """out_proj((y_f + y_b) / 2) for ys [B, L, 2, E] (the scan's output) in training: the product itself is
    F.linear on [y_f | y_b] with the weight [W, W] / 2, as before, but the backward pass needs only the mean of
    the two directions for d W, so that is what is kept ([B, L, E] instead of [B, L, 2, E]), and d ys is the one
    [B, L, E] product d out @ W / 2, handed to both directions as a stride-0 view (the scan's backward reads it
    through its strides) instead of a [B, L, 2E] product whose halves are equal."""

    @staticmethod
    def forward(ctx, ys, weight, bias):
        B, L, _, E = ys.shape
        # [W, W] / 2 in the activations' dtype (as autocast casts the weight and the bias of F.linear)
        w2 = _half_weight(weight, ys.dtype, copies=2)
        out = F.linear(ys.view(B, L, 2 * E), w2, bias.to(ys.dtype) if bias is not None else None)
        if ctx.needs_input_grad[1]:
            ctx.save_for_backward(pair_sum(ys[:, :, 0], ys[:, :, 1], half=True), weight)
        else:
            ctx.save_for_backward(None, weight)
        ctx.has_bias = bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return out

    @staticmethod
    def backward(ctx, gout):
        ymean, weight = ctx.saved_tensors
        B, L, D = gout.shape
        E = weight.shape[1]
        g = gout @ _half_weight(weight, gout.dtype)  # [B, L, E], d ys for either direction
        gys = g.unsqueeze(2).expand(B, L, 2, E)
        gw = None
        if ymean is not None:
            gw = (gout.reshape(-1, D).t() @ ymean.reshape(-1, E).to(gout.dtype)).to(weight.dtype)
        gb = gout.reshape(-1, D).float().sum(0).to(ctx.bias_dtype) if ctx.has_bias and ctx.needs_input_grad[2] \
            else None
        return gys, gw, gb


def bimamba_inner_triton(xz: Tensor, forward, backward, out_proj_weight: Optional[Tensor] = None,
                         out_proj_bias: Optional[Tensor] = None, prepared: Optional[Tuple[Tensor, Tensor]] = None
                         ) -> Tensor:
    """Vim's mixer on the Triton kernels. xz: [B, L, 2E] -> [B, L, D] (or [B, L, E] without out_proj).
    ``prepared``: (x_proj's pair, out_proj's [W, W] / 2) from :func:`prepare_inference_weights`, used by inference
    where their dtype is the activations' (else made here)."""
    B, L, _ = xz.shape
    x, z = xz.chunk(2, dim=-1)
    E = x.shape[-1]
    cfg = _config()  # read once per call (environment variables, for tuning sweeps)
    if cfg["delta"] == "fold" and not torch.is_grad_enabled():
        # inference: nothing is kept for a backward pass, so the scan writes y over its input (the conv's output,
        # dead once x_proj has read it): one [2, B, L, E] buffer less at the peak
        N, R = forward.A_log.shape[1], forward.dt_proj_weight.shape[1]
        fp32_rows = rows_in_fp32(cfg, x.device, x.dtype, B, L, E, N, training=False)
        # x_proj's padded weights and out_proj's halved one, made in one launch
        # (interleave: the conv's output, and so y over it, stored [B, L, 2, E]: out_proj is then one product)
        interleave = bool(cfg["interleave"]) and out_proj_weight is not None
        if prepared is not None and interleave and prepared[0].dtype == x.dtype:
            pair, half = prepared
        else:
            pair, half = mixer_weights(forward.x_proj_weight, backward.x_proj_weight, out_proj_weight, R,
                                       _rank_cols(R, cfg["rows_pad"], N), x.dtype, copies=2 if interleave else 1)
        xs, rows, _ = _conv_and_rows(
            x, (forward.x_proj_weight, forward.conv_weight, forward.conv_bias),
            (backward.x_proj_weight, backward.conv_weight, backward.conv_bias), R, fp32_rows, cfg, weights=pair,
            interleave=interleave)
        ys = _bi_scan_inplace(xs, z, rows[0], rows[1], forward, backward, cfg)
        del rows  # dead now: not held through out_proj (at 1248 px / batch 16, 36 MiB of the peak)
        if out_proj_weight is None:
            return (ys[0] + ys[1]) / 2
        return _out_proj_directions(ys, out_proj_weight, out_proj_bias, half)
    if cfg["delta"] == "fold" and cfg["recompute_conv"]:
        # training: one autograd node from the conv to the scan, which recomputes the conv's output in backward
        ys = _TritonBiMixer.apply(xz, forward.conv_weight, backward.conv_weight, forward.conv_bias,
                                  backward.conv_bias, forward.x_proj_weight, backward.x_proj_weight,
                                  forward.dt_proj_weight, backward.dt_proj_weight, forward.dt_proj_bias,
                                  backward.dt_proj_bias, forward.A_log, backward.A_log, forward.D, backward.D, cfg)
    elif cfg["delta"] == "fold":
        # training, the conv's output kept for the backward pass (separate nodes: conv, x_proj, scan)
        xs = _TritonBiConv.apply(x, forward.conv_weight, backward.conv_weight, forward.conv_bias,
                                 backward.conv_bias, cfg)
        dbl_f = F.linear(xs[0], forward.x_proj_weight)
        dbl_b = F.linear(xs[1], backward.x_proj_weight)
        ys = _TritonBiScan.apply(xs, z, dbl_f, dbl_b, forward.dt_proj_weight, backward.dt_proj_weight,
                                 forward.dt_proj_bias, backward.dt_proj_bias, forward.A_log, backward.A_log,
                                 forward.D, backward.D, torch.is_grad_enabled(), cfg)
    else:
        xs = _TritonBiConv.apply(x, forward.conv_weight, backward.conv_weight, forward.conv_bias,
                                 backward.conv_bias, cfg)
        # x_proj and dt_proj of both directions as two batched matmuls; x_proj's rows come out B | C | dt_low
        R, N = forward.dt_proj_weight.shape[1], forward.A_log.shape[1]
        dbl = torch.bmm(xs.view(2, B * L, E), xproj_weights(forward.x_proj_weight, backward.x_proj_weight, R, N)
                        .transpose(1, 2))
        w_dt = torch.stack([forward.dt_proj_weight, backward.dt_proj_weight])  # [2, E, R]
        delta = torch.bmm(dbl[..., 2 * N:2 * N + R], w_dt.transpose(1, 2))
        ys = _TritonBiScanDelta.apply(xs, z, dbl, delta, forward.dt_proj_bias, backward.dt_proj_bias,
                                      forward.A_log, backward.A_log, forward.D, backward.D, torch.is_grad_enabled(),
                                      cfg)
    if out_proj_weight is None:
        return (ys[:, :, 0] + ys[:, :, 1]) / 2
    # out_proj((y_f + y_b) / 2) = [y_f | y_b] @ ([W, W] / 2)^T: the combine costs no extra pass over memory
    return _OutProjCombine.apply(ys, out_proj_weight, out_proj_bias)
