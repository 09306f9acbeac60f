"""Where the warps of each kernel wait: a summary of Nsight Compute's per-instruction source page.

    ncu -i scan.ncu-rep --page source --csv --print-source sass > source.csv     # (profile_scan.py makes scan.ncu-rep)
    python benchmarks/ncu_stalls.py source.csv --top 8

For each kernel: the share of warp-stall samples by reason (long_sb = waiting on a global / local load, short_sb =
on shared memory or a special-function result, wait = a fixed-latency dependency, mio = the memory-input queue,
selected = issuing), the executed instruction mix, which opcodes the stalled warps were about to issue, and the
instructions with the most samples (a load's consumer shows the load's latency)."""
from __future__ import annotations

import argparse
import csv
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", type=Path, help="ncu --page source --csv --print-source sass output")
    p.add_argument("--top", type=int, default=8, help="instructions listed per kernel")
    args = p.parse_args()
    for name, rows in kernels(args.csv.read_text()):
        print(summarize(name, rows, args.top))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
