"""Run the real ``chasquid`` daemon in tests: a config dir in tmp_path, free ports, logs.

Use the ``chasquid_setup`` fixture (a ``Setup``: config dir with a trustme
certificate, one domain and a user; edit it before starting) and the
``chasquid_daemon`` fixture factory (starts the process and waits for its
listeners; stops it at the end of the test). Import both into a conftest.py:

    from helpers.daemon import chasquid_daemon, chasquid_setup  # noqa: F401
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypedDict, Unpack

import pytest
import trustme

from chasquid.confdir.userdb import UserDB
from helpers.dns import failing_dns
from helpers.ports import free_port
from helpers.requirements import unavailable

DOMAIN = "testserver"
USER = "user"
PASSWORD = "secretpassword"
START_TIMEOUT = 30.0


_PREFIX = re.compile(r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} )?([☠E_.]) .{18} ")


def messages(log: str, levels: str = "☠E_.") -> list[str]:
    """The messages of main-log lines (timestamp, level and location removed) at ``levels``."""
    out = []
    for line in log.splitlines():
        m = _PREFIX.match(line)
        if m and m.group(1) in levels:
            out.append(line[m.end() :])
    return out


def chasquid_command() -> list[str]:
    """How to run the daemon: the installed console script, else the module."""
    exe = Path(sys.executable).parent / "chasquid"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from chasquid.daemon.cli import main; main()"]


@dataclass
class Setup:
    """A config dir and data dir under tmp_path, ready to start a daemon on."""

    root: Path
    ca: trustme.CA
    smtp_port: int
    submission_port: int
    submission_tls_port: int
    domain: str = DOMAIN
    user: str = USER
    password: str = PASSWORD
    extra_conf: list[str] = field(default_factory=list)
    #: The address the SMTP listener binds (submission listeners stay on 127.0.0.1).
    smtp_host: str = "127.0.0.1"
    #: The configured hostname; the domain when None.
    hostname: str | None = None

    @property
    def config_dir(self) -> Path:
        """The config dir passed as --config_dir."""
        return self.root / "config"

    @property
    def data_dir(self) -> Path:
        """The data dir (absolute, outside the config dir)."""
        return self.root / "data"

    @property
    def queue_dir(self) -> Path:
        """Where queue items are written."""
        return self.data_dir / "queue"

    @property
    def mail_log(self) -> Path:
        """The mail log file."""
        return self.root / "mail.log"

    @property
    def mda(self) -> Path:
        """The MDA: by default one that fails temporarily, so accepted mail stays queued."""
        return self.root / "mda"

    def set_mda(self, script: str) -> None:
        """Replace the MDA with a shell script (``$@`` are the MDA arguments)."""
        self.mda.write_text("#!/bin/sh\n" + script + "\n")
        self.mda.chmod(0o755)

    @property
    def ca_file(self) -> Path:
        """PEM file of the test CA, for clients verifying the server."""
        return self.root / "ca.pem"

    @property
    def user_addr(self) -> str:
        """The test user's address."""
        return f"{self.user}@{self.domain}"

    def users_file(self, domain: str | None = None) -> Path:
        """The users database of a domain."""
        return self.config_dir / "domains" / (domain or self.domain) / "users"

    def add_user(self, user: str, password: str, domain: str | None = None) -> None:
        """Add (or replace) a user in a domain's users database."""
        path = self.users_file(domain)
        path.parent.mkdir(parents=True, exist_ok=True)
        UserDB.load(path).with_user(user, password).save(path)

    def write_conf(self) -> None:
        """(Re)write chasquid.conf from the ports and extra_conf lines."""
        lines = [
            f'hostname: "{self.hostname or self.domain}"',
            f'smtp_address: "{self.smtp_host}:{self.smtp_port}"',
            f'submission_address: "127.0.0.1:{self.submission_port}"',
            f'submission_over_tls_address: "127.0.0.1:{self.submission_tls_port}"',
            f'data_dir: "{self.data_dir}"',
            f'mail_log_path: "{self.mail_log}"',
            f'mail_delivery_agent_bin: "{self.mda}"',
            *self.extra_conf,
        ]
        (self.config_dir / "chasquid.conf").write_text("\n".join(lines) + "\n")

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context trusting the test CA."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        return ctx


def make_setup(
    tmp_path: Path,
    *,
    domain: str = DOMAIN,
    hostname: str | None = None,
    smtp_host: str = "127.0.0.1",
    smtp_port: int | None = None,
    ca: trustme.CA | None = None,
    cert_names: Sequence[str] = (),
) -> Setup:
    """Write a complete config dir: certs from a fresh CA (or ``ca``), one domain with one user.

    The certificate is for ``domain``, ``localhost``, ``127.0.0.1`` and ``cert_names``.
    """
    ca = ca or trustme.CA()
    setup = Setup(
        root=tmp_path,
        ca=ca,
        smtp_port=smtp_port or free_port(),
        submission_port=free_port(),
        submission_tls_port=free_port(),
        domain=domain,
        smtp_host=smtp_host,
        hostname=hostname,
    )
    cert_dir = setup.config_dir / "certs" / (hostname or domain)
    cert_dir.mkdir(parents=True)
    leaf = ca.issue_cert(domain, *cert_names, "localhost", "127.0.0.1")
    (cert_dir / "fullchain.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(cert_dir / "privkey.pem"))
    ca.cert_pem.write_to_path(str(setup.ca_file))
    setup.add_user(USER, PASSWORD)
    # Deliveries are not under test in most daemon tests: keep every accepted
    # message in the queue (exit 75 is a temporary failure) so tests can see it.
    setup.set_mda("cat >/dev/null; exit 75")
    setup.write_conf()
    return setup


class Daemon:
    """A running chasquid process and its logs."""

    def __init__(self, setup: Setup, proc: subprocess.Popen[bytes], main_log: Path) -> None:
        self.setup = setup
        self.proc = proc
        self.main_log = main_log

    def log_text(self) -> str:
        """The main log (the daemon's stderr) so far."""
        return self.main_log.read_text(errors="replace")

    def mail_log_text(self) -> str:
        """The mail log so far."""
        try:
            return self.setup.mail_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(
        self, pattern: str, timeout: float = START_TIMEOUT, count: int = 1, mail_log: bool = False
    ) -> str:
        """Wait until ``pattern`` (a regex) occurs ``count`` times in the log; the log text."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.mail_log_text() if mail_log else self.log_text()
            if len(re.findall(pattern, text, re.M)) >= count:
                return text
            if self.proc.poll() is not None and not mail_log:
                text = self.log_text()
                if len(re.findall(pattern, text, re.M)) >= count:
                    return text
                raise AssertionError(
                    f"chasquid exited ({self.proc.returncode}) before logging {pattern!r}:\n{text}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {pattern!r} in:\n{text}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        """Send a signal to the daemon."""
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 45.0) -> int:
        """Wait for the process to exit; its status."""
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=10)


class StartOptions(TypedDict, total=False):
    """The keyword options of `start`, for factories that pass them on."""

    wait: bool
    env: dict[str, str] | None
    command: Sequence[str] | None
    pass_fds: Sequence[int]
    listeners: int


class DaemonFactory(Protocol):
    """What the chasquid_daemon fixture gives: start a daemon with extra flags and options."""

    def __call__(self, *args: str, **kwargs: Unpack[StartOptions]) -> Daemon: ...


def start(
    setup: Setup,
    args: Sequence[str] = (),
    *,
    wait: bool = True,
    env: dict[str, str] | None = None,
    command: Sequence[str] | None = None,
    pass_fds: Sequence[int] = (),
    listeners: int = 3,
) -> Daemon:
    """Start chasquid on the setup; with ``wait``, until ``listeners`` "Server listening" lines."""
    main_log = setup.root / f"main.{time.monotonic_ns()}.log"
    full_env = dict(os.environ)
    # Tests never reach the real DNS: unless a test brings its own server, every look-up
    # fails at once as a temporary error.
    full_env.setdefault("CHASQUID_TEST_DNS", failing_dns())
    full_env.update(env or {})
    cmd = [
        *(command or chasquid_command()),
        f"--config_dir={setup.config_dir}",
        "--testing__reload_every=1h",
        *args,
    ]
    with main_log.open("wb") as err:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=full_env,
            pass_fds=tuple(pass_fds),
            cwd=setup.root,
        )
    daemon = Daemon(setup, proc, main_log)
    if wait:
        daemon.wait_for_log(r"Server listening on ", count=listeners)
    return daemon


def run_to_exit(setup: Setup, args: Sequence[str] = (), timeout: float = 30.0) -> tuple[int, str]:
    """Run chasquid expecting it to exit by itself (a fatal start-up error); status and log."""
    daemon = start(setup, args, wait=False)
    try:
        status = daemon.wait(timeout)
    except subprocess.TimeoutExpired:
        daemon.proc.kill()
        daemon.proc.wait(10)
        raise AssertionError(f"chasquid did not exit:\n{daemon.log_text()}") from None
    return status, daemon.log_text()


@pytest.fixture
def chasquid_setup(tmp_path: Path) -> Setup:
    """A fresh config dir (one domain, one user, certs) with free loopback ports."""
    return make_setup(tmp_path)


@pytest.fixture
def chasquid_daemon(chasquid_setup: Setup) -> Iterator[DaemonFactory]:
    """Factory starting chasquid on ``chasquid_setup``; every daemon is stopped afterwards."""
    started: list[Daemon] = []

    def factory(*args: str, **kwargs: Unpack[StartOptions]) -> Daemon:
        d = start(chasquid_setup, args, **kwargs)
        started.append(d)
        return d

    yield factory
    for d in started:
        d.stop()


def require_program(name: str) -> str:
    """The path of a system program; skip (or fail with CHASQUID_REQUIRE_ALL=1) if missing."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed")
    return path
