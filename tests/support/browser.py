"""Headless Chromium (Debian's ``chromium``) loading a page and returning
the DOM it rendered. Skipped when missing, except under CI=true."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

CHROMIUM = ("chromium", "chromium-browser")
# Headless, and nothing that would reach past loopback on its own (updates,
# sync, first-run pages).
HEADLESS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def chromium() -> str:
    for name in CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    message = "chromium is missing (Debian package chromium; scripts/setup --test)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def dump_dom(url: str, *, timeout: float = 60.0) -> str:
    """The DOM Chromium built for ``url``, serialised (after scripts ran)."""
    binary = chromium()
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        done = subprocess.run(
            [
                binary,
                *HEADLESS,
                f"--user-data-dir={profile}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
