#!/usr/bin/env python3
"""Compares the quantization schemes on one checkpoint: relative RMS error per weight and overall,
as a Markdown table (the figures in docs/quantization.md come from this script).

usage: scripts/quant-report.py HF_DIR [--ferry build/ferry] [--per-tensor]
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
import time

SCHEMES = ["sym", "sym-clip", "asym", "asym-clip"]


def run(ferry, hf_dir, scheme, out):
    t0 = time.monotonic()
    q = subprocess.run([ferry, "quantize", hf_dir, "-o", out, "-s", scheme, "-t", "0"],
                       capture_output=True, text=True)
    seconds = time.monotonic() - t0
    if q.returncode != 0:
        sys.exit(f"ferry quantize failed: {q.stderr.strip()}")
    overall = float(re.search(r"overall relative RMS error of the quantized weights: (\S+)", q.stdout).group(1))
    rate = float(re.search(r"([0-9.]+) GB/s of input", q.stdout).group(1))
    i = subprocess.run([ferry, "inspect", "--json", "--no-verify", out], capture_output=True, text=True, check=True)
    return overall, json.loads(i.stdout)["quant_error"], seconds, rate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hf_dir")
    ap.add_argument("--ferry", default="build/ferry")
    ap.add_argument("--per-tensor", action="store_true")
    a = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for s in SCHEMES:
            results[s] = run(a.ferry, a.hf_dir, s, f"{tmp}/{s}.ferry")
    print("| scheme | overall relative RMS error | conversion GB/s |")
    print("| --- | --- | --- |")
    for s in SCHEMES:
        print(f"| `{s}` | {results[s][0]:.4e} | {results[s][3]:.2f} |")
    if a.per_tensor:
        print()
        print("| weight | " + " | ".join(f"`{s}`" for s in SCHEMES) + " |")
        print("| --- |" + " --- |" * len(SCHEMES))
        for name in results[SCHEMES[0]][1]:
            print(f"| {name} | " + " | ".join(f"{results[s][1][name]:.4f}" for s in SCHEMES) + " |")


if __name__ == "__main__":
    main()
