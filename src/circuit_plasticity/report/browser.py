"""A report as a person sees it: headless Chromium driven over the DevTools protocol through a
pipe (--remote-debugging-pipe: no port, no network, no package beyond the standard library).
The browser test checks with it that every image loads, no console error is logged, every
section is there and nothing overflows; docs/make_pictures.py takes the README's screenshots."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
]
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    """The browser to drive: $CHROMIUM if set, else the first of CANDIDATES on PATH."""
    chosen = os.environ.get("CHROMIUM")
    if chosen:
        return chosen
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


class BrowserError(RuntimeError):
    pass


@dataclass
class PageCheck:
    """What the browser saw of one page at one width."""

    width: int
    images: int
    broken_images: list[str]
    console_errors: list[str]
    sections: list[str]  # ids of the page's <section>s, in order
    overflowing: list[str]  # elements whose right edge lies past the viewport
    page_width: int  # document scroll width (> width: a horizontal scrollbar)
    first_screen: dict[str, float] = field(default_factory=dict)  # verdict id -> its bottom (px)
    empty_figures: list[str] = field(default_factory=list)  # figure sections with no image, no why


# run in the page: images, sections, anything wider than the viewport, where the verdicts end
INSPECT = """(() => {
  const w = document.documentElement.clientWidth;
  const imgs = [...document.images];
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src.slice(0, 60));
  const over = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && (r.right > w + 1 || r.left < -1)) over.push(
      el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + ' right=' + Math.round(r.right));
  }
  const empty = [...document.querySelectorAll('section.figure')]
    .filter(s => !s.querySelector('img') && !(s.querySelector('.missing') || {}).textContent).map(s => s.id);
  const first = {};
  for (const el of document.querySelectorAll('.verdict')) first[el.id] = el.getBoundingClientRect().bottom;
  return {images: imgs.length, broken: broken, over: over.slice(0, 20),
          sections: [...document.querySelectorAll('section')].map(s => s.id),
          pageWidth: document.documentElement.scrollWidth, first: first, empty: empty};
})()"""


class Chromium:
    """One headless Chromium with a fresh profile, spoken to over its DevTools pipe."""

    def __init__(self, executable: str | None = None, timeout: float = 60.0):
        executable = executable or find_chromium()
        if executable is None:
            raise BrowserError("no Chromium found (apt-get install chromium, or set $CHROMIUM)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="cp-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the browser reads commands on fd 3 and writes replies on fd 4
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser_r, from_browser_w)]
        for fd in (to_browser_r, from_browser_w):
            os.close(fd)

        def wire() -> None:
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,  # Python's own fds are not inheritable; only fds 3 and 4 pass
            preexec_fn=wire,
        )
        for fd in high:
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def close(self) -> None:
        with contextlib.suppress(BrowserError, OSError):
            self.send("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium exited (code {self.process.poll()})")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events that arrive meanwhile are kept)."""
        self._next_id += 1
        command: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            command["sessionId"] = session
        os.write(self._to_browser, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._read_message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error'].get('message')}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, session: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, message in enumerate(self.events):
                if message.get("method") == event and message.get("sessionId") == session:
                    return self.events.pop(i)
            self.events.append(self._read_message(deadline))

    def open(self, url: str, width: int, height: int) -> str:
        """A new tab of `width` x `height` CSS px showing `url`, loaded; its session id."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.send("Page.navigate", session, url=url)
        self.wait_for("Page.loadEventFired", session)
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.send("Runtime.evaluate", session, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"script failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def console_errors(self, session: str) -> list[str]:
        """Errors the page logged: console.error, uncaught exceptions, failed loads."""
        errors = []
        for m in self.events:
            if m.get("sessionId") != session:
                continue
            params = m.get("params", {})
            if m.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error":
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
            elif m.get("method") == "Runtime.exceptionThrown":
                errors.append(params.get("exceptionDetails", {}).get("text", "exception"))
            elif m.get("method") == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append(params["entry"].get("text", ""))
        return errors

    def screenshot(self, session: str, full_page: bool = False) -> bytes:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.evaluate(
                session,
                "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]",
            )
            params |= {
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
            }
        return base64.b64decode(self.send("Page.captureScreenshot", session, **params)["data"])


def check_page(browser: Chromium, path: Path, width: int, height: int = 900) -> PageCheck:
    """Open `path` at `width` px and report what a reader would meet."""
    session = browser.open(Path(path).resolve().as_uri(), width, height)
    seen = browser.evaluate(session, INSPECT)
    return PageCheck(
        width=width,
        images=seen["images"],
        broken_images=seen["broken"],
        console_errors=browser.console_errors(session),
        sections=seen["sections"],
        overflowing=seen["over"],
        page_width=seen["pageWidth"],
        first_screen=seen["first"],
        empty_figures=seen["empty"],
    )


def screenshot(path: Path, png: Path, width: int = 1400, height: int = 1000, full_page: bool = False) -> Path:
    """A PNG of the page at `path` as a `width` px wide window shows it (its first screen, or
    the whole page)."""
    from circuit_plasticity.fileio import atomic_path

    with Chromium() as browser:
        session = browser.open(Path(path).resolve().as_uri(), width, height)
        data = browser.screenshot(session, full_page=full_page)
    with atomic_path(png) as tmp:
        tmp.write_bytes(data)
    return png
