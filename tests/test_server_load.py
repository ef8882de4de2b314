#!/usr/bin/env python3
"""`ferry serve` under load (run by CTest; loopback only, bounded in count).

32 concurrent streaming clients send 128 chat requests in all, of mixed prompt and reply lengths,
to the real binary with --parallel 8 over a synthesized qwen2-tiny model. Every reply must be
complete ([DONE] after a finish_reason) and equal the same request's reply when it ran alone
(greedy; asked first, one at a time), its usage must match, /metrics must agree with what the
clients counted, and the server's resident memory after the load must be within 32 MB of what
it was after a first round of the same requests. Prints the aggregate tokens/s.

Usage: test_server_load.py FERRY_BINARY
Only the standard library.
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from server_harness import Checks, start_server, tiny_model

CLIENTS, REQUESTS, PARALLEL = 32, 128, 8


def post(base, body, stream):
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(dict(body, stream=stream,
                                 **({"stream_options": {"include_usage": True}} if stream else {}))).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        if not stream:
            j = json.load(r)
            return j["choices"][0]["message"]["content"], j["usage"]["completion_tokens"], True
        text, usage, finished, done = "", None, False, False
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]["completion_tokens"]
                for c in chunk["choices"]:
                    text += c.get("delta", {}).get("content") or ""
                    finished = finished or c.get("finish_reason") is not None
        return text, usage, finished and done


def rss_kb(pid):
    return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1))


def main() -> int:
    ferry = sys.argv[1]
    tmp = tempfile.TemporaryDirectory()
    hf, model = tiny_model(ferry, tmp.name)
    server, port = start_server(ferry, model, "--parallel", str(PARALLEL), "--ctx", "256", "--queue", str(CLIENTS))
    base = f"http://127.0.0.1:{port}"

    check = Checks()

    # mixed lengths: prompts of 1 to 40 words, replies of 4 to 80 tokens
    bodies = [{"messages": [{"role": "user", "content": " ".join(["word%d" % (i * 7 % 13)] * (1 + i * 11 % 40))}],
               "max_tokens": 4 + i * 37 % 77, "temperature": 0} for i in range(REQUESTS)]
    try:
        t0 = time.monotonic()
        solo = [post(base, b, False) for b in bodies]  # one at a time: the reference
        solo_seconds = time.monotonic() - t0
        rss_before = rss_kb(server.pid)

        results = [None] * REQUESTS
        next_request = iter(range(REQUESTS))
        lock = threading.Lock()

        def client():
            while True:
                with lock:
                    i = next(next_request, None)
                if i is None:
                    return
                try:
                    results[i] = post(base, bodies[i], True)
                except Exception as e:  # counted as a failure below
                    results[i] = (f"error: {e}", None, False)

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - start
        rss_after = rss_kb(server.pid)

        complete = sum(1 for r in results if r[2])
        same = sum(1 for r, s in zip(results, solo) if r[0] == s[0] and r[1] == s[1])
        check(complete == REQUESTS, f"{complete}/{REQUESTS} streams complete (finish_reason, usage, [DONE])")
        check(same == REQUESTS, f"{same}/{REQUESTS} replies equal their solo greedy reply, usage included")
        tokens = sum(r[1] or 0 for r in results)
        solo_tokens = sum(s[1] for s in solo)
        def value(name):
            metrics = urllib.request.urlopen(f"{base}/metrics").read().decode()
            return float(re.search(rf"^{name} (\S+)$", metrics, re.M).group(1))
        # a client has its [DONE] just before the scheduler counts the request finished and frees
        # its slot: wait for that bookkeeping (bounded: it only ends a hung run)
        deadline = time.monotonic() + 30
        while value("ferry_requests_finished_total") < 2 * REQUESTS and time.monotonic() < deadline:
            time.sleep(0.05)
        check(value("ferry_generated_tokens_total") == tokens + solo_tokens,
              f"/metrics generated tokens {value('ferry_generated_tokens_total'):.0f} == clients' {tokens + solo_tokens}")
        check(value("ferry_requests_finished_total") == 2 * REQUESTS and value("ferry_requests_cancelled_total") == 0,
              "/metrics: every request finished, none cancelled")
        check(value("ferry_kv_slots_used") == 0 and value("ferry_queue_depth") == 0, "/metrics: idle after the load")
        # Under AddressSanitizer (test.sh sets ASAN_OPTIONS for that build) freed memory sits in its
        # quarantine (256 MB by default), so resident memory says nothing about leaks there.
        check("ASAN_OPTIONS" in os.environ or rss_after - rss_before < 32 * 1024,
              f"resident memory {rss_before // 1024} MB before the load, {rss_after // 1024} MB after")
        print(f"load: {REQUESTS} requests from {CLIENTS} clients, {tokens} tokens in {seconds:.2f} s: "
              f"{tokens / seconds:.0f} tokens/s aggregate (--parallel {PARALLEL}); the same requests one at a "
              f"time: {solo_tokens / solo_seconds:.0f} tokens/s")
    finally:
        server.send_signal(signal.SIGTERM)
        rc = server.wait(timeout=60)
    check(rc == 0, f"SIGTERM: exit 0 (got {rc})")
    return check.exit_code()


if __name__ == "__main__":
    sys.exit(main())
