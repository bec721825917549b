"""Headless Chromium driven over the DevTools protocol, for what a DOM dump
cannot show: real key presses (Tab, Enter), where focus goes, computed
styles.

Chromium's ``--remote-debugging-pipe`` reads protocol messages on fd 3 and
writes on fd 4, each a JSON object ended by a NUL byte, so no WebSocket
client is needed. One page target, attached in flat mode; every command
waits for its answer (events are read past and dropped).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .browser import HEADLESS, chromium

# Windows virtual key codes the protocol wants beside ``key`` and ``code``.
KEYS = {"Tab": 9, "Enter": 13}


class BrowserError(RuntimeError):
    """Chromium answered a command with an error, or not in time."""


class Page:
    """One tab of a headless Chromium of its own."""

    def __init__(self, *, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-cdp-")
        to_browser, self._send_fd = os.pipe()
        self._recv_fd, from_browser = os.pipe()

        def pipes_on_3_and_4() -> None:
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self._proc = subprocess.Popen(
            [
                chromium(),
                *HEADLESS,
                f"--user-data-dir={self._profile.name}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=pipes_on_3_and_4,
            # Its own process group: Chromium's helpers (zygote, renderers,
            # crash handler) write into the profile and must be stopped with it.
            start_new_session=True,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        target = self.command("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.command("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.send("Page.enable")
        self.send("Runtime.enable")
        # Headless windows never have the OS's focus; without this the page
        # is not focused and :focus-visible never applies.
        self.send("Emulation.setFocusEmulationEnabled", enabled=True)

    # -- protocol ----------------------------------------------------------

    def command(self, method: str, *, session: str | None = None, **params: Any) -> Any:
        self._next_id += 1
        ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._send_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") != ident:
                continue  # an event
            if "error" in answer:
                raise BrowserError(f"{method}: {answer['error']}")
            return answer.get("result", {})

    def send(self, method: str, **params: Any) -> Any:
        """A command to the page's session."""
        return self.command(method, session=self._session, **params)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._recv_fd], [], [], left)[0]:
                raise BrowserError("no answer from chromium in time")
            chunk = os.read(self._recv_fd, 65536)
            if not chunk:
                raise BrowserError("chromium closed its pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        found: dict[str, Any] = json.loads(message)
        return found

    # -- page --------------------------------------------------------------

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except BrowserError:
                value = None  # the page is between documents
            if value:
                return value
            time.sleep(0.05)
        raise BrowserError(f"timed out waiting for {what}")

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for(
            f"document.readyState === 'complete' && location.href === {json.dumps(url)}",
            f"{url} to load",
        )

    def press(self, key: str) -> None:
        """A real key press: keyDown (with its text, so Enter activates) and keyUp."""
        code = KEYS[key]
        down: dict[str, Any] = {"key": key, "code": key, "windowsVirtualKeyCode": code}
        if key == "Enter":
            down["text"] = "\r"
        self.send("Input.dispatchKeyEvent", type="keyDown", **down)
        self.send(
            "Input.dispatchKeyEvent", type="keyUp", key=key, code=key, windowsVirtualKeyCode=code
        )

    def tab_until(
        self, matches: Callable[[dict[str, Any]], bool], limit: int = 60
    ) -> dict[str, Any]:
        """Press Tab until the focused element (``focused()``) matches."""
        for _ in range(limit):
            self.press("Tab")
            now = self.focused()
            if matches(now):
                return now
        raise AssertionError(f"focus never reached the element after {limit} Tab presses")

    def focused(self) -> dict[str, Any]:
        """What has focus: tag, id, text, href, and its computed outline."""
        found: dict[str, Any] = self.evaluate(
            """(() => {
              const e = document.activeElement;
              const s = getComputedStyle(e);
              return {tag: e.tagName.toLowerCase(), id: e.id, text: e.textContent.trim(),
                      href: e.getAttribute('href'), inside: e.closest('nav,form,table,header')
                      ? e.closest('nav,form,table,header').getAttribute('aria-label')
                        || e.closest('nav,form,table,header').tagName.toLowerCase() : null,
                      focusVisible: e.matches(':focus-visible'),
                      outlineStyle: s.outlineStyle, outlineWidth: s.outlineWidth,
                      outlineColor: s.outlineColor};
            })()"""
        )
        return found

    # -- lifetime ----------------------------------------------------------

    def close(self) -> None:
        group = self._proc.pid
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        _stop_group(group)
        os.close(self._send_fd)
        os.close(self._recv_fd)
        self._profile.cleanup()

    def __enter__(self) -> Page:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _stop_group(group: int, *, timeout: float = 10.0) -> None:
    """Stop what is left of the process group Chromium led, and wait (bounded)
    until it is gone, so that its profile folder can be removed."""
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise BrowserError(f"Chromium's process group {group} did not stop in {timeout:.0f} s")
