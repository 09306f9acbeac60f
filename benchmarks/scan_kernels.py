"""The Triton kernels alone at Vim-Ti shapes, timed against the floors computed from measured ceilings.

    PYTHONPATH=src python benchmarks/scan_kernels.py --out results/kernels.json

Ceilings measured first on the device: copy bandwidth (device-to-device, bytes read + written) and exp2
throughput (a Triton kernel of independent exp2 chains: the special-function unit). The floor of a kernel is
max(its exp2 count / exp2 rate, the bytes it must move / bandwidth); we report time, floor and floor / time.
Each shape is run for several launch configurations (channels per program, warps, unroll)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import triton
import triton.language as tl
from triton.testing import do_bench, do_bench_cudagraph

from vision_mamba.ops.selective_scan import triton_scan as ts

E, N, R = 384, 16, 12  # Vim-Ti: d_inner, d_state, dt_rank


@triton.jit
def _exp2_kernel(x_ptr, out_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    acc = tl.zeros_like(x)
    for _ in range(ITERS):
        x = tl.exp2(x * -0.5)
        acc += x
    tl.store(out_ptr + offs, acc)


def ceilings(device):
    n = 1 << 28  # 1 GiB of fp32
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    bandwidth = 2 * src.numel() * 4 / (ms * 1e-3)
    del src, dst
    block, iters, programs = 1024, 512, 132 * 64
    x = torch.rand(programs * block, device=device)
    out = torch.empty_like(x)
    ms = do_bench(lambda: _exp2_kernel[(programs,)](x, out, ITERS=iters, BLOCK=block, num_warps=4),
                  warmup=50, rep=300, return_mode="median")
    exp_rate = programs * block * iters / (ms * 1e-3)
    return bandwidth, exp_rate


def make_inputs(batch, length, dtype, device, rows_dtype=None):
    g = torch.Generator(device=device).manual_seed(0)
    rnd = lambda *s, scale=1.0: torch.randn(*s, generator=g, device=device) * scale  # noqa: E731
    xs = rnd(2, batch, length, E).to(dtype)
    z = rnd(batch, length, E).to(dtype)
    # (x_proj's rows as the model makes them: dt_low | zeros | B | C, 16 + 16 + 16 wide for Vim-Ti; _rank_cols)
    dbl = [rnd(batch * length, ts._rank_cols(R, True) + 2 * N).to(rows_dtype or dtype) for _ in range(2)]
    w = [rnd(E, R, scale=R ** -0.5) for _ in range(2)]
    bias = [rnd(E, scale=0.5) - 4.0 for _ in range(2)]
    alog = [torch.log(torch.arange(1, N + 1, device=device, dtype=torch.float32)).repeat(E, 1) for _ in range(2)]
    dd = [torch.ones(E, device=device) for _ in range(2)]
    return xs, z, dbl, w, bias, alog, dd


def scan_bytes(batch, length, itemsize, backward, save_every=ts.SAVE_EVERY):
    tokens = batch * length
    read = 2 * tokens * E * itemsize + tokens * E * itemsize + 2 * tokens * (R + 2 * N) * itemsize  # xs, z, dbl
    write = tokens * 2 * E * itemsize  # ys
    if not backward:
        return read + write
    # backward reads the forward inputs, the output gradient and the saved states; writes dx, dz (2 directions)
    # and d dbl (fp32)
    states = batch * 2 * triton.cdiv(length, save_every) * E * N * 4
    return read + write + states + 2 * tokens * E * itemsize * 2 + 2 * tokens * (R + 2 * N) * 4


def _configs(kind, quick):
    """Launch configurations to time (the first is the default). Forward: how delta arrives (a batched matmul
    before the scan, timed with it, or dt_proj folded into the scan), prefetch depth, channels per program;
    backward: how delta arrives and channels per program. (Capping registers, e.g. bwd_maxnreg=168, was slower for
    both passes in the v4 sweep.)"""
    base = ts._config()
    if kind == "forward":
        first = dict(delta=base["delta"], prefetch=base["prefetch"], block_e=base["block_e"], num_warps=1)
        grid = [dict(delta=d, prefetch=p, block_e=b, num_warps=1)
                for d in ("matmul", "fold") for p in (1, 2) for b in (32, 64)]
        # 128 channels per warp: a thread holds 4 channels x all 16 states (no shuffles; near the register limit)
        grid += [dict(delta=d, prefetch=1, block_e=128, num_warps=1) for d in ("matmul", "fold")]
        # one pass over the whole sequence with more, narrower programs instead of the chunk-parallel two passes
        grid += [dict(first, block_e=b, min_programs=0) for b in (16, 32, 64)]
    else:
        first = dict(delta=base["delta"], bwd_block_e=base["bwd_block_e"], bwd_num_warps=1)
        grid = [dict(delta=d, bwd_block_e=b, bwd_num_warps=1) for d in ("matmul", "fold") for b in (32, 64)]
        grid += [dict(first, bwd_block_e=b, min_programs=0) for b in (16, 32)]
    return [first] if quick else [first] + [c for c in grid if c != first]


def _time(fn) -> float:
    """Median ms of fn replayed from a CUDA graph (the host's launch cost, which per-call event timing includes
    once it exceeds the cache flush before each call, is out of the number, as in the model's graphed forward)."""
    fn()  # compile outside the capture
    torch.cuda.synchronize()
    return do_bench_cudagraph(fn, rep=100, return_mode="median")


def _scan_args(delta_mode, xs, z, dbl, w, bias, alog, dd, rows):
    """The launch arguments for either way of delivering delta; for "matmul" also the function that makes delta
    (timed with the forward: the folded form does that work inside the scan)."""
    if delta_mode == "fold":
        return ts._bi_args(xs, z, dbl[0], dbl[1], w[0], w[1], bias[0], bias[1], alog[0], alog[1], dd[0], dd[1],
                           R, N), None
    w_dt = torch.stack(w).to(rows.dtype)
    make = lambda: torch.bmm(rows[..., 2 * N:2 * N + R], w_dt.transpose(1, 2))  # noqa: E731
    delta = make()
    return ts._bi_delta_args(xs, z, rows, delta, bias[0], bias[1], alog[0], alog[1], dd[0], dd[1]), make


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="write the records as JSON here")
    parser.add_argument("--shapes", default="224:128,1248:16,1248:1", help="res:batch list")
    parser.add_argument("--quick", action="store_true", help="first configuration only")
    parser.add_argument("--forward-configs", type=json.loads, default=None,
                        help='JSON list of forward launch configurations to time instead of the built-in sweep, '
                             'e.g. \'[{"block_e": 128}]\' (keys of triton_scan._config; unset keys: the defaults)')
    parser.add_argument("--backward-configs", type=json.loads, default=None, help="likewise for the backward")
    parser.add_argument("--no-conv", action="store_true", help="skip the conv kernels")
    parser.add_argument("--conv-fwd-configs", type=json.loads, default=None,
                        help='JSON list of conv forward configurations to time instead of the built-in sweep, e.g. '
                             '\'[{}, {"block_l": 32, "tiles": 1}, {"walk": 1}]\' (keys: block_l, tiles, warps, walk, '
                             'walk_rows, walk_block_e, walk_warps; unset keys: the defaults)')
    parser.add_argument("--conv-bwd-configs", type=json.loads, default=None,
                        help='JSON list of conv backward configurations to time instead of the built-in sweep, e.g. '
                             '\'[{}, {"warps": 4, "rows": 16}]\' (keys: rows, warps, input_rows, input_warps, '
                             'input_tiles, programs, walk, walk_rows, walk_block_e, walk_warps; unset keys: the '
                             'defaults)')
    parser.add_argument("--rows-fp32", action="store_true",
                        help="x_proj's rows (dt_low | B | C) in fp32, as the model's inference path writes them on "
                             "CUDA (the backward and the matmul form get them in fp32 too)")
    parser.add_argument("--save-states", action="store_true",
                        help="time the forward as training runs it (saving the states for the backward)")
    args = parser.parse_args()
    device = torch.device("cuda")
    bandwidth, exp_rate = ceilings(device)
    print(f"ceilings: copy {bandwidth / 1e12:.2f} TB/s, exp2 {exp_rate / 1e12:.2f} T/s")
    records = []
    base = ts._config()
    for spec in args.shapes.split(","):
        res, batch = (int(v) for v in spec.split(":"))
        length = (res // 16) ** 2 + 1
        dtype = torch.bfloat16
        xs, z, dbl, w, bias, alog, dd = make_inputs(batch, length, dtype, device,
                                                    torch.float32 if args.rows_fp32 else None)
        # x_proj's rows in the layout the "matmul" form uses: B | C | dt_low | zeros
        # (from the padded rows dt_low | zeros | B | C)
        rk = ts._rank_cols(R, True)
        both = torch.cat([dbl[0], dbl[1]]).view(2, -1, rk + 2 * N)
        rows = torch.nn.functional.pad(torch.cat([both[..., rk:], both[..., :R]], dim=2),
                                       (0, ts._bc_width(R, N) - R - 2 * N))
        exps = batch * length * 2 * E * N
        for kind in ("forward", "backward"):
            given = args.forward_configs if kind == "forward" else args.backward_configs
            for cfg_part in (given if given is not None else _configs(kind, args.quick)):
                cfg = dict(base, **cfg_part)
                scan_args, make_delta = _scan_args(cfg["delta"], xs, z, dbl, w, bias, alog, dd, rows)
                if kind == "forward":
                    def fn(scan_args=scan_args, make_delta=make_delta, cfg=cfg):
                        if make_delta is not None:
                            make_delta()
                        ts.scan_forward(scan_args, dtype, save_states=args.save_states, config=cfg)
                    n_exp = exps
                else:
                    _, hsave = ts.scan_forward(scan_args, dtype, save_states=True, config=cfg)
                    gy = torch.randn(batch, length, 2, E, device=device, dtype=dtype)
                    # (both forms then need the same two matmuls for d dt_low and d W_dt: not timed)
                    fn = lambda: ts.scan_backward(scan_args, hsave, gy, config=cfg)  # noqa: E731
                    n_exp = 2 * exps  # the states are recomputed, and the adjoint needs the decay again
                try:
                    ms = _time(fn)
                except Exception as e:  # a configuration the compiler rejects is reported, not fatal
                    print(f"{res}/{batch} {kind} {cfg_part}: failed: {str(e)[:200]}")
                    continue
                nbytes = scan_bytes(batch, length, 2, kind == "backward", ts._save_every(cfg, length))
                floor_ms = max(n_exp / exp_rate, nbytes / bandwidth) * 1e3
                rec = dict(kernel="bimamba_scan", **{"pass": kind}, res=res, batch=batch, tokens=length, dtype="bf16",
                           save_states=kind == "backward" or args.save_states,
                           config=cfg_part, ms=ms, floor_ms=floor_ms, floor_fraction=floor_ms / ms,
                           exp_ms=n_exp / exp_rate * 1e3, bytes_ms=nbytes / bandwidth * 1e3)
                records.append(rec)
                print(f"{res:5d}/{batch:<4d} {kind:8s} {str(cfg_part):75s} {ms:8.3f} ms  floor {floor_ms:7.3f} ms"
                      f"  ({100 * floor_ms / ms:5.1f}% of floor)")
        if args.no_conv:
            del xs, z, dbl, rows
            torch.cuda.empty_cache()
            continue
        # the conv, both directions in one launch (rows per tile, tiles per program, warps)
        x = torch.randn(batch, length, 2 * E, device=device, dtype=dtype)[..., :E]
        cw = [torch.randn(E, 1, 4, device=device) for _ in range(2)]
        cb = [torch.randn(E, device=device) for _ in range(2)]
        nbytes = batch * length * E * 2 * 3
        fwd_keys = ("block_l", "tiles", "warps", "walk", "walk_rows", "walk_block_e", "walk_warps")
        fwd_default = {k: base.get(f"conv_{k}", 0) for k in fwd_keys}
        if args.conv_fwd_configs is not None:
            conv_configs = [dict(fwd_default, **c) for c in args.conv_fwd_configs]
        else:
            conv_configs = [fwd_default]
            if not args.quick:
                # the tile kernel (walk 0), then the walk down the rows (rows, channels, warps)
                sweep = ((32, 1, 4), (32, 2, 2), (16, 2, 2), (16, 4, 2), (16, 8, 2), (16, 4, 1), (8, 8, 1))
                walks = ((24, 64, 1), (96, 64, 1), (48, 128, 1), (48, 32, 1), (48, 256, 2))
                tiles = [dict(fwd_default, walk=0, block_l=v[0], tiles=v[1], warps=v[2]) for v in sweep]
                walked = [dict(fwd_default, walk=1, walk_rows=v[0], walk_block_e=v[1], walk_warps=v[2])
                          for v in walks]
                conv_configs += [c for c in tiles + walked if c != fwd_default]
        for cfg in conv_configs:
            os.environ.update({f"VISION_MAMBA_TRITON_CONV_{k.upper()}": str(v) for k, v in cfg.items()})
            ms = _time(lambda: ts._TritonBiConv.apply(x, cw[0], cw[1], cb[0], cb[1]))
            records.append(dict(kernel="bimamba_conv", **{"pass": "forward"}, res=res, batch=batch, tokens=length,
                                dtype="bf16", config=cfg, ms=ms,
                                floor_ms=nbytes / bandwidth * 1e3, floor_fraction=nbytes / bandwidth * 1e3 / ms))
            print(f"{res:5d}/{batch:<4d} conv fwd {cfg} {ms:8.3f} ms  floor {nbytes / bandwidth * 1e3:7.3f} ms")
        for k in fwd_keys:
            os.environ.pop(f"VISION_MAMBA_TRITON_CONV_{k.upper()}", None)
        # the conv backward (both passes: g_pre and the weight gradients, then d x)
        # (timed as forward + backward, less the forward: the backward then runs on the stream being captured)
        xg = x.detach().requires_grad_()
        cwg = [w.detach().requires_grad_() for w in cw]
        gout = torch.randn(2, batch, length, E, device=device, dtype=dtype)
        fwd_ms = _time(lambda: ts._TritonBiConv.apply(x, cw[0], cw[1], cb[0], cb[1]))

        def fwd_bwd():
            out = ts._TritonBiConv.apply(xg, cwg[0], cwg[1], cb[0], cb[1])
            torch.autograd.grad(out, [xg, cwg[0], cwg[1]], gout)
        keys = ("rows", "warps", "input_rows", "input_warps", "input_tiles", "programs", "walk", "walk_rows",
                "walk_block_e", "walk_warps")
        default = {k: base.get(f"conv_bwd_{k}", -1) for k in keys}
        if args.conv_bwd_configs is not None:
            bwd_configs = [dict(default, **c) for c in args.conv_bwd_configs]
        else:
            bwd_configs = [default]
            if not args.quick:
                # the two passes over tiles (walk 0), then the walk (rows, channels, warps)
                sweep = ((8, 2, 16, 2, 1, -1), (8, 4, 16, 2, 1, -1), (16, 4, 16, 2, 1, -1), (8, 2, 16, 2, 4, -1),
                         (8, 2, 32, 4, 2, -1), (8, 2, 8, 1, 4, -1), (8, 2, 16, 2, 1, 4224), (8, 1, 16, 2, 1, 8448))
                walks = ((48, 64, 1), (192, 64, 1), (96, 32, 1), (96, 128, 2))
                tiles = [dict(default, walk=0, **dict(zip(keys, v))) for v in sweep]
                walked = [dict(default, walk=1, walk_rows=v[0], walk_block_e=v[1], walk_warps=v[2]) for v in walks]
                bwd_configs += [c for c in tiles + walked if c != default]
        for cfg in bwd_configs:
            os.environ.update({f"VISION_MAMBA_TRITON_CONV_BWD_{k.upper()}": str(v) for k, v in cfg.items()})
            ms = _time(fwd_bwd) - fwd_ms
            records.append(dict(kernel="bimamba_conv", **{"pass": "backward"}, res=res, batch=batch, tokens=length,
                                dtype="bf16", config=cfg, ms=ms))
            print(f"{res:5d}/{batch:<4d} conv bwd {cfg} {ms:8.3f} ms")
        for k in keys:
            os.environ.pop(f"VISION_MAMBA_TRITON_CONV_BWD_{k.upper()}", None)
        del xs, z, dbl, rows
        torch.cuda.empty_cache()
    out = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
               specialize_e=os.environ.get("VISION_MAMBA_TRITON_SPECIALIZE_E") != "0",
               copy_tb_s=bandwidth / 1e12, exp2_t_s=exp_rate / 1e12, records=records,
               command=" ".join(["PYTHONPATH=src python benchmarks/scan_kernels.py"] + [repr(a) if " " in a else a for a in sys.argv[1:]]), time=time.strftime("%Y-%m-%d %H:%M"))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
