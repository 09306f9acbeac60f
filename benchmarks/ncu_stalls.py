"""Where the warps of each kernel wait: a summary of Nsight Compute's per-instruction source page.

    ncu -i scan.ncu-rep --page source --csv --print-source sass > source.csv     # (profile_scan.py makes scan.ncu-rep)
    python benchmarks/ncu_stalls.py source.csv --top 8

For each kernel: the share of warp-stall samples by reason (long_sb = waiting on a global / local load, short_sb =
on shared memory or a special-function result, wait = a fixed-latency dependency, mio = the memory-input queue,
selected = issuing), the executed instruction mix, which opcodes the stalled warps were about to issue, and the
instructions with the most samples (a load's consumer shows the load's latency). With --shared, also the
shared-memory wavefronts by opcode (all, the bank-conflict excess, the ideal) and the instructions with the most
excess (the report must hold the SourceCounters section)."""
from __future__ import annotations

import argparse
import csv
import gzip
import io
from collections import Counter
from pathlib import Path

REASONS = ("long_sb", "short_sb", "math", "wait", "mio", "lg", "barrier", "not_selected", "selected", "dispatch",
           "branch_resolving", "no_inst", "tex", "drain", "membar", "misc", "sleep")


def kernels(text: str):
    """(kernel name, rows as dicts) for each kernel of an exported source page."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.startswith('"Kernel Name"'):
            current = [next(csv.reader([line]))[1], []]
            blocks.append(current)
        elif current is not None:
            current[1].append(line)
    for name, lines in blocks:
        rows = list(csv.reader(io.StringIO("\n".join(lines))))
        header = rows[0]
        yield name, [dict(zip(header, r)) for r in rows[1:] if len(r) == len(header)]


def _int(value: str) -> int:
    return int(value.replace(",", "")) if value and value.strip("-") else 0


def opcode(source: str) -> str:
    parts = source.split()
    if parts and parts[0].startswith("@"):
        parts = parts[1:]
    return parts[0].split(".")[0] if parts else "?"


def summarize(name: str, rows, top: int) -> str:
    samples = sum(_int(r.get("Warp Stall Sampling (All Samples)", "")) for r in rows)
    if not samples:
        return f"{name}: no stall samples"
    by_reason = {k: sum(_int(r.get(f"stall_{k}", "")) for r in rows) for k in REASONS}
    mix, stalled = Counter(), Counter()
    for r in rows:
        op = opcode(r["Source"].strip())
        mix[op] += _int(r.get("Instructions Executed", ""))
        stalled[op] += _int(r.get("Warp Stall Sampling (All Samples)", ""))
    executed = sum(mix.values()) or 1
    out = [f"{name}: {samples} stall samples, {len(rows)} SASS instructions",
           "  reasons: " + ", ".join(f"{k} {100 * v / samples:.1f}%" for k, v in
                                     sorted(by_reason.items(), key=lambda kv: -kv[1]) if v),
           "  executed: " + ", ".join(f"{k} {100 * v / executed:.1f}%" for k, v in mix.most_common(12)),
           "  stalled before: " + ", ".join(f"{k} {100 * v / samples:.1f}%" for k, v in stalled.most_common(10))]
    ranked = sorted(rows, key=lambda r: -_int(r.get("Warp Stall Sampling (All Samples)", "")))[:top]
    for r in ranked:
        n = _int(r.get("Warp Stall Sampling (All Samples)", ""))
        reasons = {k: _int(r.get(f"stall_{k}", "")) for k in REASONS if _int(r.get(f"stall_{k}", ""))}
        main = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
        out.append(f"    {r['Address'][-5:]}  {r['Source'].strip()[:56]:56s} {100 * n / samples:5.1f}%  ({main})")
    return "\n".join(out)


def shared_wavefronts(name: str, rows, top: int) -> str:
    """Shared-memory wavefronts per opcode (with modifiers) and the instructions with the most bank-conflict excess."""
    cols = ("L1 Wavefronts Shared", "L1 Wavefronts Shared Excessive", "L1 Wavefronts Shared Ideal",
            "Instructions Executed")
    if not rows or cols[0] not in rows[0]:
        return f"{name}: no shared-memory wavefront counts (profile with --section SourceCounters)"
    by_op = {}
    for r in rows:
        if _int(r.get(cols[0], "")):
            parts = r["Source"].split()
            op = parts[1] if parts[0].startswith("@") else parts[0]
            acc = by_op.setdefault(op, [0, 0, 0, 0])
            for i, c in enumerate(cols):
                acc[i] += _int(r.get(c, ""))
    total, excess = sum(v[0] for v in by_op.values()), sum(v[1] for v in by_op.values())
    out = [f"{name}: shared wavefronts {total:,}, of them bank-conflict excess {excess:,} "
           f"({100 * excess / max(total, 1):.0f}%)"]
    for op, (w, x, ideal, n) in sorted(by_op.items(), key=lambda kv: -kv[1][0]):
        out.append(f"    {op:28s} {w:>13,} wavefronts, excess {x:>12,}, ideal {ideal:>12,}; "
                   f"{w / max(n, 1):5.2f} a warp-instruction ({n:,} executed)")
    for r in sorted(rows, key=lambda r: -_int(r.get(cols[1], "")))[:top]:
        n = max(_int(r.get(cols[3], "")), 1)
        w, x = _int(r.get(cols[0], "")) / n, _int(r.get(cols[1], "")) / n
        out.append(f"    {r['Address'][-5:]}  {r['Source'].strip()[:56]:56s} {w:5.2f} wavefronts a warp-instruction, "
                   f"{x:5.2f} excess")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", type=Path, help="ncu --page source --csv --print-source sass output")
    p.add_argument("--top", type=int, default=8, help="instructions listed per kernel")
    p.add_argument("--shared", action="store_true", help="also the shared-memory wavefronts and bank conflicts")
    args = p.parse_args()
    text = args.csv.read_text() if args.csv.suffix != ".gz" else gzip.open(args.csv, "rt").read()
    for name, rows in kernels(text):
        print(summarize(name, rows, args.top))
        if args.shared:
            print(shared_wavefronts(name, rows, args.top))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
