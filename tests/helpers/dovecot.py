"""A private Dovecot (Debian's dovecot-core, -imapd, -lmtpd) for tests, configured as the docs say.

The configuration is ``etc/dovecot/dovecot.conf`` from this repository, the
one docs/dovecot.md shows, with its paths and account names swapped for the
instance's own (``SUBSTITUTIONS``: each must match, so the example cannot
drift from what runs here) and a few test-only lines appended: its own
base_dir (where every socket lives), state_dir, log file and instance name,
and no IMAP listeners. The system's Dovecot, if any, is never touched.

Everything lives in a short private directory (tests/helpers/instances.py
says why and where); ``tmp_path/<name>`` keeps Dovecot's log after the test.
Mail is stored as ``nobody``.

Usage, in a conftest.py::

    from helpers.dovecot import dovecot_factory  # noqa: F401

    def test_x(dovecot_factory):
        dc = dovecot_factory(users={"dovi@example.com": "pw"})
        dc.lmtp_socket, dc.userdb_socket, dc.client_socket, dc.messages("dovi@example.com")
"""

from __future__ import annotations

import email.parser
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from chasquid.selfsigned import self_signed
from helpers.instances import instance_factory, running_instance
from helpers.mail import wait_for
from helpers.requirements import unavailable

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONF = REPO / "etc" / "dovecot" / "dovecot.conf"
DOC = REPO / "docs" / "dovecot.md"
START_TIMEOUT = 30.0
SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
MAIL_USER = "nobody"
MAIL_GROUP = "nogroup"

#: What in the example configuration is site-specific, and what the test instance uses
#: instead ({root} is the instance's directory).
SUBSTITUTIONS = (
    ("</etc/letsencrypt/live/mail.example.com/", "<{root}/tls/"),
    ("/etc/dovecot/users", "{root}/users"),
    ("/var/mail/vhosts/", "{root}/mail/"),
    ("uid=vmail", f"uid={MAIL_USER}"),
    ("gid=vmail", f"gid={MAIL_GROUP}"),
    ("user = chasquid", "user = root"),
    ("group = chasquid", "group = root"),
)

_TEST_ONLY = """
# --- test instance only ---
base_dir = {root}/run
state_dir = {root}/state
instance_name = {instance}
log_path = {root}/dovecot.log
auth_verbose = yes
# IMAP is configured as in the example but listens nowhere: tests talk LMTP and auth.
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""

# Complete header fields, folded lines included.
_HEADER_FIELDS = re.compile(rb"(?:[!-9;-~]+:[^\n]*\n(?:[ \t][^\n]*\n)*)*")


def dovecot_program() -> str | None:
    """The path of the ``dovecot`` master, or None."""
    return shutil.which("dovecot") or shutil.which("dovecot", path=SBIN_PATH)


def require_dovecot() -> str:
    """The ``dovecot`` command; skip (or fail under CHASQUID_REQUIRE_ALL=1) if it cannot run."""
    path = dovecot_program()
    reason = None
    if path is None:
        reason = (
            "dovecot is not installed (apt-get install dovecot-core dovecot-imapd dovecot-lmtpd)"
        )
    elif not Path("/usr/lib/dovecot/lmtp").exists():
        reason = "Dovecot's LMTP server is not installed (apt-get install dovecot-lmtpd)"
    elif not Path("/usr/lib/dovecot/imap").exists():
        reason = "Dovecot's IMAP server is not installed (apt-get install dovecot-imapd)"
    elif os.geteuid() != 0:
        reason = "a private Dovecot instance needs root to start its master process"
    if reason is not None:
        unavailable(reason)
    assert path is not None
    return path


def instance_config(root: Path, instance: str) -> str:
    """The example configuration adapted to an instance living in ``root``."""
    text = EXAMPLE_CONF.read_text()
    for old, new in SUBSTITUTIONS:
        if old not in text:
            raise AssertionError(f"{EXAMPLE_CONF} no longer contains {old!r}: update SUBSTITUTIONS")
        text = text.replace(old, new.format(root=root))
    return text + _TEST_ONLY.format(root=root, instance=instance)


def doc_block(label: str) -> str:
    """The fenced code block right after ``<!-- tested: <label> -->`` in docs/dovecot.md."""
    lines = DOC.read_text().splitlines(keepends=True)
    marker = f"<!-- tested: {label} -->\n"
    if marker not in lines:
        raise AssertionError(f"{DOC} has no block marked {marker.strip()}")
    start = lines.index(marker) + 1
    assert lines[start].startswith("```"), f"{DOC}: no code block after {marker.strip()}"
    end = lines.index("```\n", start + 1)
    return "".join(lines[start + 1 : end])


def chasquid_conf(dc: Dovecot, label: str, mda_lmtp: str) -> str:
    """A chasquid.conf block of docs/dovecot.md, pointed at this instance and this mda-lmtp.

    The documented sockets are in /run/dovecot, where chasquid finds them by
    itself; this instance's are elsewhere, so their paths are added.
    """
    text = doc_block(f"chasquid.conf with {label}")
    for old, new in (
        ("/run/dovecot/", f"{dc.base_dir}/"),
        ("/usr/local/bin/mda-lmtp", mda_lmtp),
    ):
        text = text.replace(old, new)
    return (
        text
        + f'dovecot_userdb_path: "{dc.userdb_socket}"\n'
        + f'dovecot_client_path: "{dc.client_socket}"\n'
    )


def headers_added(stored: bytes, sent: bytes) -> dict[str, str]:
    """Check that ``stored`` is ``sent``, byte for byte, below the header fields added on
    its way (Dovecot's Return-Path, Delivered-To and Received, chasquid's Received...);
    those fields, the first of each name.

    Dovecot stores messages with LF line ends, so ``sent``'s CRLFs count as LFs.
    """
    expected = sent.replace(b"\r\n", b"\n")
    assert stored.endswith(expected), f"stored message differs from what was sent:\n{stored!r}"
    added = stored[: len(stored) - len(expected)]
    assert _HEADER_FIELDS.fullmatch(added), f"not only header fields on top:\n{added!r}"
    fields: dict[str, str] = {}
    for name, value in email.parser.BytesHeaderParser().parsebytes(added + b"\n").items():
        fields.setdefault(name, str(value))
    return fields


class Dovecot:
    """One private Dovecot: its files, sockets, users, start/stop and delivered mail."""

    def __init__(self, root: Path, users: Mapping[str, str]) -> None:
        self.root = root
        self.users = dict(users)
        self.instance = f"chasquid-test-{root.name}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def config_file(self) -> Path:
        """The dovecot.conf of the instance."""
        return self.root / "dovecot.conf"

    @property
    def base_dir(self) -> Path:
        """Dovecot's base_dir: every socket of the instance is here."""
        return self.root / "run"

    @property
    def userdb_socket(self) -> Path:
        """The auth-chasquid-userdb listener (user existence)."""
        return self.base_dir / "auth-chasquid-userdb"

    @property
    def client_socket(self) -> Path:
        """The auth-chasquid-client listener (password checks)."""
        return self.base_dir / "auth-chasquid-client"

    @property
    def lmtp_socket(self) -> Path:
        """The lmtp-chasquid listener (delivery)."""
        return self.base_dir / "lmtp-chasquid"

    @property
    def users_file(self) -> Path:
        """The passwd-file holding the users."""
        return self.root / "users"

    @property
    def log_file(self) -> Path:
        """Dovecot's log."""
        return self.root / "dovecot.log"

    @property
    def running(self) -> bool:
        """Whether the master process is running."""
        return self._proc is not None and self._proc.poll() is None

    def write_config(self) -> None:
        """The certificate, dovecot.conf, the mail directory and the users file."""
        tls = self.root / "tls"
        tls.mkdir(exist_ok=True)
        pair = self_signed(["mail.example.com"])
        (tls / "fullchain.pem").write_bytes(pair.fullchain_pem)
        (tls / "privkey.pem").write_bytes(pair.privkey_pem)
        (tls / "privkey.pem").chmod(0o600)
        mail = self.root / "mail"
        mail.mkdir(exist_ok=True)
        nobody = pwd.getpwnam(MAIL_USER)
        os.chown(mail, nobody.pw_uid, nobody.pw_gid)
        self.config_file.write_text(instance_config(self.root, self.instance))
        self.write_users()

    def _doveadm(self, *args: str) -> str:
        doveadm = shutil.which("doveadm") or shutil.which("doveadm", path=SBIN_PATH) or "doveadm"
        result = subprocess.run(
            [doveadm, "-c", str(self.config_file), *args],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, f"doveadm {args[0]} failed: {result.stdout}{result.stderr}"
        return result.stdout.strip()

    def write_users(self) -> None:
        """(Re)write the passwd-file from ``users``, hashing as the example says."""
        lines = [
            f"{address}:{self._doveadm('pw', '-s', 'SHA512-CRYPT', '-p', password)}::::::\n"
            for address, password in self.users.items()
        ]
        tmp = self.users_file.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        # Dovecot's auth process runs as the dovecot user.
        tmp.chmod(0o644)
        tmp.rename(self.users_file)

    def add_user(self, address: str, password: str) -> None:
        """Add a user; Dovecot rereads the file when it changes."""
        self.users[address] = password
        self.write_users()

    def start(self) -> None:
        """Start the master in the foreground (our child) and wait for the three sockets."""
        if not self.config_file.exists():
            self.write_config()
        program = require_dovecot()
        out = (self.root / "master.out").open("ab")
        self._proc = subprocess.Popen(
            [program, "-c", str(self.config_file), "-F"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        deadline = time.monotonic() + START_TIMEOUT
        for path in (self.userdb_socket, self.client_socket, self.lmtp_socket):
            while not _accepts(path):
                if self._proc.poll() is not None:
                    raise AssertionError(
                        f"dovecot exited ({self._proc.returncode}):\n{self.diagnostics()}"
                    )
                if time.monotonic() > deadline:
                    raise AssertionError(f"dovecot did not listen on {path}:\n{self.diagnostics()}")
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the master (SIGTERM, SIGKILL after a bound) and wait until it is gone."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def log_text(self) -> str:
        """Dovecot's log so far."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def diagnostics(self) -> str:
        """The master's own output and the log, for assertion messages."""
        try:
            out = (self.root / "master.out").read_text(errors="replace")
        except FileNotFoundError:
            out = ""
        return f"master output:\n{out}\nlog:\n{self.log_text()}"

    def home(self, address: str) -> Path:
        """A user's home (``mail/<domain>/<user>``), which Dovecot creates as the mail user."""
        user, _, domain = address.partition("@")
        return self.root / "mail" / domain / user

    def break_mailbox(self, address: str) -> None:
        """Put a file where the user's home should be: deliveries to it fail with a 4xx."""
        home = self.home(address)
        nobody = pwd.getpwnam(MAIL_USER)
        if not home.parent.exists():
            home.parent.mkdir()
            os.chown(home.parent, nobody.pw_uid, nobody.pw_gid)
        home.write_text("not a directory\n")

    def repair_mailbox(self, address: str) -> None:
        """Undo break_mailbox."""
        self.home(address).unlink()

    def maildir(self, address: str) -> Path:
        """The Maildir of a user (``<home>/Maildir``)."""
        return self.home(address) / "Maildir"

    def messages(self, address: str) -> list[bytes]:
        """The raw files delivered to a user's INBOX (new/ and cur/), oldest first."""
        files: list[Path] = []
        for sub in ("new", "cur"):
            d = self.maildir(address) / sub
            if d.is_dir():
                files.extend(p for p in d.iterdir() if p.is_file())
        files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [p.read_bytes() for p in files]

    def wait_for_messages(self, address: str, count: int = 1, timeout: float = 30.0) -> list[bytes]:
        """Wait until a user's INBOX holds ``count`` messages; those messages."""
        return wait_for(
            lambda: self.messages(address),
            lambda msgs: len(msgs) >= count,
            timeout=timeout,
            failure=lambda msgs: (
                f"{len(msgs)} of {count} messages for {address} after {timeout}s\n"
                f"{self.diagnostics()}"
            ),
        )


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


@contextmanager
def running_dovecot(
    tmp_path: Path, *, users: Mapping[str, str], name: str = "dovecot"
) -> Iterator[Dovecot]:
    """A started private Dovecot; stopped and removed when the context ends."""
    require_dovecot()
    with running_instance(tmp_path, name, "dc-", lambda root: Dovecot(root, users)) as instance:
        yield instance


@pytest.fixture
def dovecot_factory(tmp_path: Path) -> Iterator[Callable[..., Dovecot]]:
    """Factory starting private Dovecot instances (kwargs of ``running_dovecot``)."""
    yield from instance_factory(tmp_path, running_dovecot, "dovecot")
