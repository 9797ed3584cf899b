#!/usr/bin/python3
"""browser_cdp.py - drives headless Chromium over the DevTools protocol on a pipe
(--remote-debugging-pipe: JSON messages ending in NUL, chrome reads fd 3, writes fd 4;
Python standard library only). Used by tests/browser_serve.sh.

    browser_cdp.py CHROME URL EXPR SHOT [SECONDS]

Opens URL, evaluates the JavaScript expression EXPR every 100 ms until it is true (at most
SECONDS, default 60), prints document.body's data attributes and the state, saves a PNG
screenshot to SHOT. Exit 0 when EXPR became true, 1 otherwise.
"""
import base64
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time


class Chrome:
    def __init__(self, exe, profile):
        r_in, self.w = os.pipe()      # we write -> chrome's fd 3
        self.r, w_out = os.pipe()     # chrome's fd 4 -> we read
        # move both ends above 4 first, so the dup2 below cannot clobber one with the other
        hi_in, hi_out = fcntl.fcntl(r_in, fcntl.F_DUPFD, 10), fcntl.fcntl(w_out, fcntl.F_DUPFD, 10)
        os.close(r_in)
        os.close(w_out)
        r_in, w_out = hi_in, hi_out

        def child():   # runs before exec; close_fds=False keeps 3 and 4 open
            os.dup2(r_in, 3, inheritable=True)
            os.dup2(w_out, 4, inheritable=True)
        self.p = subprocess.Popen([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                   "--remote-debugging-pipe", "--user-data-dir=" + profile, "--window-size=1400,860",
                                   "about:blank"], preexec_fn=child, close_fds=False,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(r_in)
        os.close(w_out)
        self.buf = b""
        self.next_id = 0

    def call(self, method, params=None, session=None, timeout=30):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        t0 = time.time()
        while time.time() - t0 < timeout:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                m = json.loads(raw)
                if m.get("id") == self.next_id:
                    if "error" in m:
                        raise RuntimeError(f"{method}: {m['error']}")
                    return m.get("result", {})
            data = os.read(self.r, 1 << 20)
            if not data:
                raise RuntimeError("chrome closed the pipe")
            self.buf += data
        raise RuntimeError(f"{method}: no answer in {timeout} s")

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, OSError):
            pass
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()


def main():
    exe, url, expr, shot = sys.argv[1:5]
    seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 60
    with tempfile.TemporaryDirectory() as profile:
        c = Chrome(exe, profile)
        ok = False
        try:
            tid = c.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            sid = c.call("Target.attachToTarget", {"targetId": tid, "flatten": True})["sessionId"]
            c.call("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 860, "deviceScaleFactor": 1,
                                                          "mobile": False}, sid)
            c.call("Page.enable", {}, sid)
            c.call("Page.navigate", {"url": url}, sid)
            t0 = time.time()
            while time.time() - t0 < seconds:
                r = c.call("Runtime.evaluate", {"expression": f"!!({expr})", "returnByValue": True}, sid)
                if r.get("result", {}).get("value") is True:
                    ok = True
                    break
                time.sleep(0.1)
            time.sleep(0.3)   # let the last frame paint
            state = c.call("Runtime.evaluate", {"expression": "JSON.stringify({body: document.body.dataset, "
                                                "routing: document.getElementById('routing').dataset, "
                                                "status: document.getElementById('status').textContent, "
                                                "spans: document.querySelectorAll('.tok').length, "
                                                "table: document.querySelectorAll('#experts tbody tr').length})",
                                                "returnByValue": True}, sid)
            print(state.get("result", {}).get("value"))
            png = c.call("Page.captureScreenshot", {"format": "png"}, sid)["data"]
            with open(shot, "wb") as f:
                f.write(base64.b64decode(png))
        finally:
            c.close()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
