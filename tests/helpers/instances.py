"""Private instances of third-party servers (Postfix, Dovecot) for tests: directory and lifetime.

Each instance lives in a short directory under /tmp (unix socket paths must
stay under ~107 bytes, and the servers' unprivileged processes must be able
to enter it, which pytest's 0700 ``tmp_path`` forbids); ``tmp_path/<name>``
links to it while it runs and keeps its log afterwards.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar


class Instance(Protocol):
    """What a private server offers to this module."""

    @property
    def log_file(self) -> Path:
        """The server's log, kept after the test."""
        ...

    def start(self) -> None:
        """Start and wait until it serves."""
        ...

    def stop(self) -> None:
        """Stop and wait until it is gone."""
        ...


InstanceT = TypeVar("InstanceT", bound=Instance)
T = TypeVar("T")


@contextmanager
def running_instance(
    tmp_path: Path, name: str, prefix: str, make: Callable[[Path], InstanceT]
) -> Iterator[InstanceT]:
    """``make(root)`` started in a fresh private directory; stopped and removed at the end."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root.chmod(0o755)
    link = tmp_path / name
    link.symlink_to(root, target_is_directory=True)
    instance = make(root)
    try:
        instance.start()
        yield instance
    finally:
        try:
            instance.stop()
        finally:
            # Keep the log beside the test's other files for post-mortems.
            link.unlink()
            link.mkdir()
            if instance.log_file.exists():
                shutil.copy(instance.log_file, link / instance.log_file.name)
            shutil.rmtree(root, ignore_errors=True)


def instance_factory(
    tmp_path: Path, running: Callable[..., AbstractContextManager[T]], name: str
) -> Iterator[Callable[..., T]]:
    """The body of a factory fixture: each call enters ``running(tmp_path, name=<name>N, ...)``."""
    with ExitStack() as stack:
        count = 0

        def factory(**kwargs: Any) -> T:
            nonlocal count
            count += 1
            return stack.enter_context(running(tmp_path, name=f"{name}{count}", **kwargs))

        yield factory
