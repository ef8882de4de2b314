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

Usage (the route and versions are in README.md next to this file):
  python3 -m venv tools/reference/.venv
  tools/reference/.venv/bin/pip install torch transformers tokenizers xxhash
  tools/reference/.venv/bin/python tools/reference/gen_model_golden.py --ferry build/ferry
"""
import argparse
import json
import pathlib
import subprocess
import tempfile

import tokenizers
import torch
import transformers
import xxhash

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "model"
GREEDY = 64
TEXTS = ["Once upon a time, there was a little girl named Lily.",
         "The sun was warm and the dog ran to the park"]


def reference(model_dir: pathlib.Path, name: str, bos, synth_hash=None):
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, torch_dtype=torch.float32, attn_implementation="eager")
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
            out = model.generate(x, do_sample=False, max_new_tokens=GREEDY, min_new_tokens=GREEDY,
                                 eos_token_id=None, pad_token_id=0)
        prompts.append({"ids": ids, "positions": len(ids), "greedy": out[0, len(ids):].tolist()})
        blobs.append(logits.astype("<f4").tobytes())
    (OUT / f"{name}.logits.f32").write_bytes(b"".join(blobs))
    index = {"model": name, "vocab": int(model.config.vocab_size), "prompts": prompts,
             "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                          "tokenizers": tokenizers.__version__}}
    if synth_hash:
        index["synth_safetensors_xxh3"] = synth_hash
    (OUT / f"{name}.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"{name}: {len(prompts)} prompts, vocab {index['vocab']}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--ferry", default=str(ROOT / "build" / "ferry"))
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    tiny = pathlib.Path(a.shared) / "models" / "tinystories-656k"
    if tiny.exists():
        reference(tiny, "tinystories", bos=1)
    else:
        print(f"{tiny} is absent: tinystories fixtures left as they are")
    with tempfile.TemporaryDirectory() as tmp:
        for preset, name in [("qwen2-tiny", "qwen2_tiny"), ("llama3-tiny", "llama3_tiny")]:
            d = pathlib.Path(tmp) / preset
            subprocess.run([a.ferry, "synth", "--preset", preset, "-o", str(d), "-q"], check=True)
            h = xxhash.xxh3_64_hexdigest((d / "model.safetensors").read_bytes())
            cfg = json.loads((d / "config.json").read_text())
            bos = cfg.get("bos_token_id")
            reference(d, name, bos=bos if isinstance(bos, int) else None, synth_hash=h)


if __name__ == "__main__":
    main()
