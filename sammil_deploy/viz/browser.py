"""A local headless Chromium driven over the Chrome DevTools Protocol on a pipe (``--remote-debugging-pipe``).

No Python dependency and no network port: commands go to the browser on file descriptor 3 and replies come back
on 4, as NUL-terminated JSON. Used to screenshot ``report.html`` (``sammil-deploy report --screenshot``) and by
the tests that check the page in a real browser. The browser runs with a fresh profile, without background
networking, component updates or sync.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from sammil_deploy.errors import MissingDependencyError, SammilError

REPLY_TIMEOUT_S = 60.0
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",  # the sandbox refuses to run as root (CI containers)
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable (``$SAMMIL_CHROMIUM`` first), or ``None``."""
    override = os.environ.get("SAMMIL_CHROMIUM")
    if override:
        return override if Path(override).is_file() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(SammilError):
    """The browser could not start, a page failed to load, or a script threw."""


class HeadlessChromium:
    """One headless browser with one page. Use as a context manager.

    Example:
        with HeadlessChromium() as browser:
            browser.open(Path("run/report.html"))
            rows = browser.evaluate("document.querySelectorAll('tr.row').length")
            browser.screenshot(Path("report.png"))
    """

    def __init__(self, executable: str | None = None, *, width_px: int = 1440, height_px: int = 900) -> None:
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise MissingDependencyError(
                "no Chromium found (looked for chromium, google-chrome; or set SAMMIL_CHROMIUM); install it with "
                "`apt-get install chromium` (Debian/Ubuntu)"
            )
        self.size_px = (width_px, height_px)
        self._next_id = 0
        self._buffer = b""
        self._proc: subprocess.Popen[bytes] | None = None
        self._session: str | None = None
        self.events: list[dict[str, Any]] = []  # protocol events received so far ({"method", "params"})

    def __enter__(self) -> HeadlessChromium:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Launch the browser and attach to its page."""
        self._profile = tempfile.TemporaryDirectory(prefix="sammil-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds() -> None:  # in the child: the protocol wants fds 3 (commands) and 4 (replies)
            cmd, reply = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(cmd, 3)
            os.dup2(reply, 4)

        args = [self.executable, *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"]
        self._proc = subprocess.Popen(  # noqa: S603 (fixed argument list)
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=child_fds,
        )  # fmt: skip
        os.close(to_browser_r)
        os.close(from_browser_w)
        targets = self.send("Target.getTargets", session=False)["targetInfos"]
        page = next((t for t in targets if t.get("type") == "page"), None)
        target = page["targetId"] if page else self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        if isinstance(target, dict):
            target = target["targetId"]
        self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)[
            "sessionId"
        ]
        width, height = self.size_px
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                          "mobile": False})  # fmt: skip
        self.send("Page.enable")
        self.send("Network.enable")  # so that requested_urls() sees every request the page makes

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: bool = True) -> dict[str, Any]:
        """One protocol command; returns its ``result`` (events received meanwhile go to :attr:`events`).

        Raises:
            BrowserError: The command failed or the browser closed the pipe.
        """
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self._session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message()
            if "method" in reply and "id" not in reply:
                self.events.append({"method": reply["method"], "params": reply.get("params", {})})
            elif reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def _read_message(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], REPLY_TIMEOUT_S)
            if not ready:
                raise BrowserError(f"Chromium did not answer within {REPLY_TIMEOUT_S} s ({self.executable})")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError("Chromium closed the DevTools pipe (it crashed or was killed)")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def requested_urls(self) -> list[str]:
        """Every URL the page asked for so far (navigations, pictures, scripts...), in order."""
        self.evaluate("0")  # a round trip, so that events sent before it have arrived
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def open(self, path: Path, *, ready: str = "document.readyState === 'complete'", timeout_s: float = 30.0) -> None:
        """Load a local file and wait until the JS expression ``ready`` is true.

        Raises:
            BrowserError: Not ready within ``timeout_s``.
        """
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()})
        self.wait_for(ready, timeout_s=timeout_s)

    def wait_for(self, expression: str, *, timeout_s: float = 30.0) -> None:
        """Poll the JS expression until it is truthy (a script error counts as not yet: the page may be loading).

        Raises:
            BrowserError: Still false (or failing) after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.evaluate(f"Boolean({expression})"):
                    return
                last = "false"
            except BrowserError as err:
                last = str(err)
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout_s} s waiting for {expression} (last: {last})")
            time.sleep(0.05)

    def evaluate(self, expression: str) -> Any:
        """The value of a JS expression (promises awaited; returned by value).

        Raises:
            BrowserError: The script threw.
        """
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})  # fmt: skip
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"script error: {text}")
        return result.get("result", {}).get("value")

    def screenshot(self, path: Path, *, full_page: bool = False) -> Path:
        """Save the viewport (or the whole page) as PNG."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            width, height = self.evaluate("[document.body.scrollWidth, document.body.scrollHeight]")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": width, "height": height,
                                                             "scale": 1})  # fmt: skip
        data = self.send("Page.captureScreenshot", params)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """Close the browser (politely, then by force) and remove its profile."""
        if self._proc is None:
            return
        try:
            if self._proc.poll() is None:
                self.send("Browser.close", session=False)
            self._proc.wait(timeout=10)
        except (BrowserError, OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        finally:
            for fd in (self._to_browser, self._from_browser):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._proc = None
            self._profile.cleanup()


def screenshot_report(report_html: Path, out_png: Path, *, width_px: int = 1440, height_px: int = 900,
                      open_first: bool = True) -> Path:  # fmt: skip
    """Screenshot a cohort ``report.html`` (with the first slide's details opened when ``open_first``).

    Raises:
        MissingDependencyError: No Chromium installed.
        BrowserError: The page did not render.
    """
    with HeadlessChromium(width_px=width_px, height_px=height_px) as browser:
        browser.open(report_html, ready="document.body && document.body.dataset.ready === '1'")
        if open_first:
            browser.evaluate("(document.querySelector('tr.row') || {click() {}}).click()")
        browser.evaluate(
            "Promise.all([...document.images].map(i => { i.loading = 'eager'; return i.decode().catch(() => 0); }))"
        )
        return browser.screenshot(out_png)
