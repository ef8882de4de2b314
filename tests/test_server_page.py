#!/usr/bin/env python3
"""`ferry serve`'s chat page in headless Chromium (run by CTest).

Starts the real binary over a synthesized qwen2-tiny model and Chromium with its DevTools port,
then, through the DevTools protocol: loads /, types a message into the box and presses Enter,
waits for the streamed reply, and checks that it came in several chunks, equals the API's own
greedy reply to the same message, and shows its tokens/s. Screenshots at desktop and phone width
are saved in OUT_DIR (desktop.png, phone.png).

Usage: test_server_page.py FERRY_BINARY OUT_DIR
Exits 77 (CTest's SKIP_RETURN_CODE) when chromium is not installed (scripts/setup.sh installs it).
Only the standard library: the DevTools websocket is spoken by the few lines below.
"""
import base64
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

from server_harness import Checks, start_server, tiny_model

SKIP = 77


class DevTools:
    """One DevTools websocket (RFC 6455 text frames, client side masked)."""

    def __init__(self, url):
        m = re.match(r"ws://([^:/]+):(\d+)(/.*)", url)
        self.sock = socket.create_connection((m.group(1), int(m.group(2))), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {m.group(3)} HTTP/1.1\r\nHost: {m.group(1)}:{m.group(2)}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.next_id = 0

    def _read(self, n):
        data = b""
        while len(data) < n:
            part = self.sock.recv(n - len(data))
            if not part:
                raise ConnectionError("DevTools closed the connection")
            data += part
        return data

    def _frame(self):
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._read(8))[0]
        return b0 & 0x80, b0 & 0x0F, self._read(n)

    def _message(self):
        data = b""
        while True:
            fin, _, payload = self._frame()
            data += payload
            if fin:
                return json.loads(data)

    def call(self, method, **params):
        self.next_id += 1
        payload = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        while True:
            msg = self._message()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return r["result"].get("value")


def wait_for(what, probe, seconds=60):
    """Polls `probe` until it is true; the bound only ends a hung run, it measures nothing."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    sys.exit(f"FAIL: {what} did not happen within {seconds} s")


def main() -> int:
    ferry, out_dir = sys.argv[1], sys.argv[2]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("SKIP: chromium is not installed (scripts/setup.sh installs it)")
        return SKIP
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.TemporaryDirectory()
    hf, model = tiny_model(ferry, tmp.name)
    # started as a shell starts a background job (SIGINT ignored): Ctrl-C's SIGINT must stop it still
    server, port = start_server(ferry, model, "--threads", "1",
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    base = f"http://127.0.0.1:{port}"
    profile = os.path.join(tmp.name, "profile")
    browser = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    check = Checks()

    try:
        active = os.path.join(profile, "DevToolsActivePort")
        wait_for("chromium's DevTools port", lambda: os.path.exists(active) and open(active).read().count("\n"))
        dt_port = open(active).read().split("\n")[0]
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{dt_port}/json/list"))
        page = DevTools(next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"])
        page.call("Emulation.setDeviceMetricsOverride", width=1200, height=800, deviceScaleFactor=1, mobile=False)
        page.call("Page.navigate", url=f"{base}/?max_tokens=120&temperature=0")
        wait_for("the page", lambda: page.js("document.readyState") == "complete" and
                 page.js("document.getElementById('model').textContent") == "m")

        # type a message and press Enter, as a person would
        page.js("document.getElementById('input').focus()")
        page.call("Input.insertText", text="Hello there")
        for kind in ("keyDown", "keyUp"):
            page.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter",
                      windowsVirtualKeyCode=13, nativeVirtualKeyCode=13)
        wait_for("the reply", lambda: page.js("document.body.dataset.replies") == "1")

        reply = page.js("document.querySelector('.assistant').firstChild.textContent")
        chunks = page.js("Number(document.querySelector('.assistant').dataset.chunks)")
        meta = page.js("document.querySelector('.assistant .meta').textContent")
        body = json.dumps({"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 120,
                           "temperature": 0}).encode()
        req = urllib.request.Request(f"{base}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        api = json.load(urllib.request.urlopen(req))["choices"][0]["message"]["content"]
        check(reply == api, f"the page's reply equals the API's greedy reply ({len(reply)} characters)")
        check(chunks > 1, f"the reply was streamed ({chunks} chunks)")
        check("tok/s" in meta, f"the reply shows its speed: {meta!r}")
        check(page.js("document.getElementById('input').value") == "", "the box is cleared after sending")

        shot = page.call("Page.captureScreenshot", format="png")
        open(os.path.join(out_dir, "desktop.png"), "wb").write(base64.b64decode(shot["data"]))
        page.call("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2, mobile=True)
        page.js("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
        overflow = page.js("document.documentElement.scrollWidth > window.innerWidth")
        check(not overflow, "nothing wider than a phone's screen (390 px)")
        shot = page.call("Page.captureScreenshot", format="png")
        open(os.path.join(out_dir, "phone.png"), "wb").write(base64.b64decode(shot["data"]))
        print(f"screenshots: {out_dir}/desktop.png, {out_dir}/phone.png")

        # "New chat" forgets the conversation
        page.js("document.getElementById('new').click()")
        check(page.js("document.querySelectorAll('.msg').length") == 0, "New chat empties the conversation")
    finally:
        browser.terminate()
        browser.wait(timeout=30)
        server.send_signal(signal.SIGINT)
        try:
            rc = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            rc = "still running 30 s after SIGINT"
    check(rc == 0, f"SIGINT stopped the server with exit 0 (got {rc})")
    return check.exit_code()


if __name__ == "__main__":
    sys.exit(main())
