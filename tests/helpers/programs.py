"""Executable programs for tests to hand the daemon: MDAs, hooks, pipe aliases."""

from __future__ import annotations

import sys
from pathlib import Path


def executable(path: Path, text: str, mode: int = 0o755) -> Path:
    """Write ``text`` (shebang included) to ``path`` with ``mode``; the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def shell_script(path: Path, body: str, mode: int = 0o755) -> Path:
    """A ``/bin/sh`` script running ``body`` at ``path``; the path."""
    return executable(path, "#!/bin/sh\n" + body, mode)


def python_script(path: Path, body: str) -> Path:
    """A script run by this Python, with os, sys, json, signal and time imported."""
    return executable(path, f"#!{sys.executable}\nimport os, sys, json, signal, time\n{body}\n")
