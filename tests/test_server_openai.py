#!/usr/bin/env python3
"""`ferry serve` called with the official `openai` Python package (run by CTest).

Starts the real binary on a loopback port over a synthesized qwen2-tiny model (ChatML template,
random weights), then checks: a chat completion, whole and streamed, equals `ferry run` greedy on
the same rendered prompt; usage counts agree with what `ferry run` reports; stop strings are
honoured; errors come back with OpenAI's status codes; SIGTERM stops the server with exit 0.

Usage: test_server_openai.py FERRY_BINARY VENV_PYTHON
Exits 77 (CTest's SKIP_RETURN_CODE) when the reference venv or its `openai` package is absent.
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

from server_harness import Checks, start_server, tiny_model

SKIP = 77


def reexec_in_venv(venv_python: str) -> None:
    """Runs this script under the reference venv's python, or exits 77 when there is none."""
    if os.path.realpath(sys.prefix) == os.path.realpath(os.path.join(os.path.dirname(venv_python), "..")):
        return
    if not os.path.exists(venv_python):
        print(f"SKIP: {venv_python} is absent (tools/reference/.venv: see README)")
        sys.exit(SKIP)
    os.execv(venv_python, [venv_python] + sys.argv)


def greedy_run(ferry, model, prompt, n):
    """`ferry run` greedy: (generated text, prompt tokens, generated tokens)."""
    r = subprocess.run([ferry, "run", model, "-p", prompt, "-n", str(n), "--threads", "1"],
                       capture_output=True, check=True)
    out = r.stdout
    assert out.startswith(prompt.encode()) and out.endswith(b"\n"), out
    err = r.stderr.decode()
    p = int(re.search(r"prompt (\d+) tokens?", err).group(1))
    g = int(re.search(r"generated (\d+) tokens?", err).group(1))
    return out[len(prompt.encode()):-1], p, g


def same_text(server_text: str, run_bytes: bytes) -> bool:
    """The server's JSON replaces bytes that are not UTF-8 (a random model's reply may end inside
    a character); compare with every run of replacement characters taken as one."""
    norm = lambda s: re.sub("\ufffd+", "\ufffd", s)
    return norm(server_text) == norm(run_bytes.decode("utf-8", "replace"))


def render_chatml(hf_dir, messages):
    """The rendered prompt, by the checkpoint's own Jinja template (as transformers renders it)."""
    import jinja2
    cfg = json.load(open(os.path.join(hf_dir, "tokenizer_config.json")))
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(cfg["chat_template"]).render(messages=messages, add_generation_prompt=True)


def main() -> int:
    ferry, venv_python = sys.argv[1], sys.argv[2]
    reexec_in_venv(venv_python)
    try:
        import openai
    except ImportError:
        print(f"SKIP: the openai package is not installed in {venv_python}")
        return SKIP

    tmp = tempfile.TemporaryDirectory()
    hf, model = tiny_model(ferry, tmp.name)
    proc, port = start_server(ferry, model, "--threads", "1", "--api-key", "sesame", "--body-limit", "64K")
    check = Checks()

    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sesame", max_retries=0)
        messages = [{"role": "user", "content": "Hello there"}]
        prompt = render_chatml(hf, messages)
        expected, p_tokens, g_tokens = greedy_run(ferry, model, prompt, 16)

        r = client.chat.completions.create(model="m", messages=messages, max_tokens=16, temperature=0)
        text = r.choices[0].message.content
        check(same_text(text, expected), f"chat completion equals ferry run greedy: {text!r} vs {expected!r}")
        check(r.usage.prompt_tokens == p_tokens and r.usage.completion_tokens == g_tokens,
              f"usage {r.usage.prompt_tokens}+{r.usage.completion_tokens} == run's {p_tokens}+{g_tokens}")

        stream = client.chat.completions.create(model="m", messages=messages, max_tokens=16, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
        pieces, usage, finish = [], None, None
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                pieces.append(c.delta.content or "")
                finish = c.finish_reason or finish
        check(same_text("".join(pieces), expected), "streamed chat equals ferry run greedy")
        check(len([p for p in pieces if p]) > 1, f"the stream came in pieces ({len(pieces)} chunks)")
        check(usage is not None and usage.completion_tokens == g_tokens, "stream's usage chunk")
        check(finish in ("stop", "length"), f"finish_reason {finish}")

        # a stop string from the middle of the reply ends it just before
        full = expected.decode("utf-8", "replace")
        stop = next((full[i:i + 2] for i in range(4, len(full) - 2) if full[i:i + 2].isascii()), None)
        if stop:
            r = client.chat.completions.create(model="m", messages=messages, max_tokens=16, temperature=0,
                                               stop=[stop])
            check(r.choices[0].message.content == full[:full.index(stop)]
                  and r.choices[0].finish_reason == "stop", f"stop string {stop!r} honoured")

        # errors, as the SDK raises them
        def status_of(call):
            try:
                call()
            except openai.APIStatusError as e:
                return e.status_code, (e.body or {}).get("code") if isinstance(e.body, dict) else None
            return 200, None

        check(status_of(lambda: client.chat.completions.create(model="m", messages=messages, n=2))[0] == 400,
              "n=2 refused with 400")
        check(status_of(lambda: client.chat.completions.create(model="m", messages=messages,
                                                              temperature="hot"))[0] == 400,
              "a string temperature refused with 400")
        long = [{"role": "user", "content": "word " * 3000}]
        check(status_of(lambda: client.chat.completions.create(model="m", messages=long))
              == (400, "context_length_exceeded"), "a prompt longer than the context: 400 context_length_exceeded")
        bad_key = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sesamE", max_retries=0)
        check(status_of(lambda: bad_key.models.list())[0] == 401, "a wrong key: 401")
        check([m.id for m in client.models.list()] == ["m"], "/v1/models lists the model")
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=b" " * 100000,
                                     headers={"Authorization": "Bearer sesame",
                                              "Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req)
            code = 200
        except urllib.error.HTTPError as e:
            code = e.code
        except (ConnectionError, urllib.error.URLError):
            code = "connection closed"
        check(code == 413, f"a body over --body-limit: 413 (got {code})")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "still running after 30 s"
    check(rc == 0, f"SIGTERM: exit status 0 (got {rc})")
    return check.exit_code()


if __name__ == "__main__":
    sys.exit(main())
