"""README's "Quickstart on a real server", followed literally, delivers mail.

The commands are read from the README's code blocks and run in order, as
root, on a terminal (so `init` and `user-add` ask their questions and get
typed answers), with these changes only:

- paths under /etc, /var/lib and /var/log move into a temporary root, and
  /usr/local/bin is this checkout's venv (the install step itself is tested
  by test_install.py);
- `certbot` is played by a test CA writing certbot's live/ and archive/
  layout, with certbot's modes;
- `systemctl enable --now chasquid` starts the unit's ExecStart the way
  systemd would: as its User= and Group=, with its StateDirectory= and
  LogsDirectory= made for them, the listening ports of chasquid.conf moved
  to free loopback ones (and the mail log on stderr where this machine has
  no syslog socket);
- swaks talks to that submission port, and the message's recipient domain
  is another chasquid on loopback, found through a test DNS server.
"""

from __future__ import annotations

import configparser
import grp
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from helpers.daemon import require_program
from helpers.mailnet import MailNet, mail_net
from helpers.ports import free_port
from helpers.requirements import unavailable
from helpers.terminal import on_terminal

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PASSWORD = "quick-start-pw"
#: The recipient domain of the README's last step, served by another daemon.
ELSEWHERE = "example.net"


def quickstart_blocks(readme: str) -> list[list[str]]:
    """The command lines of each code block of the quickstart section, in order."""
    section = readme.split("## Quickstart on a real server", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^[ \t]*```sh\n(.*?)^[ \t]*```", section, re.M | re.S)
    return [
        [line.strip() for line in b.replace("\\\n", " ").splitlines() if line.strip()]
        for b in blocks
    ]


def answer(last_line: str) -> str | None:
    """What a person types at the quickstart's prompts: the password, else the default."""
    if last_line.endswith("assword: "):
        return PASSWORD
    if re.search(r"\[[^\]]*\]: $", last_line):
        return ""  # accept the default shown in brackets
    return None


@dataclass
class Server:
    """The temporary root playing the mail server, and what runs in it."""

    root: Path
    net: MailNet
    ca: trustme.CA
    ports: dict[str, int] = field(default_factory=dict)
    daemon: subprocess.Popen[bytes] | None = None
    transcript: list[str] = field(default_factory=list)

    @property
    def journal(self) -> Path:
        """Where the daemon's stderr goes (what journalctl would show)."""
        return self.root / "journal.log"

    def path(self, text: str) -> str:
        """A command line or file with the system paths moved into the root."""
        text = re.sub(r"(?<![\w./-])/(etc|var/lib|var/log)/", rf"{self.root}/\1/", text)
        text = re.sub(r"(?<![\w./-])/usr/local/bin/", f"{VENV_BIN}/", text)
        return text.replace("mx.example.com:587", f"127.0.0.1:{self.ports['submission']}")

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
        env.update(self.net.env())
        return env

    def run(self, line: str) -> None:
        """Run one quickstart command line."""
        argv = shlex.split(line)
        if argv[0] == "certbot":
            self.certbot(argv)
        elif argv[:2] == ["systemctl", "daemon-reload"]:
            pass
        elif argv[:3] == ["systemctl", "enable", "--now"]:
            assert argv[3:] == ["chasquid"], line
            self.start_unit(self.root / "etc" / "systemd" / "system" / "chasquid.service")
        else:
            status, out = on_terminal(
                ["bash", "-c", self.path(line)], answer, env=self.env(), cwd=REPO, timeout=60
            )
            self.transcript.append(f"$ {line}\n{out}")
            assert status == 0, "\n".join(self.transcript)

    def certbot(self, argv: list[str]) -> None:
        """`certbot certonly --standalone -d NAME`: certbot's layout and modes, a test CA's cert."""
        name = argv[argv.index("-d") + 1]
        le = self.root / "etc" / "letsencrypt"
        archive, live = le / "archive" / name, le / "live" / name
        archive.mkdir(parents=True)
        live.mkdir(parents=True)
        for d in (le / "archive", le / "live", archive, live):
            d.chmod(0o700)
        leaf = self.ca.issue_cert(name)
        files = {
            "cert": leaf.cert_chain_pems[0].bytes(),
            "chain": self.ca.cert_pem.bytes(),
            "fullchain": b"".join(b.bytes() for b in leaf.cert_chain_pems),
            "privkey": leaf.private_key_pem.bytes(),
        }
        for kind, data in files.items():
            target = archive / f"{kind}1.pem"
            target.write_bytes(data)
            target.chmod(0o600 if kind == "privkey" else 0o644)
            (live / f"{kind}.pem").symlink_to(f"../../archive/{name}/{kind}1.pem")

    def adapt_conf(self) -> None:
        """Free loopback ports instead of 25, 587 and 465; the data dir in the root.

        A real server has a syslog socket (journald's): where this machine has
        none, the mail log goes to the journal (stderr) instead.
        """
        conf = self.root / "etc" / "chasquid" / "chasquid.conf"
        text = self.path(conf.read_text())
        for port, mode in ((25, "smtp"), (587, "submission"), (465, "submission_tls")):
            text = text.replace(f'":{port}"', f'"127.0.0.1:{self.ports[mode]}"')
        if not Path("/dev/log").exists():
            text += 'mail_log_path: "<stderr>"\n'
        conf.write_text(text)

    def start_unit(self, unit_file: Path) -> None:
        """Start the service as systemd would (the parts of it a daemon notices)."""
        unit = configparser.ConfigParser(interpolation=None, strict=False)
        unit.read_string(unit_file.read_text())
        service = unit["Service"]
        user, group = service.get("User", "root"), service.get("Group", "root")
        uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
        for key, base in (("StateDirectory", "var/lib"), ("LogsDirectory", "var/log")):
            if key in service:
                d = self.root / base / service[key]
                d.mkdir(parents=True, exist_ok=True)
                os.chown(d, uid, gid)
                d.chmod(int(service.get(f"{key}Mode", "0755"), 8))
        self.adapt_conf()
        argv = shlex.split(self.path(service["ExecStart"]))
        as_user = runs_as(user, group)
        if as_user:
            argv = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", *argv]
        with self.journal.open("wb") as journal:
            self.daemon = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=journal, stderr=journal, env=self.env()
            )
        deadline = time.monotonic() + 30
        while self.journal.read_text().count("Server listening on") < 3:
            assert self.daemon.poll() is None, self.journal.read_text()
            assert time.monotonic() < deadline, self.journal.read_text()
            time.sleep(0.1)
        if as_user:
            assert Path(f"/proc/{self.daemon.pid}").stat().st_uid == uid


def runs_as(user: str, group: str) -> bool:
    """Whether the daemon can run as the unit's account here (root, and the venv readable)."""
    if shutil.which("setpriv") is None:
        return False
    probe = subprocess.run(
        [
            "setpriv",
            f"--reuid={user}",
            f"--regid={group}",
            "--init-groups",
            sys.executable,
            "-c",
            "",
        ],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """An empty root with the directories a Debian system has, and a network around it."""
    if os.geteuid() != 0:
        unavailable("the quickstart runs as root (it chowns to the mail account)")
    # Not under tmp_path: the mail account must be able to reach the config dir.
    root = Path(tempfile.mkdtemp(prefix="chasquid-quickstart-"))
    root.chmod(0o755)
    for d in ("etc/systemd/system", "var/lib", "var/log"):
        (root / d).mkdir(parents=True)
    with mail_net(tmp_path / "net") as net:
        s = Server(root, net, net.ca)
        s.ports = {m: free_port() for m in ("smtp", "submission", "submission_tls")}
        try:
            yield s
        finally:
            if s.daemon is not None:
                s.daemon.terminate()
                s.daemon.wait(45)
            shutil.rmtree(root)


def test_readme_quickstart_delivers_mail(server: Server) -> None:
    require_program("swaks")
    net = server.net
    peer = net.add_peer("elsewhere", ELSEWHERE, "127.0.0.2")
    peer.setup.add_user("someone", "pw")
    net.start(peer)

    install, *steps = quickstart_blocks((REPO / "README.md").read_text())
    assert "install" in " ".join(install)
    for block in steps:
        for line in block:
            server.run(line)

    assert server.daemon is not None, "the quickstart never started the daemon"
    # The README's last step sent a message to someone@example.net; it arrives there.
    assert "someone@" + ELSEWHERE in server.transcript[-1]
    peer.wait_mail(user="someone")
    [message] = peer.mailbox("someone")
    assert message["From"] == "you@example.com"
    assert "by mx.example.com" in str(message.get_all("Received"))
    conf = (server.root / "etc" / "chasquid" / "chasquid.conf").read_text()
    assert 'hostname: "mx.example.com"' in conf
