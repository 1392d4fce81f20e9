"""A real browser for tests: Debian's headless Chromium driven by Playwright.

Playwright's own browser download does not work here (and is not what an
operator runs); it drives the system's ``chromium`` instead. A test that
cannot have it skips, or fails under CHASQUID_REQUIRE_ALL=1.

Use the ``chromium`` fixture (import it into a conftest.py or test module)::

    from helpers.browser import chromium  # noqa: F401
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from helpers.requirements import unavailable

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CANDIDATES = ("chromium", "chromium-browser")


def chromium_path() -> str:
    """The system Chromium; skip (or fail in CI) when it is not installed."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    unavailable("chromium (Debian package chromium) is not installed")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """A headless Chromium, shared by the tests of a module."""
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright Python package is not installed")
    with sync_playwright() as p:
        # Chromium refuses to run as root with its sandbox; tests often run as root.
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = p.chromium.launch(executable_path=path, headless=True, args=args)
        try:
            yield browser
        finally:
            browser.close()


def screenshot_dir(tmp_path: Path) -> Path:
    """Where a test keeps its screenshots (an artifact to look at when it fails)."""
    d = tmp_path / "screenshots"
    d.mkdir(exist_ok=True)
    return d
