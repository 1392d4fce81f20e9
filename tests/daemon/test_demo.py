"""`python -m chasquid.daemon.demo DIR`: the set-up `make run` starts the daemon on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from chasquid.confdir import config
from chasquid.confdir.domains import load_domains
from chasquid.confdir.userdb import UserDB


def demo(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chasquid.daemon.demo", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def password_of(output: str) -> str:
    m = re.search(r"Password: (\S+)", output)
    assert m, output
    return m.group(1)


def test_demo_is_created_once_and_prints_the_password(tmp_path: Path) -> None:
    root = tmp_path / ".demo"
    first = demo(root)
    password = password_of(first.stdout)
    assert "demo@example.test" in first.stdout
    assert f"Password: {password}" in (root / "README.txt").read_text()
    conf = root / "config" / "chasquid.conf"
    conf.write_text(conf.read_text() + "# operator's edit\n")
    second = demo(root)
    assert password_of(second.stdout) == password
    assert conf.read_text().endswith("# operator's edit\n")
    assert [p.name for p in tmp_path.iterdir()] == [".demo"]  # no staging left over


def test_demo_config_loads_with_the_expected_settings(tmp_path: Path) -> None:
    root = tmp_path / ".demo"
    password = password_of(demo(root).stdout)
    cdir = root / "config"
    cfg = config.load(cdir)
    assert cfg.hostname == "localhost"
    assert cfg.smtp_address == ("127.0.0.1:2525",)
    assert cfg.submission_address == ("127.0.0.1:2587",)
    assert cfg.submission_over_tls_address == ("127.0.0.1:2465",)
    assert cfg.monitoring_address == "127.0.0.1:1099"
    assert cfg.mail_log_path == "<stdout>"
    assert Path(cfg.data_dir).is_relative_to(root)
    domains = load_domains(cdir, cfg)
    assert "example.test" in domains.local
    db = UserDB.load(cdir / "domains" / "example.test" / "users")
    assert db.authenticate("demo", password)
    assert not db.authenticate("demo", password + "x")
    cert = x509.load_pem_x509_certificate(
        (cdir / "certs" / "localhost" / "fullchain.pem").read_bytes()
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert (cdir / "certs" / "localhost" / "privkey.pem").stat().st_mode & 0o077 == 0


def test_demo_mda_delivers_into_maildir(tmp_path: Path) -> None:
    root = tmp_path / ".demo"
    demo(root)
    cfg = config.load(root / "config")
    args = [a.replace("%to%", "demo@example.test") for a in cfg.mail_delivery_agent_args]
    message = b"Subject: hi\r\n\r\nbody\r\n"
    subprocess.run([cfg.mail_delivery_agent_bin, *args], input=message, check=True, timeout=30)
    new = list((root / "Maildir" / "new").iterdir())
    assert len(new) == 1
    assert new[0].read_bytes() == b"Delivered-To: demo@example.test\nSubject: hi\n\nbody\n"
    assert list((root / "Maildir" / "tmp").iterdir()) == []
