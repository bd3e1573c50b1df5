"""A real headless Chromium for page tests, driven over the DevTools protocol (aiohttp's websocket
client): open a URL, wait for the load event, read what the page says, take a screenshot, and
collect script errors (uncaught exceptions, console.error, error log entries)."""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--mute-audio", "--hide-scrollbars"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Page:
    url: str
    values: dict  # name -> result of a JavaScript expression evaluated after load
    errors: list[str] = field(default_factory=list)  # script errors and console errors
    screenshot: Path | None = None


class Chromium:
    """One headless browser process for a test (``with Chromium(tmp) as b: b.open(url, ...)``)."""

    def __init__(self, workdir: Path, width: int = 1100, height: int = 1300):
        self.workdir = Path(workdir)
        self.size = (width, height)
        self.proc: subprocess.Popen | None = None
        self.ws_url = ""

    def __enter__(self) -> "Chromium":
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("chromium not found")
        profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=self.workdir))
        self.stderr = open(self.workdir / "chromium.log", "wb+")
        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                      f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=self.stderr, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.stderr.seek(0)
            m = re.search(rb"DevTools listening on (ws://\S+)", self.stderr.read())
            if m:
                self.ws_url = m.group(1).decode()
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.__exit__(None, None, None)
        log = (self.workdir / 'chromium.log').read_text(errors='replace')
        raise RuntimeError(f"chromium did not start: {log[-2000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.stderr.close()

    def open(self, url: str, evaluate: dict[str, str], screenshot: Path | None = None, timeout: float = 30) -> Page:
        return asyncio.run(asyncio.wait_for(self._open(url, evaluate, screenshot), timeout))

    async def _open(self, url: str, evaluate: dict[str, str], screenshot: Path | None) -> Page:
        ids = itertools.count(1)
        page = Page(url, {})
        async with aiohttp.ClientSession() as http, http.ws_connect(self.ws_url, max_msg_size=0) as ws:
            pending: dict[int, asyncio.Future] = {}
            loaded = asyncio.Event()

            async def reader():
                async for msg in ws:
                    m = json.loads(msg.data)
                    if "id" in m and m["id"] in pending:
                        pending.pop(m["id"]).set_result(m)
                        continue
                    method, params = m.get("method"), m.get("params", {})
                    if method == "Page.loadEventFired":
                        loaded.set()
                    elif method == "Runtime.exceptionThrown":
                        d = params["exceptionDetails"]
                        page.errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
                    elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                        page.errors.append("console.error: " + " ".join(
                            str(a.get("value", a.get("description"))) for a in params.get("args", [])))
                    elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                        page.errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")

            task = asyncio.create_task(reader())

            async def call(method: str, params: dict | None = None, session: str | None = None) -> dict:
                i = next(ids)
                fut = asyncio.get_running_loop().create_future()
                pending[i] = fut
                msg = {"id": i, "method": method, "params": params or {}}
                if session:
                    msg["sessionId"] = session
                await ws.send_str(json.dumps(msg))
                res = await fut
                if "error" in res:
                    raise RuntimeError(f"{method}: {res['error']}")
                return res.get("result", {})

            try:
                target = (await call("Target.createTarget", {"url": "about:blank"}))["targetId"]
                sid = (await call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
                for domain in ("Page", "Runtime", "Log"):
                    await call(f"{domain}.enable", session=sid)
                await call("Emulation.setDeviceMetricsOverride", {"width": self.size[0], "height": self.size[1],
                                                                   "deviceScaleFactor": 1, "mobile": False}, sid)
                await call("Page.navigate", {"url": url}, sid)
                await loaded.wait()
                await asyncio.sleep(0.2)  # let late scripts and console messages arrive
                for name, expr in evaluate.items():
                    r = await call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, sid)
                    if "exceptionDetails" in r:
                        raise RuntimeError(f"evaluating {name}: {r['exceptionDetails']}")
                    page.values[name] = r["result"].get("value")
                if screenshot is not None:
                    shot = await call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, sid)
                    screenshot.write_bytes(base64.b64decode(shot["data"]))
                    page.screenshot = screenshot
                await call("Target.closeTarget", {"targetId": target})
            finally:
                task.cancel()
        return page
