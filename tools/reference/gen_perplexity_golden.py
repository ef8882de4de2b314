#!/usr/bin/env python3
"""Perplexity of a Hugging Face model with llama-perplexity's chunking, as `ferry perplexity` runs it.

The text is tokenized once with the tokenizer's special tokens (BOS where it adds one), cut into
chunks of --ctx tokens (the tail dropped), each chunk's first token replaced by BOS where there is
one, and positions ctx/2 .. ctx-2 scored (each predicts the next token). Weights are rounded to
bf16 and the model runs in fp32, as ferry's bf16 scheme does.

  tools/reference/.venv/bin/python tools/reference/gen_perplexity_golden.py MODEL_DIR TEXT --ctx 128 [--chunks N] [-o OUT.json]

With -o it writes {"ppl", "mean_nll", "scored", "chunks", "ctx", "versions"}; tests compare ferry's
figure with it (tests/test_perplexity.cpp).
"""
import argparse
import json
import math
import pathlib

import tokenizers
import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=0, help="at most this many chunks (0: all)")
    ap.add_argument("-o", "--out")
    a = ap.parse_args()
    model_dir = pathlib.Path(a.model)
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = tok.encode(pathlib.Path(a.text).read_text(encoding="utf-8"), add_special_tokens=True).ids
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    bos_text = cfg.get("bos_token")
    if isinstance(bos_text, dict):
        bos_text = bos_text.get("content")
    bos = tok.token_to_id(bos_text) if bos_text else None
    add_bos = bos is not None and ids and ids[0] == bos
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    ctx, first = a.ctx, a.ctx // 2
    chunks = len(ids) // ctx
    if a.chunks:
        chunks = min(chunks, a.chunks)
    nll, scored = 0.0, 0
    for i in range(chunks):
        chunk = ids[i * ctx:(i + 1) * ctx]
        x = list(chunk)
        if add_bos:
            x[0] = bos
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([x])).logits[0].double(), dim=-1)
        for j in range(first, ctx - 1):
            nll -= float(logp[j, chunk[j + 1]])
            scored += 1
    out = {"ppl": math.exp(nll / scored), "mean_nll": nll / scored, "scored": scored,
           "chunks": chunks, "ctx": ctx,
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "tokenizers": tokenizers.__version__}}
    print(json.dumps(out))
    if a.out:
        pathlib.Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
