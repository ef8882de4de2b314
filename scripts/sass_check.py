#!/usr/bin/env python3
"""Static checks of the compiled CUDA kernels' SASS: the properties their design relies on.

No GPU is needed: `cuobjdump -sass` disassembles the object files the build made, and each rule
below is checked on the sm_90 code (the H100/H200 the roofline figures are for); local memory
is also looked for in every other architecture compiled in and listed as a warning (sm_75-sm_89
allocate registers differently: a loop that fit sm_90's 128 registers spilled the fp32 gate/up
GEMV on sm_75 and sm_80; what is listed there is work for the consumer cards, not yet a gate):
  - no kernel touches local memory (LDL/STL: register spills or stack arrays, each a round trip
    to DRAM-backed memory inside a loop);
  - the INT4 GEMV's main loop (the innermost loop with the most FFMAs, IDP.4As for INT8 x; the
    leaner of two such, where the compiler made a guarded copy for the last rounds) reads the weights with
    128-bit global loads (LDG.E.128) and x with 128-bit shared loads (LDS.128);
  - the GQA attention kernel (attention_group_kernel) reads K and V rows with 128-bit loads
    only, in both its K loop and its V loop;
  - the tiled prefill attention kernel (attention_tiled_kernel) stages its K/V tiles with 128-bit
    copies only (LDGSTS.128, cp.async, on sm_90; no narrower global load anywhere in it), waits
    for them (LDGDEPBAR/DEPBAR: the double buffer), and reads the staged tiles in its score and
    p.v loops with 128-bit shared loads (LDS.128);
  - the GEMV's instruction budget. Derived in kernels/gemv_int4_kernel.cuh's header: an H200 streams
    18 bytes, 34 weights, per SM per clock, and an SM issues 4 warp-instructions per clock, so
    keeping up with HBM leaves ~120 warp-instructions per 1024 weights. Reading x costs each warp
    the same per chunk whatever its rows per warp R, so the variants differ: the bound is on the
    mean of the deep one-token variants (DEPTH > 1, which decode runs) weighted by the bytes each
    one reads in a Qwen2-32B decode layer with every weight resident (kernels/gemv_fused.hpp: gate
    and up paired, R = 4: 58%; q+k+v as one launch, 7168 rows, o and down, R = 2: 42%), and no
    variant may exceed it by more than a quarter (R = 1 runs small models' and the streaming path's
    separate launches; DEPTH 1, the chunked path, x too wide for shared memory). gemv_int4_kernel<1,
    R, DEPTH, VEC, PAIRED> covers R * DEPTH * 1024 weights per iteration (measured with sm_90 code
    of nvcc 13: 98-101 deep, 104-137 chunked; the old kernel of issue 17's desk review spent ~385).
    The INT8-activation variants (Q8, GemvX::q8: what decode runs by default) dot 4 codes an
    instruction (IDP.4A) and read a quarter of the shared-memory bytes: their deep variants'
    weighted mean is held to GEMV_Q8_BUDGET, half the fp32 budget (measured 35-46, mean 36); their
    chunked variants quantize each chunk of x inside the loop and are held to the fp32 bound
    (65-149).

Usage: sass_check.py [--cuobjdump PATH] OBJECT...
Exit 0: every rule holds; 1: a rule fails (each failure printed); 77: no cuobjdump (skipped,
CTest's SKIP_RETURN_CODE; scripts/setup.sh fetches one when nvcc is present).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

SKIP = 77
GEMV_BUDGET = 120  # warp-instructions per 1024 weights in the main loop (see above)
GEMV_Q8_BUDGET = 60  # the INT8-activation variants (GemvX::q8, decode's default): half of it
# gemv_int4_kernel<N = 1, R, aligned, PAIRED>: the share of a Qwen2-32B decode layer's INT4 bytes
# each (R, PAIRED) reads, every weight resident (runtime/forward_cuda.cpp's fused launches).
GEMV_SHARE = {(4, True): 2 * 27648 * 5120, (2, False): (7168 + 5120 + 27648) * 5120}

# Kernels allowed local memory, and why: none may spill.
LOCAL_ALLOWED = {
    # sincosf's slow path: Payne-Hanek argument reduction keeps a small scratch array, used
    # only for |angle| > 105615 rad (positions past ~105k at rope frequency 1).
    "rope_kernel": "sincosf's argument reduction for huge angles",
    "rope_kv_kernel": "the same sincosf slow path, in RoPE fused with the f16 KV store",
}

LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def find_cuobjdump(given):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for c in [given, os.environ.get("FERRY_CUOBJDUMP"), shutil.which("cuobjdump"),
              os.path.join(root, ".tools", "cuda", "bin", "cuobjdump")]:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def functions(cuobjdump, obj):
    """{(arch, mangled name): [(address, opcode, operands)]} of the code in one object file."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(cuobjdump) + os.pathsep + env.get("PATH", "")  # its nvdisasm
    out = subprocess.run([cuobjdump, "-sass", obj], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        if "does not contain device code" in out.stderr:  # host code of the CUDA backend
            return {}
        sys.exit(f"FAIL: cuobjdump -sass {obj}: {out.stderr.strip()}")
    funcs, arch, name = {}, None, None
    for line in out.stdout.splitlines():
        if line.strip().startswith("arch = "):
            arch = line.split("=")[1].strip()
        elif "Function : " in line:
            name = line.split("Function : ")[1].strip()
            funcs[(arch, name)] = []
        elif (arch, name) in funcs:
            m = LINE.search(line)
            if m:
                funcs[(arch, name)].append((int(m.group(1), 16), m.group(3), m.group(4)))
    return funcs


def loops(code):
    """Each backward branch's body: the instructions from its target to the branch."""
    out = []
    for i, (addr, op, args) in enumerate(code):
        if op.startswith("BRA"):
            m = re.search(r"0x([0-9a-f]+)", args)
            if m and int(m.group(1), 16) <= addr:
                target = int(m.group(1), 16)
                out.append([c for c in code[: i + 1] if c[0] >= target])
    return out


def real(body):
    return [c for c in body if c[1] != "NOP"]


def innermost(bodies):
    """The loops whose address range holds no other loop (an outer loop's range, as loops()
    reads it, can also take in code the compiler placed between its blocks)."""
    spans = [(b[0][0], b[-1][0]) for b in bodies]
    return [b for b, (lo, hi) in zip(bodies, spans)
            if not any((l2, h2) != (lo, hi) and lo <= l2 and h2 <= hi for l2, h2 in spans)]


def count_dot(body, q8):
    """The dot product's instructions: FFMA (fp32 x) or IDP.4A (dp4a, INT8 x)."""
    return sum(c[1].startswith("IDP.4A" if q8 else "FFMA") for c in body)


def check_gemv(name, code, r, q8, deep, fail):
    """Checks one gemv_int4_kernel<1, R, DEPTH, .., Q8>, whose main loop covers r = R x DEPTH
    chunks of 1024 weights (DEPTH 1: the chunked path; above: the deep path's unrolled ring);
    returns its instructions per 1024 weights."""
    bodies = innermost(loops(code))
    if not bodies:
        return fail(f"{name}: no loop found")
    # The main loop: the innermost loop with the most FFMAs (q8: IDP4As); where the compiler also
    # made a guarded copy of it (the last rounds, whose loads may pass the row's end), the leaner
    # one, which runs every round but those.
    dots = max(count_dot(b, q8) for b in bodies)
    if dots == 0:
        return fail(f"{name}: no loop with {'IDP.4A' if q8 else 'FFMA'} found")
    main = min((b for b in bodies if count_dot(b, q8) == dots), key=lambda b: len(real(b)))
    ops = [c[1] for c in real(main)]
    per_1024 = len(ops) / r
    wide_global = sum(op.startswith("LDG") and ".128" in op for op in ops)
    narrow_global = sum(op.startswith("LDG") and ".128" not in op and "U16" not in op for op in ops)
    wide_shared = sum(op.startswith("LDS") and ".128" in op for op in ops)
    # The chunked loop also quantizes each chunk of x (q8: ~60 instructions a warp and chunk,
    # whatever R): its variants are held to the fp32 budget, the deep ones (x quantized once,
    # before the loop) to the q8 one.
    budget = GEMV_Q8_BUDGET if q8 and deep else GEMV_BUDGET
    print(f"  {name}: main loop {len(ops)} instructions = {per_1024:.0f} per 1024 weights "
          f"(R x DEPTH = {r}); 128-bit loads: {wide_global} global, {wide_shared} shared; "
          f"narrower non-scale global loads {narrow_global}")
    if per_1024 > 1.25 * budget:
        fail(f"{name}: {per_1024:.0f} warp-instructions per 1024 weights, over 1.25 x {budget}")
    if wide_global == 0 or narrow_global:
        fail(f"{name}: the weights are not read with 128-bit loads only "
             f"({wide_global} LDG.128, {narrow_global} narrower)")
    if wide_shared == 0:
        fail(f"{name}: x is not read from shared memory with 128-bit loads")
    return per_1024


def check_attention(name, code, fail):
    """The GQA group kernel: its K loop and its V loop (the loops with 128-bit global loads)
    read rows with 128-bit loads only; returns how many such loops it has."""
    wide = []
    for body in loops(code):
        ops = [c[1] for c in real(body)]
        if any(op.startswith("LDG") and ".128" in op for op in ops):
            narrow = sum(op.startswith("LDG") and ".128" not in op for op in ops)
            if narrow:
                fail(f"{name}: a K/V loop also issues {narrow} narrower global loads")
            wide.append(len(ops))
    if len(wide) < 2:
        fail(f"{name}: {len(wide)} loops read K/V with 128-bit loads, expected the K and the V loop")
    return len(wide)


def check_tiled(name, code, fail):
    """The tiled prefill kernel: every global load 128 bits wide, the K/V tiles copied with
    cp.async (LDGSTS.128) into the double buffer, and at least two loops (scores, p.v) reading
    the staged tiles with LDS.128."""
    ops = [c[1] for c in real(code)]
    copies = [op for op in ops if op.startswith("LDGSTS")]
    wide_copies = sum(".128" in op for op in copies)
    narrow = [op for op in ops
              if op.startswith("LDG") and not op.startswith("LDGDEPBAR") and ".128" not in op]
    if wide_copies < 2:
        fail(f"{name}: {wide_copies} 128-bit cp.async copies (LDGSTS.128), expected K and V")
    if narrow:
        fail(f"{name}: {len(narrow)} global loads narrower than 128 bits ({narrow[0]})")
    if not any(op.startswith("LDGDEPBAR") for op in ops):
        fail(f"{name}: no LDGDEPBAR: the K/V copies are not committed as groups (double buffer)")
    tile_loops = sum(any(c[1].startswith("LDS") and ".128" in c[1] for c in real(body))
                     for body in loops(code))
    if tile_loops < 2:
        fail(f"{name}: {tile_loops} loops read the staged tiles with LDS.128, expected the "
             "score loop and the p.v loop")
    print(f"  {name[-60:]}: {wide_copies} LDGSTS.128, {tile_loops} LDS.128 tile loops")


def demangled_gemv(name):
    """(N, R, DEPTH, aligned x, paired, q8) of gemv_int4_kernel<N, R, DEPTH, VEC, PAIRED, Q8>."""
    m = re.search(r"gemv_int4_kernelILi(\d+)ELi(\d+)ELi(\d+)ELb(\d)ELb(\d)ELb(\d)E", name)
    if not m:
        return None
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4) == "1",
            m.group(5) == "1", m.group(6) == "1")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cuobjdump")
    ap.add_argument("objects", nargs="+")
    a = ap.parse_args()
    cuobjdump = find_cuobjdump(a.cuobjdump)
    if not cuobjdump:
        print("SKIP: no cuobjdump (PATH, FERRY_CUOBJDUMP or .tools/cuda/bin; scripts/setup.sh "
              "fetches it where nvcc is present)")
        return SKIP
    failures = []

    def fail(msg):
        print("FAIL " + msg)
        failures.append(msg)

    warnings = []

    def warn(msg):
        print("warn " + msg)
        warnings.append(msg)

    kernels, others, per_r, groups, tiled = 0, 0, {}, 0, 0
    for obj in a.objects:
        for (arch, name), code in functions(cuobjdump, obj).items():
            local = [c for c in code if c[1].startswith(("LDL", "STL"))]
            if local and not any(k in name for k in LOCAL_ALLOWED):
                (fail if arch == "sm_90" else warn)(
                    f"{name} ({arch}): {len(local)} local-memory accesses ({local[0][1]} at "
                    f"{local[0][0]:#x}): a spill or a stack array")
            if arch != "sm_90":
                others += 1
                continue
            kernels += 1
            if "attention_group_kernel" in name:
                groups += 1
                check_attention(name, code, fail)
            if "attention_tiled_kernel" in name:
                tiled += 1
                check_tiled(name, code, fail)
            g = demangled_gemv(name)
            if g and g[0] == 1 and g[3]:  # the aligned-x variants: every real model's
                n, r, depth, _, paired, q8 = g
                per = check_gemv(name, code, r * depth, q8, depth > 1, fail)
                if depth > 1:  # the deep path (the chunked one: its fallback)
                    per_r[(r, paired, q8)] = per
    if kernels == 0:
        fail("no sm_90 kernel found in the objects given (was sm_90 compiled in?)")
    if not per_r:
        fail("no gemv_int4_kernel<1, R> found")
    for q8, budget in ((False, GEMV_BUDGET), (True, GEMV_Q8_BUDGET)):
        kind = "INT8 x" if q8 else "fp32 x"
        want = [(r, paired, q8) for r, paired in GEMV_SHARE]
        if not all(k in per_r for k in want):
            fail(f"the fused decode GEMV variants ({kind}) are missing: expected "
                 f"gemv_int4_kernel<1, R, DEPTH > 1, true, PAIRED, Q8> for (R, PAIRED, Q8) in "
                 f"{want}, found {sorted(per_r)}")
            continue
        if any(per_r[k] is None for k in want):
            continue
        total = sum(GEMV_SHARE.values())
        mean = sum(per_r[(r, p, q8)] * GEMV_SHARE[(r, p)] for r, p in GEMV_SHARE) / total
        print(f"  decode GEMV, {kind}: {mean:.0f} warp-instructions per 1024 weights, weighted "
              f"by a Qwen2-32B layer's bytes (budget {budget})")
        if mean > budget:
            fail(f"decode GEMV, {kind}: {mean:.0f} warp-instructions per 1024 weights, over "
                 f"{budget}")
    if kernels and not tiled:
        fail("no attention_tiled_kernel found")
    print(f"sass_check: {kernels} sm_90 kernels ({others} of other architectures checked for "
          f"local memory: {len(warnings)} warning(s)), {len(per_r)} decode GEMV variants, {groups} "
          f"GQA attention variants, {tiled} tiled prefill variants: {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
