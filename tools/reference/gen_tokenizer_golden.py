#!/usr/bin/env python3
"""Golden data for tests/test_tokenizer.cpp, produced with Hugging Face `tokenizers` (PyPI).

For every tokenizer below and every corpus string it records
  ids          = encode(text, add_special_tokens=False).ids
  ids_special  = encode(text, add_special_tokens=True).ids
  decoded      = decode(ids_special)                              (skip_special_tokens=True)
  decoded_all  = decode(ids_special, skip_special_tokens=False)
into tests/fixtures/tokenizer/golden_<name>.json. Only texts and ids are written: the
tinystories tokenizer itself stays in ../shared (the test reads it from there).

Usage (from the repository root; see tools/reference/README.md):
  python3 tools/reference/gen_tokenizer_golden.py [--shared ../shared]
"""
import argparse
import json
import pathlib
import random

from tokenizers import Tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "tokenizer"

SPECIALS = "<|start_story|> <|end_story|> <unk> <|endoftext|> <|im_start|> <|im_end|> " \
    "<|begin_of_text|> <|eot_id|> <|start_header_id|>"


def corpus():
    c = [
        "",
        "Hello world",
        "Once upon a time, there was a little girl named Lily.",
        "The quick brown fox jumps over the lazy dog.",
        " leading space",
        "trailing space ",
        "  two leading and two trailing  ",
    ]
    c += ["a" + " " * n + "b" for n in range(1, 9)]
    c += [" " * n for n in range(1, 9)]
    c += ["line1\nline2", "a\n\nb", "\n\n\n", "x\r\ny\r\n", "tab\there", "\t\tindented\n\t code",
          "mixed \n \t \n  end", "end with newline\n", "spaces then newline   \n  next"]
    c += ["1234567890", "3.14159 and 2,718,281", "year 2024: 100000000000000000001", "v1.2.3-rc4"]
    c += ["Hello!!! What?!? ... --- ***", "(parens) [brackets] {braces} <angles>", "a+b=c; x*y/z%w",
          "\"quoted\" 'single' `back`", "path/to/file.txt #hash @at $dollar ^caret &amp"]
    c += ["It's I'M they're WE'LL you've she'd don't", "THEY'RE it'S We'Ll ya'D 'S 're"]
    c += ["你好，世界！这是一个测试。", "日本語のテキスト、カタカナとひらがな。", "한국어 텍스트", "混合 mixed 文本 text"]
    c += ["emoji 😀 😃 👍🏽", "family 👨‍👩‍👧‍👦 and flag 🇫🇷🇯🇵", "heart ❤️ star ⭐"]
    c += ["café naïve résumé Ångström", "cafe\u0301 nai\u0308ve re\u0301sume\u0301 A\u030angstro\u0308m",
          "Ω ω Σ σ ς Привет мир", "non\u00a0breaking\u3000ideographic", "zero\u200bwidth"]
    c += ["<|start_story|>Once upon a time<|end_story|>", "text <|start_story|> middle <unk> end",
          "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
          "<|endoftext|>", "a<|endoftext|>b <|im_end|> c", "<|begin_of_text|>hi<|eot_id|>",
          "<|start_header_id|>system<|end_header_id|>\n\nYou are helpful."]
    c += ["Lily and Ben were playing in the park. They saw a big red ball.\n\n\"Can I play?\" asked Ben."]
    rng = random.Random(1234)
    pool = list("abcXYZ019 .,!?'\n\t-_") + ["é", "e\u0301", "你", "好", "😀", "👍🏽", "\u00a0", "  ", "'s", "'LL"]
    for _ in range(12):
        c.append("".join(rng.choice(pool) for _ in range(rng.randint(5, 60))))
    return c


def metaspace_variant(tok_json, scheme, split):
    """The tinystories tokenizer with a Metaspace pre-tokenizer (Llama-2 style files); the
    C++ test applies the same edit (keep the two in step)."""
    d = json.loads(tok_json)
    d["normalizer"] = None
    d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme,
                          "split": split}
    if scheme == "always":
        d["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": split},
            {"type": "ByteFallback"}, {"type": "Fuse"}]}
    return json.dumps(d)


def qwen2_variants():
    """Edits of the qwen2-tiny fixture that reach the components the synthesized files do not:
    added-token flags, the GPT-2 ByteLevel pre-tokenizer and a BOS/EOS template. Written as
    fixtures themselves, so the C++ test reads them as they are."""
    base = json.loads((FIXTURES / "qwen2_tiny.tokenizer.json").read_text(encoding="utf-8"))
    flags = json.loads(json.dumps(base))
    next_id = max(t["id"] for t in flags["added_tokens"]) + 1
    for content, extra in [("<mask>", {"lstrip": True}), ("[R]", {"rstrip": True}),
                           ("the", {"single_word": True}), ("Caf\u00e9", {"normalized": True}),
                           ("<both>", {"lstrip": True, "rstrip": True})]:
        tok = {"id": next_id, "content": content, "single_word": False, "lstrip": False,
               "rstrip": False, "normalized": False, "special": False}
        tok.update(extra)
        flags["added_tokens"].append(tok)
        next_id += 1
    gpt2 = json.loads(json.dumps(base))
    gpt2["normalizer"] = None
    gpt2["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                             "use_regex": True}
    gpt2["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": "<|im_end|>", "type_id": 0}}],
         "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {
             "<|endoftext|>": {"id": "<|endoftext|>", "ids": [496], "tokens": ["<|endoftext|>"]},
             "<|im_end|>": {"id": "<|im_end|>", "ids": [498], "tokens": ["<|im_end|>"]}}}]}
    out = {}
    for name, d in (("qwen2_tiny_flags", flags), ("gpt2_style", gpt2)):
        text = json.dumps(d, ensure_ascii=False)
        (FIXTURES / f"{name}.tokenizer.json").write_text(text, encoding="utf-8")
        out[name] = Tokenizer.from_str(text)
    return out


def record(name, tok, texts):
    cases = []
    for t in texts:
        plain = tok.encode(t, add_special_tokens=False).ids
        special = tok.encode(t, add_special_tokens=True).ids
        cases.append({"text": t, "ids": plain, "ids_special": special,
                      "decoded": tok.decode(special),
                      "decoded_all": tok.decode(special, skip_special_tokens=False)})
    out = FIXTURES / f"golden_{name}.json"
    # One case per line: small, and diffs stay readable when the corpus changes.
    lines = ",\n".join(json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in cases)
    out.write_text(f'{{"tokenizer":{json.dumps(name)},"cases":[\n{lines}\n]}}\n', encoding="utf-8")
    print(f"{out.relative_to(ROOT)}: {len(cases)} cases")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    args = ap.parse_args()
    texts = corpus()
    for name in ("qwen2_tiny", "llama3_tiny"):
        record(name, Tokenizer.from_file(str(FIXTURES / f"{name}.tokenizer.json")), texts)
    flag_texts = texts + ["a <mask> b", "a  <mask>b", "x [R]  y", "[R]\n\nz", "the theory other the",
                          "(the) the_x xthe the.", "Caf\u00e9 Cafe\u0301 caf\u00e9", "a <both> b",
                          " <both>  ", "\u00a0<mask>\u3000[R]\u00a0"]
    for name, tok in qwen2_variants().items():
        record(name, tok, flag_texts)
    ts = pathlib.Path(args.shared) / "models" / "tinystories-656k" / "tokenizer.json"
    if ts.exists():
        raw = ts.read_text(encoding="utf-8")
        record("tinystories", Tokenizer.from_str(raw), texts)
        record("tinystories_metaspace_first", Tokenizer.from_str(metaspace_variant(raw, "first", False)), texts)
        record("tinystories_metaspace_always", Tokenizer.from_str(metaspace_variant(raw, "always", True)), texts)
    else:
        print(f"{ts} is absent: tinystories golden files left as they are")


if __name__ == "__main__":
    main()
