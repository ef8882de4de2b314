#!/usr/bin/env python3
"""Golden prompts for tests/test_chat.cpp: real chat templates rendered with Jinja2 (PyPI
`jinja2`) the way transformers' `apply_chat_template(..., tokenize=False)` renders them.

Reads tests/fixtures/chat/templates.json (one entry per checkpoint: its chat_template, as a
.jinja file plus bos/eos tokens or as a whole tokenizer_config.json; where each came from is in
tests/fixtures/chat/SOURCES.md), renders every conversation below with and without
add_generation_prompt, and writes tests/fixtures/chat/golden.json:
  {"conversations": [[{"role", "content"}, ...], ...],
   "cases": [{"template", "conversation", "add_generation_prompt", "text"}, ...]}

The Jinja environment copies transformers' (render_jinja_template in
transformers/utils/chat_template_utils.py, 4.4x): a sandboxed environment with trim_blocks and
lstrip_blocks, the loopcontrols extension, `raise_exception` and `strftime_now` globals, a
`tojson` filter that keeps non-ASCII text, and the tokenizer's special tokens (bos_token,
eos_token) passed as variables next to messages, tools=None and add_generation_prompt. No torch
and no transformers are needed.

Usage (from the repository root):
  python3 -m pip install jinja2        # the fixtures were made with jinja2 3.1.6
  python3 tools/reference/gen_chat_golden.py
"""
import datetime
import json
import pathlib

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "chat"

# System prompt or none, one to three user turns, history with whitespace to trim, non-ASCII
# text, reasoning blocks (DeepSeek-R1 drops them from the history) and a second system message.
CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And times 3?"}],
    [{"role": "user", "content": "  Hi there \n"},
     {"role": "assistant", "content": " Hello! How can I help?\n\n"},
     {"role": "user", "content": "Übersetze «café» — 日本語 😀\tbitte"},
     {"role": "assistant", "content": "Café: コーヒー ☕"},
     {"role": "user", "content": "Thanks.\u3000"}],
    [{"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "<think>\nEasy: 2+2 is 4.\n</think>\n\nIt is 4."},
     {"role": "user", "content": "Sure?"},
     {"role": "assistant", "content": "<think>a</think>b</think>\nYes."}],
    [{"role": "system", "content": " First rules. "},
     {"role": "user", "content": "one"},
     {"role": "assistant", "content": "two"},
     {"role": "system", "content": "Second rules."},
     {"role": "user", "content": "three"}],
]


def token_text(tok):
    """A special token of tokenizer_config.json: a string, an AddedToken object, or null."""
    if isinstance(tok, dict):
        return tok.get("content")
    return tok


def load_templates():
    entries = json.loads((FIXTURES / "templates.json").read_text(encoding="utf-8"))
    out = []
    for e in entries:
        if "tokenizer_config_file" in e:
            cfg = json.loads((FIXTURES / e["tokenizer_config_file"]).read_text(encoding="utf-8"))
        else:
            cfg = {"chat_template": (FIXTURES / e["template_file"]).read_text(encoding="utf-8"),
                   "bos_token": e["bos_token"], "eos_token": e["eos_token"]}
        out.append((e["name"], cfg))
    return out


def environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def main():
    env = environment()
    cases = []
    for name, cfg in load_templates():
        template = env.from_string(cfg["chat_template"])
        specials = {k: token_text(cfg.get(k)) for k in ("bos_token", "eos_token")}
        specials = {k: v for k, v in specials.items() if v is not None}
        for i, conv in enumerate(CONVERSATIONS):
            for gen in (False, True):
                text = template.render(messages=conv, tools=None, documents=None,
                                       add_generation_prompt=gen, **specials)
                cases.append({"template": name, "conversation": i,
                              "add_generation_prompt": gen, "text": text})
    out = {"jinja2": jinja2.__version__, "conversations": CONVERSATIONS, "cases": cases}
    path = FIXTURES / "golden.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
