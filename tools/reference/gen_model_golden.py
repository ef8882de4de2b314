#!/usr/bin/env python3
"""Golden logits and greedy continuations from Hugging Face transformers, for ferry's forward pass.

For each model: a few prompts (token ids from the model's own tokenizer), HF's logits at every
position (float32, little-endian, [positions, vocab] per prompt, in <name>.logits.f32) and the
greedy continuation of 64 tokens; the index <name>.json names the versions used and, for the
synthesized checkpoints, the xxh3-64 of the model.safetensors that `ferry synth` wrote, so that a
drift of ferry's generator fails the test instead of comparing against another model.

ferry's bf16 scheme stores every weight rounded to bf16 and computes in fp32: the reference
therefore rounds the weights to bf16 (a no-op for the synthesized checkpoints, which are bf16)
and runs in float32 with eager attention.

Usage, from the repository root (the routes and versions are in README.md next to this file):
  cmake --build build --target ferry       # the synthesized checkpoints come from `ferry synth`
  python3 tools/reference/gen_model_golden.py --ferry build/ferry [--route pypi|debian]

The script runs itself in tools/reference/.venv, which it makes on first use with pinned versions:
  --route pypi    (default) torch, transformers, tokenizers, xxhash from PyPI: ~5.6 GB, no root
  --route debian  Debian's python3-torch (apt-get install python3-torch first: 811 MB) seen
                  through --system-site-packages, transformers 4.46.3 from PyPI: 163 MB
A venv of the other route is an error (delete it). --no-venv runs in the current interpreter.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "model"
VENV = ROOT / "tools" / "reference" / ".venv"
# Pinned so that a rerun reproduces the recorded versions. transformers 4.46.3 is the release
# checked with Debian bookworm's torch 1.13 (it knows Qwen2 and rope_scaling "llama3", and its
# metadata asks for no torch 2.x, as 4.48's does).
ROUTES = {
    "pypi": {"python": sys.executable, "system_site": False,
             "packages": ["torch==2.15.0", "transformers==5.23.0", "tokenizers==0.23.3",
                          "xxhash==4.1.0"]},
    "debian": {"python": "/usr/bin/python3", "system_site": True,
               "packages": ["transformers==4.46.3", "xxhash==4.1.0"]},
}
DTYPE_ARG = "torch_dtype"
GREEDY = 64
TEXTS = ["Once upon a time, there was a little girl named Lily.",
         "The sun was warm and the dog ran to the park"]


def enter_venv(route: str):
    """Re-executes this script in tools/reference/.venv, making the venv of `route` first."""
    python = VENV / "bin" / "python"
    if pathlib.Path(sys.prefix).resolve() == VENV.resolve():
        return
    marker = VENV / "ferry-route"
    if VENV.exists():
        made = marker.read_text().strip() if marker.exists() else "unknown"
        if made != route:
            sys.exit(f"{VENV} was made for route '{made}', not '{route}': delete it or pass "
                     f"--route {made}")
    else:
        r = ROUTES[route]
        if route == "debian" and subprocess.run(
                [r["python"], "-c", "import torch"], capture_output=True).returncode != 0:
            sys.exit("route debian needs Debian's torch: apt-get install python3-torch")
        print(f"making {VENV} (route {route}): {' '.join(r['packages'])}", flush=True)
        subprocess.run([r["python"], "-m", "venv", str(VENV)] +
                       (["--system-site-packages"] if r["system_site"] else []), check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q"] + r["packages"], check=True)
        marker.write_text(route + "\n")
    os.execv(str(python), [str(python), str(pathlib.Path(__file__).resolve())] + sys.argv[1:])


# The synthesized checkpoints: (ferry synth preset, fixture name, config.json keys replaced after
# synth). The rope-scaling variants reuse a preset's weights: both types change the frequencies at
# every position (yarn also multiplies cos/sin by 0.1 ln 4 + 1 = 1.139); the C++ test applies the
# same overrides, which the index records.
SYNTH = [
    ("qwen2-tiny", "qwen2_tiny", {}),
    ("llama3-tiny", "llama3_tiny", {}),
    ("qwen3-tiny", "qwen3_tiny", {}),
    ("mistral-tiny", "mistral_tiny", {}),
    ("qwen2-tiny", "qwen2_tiny_yarn",
     {"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                       "original_max_position_embeddings": 128}}),
    ("llama-tiny", "llama_tiny_linear",
     {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
]


def reference(out: pathlib.Path, model_dir: pathlib.Path, name: str, bos, synth_hash=None,
              overrides=None):
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, **{DTYPE_ARG: torch.float32}, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        for p in model.parameters():  # the bf16 scheme: weights rounded to bf16, fp32 compute
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    prompts, blobs = [], []
    for text in TEXTS:
        ids = ([bos] if bos is not None else []) + tok.encode(text, add_special_tokens=False).ids
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(x).logits[0].to(torch.float32).numpy()
            gen = model.generate(x, do_sample=False, max_new_tokens=GREEDY, min_new_tokens=GREEDY,
                                 eos_token_id=None, pad_token_id=0, synced_gpus=False)
        prompts.append({"ids": ids, "positions": len(ids), "greedy": gen[0, len(ids):].tolist()})
        blobs.append(logits.astype("<f4").tobytes())
    (out / f"{name}.logits.f32").write_bytes(b"".join(blobs))
    index = {"model": name, "vocab": int(model.config.vocab_size), "prompts": prompts,
             "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                          "tokenizers": tokenizers.__version__}}
    if synth_hash:
        index["synth_safetensors_xxh3"] = synth_hash
    if overrides:
        index["config_overrides"] = overrides
    (out / f"{name}.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"{name}: {len(prompts)} prompts, vocab {index['vocab']}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--ferry", default=str(ROOT / "build" / "ferry"))
    ap.add_argument("--out", default=str(OUT), help="where the fixtures go (another folder to "
                    "compare a torch or transformers release with the committed ones)")
    ap.add_argument("--route", choices=sorted(ROUTES), default="pypi")
    ap.add_argument("--no-venv", action="store_true", help="use the current interpreter's torch")
    ap.add_argument("--only", nargs="*", help="fixture names to make (default: all)")
    a = ap.parse_args()
    if not a.no_venv:
        enter_venv(a.route)
    global tokenizers, torch, transformers, xxhash
    import tokenizers
    import torch
    import transformers
    import xxhash
    # transformers 5 names the argument `dtype` and warns on `torch_dtype`; 4.46 knows only the latter.
    global DTYPE_ARG
    DTYPE_ARG = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tiny = pathlib.Path(a.shared) / "models" / "tinystories-656k"
    if a.only is not None and "tinystories" not in a.only:
        pass
    elif tiny.exists():
        reference(out, tiny, "tinystories", bos=1)
    else:
        print(f"{tiny} is absent: tinystories fixtures left as they are")
    with tempfile.TemporaryDirectory() as tmp:
        for preset, name, overrides in SYNTH:
            if a.only is not None and name not in a.only:
                continue
            d = pathlib.Path(tmp) / name
            subprocess.run([a.ferry, "synth", "--preset", preset, "-o", str(d), "-q"], check=True)
            h = xxhash.xxh3_64_hexdigest((d / "model.safetensors").read_bytes())
            cfg = json.loads((d / "config.json").read_text())
            cfg.update(overrides)
            (d / "config.json").write_text(json.dumps(cfg, indent=2))
            bos = cfg.get("bos_token_id")
            reference(out, d, name, bos=bos if isinstance(bos, int) else None, synth_hash=h,
                      overrides=overrides)


if __name__ == "__main__":
    main()
