"""Open a page in a real headless Chromium and report what a person would see.

``python -m reid_core.report.browser runs/<name>/report.html --screenshot shot.png`` prints JSON:
console errors / exceptions / failed loads, the images on the page and whether they decoded, the
page height. Used by the report's browser test; also handy to check a report by hand.

Talks to Chromium over the DevTools protocol (a WebSocket on 127.0.0.1, client from the
``websockets`` package): no Playwright and no browser download, the system ``chromium`` (Debian
package) is enough. :func:`find_chromium` returns ``None`` when no browser is installed.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["find_chromium", "inspect_page"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary (``REID_CHROMIUM`` first, then ``PATH``), or None."""
    env = os.environ.get("REID_CHROMIUM")
    if env:
        return env if os.path.isfile(env) and os.access(env, os.X_OK) else None
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _wait_port(user_dir: Path, proc: subprocess.Popen, timeout: float) -> int:
    marker = user_dir / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with code {proc.returncode} before opening DevTools")
        if marker.is_file():
            lines = marker.read_text().splitlines()
            if lines and lines[0].strip().isdigit():
                return int(lines[0])
        time.sleep(0.1)
    raise TimeoutError(f"chromium did not open DevTools within {timeout:.0f} s")


class _Cdp:
    """Minimal DevTools-protocol client: numbered commands, events collected in a list."""

    def __init__(self, ws) -> None:
        self.ws, self.next_id, self.events = ws, 0, []
        self.pending: dict[int, asyncio.Future] = {}
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self.pending:
                self.pending.pop(msg["id"]).set_result(msg)
            elif "method" in msg:
                self.events.append(msg)

    async def send(self, method: str, timeout: float = 60.0, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        await self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        msg = await asyncio.wait_for(fut, timeout)
        if "error" in msg:
            raise RuntimeError(f"DevTools {method}: {msg['error']}")
        return msg.get("result", {})

    async def wait_event(self, method: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events:
                if ev["method"] == method:
                    return ev
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no {method} within {timeout:.0f} s")


_PAGE_PROBE = """(() => {
  const imgs = Array.from(document.images);
  return JSON.stringify({
    title: document.title,
    height: Math.ceil(document.documentElement.scrollHeight),
    width: Math.ceil(document.documentElement.scrollWidth),
    images: imgs.map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight})),
    sections: Array.from(document.querySelectorAll('section h2')).map(h => h.textContent),
  });
})()"""


async def _inspect(url: str, port: int, screenshot: Path | None, width: int, timeout: float) -> dict[str, Any]:
    import websockets

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
        targets = json.loads(resp.read())
    page = next(t for t in targets if t.get("type") == "page")
    async with websockets.connect(page["webSocketDebuggerUrl"], max_size=256 * 1024 * 1024) as ws:
        cdp = _Cdp(ws)
        for domain in ("Page", "Runtime", "Log", "Network"):
            await cdp.send(f"{domain}.enable")
        await cdp.send("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
        cdp.events.clear()  # only what the page itself causes (not about:blank's start-up)
        await cdp.send("Page.navigate", url=url)
        await cdp.wait_event("Page.loadEventFired", timeout)
        await asyncio.sleep(0.3)  # let late console messages arrive
        probe = json.loads((await cdp.send("Runtime.evaluate", expression=_PAGE_PROBE,
                                           returnByValue=True))["result"]["value"])
        if screenshot is not None:
            height = min(int(probe["height"]), 16000)
            await cdp.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                           mobile=False)
            shot = await cdp.send("Page.captureScreenshot", format="png", captureBeyondViewport=True, timeout=120)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        cdp.reader.cancel()
    errors = []
    requests = 0
    for ev in cdp.events:
        m, p = ev["method"], ev.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description", "")))
                                                                  for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            det = p.get("exceptionDetails", {})
            errors.append("exception: " + str(det.get("exception", {}).get("description") or det.get("text")))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            errors.append("log: " + p["entry"].get("text", "") + " " + p["entry"].get("url", ""))
        elif m == "Network.loadingFailed":
            errors.append("failed load: " + p.get("errorText", ""))
        elif m == "Network.requestWillBeSent":
            requests += 1
    return {**probe, "console_errors": errors, "requests": requests}


def inspect_page(path_or_url: str | os.PathLike, screenshot: str | os.PathLike | None = None, width: int = 1200,
                 timeout: float = 60.0, chromium: str | None = None) -> dict[str, Any]:
    """Load the page in headless Chromium; return errors seen, image states and sizes (see module doc).

    ``screenshot``: write a full-page PNG there. Raises ``RuntimeError`` when no Chromium is found.
    """
    binary = chromium or find_chromium()
    if binary is None:
        raise RuntimeError("no chromium binary found (apt-get install chromium, or set REID_CHROMIUM)")
    target = str(path_or_url)
    url = target if "://" in target else Path(target).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="reid-chromium-") as user_dir:
        cmd = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
               "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
               f"--user-data-dir={user_dir}", "about:blank"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port = _wait_port(Path(user_dir), proc, timeout)
            return asyncio.run(_inspect(url, port, Path(screenshot) if screenshot else None, width, timeout))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", help="HTML file or URL")
    ap.add_argument("--screenshot", default=None, help="write a full-page PNG here")
    ap.add_argument("--width", type=int, default=1200)
    a = ap.parse_args(argv)
    result = inspect_page(a.page, a.screenshot, width=a.width)
    print(json.dumps(result, indent=2))
    return 1 if result["console_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
