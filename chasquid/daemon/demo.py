"""A ready-to-run demo setup for `make run`: `python -m chasquid.daemon.demo .demo`.

Creates, only if it does not exist yet, a directory holding a config dir
(hostname localhost, domain example.test, one user with a random password, a
self-signed certificate, listeners on 127.0.0.1), a data dir, and a Maildir
fed by a small MDA script. The user's password is printed on every run.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from chasquid.confdir.layout import ConfigDir
from chasquid.confdir.userdb import UserDB
from chasquid.selfsigned import self_signed

HOSTNAME = "localhost"
DOMAIN = "example.test"
USER = "demo"
SMTP_ADDRESS = "127.0.0.1:2525"
SUBMISSION_ADDRESS = "127.0.0.1:2587"
SUBMISSION_TLS_ADDRESS = "127.0.0.1:2465"
MONITORING_ADDRESS = "127.0.0.1:1099"

_PASSWORD_LINE = re.compile(r"^Password: (\S+)$", re.MULTILINE)

# The MDA: the message arrives on stdin; it is written to Maildir/tmp and
# renamed into new/, the Maildir way of never showing a partial message.
MDA_SCRIPT = '''\
"""Demo MDA: deliver stdin into the Maildir given as first argument."""

import os
import socket
import sys
import time


def main() -> int:
    maildir, recipient = sys.argv[1], sys.argv[2]
    data = sys.stdin.buffer.read().replace(b"\\r\\n", b"\\n")
    name = "%d.P%d_%s.%s" % (time.time(), os.getpid(), os.urandom(4).hex(), socket.gethostname())
    tmp = os.path.join(maildir, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(b"Delivered-To: " + recipient.encode() + b"\\n" + data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(maildir, "new", name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


@dataclass(frozen=True)
class Demo:
    """Paths of a demo directory."""

    root: Path

    @property
    def config_dir(self) -> ConfigDir:
        """The config dir the daemon is started with."""
        return ConfigDir(self.root / "config")

    @property
    def data_dir(self) -> Path:
        """The daemon's data dir."""
        return self.root / "data"

    @property
    def maildir(self) -> Path:
        """Where local mail is delivered."""
        return self.root / "Maildir"

    @property
    def mda(self) -> Path:
        """The MDA script."""
        return self.root / "mda.py"

    @property
    def readme(self) -> Path:
        """Instructions, including the password."""
        return self.root / "README.txt"


def _q(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def render_conf(final: Demo) -> str:
    """chasquid.conf of the demo; paths are absolute so chasquid-util works from anywhere."""
    return "".join(
        f"{key}: {_q(value)}\n"
        for key, value in (
            ("hostname", HOSTNAME),
            ("smtp_address", SMTP_ADDRESS),
            ("submission_address", SUBMISSION_ADDRESS),
            ("submission_over_tls_address", SUBMISSION_TLS_ADDRESS),
            ("mail_delivery_agent_bin", str(final.mda)),
            ("mail_delivery_agent_args", str(final.maildir)),
            ("mail_delivery_agent_args", "%to%"),
            ("data_dir", str(final.data_dir)),
            ("mail_log_path", "<stdout>"),
            ("monitoring_address", MONITORING_ADDRESS),
        )
    )


def render_readme(final: Demo, password: str) -> str:
    """README.txt: how to use the demo."""
    return f"""chasquid demo setup, made by `python -m chasquid.daemon.demo`;
delete it to start again.

User: {USER}@{DOMAIN}
Password: {password}

Listeners: SMTP {SMTP_ADDRESS}, submission {SUBMISSION_ADDRESS} (STARTTLS),
submission over TLS {SUBMISSION_TLS_ADDRESS}.
The certificate is self-signed for {HOSTNAME}: tell your client not to verify it.
Mail for {DOMAIN} is delivered into {final.maildir}/new/
Monitoring (queue, traces, metrics): http://{MONITORING_ADDRESS}/

Config dir: {final.config_dir.root}
Try: chasquid-util -C={final.config_dir.root} user-list
"""


def _build(tmp: Demo, final: Demo, password: str) -> None:
    cdir = tmp.config_dir
    domain_dir = cdir.domain_dir(DOMAIN)
    cert_dir = cdir.certs / HOSTNAME
    for d in (cdir.root, domain_dir, cert_dir, cdir.hooks):
        d.mkdir(parents=True)
    for sub in ("tmp", "new", "cur"):
        (tmp.maildir / sub).mkdir(parents=True)
    cdir.conf.write_text(render_conf(final), encoding="utf-8")
    pair = self_signed([HOSTNAME, "127.0.0.1"])
    (cert_dir / "fullchain.pem").write_bytes(pair.fullchain_pem)
    key = cert_dir / "privkey.pem"
    key.touch(mode=0o600)
    key.write_bytes(pair.privkey_pem)
    UserDB.load(cdir.users_file(DOMAIN)).with_user(USER, password).save(cdir.users_file(DOMAIN))
    tmp.mda.write_text(f"#!{sys.executable}\n{MDA_SCRIPT}", encoding="utf-8")
    tmp.mda.chmod(0o755)
    tmp.readme.write_text(render_readme(final, password), encoding="utf-8")


def create(root: Path) -> tuple[str, bool]:
    """Create the demo at root unless it exists; return (password, created)."""
    final = Demo(root.absolute())
    if final.root.exists():
        match = _PASSWORD_LINE.search(final.readme.read_text(encoding="utf-8"))
        if match is None:
            raise SystemExit(f"{final.readme} has no 'Password:' line; delete {root} to reset")
        return match.group(1), False
    final.root.parent.mkdir(parents=True, exist_ok=True)
    # Built aside and renamed into place, so an interrupted run leaves no half demo.
    staging = Path(tempfile.mkdtemp(prefix=f".{final.root.name}.", dir=final.root.parent))
    try:
        password = secrets.token_urlsafe(12)
        _build(Demo(staging), final, password)
        os.rename(staging, final.root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return password, True


def main(argv: list[str]) -> int:
    """`python -m chasquid.daemon.demo DIR`."""
    if len(argv) != 1:
        print("Usage: python -m chasquid.daemon.demo DIR", file=sys.stderr)
        return 2
    password, created = create(Path(argv[0]))
    demo = Demo(Path(argv[0]).absolute())
    print(f"{'Created' if created else 'Using'} demo setup in {demo.root} (see {demo.readme})")
    print(f"User: {USER}@{DOMAIN}  Password: {password}")
    print(
        f"SMTP {SMTP_ADDRESS}, submission {SUBMISSION_ADDRESS}, "
        f"submission+TLS {SUBMISSION_TLS_ADDRESS}"
    )
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
