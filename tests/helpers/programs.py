"""Executable programs for tests to hand the daemon: MDAs, hooks, pipe aliases."""

from __future__ import annotations

from pathlib import Path


def executable(path: Path, text: str, mode: int = 0o755) -> Path:
    """Write ``text`` (shebang included) to ``path`` with ``mode``; the path."""
    path.write_text(text)
    path.chmod(mode)
    return path


def shell_script(path: Path, body: str, mode: int = 0o755) -> Path:
    """A ``/bin/sh`` script running ``body`` at ``path``; the path."""
    return executable(path, "#!/bin/sh\n" + body, mode)
