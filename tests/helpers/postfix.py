"""Run a private Postfix instance on loopback as a real third-party peer for interop tests.

Every instance has its own config dir (``main.cf``, ``master.cf``), queue,
data dir, Maildir tree (virtual delivery, so no Unix users are needed) and
log file (``maillog_file`` through the ``postlog`` service), and one SMTP
listener on ``127.0.0.5:<free port>``. Several instances can run at once.

Postfix's daemons drop privileges to the ``postfix`` user, which cannot enter
pytest's ``tmp_path`` (its root is mode 0700). The instance therefore lives in
a private directory under the system temp dir (mode 0755, removed at stop) and
``tmp_path/postfix`` is a symlink to it, so a failed test still shows where
to look. Postfix's master must start as root: without root, or without
Postfix installed, the fixture skips (fails under ``CHASQUID_REQUIRE_ALL=1``).

Usage, in a conftest.py::

    from helpers.postfix import postfix_factory  # noqa: F401

    def test_x(postfix_factory):
        pf = postfix_factory(relays={"ours.test": "[127.0.0.1]:2525"})
        ...
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

import pytest
import trustme

from helpers.instances import instance_factory, running_instance
from helpers.mail import parse_message, wait_for
from helpers.ports import free_port
from helpers.requirements import unavailable

DOMAIN = "postfix.test"
HOSTNAME = "mx.postfix.test"
ADDRESS = "127.0.0.5"
USERS = ("alice", "bob")
START_TIMEOUT = 30.0
SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# The services a small Postfix needs, none chrooted (the tests' paths are outside any chroot).
_MASTER_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def postfix_program(name: str = "postfix") -> str | None:
    """The path of a Postfix program (also looked for in /usr/sbin), or None."""
    return shutil.which(name) or shutil.which(name, path=SBIN_PATH)


def require_postfix() -> str:
    """The ``postfix`` command; skip (or fail under CHASQUID_REQUIRE_ALL=1) if it cannot run."""
    path = postfix_program()
    reason = None
    if path is None:
        reason = "postfix is not installed (apt-get install postfix)"
    elif os.geteuid() != 0:
        reason = "a private Postfix instance needs root to start its master process"
    else:
        try:
            pwd.getpwnam("postfix")
        except KeyError:
            reason = "the 'postfix' user is missing (Postfix's Debian package creates it)"
    if reason is not None:
        unavailable(reason)
    assert path is not None
    return path


def _inline_map(entries: Mapping[str, str]) -> str:
    """A Postfix ``inline:`` table (no postmap needed); empty when there are no entries."""
    if not entries:
        return ""
    return "inline:{" + ", ".join(f"{{{k} = {v}}}" for k, v in entries.items()) + "}"


class Postfix:
    """One private Postfix instance: its files, its listener, start/stop and mail access."""

    def __init__(
        self,
        root: Path,
        *,
        port: int,
        ca: trustme.CA,
        relays: Mapping[str, str],
        users: Sequence[str],
        smtp_tls_security_level: str,
        extra_main: Sequence[str],
    ) -> None:
        self.root = root
        self.host = ADDRESS
        self.port = port
        self.domain = DOMAIN
        self.hostname = HOSTNAME
        self.ca = ca
        self.relays = dict(relays)
        self.users = tuple(users)
        self.smtp_tls_security_level = smtp_tls_security_level
        self.extra_main = tuple(extra_main)
        self._master_pid: int | None = None

    @property
    def config_dir(self) -> Path:
        """The directory given to ``postfix -c``."""
        return self.root / "conf"

    @property
    def queue_dir(self) -> Path:
        """Postfix's queue_directory."""
        return self.root / "queue"

    @property
    def data_dir(self) -> Path:
        """Postfix's data_directory."""
        return self.root / "data"

    @property
    def mail_base(self) -> Path:
        """virtual_mailbox_base: Maildirs are ``<base>/<domain>/<user>/``."""
        return self.root / "mail"

    @property
    def log_file(self) -> Path:
        """Postfix's maillog_file."""
        return self.root / "maillog"

    @property
    def ca_file(self) -> Path:
        """PEM of the CA that signed this instance's certificate (and that its client trusts)."""
        return self.root / "ca.pem"

    def address(self, user: str = "alice") -> str:
        """The mail address of a virtual user of this instance."""
        return f"{user}@{self.domain}"

    def write_config(self) -> None:
        """Write main.cf, master.cf, the certificate and the directories."""
        postfix_user = pwd.getpwnam("postfix")
        for d in (self.config_dir, self.queue_dir, self.data_dir, self.mail_base):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.data_dir, self.mail_base):
            os.chown(d, postfix_user.pw_uid, postfix_user.pw_gid)
        leaf = self.ca.issue_cert(HOSTNAME, DOMAIN, ADDRESS)
        chain = self.config_dir / "chain.pem"
        # One file, key first, then the certificate chain: smtpd_tls_chain_files' format.
        chain.write_bytes(
            leaf.private_key_pem.bytes() + b"".join(b.bytes() for b in leaf.cert_chain_pems)
        )
        chain.chmod(0o600)
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        mailboxes = {self.address(u): f"{DOMAIN}/{u}/" for u in self.users}
        transports = {d: f"smtp:{nexthop}" for d, nexthop in self.relays.items()}
        main = [
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue_dir}",
            f"data_directory = {self.data_dir}",
            f"myhostname = {HOSTNAME}",
            f"mydomain = {DOMAIN}",
            "myorigin = $myhostname",
            # Mail for the test domain goes to virtual Maildirs; nothing is local.
            "mydestination =",
            "local_recipient_maps =",
            "alias_maps =",
            "alias_database =",
            "inet_interfaces = loopback-only",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            f"maillog_file = {self.log_file}",
            f"maillog_file_prefixes = {self.root}",
            f"virtual_mailbox_domains = {DOMAIN}",
            f"virtual_mailbox_maps = {_inline_map(mailboxes)}",
            f"virtual_mailbox_base = {self.mail_base}",
            f"virtual_uid_maps = static:{postfix_user.pw_uid}",
            f"virtual_gid_maps = static:{postfix_user.pw_gid}",
            f"transport_maps = {_inline_map(transports)}",
            # No DNS on the test machine: no reverse look-ups, next hops are [ip]:port.
            "smtpd_peername_lookup = no",
            "smtp_dns_support_level = disabled",
            "smtp_host_lookup = native",
            "smtpd_banner = $myhostname ESMTP Postfix",
            f"smtpd_tls_chain_files = {chain}",
            "smtpd_tls_security_level = may",
            "smtpd_tls_received_header = yes",
            "smtpd_tls_loglevel = 1",
            f"smtp_tls_security_level = {self.smtp_tls_security_level}",
            f"smtp_tls_CAfile = {self.ca_file}",
            "smtp_tls_loglevel = 1",
            # Retry quickly: a test waits seconds, not Postfix's default minutes.
            "queue_run_delay = 1s",
            "minimal_backoff_time = 1s",
            "maximal_backoff_time = 2s",
            "smtp_connect_timeout = 5s",
            "delay_warning_time = 0",
            *self.extra_main,
        ]
        (self.config_dir / "main.cf").write_text("\n".join(main) + "\n")
        master = f"{ADDRESS}:{self.port} inet n - n - - smtpd\n" + _MASTER_SERVICES
        (self.config_dir / "master.cf").write_text(master)

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env["PATH"] = env.get("PATH", "") + ":" + SBIN_PATH
        return subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``postfix -c CONFIG_DIR ARGS``."""
        return self._run(postfix_program() or "postfix", "-c", str(self.config_dir), *args)

    def start(self) -> None:
        """``postfix start`` and wait until the SMTP listener accepts connections."""
        self.write_config()
        result = self.postfix("start")
        if result.returncode != 0:
            # The postfix command only writes errors to a terminal or syslog; `check` explains.
            check = self.postfix("check")
            raise AssertionError(
                f"postfix start failed ({result.returncode}):\n{result.stdout}{result.stderr}"
                f"\npostfix check:\n{check.stdout}{check.stderr}\nlog:\n{self.log_text()}"
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"postfix did not listen on {self.host}:{self.port}:\n{self.log_text()}"
                    ) from None
                time.sleep(0.1)
        self._master_pid = self._read_master_pid()

    def _read_master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """``postfix stop``; wait for the master to exit (SIGKILL after a bound)."""
        if self._master_pid is None:
            return
        self.postfix("stop")
        pid = self._master_pid
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        self._master_pid = None

    def flush(self) -> None:
        """``postqueue -f``: attempt delivery of every queued message now."""
        postqueue = postfix_program("postqueue") or "postqueue"
        result = self._run(postqueue, "-c", str(self.config_dir), "-f")
        assert result.returncode == 0, f"postqueue -f failed: {result.stdout}{result.stderr}"

    def queue_listing(self) -> str:
        """``postqueue -p``: the queue as Postfix shows it."""
        postqueue = postfix_program("postqueue") or "postqueue"
        result = self._run(postqueue, "-c", str(self.config_dir), "-p")
        return result.stdout + result.stderr

    def log_text(self) -> str:
        """Postfix's log so far."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 30.0, count: int = 1) -> str:
        """Wait until ``pattern`` (a regex) occurs ``count`` times in the log; the log text."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if len(re.findall(pattern, text, re.M)) >= count:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {pattern!r} in Postfix's log:\n{text}")
            time.sleep(0.1)

    def maildir(self, user: str = "alice") -> Path:
        """The Maildir of a virtual user."""
        return self.mail_base / DOMAIN / user

    def messages(self, user: str = "alice") -> list[EmailMessage]:
        """The messages delivered to a user's Maildir (new/ and cur/), oldest first."""
        files: list[Path] = []
        for sub in ("new", "cur"):
            d = self.maildir(user) / sub
            if d.is_dir():
                files.extend(p for p in d.iterdir() if p.is_file())
        files.sort(key=lambda p: p.stat().st_mtime_ns)
        return [parse_message(p.read_bytes()) for p in files]

    def wait_for_messages(
        self, user: str = "alice", count: int = 1, timeout: float = 30.0
    ) -> list[EmailMessage]:
        """Wait until a user's Maildir holds ``count`` messages; those messages."""
        return wait_for(
            lambda: self.messages(user),
            lambda msgs: len(msgs) >= count,
            timeout=timeout,
            interval=0.1,
            failure=lambda msgs: (
                f"{len(msgs)} of {count} messages for {user} in Postfix's Maildir after "
                f"{timeout}s\nqueue:\n{self.queue_listing()}\nlog:\n{self.log_text()}"
            ),
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def running_postfix(
    tmp_path: Path,
    *,
    relays: Mapping[str, str] | None = None,
    ca: trustme.CA | None = None,
    users: Sequence[str] = USERS,
    smtp_tls_security_level: str = "encrypt",
    extra_main: Sequence[str] = (),
    name: str = "postfix",
) -> Iterator[Postfix]:
    """A started private Postfix; stopped and removed when the context ends.

    ``relays`` maps a domain to a next hop (``[127.0.0.1]:PORT``) its mail is
    sent to; ``ca`` signs the instance's certificate and is the CA its SMTP
    client trusts (pass the peer's CA to have both sides verify each other).
    """
    require_postfix()

    def make(root: Path) -> Postfix:
        return Postfix(
            root,
            port=free_port(ADDRESS),
            ca=ca or trustme.CA(),
            relays=relays or {},
            users=users,
            smtp_tls_security_level=smtp_tls_security_level,
            extra_main=extra_main,
        )

    with running_instance(tmp_path, name, "chasquid-postfix-", make) as instance:
        yield instance


@pytest.fixture
def postfix_factory(tmp_path: Path) -> Iterator[Callable[..., Postfix]]:
    """Factory starting private Postfix instances (kwargs of ``running_postfix``)."""
    yield from instance_factory(tmp_path, running_postfix, "postfix")
