#!/usr/bin/env python3
"""The performance floors scripts/gpu-check holds a GPU to (issue 17), from two JSON files:

  KERNELS  bench_gpu_kernels --benchmark_format=json output: each GEMV and decode attention run
           carries frac_of_hbm, its bytes per second over the device-to-device copy bandwidth
           measured in the same run (bench/bench_gpu_kernels.cpp).
  BENCH    `ferry bench --json` of a synthesized qwen2-7b with budgets all and 50%: the resident
           run's decode tokens/s and bytes read per token against bandwidth_gbps.read (its HBM
           bound; not ratio_to_bound, which is bound over achieved and also prices the batch's
           arithmetic at the run's prefill rate, whose first run carries the start-up), and
           h2d_by_chunk (pinned upload bandwidth by chunk size).

Floors, each a FAIL below it:
  - decode GEMV (n = 1, the shapes of Qwen2-32B's large projections and lm_head): >= 70% of the
    copy bandwidth;
  - decode attention over a 4k and a 32k f16 KV cache: >= 50%;
  - resident decode of qwen2-7b (budget all): >= 70% of its HBM bound;
  - pinned uploads of 16 MB and more (a cache entry's size for a 7B-32B model): >= 80% of the
    best pinned upload measured.

Usage: gpu_floors.py KERNELS.json BENCH.json   (exit 0: all floors hold; 1: one fails)
"""
import json
import re
import sys

GEMV_FLOOR, ATTENTION_FLOOR, DECODE_FLOOR, UPLOAD_FLOOR = 0.70, 0.50, 0.70, 0.80


def args_of(name):
    """{"rows": 27648, ...} from a Google Benchmark name such as gemv_int4/rows:27648/cols:5120."""
    return {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", name)}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    kernels = json.load(open(sys.argv[1]))["benchmarks"]
    bench = json.load(open(sys.argv[2]))
    failures = []

    def check(what, value, floor):
        ok = value >= floor
        print(f"{'ok  ' if ok else 'FAIL'} {what}: {100 * value:.0f}% (floor {100 * floor:.0f}%)")
        if not ok:
            failures.append(what)

    for b in kernels:
        if b.get("run_type") == "aggregate" or "frac_of_hbm" not in b:
            continue
        a = args_of(b["name"])
        if b["name"].startswith("gemv_int4/") and a.get("n") == 1 and a.get("rows", 0) >= 5120:
            what = f"GEMV {a['rows']}x{a['cols']} asym={a.get('asym')} of the copy bandwidth"
            if a.get("full"):  # the grid of one CTA per row group: for comparison only
                print(f"info {what}, one CTA per row group (not the default; no floor): "
                      f"{100 * b['frac_of_hbm']:.0f}%")
            elif a.get("q8", 1):  # the floor holds the kernel decode runs (INT8 activations)
                check(what, b["frac_of_hbm"], GEMV_FLOOR)
            else:
                print(f"info {what}, fp32 activations (not the default; no floor): "
                      f"{100 * b['frac_of_hbm']:.0f}%")
        elif b["name"].startswith("attention_decode/") and a.get("f16") == 1 and \
                a.get("ctx", 0) >= 4096:
            check(f"decode attention, {a['ctx']} positions, of the copy bandwidth",
                  b["frac_of_hbm"], ATTENTION_FLOOR)
    resident = [r for r in bench["runs"] if r["budget"] == "all" and r.get("parallel", 1) == 1]
    if not resident:
        failures.append("no resident (budget all) run in the ferry bench JSON")
    read_gbps = bench.get("bandwidth_gbps", {}).get("read", 0)
    if not read_gbps:
        failures.append("no read bandwidth in the ferry bench JSON")
    for r in resident:
        gbps = r["decode_tokens_per_s"] * r["gb_read_per_token"]
        check(f"resident decode ({r['policy']}, {r['format']}, {r['decode_tokens_per_s']:.1f} "
              f"tokens/s, {gbps:.0f} GB/s) of its HBM bound",
              gbps / read_gbps if read_gbps else 0, DECODE_FLOOR)
    chunks = bench.get("h2d_by_chunk", [])
    best = max((c["pinned_gbps"] for c in chunks), default=0)
    for c in chunks:
        if c["chunk_bytes"] >= 16 << 20:
            check(f"pinned upload of {c['chunk_bytes'] >> 20} MB ({c['pinned_gbps']:.1f} GB/s) "
                  f"of the best ({best:.1f} GB/s)", c["pinned_gbps"] / best if best else 0,
                  UPLOAD_FLOOR)
    if not chunks:
        failures.append("no host-to-device figures in the ferry bench JSON")
    print(f"floors: {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
