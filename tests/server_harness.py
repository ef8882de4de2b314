"""What the `ferry serve` test scripts share: a synthesized model, a started server, checks.

test_server_openai.py, test_server_page.py and test_server_load.py each start the real binary on
a loopback port over a synthesized qwen2-tiny model (ChatML template, random weights) and report
every check as one `ok`/`FAIL` line.
"""
import os
import re
import subprocess
import sys


def tiny_model(ferry, tmp_dir):
    """Synthesizes qwen2-tiny and quantizes it: (HF directory, packed model path)."""
    hf, model = os.path.join(tmp_dir, "hf"), os.path.join(tmp_dir, "m.ferry")
    subprocess.run([ferry, "synth", "--preset", "qwen2-tiny", "-o", hf], check=True, capture_output=True)
    subprocess.run([ferry, "quantize", hf, "-o", model], check=True, capture_output=True)
    return hf, model


def start_server(ferry, model, *extra, preexec_fn=None):
    """Starts `ferry serve` on a free port and waits for its "ready" line: (process, port)."""
    proc = subprocess.Popen([ferry, "serve", model, "--port", "0", *extra], stderr=subprocess.PIPE,
                            text=True, preexec_fn=preexec_fn)
    port = None
    for line in proc.stderr:  # "listening on http://127.0.0.1:PORT/", then "ready: ..."
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
        if m:
            port = int(m.group(1))
        if "ready:" in line:
            break
    if port is None:
        proc.kill()
        sys.exit(f"FAIL: ferry serve did not start: {proc.stderr.read()}")
    return proc, port


class Checks:
    """Prints each check as it is made and keeps the failed ones."""

    def __init__(self):
        self.failures = []

    def __call__(self, ok, what):
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            self.failures.append(what)

    def exit_code(self):
        print(f"{len(self.failures)} failure(s)")
        return 1 if self.failures else 0
