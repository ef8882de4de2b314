#!/usr/bin/env python3
"""Sums the kernel durations of an `ncu --csv --metrics gpu__time_duration.sum` run per kernel.

    python3 scripts/kernel_times.py NCU.csv

scripts/gpu-check runs ncu so over a short resident `ferry bench` (the prompt in pieces of up to 8
tokens, then decode) and reads its output with this: each kernel's (and grid's: the grid tells the weights of one
GEMV apart) launches, total and mean time,
and the kernel time per token made (per argmax launch: one a generated token). Set beside the
bench's tokens/s, the kernel time per token says whether decode is held by the kernels or by the
time between them (launches, synchronizations). Lines of the CSV that are not ncu's (ferry's own
output shares stdout) are skipped.
"""
import csv
import re
import sys
from collections import defaultdict

UNIT_NS = {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6, "second": 1e9}


def short_name(name):
    """`void ferry::(anonymous)::gemv_int4_kernel<1, 2, 3, true, true>(...)` -> the name and its
    template arguments, without namespaces and parameters."""
    name = name.strip()
    if name.endswith(")"):  # drop the parameter list: the balanced group at the end
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i]
                break
    name = re.sub(r"^void\s+", "", name)
    name = re.sub(r"<?unnamed>::|\(anonymous namespace\)::|\{anonymous\}::", "", name)
    name = re.sub(r"[A-Za-z_0-9]+::", "", name)
    return name


def read(path):
    rows = []
    with open(path, newline="", errors="replace") as f:
        lines = [line for line in f if line.startswith('"')]
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(row["Metric Value"].replace(",", ""))
        name = short_name(row["Kernel Name"])
        grid = row.get("Grid Size", "").replace(" ", "")
        rows.append((f"{name} {grid}", value * UNIT_NS.get(row["Metric Unit"], 1.0)))
    return rows


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: kernel_times.py NCU.csv")
    rows = read(sys.argv[1])
    if not rows:
        sys.exit(f"kernel_times: no gpu__time_duration.sum rows in {sys.argv[1]}")
    total = defaultdict(float)
    count = defaultdict(int)
    for name, ns in rows:
        total[name] += ns
        count[name] += 1
    all_ns = sum(total.values())
    print(f"{len(rows)} launches, {all_ns / 1e6:.3f} ms of kernel time")
    print(f"{'kernel grid':<64} {'launches':>8} {'total ms':>9} {'mean us':>8} {'share':>6}")
    for name in sorted(total, key=total.get, reverse=True)[:30]:
        print(f"{name[:64]:<64} {count[name]:>8} {total[name] / 1e6:>9.3f} "
              f"{total[name] / count[name] / 1e3:>8.2f} {total[name] / all_ns:>6.1%}")
    tokens = sum(c for n, c in count.items() if n.startswith("argmax"))
    if tokens:
        print(f"{tokens} tokens made (argmax launches): {all_ns / tokens / 1e6:.3f} ms of kernel "
              f"time per token (prefill included)")


if __name__ == "__main__":
    main()
