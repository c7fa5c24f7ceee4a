"""Debian's Chromium under Playwright, for the panel's browser tests: where it is, how it is started, and
what a test does without it (fail under CI=true, where scripts/test-deps.sh must have installed it; skip
with the reason elsewhere).

A browser lives for a module at most: between its calls Playwright's sync API marks its own event loop as
the thread's running one, so an ``asyncio.run`` (or an async test) in the same thread fails until it stops."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def executable() -> str | None:
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


def need_chromium() -> None:
    if executable():
        return
    reason = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium, or scripts/test-deps.sh)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.contextmanager
def launched() -> Iterator[Any]:
    """A headless Chromium (Playwright's sync ``Browser``) until the block ends."""
    need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable(), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()
