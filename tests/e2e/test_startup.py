"""Start-up of the real daemon: its log lines and its fatal errors."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from helpers.daemon import DaemonFactory, Setup, messages, run_to_exit


def test_startup_log_lines(chasquid_setup: Setup, chasquid_daemon: DaemonFactory) -> None:
    s = chasquid_setup
    d = chasquid_daemon()
    log = d.log_text()
    lines = messages(log)
    expected_in_order = [
        r"chasquid starting \(version \S+\)",
        "Configuration:",
        '  Hostname: "testserver"',
        "  Max data size \\(MB\\): 50",
        f'  SMTP Addresses: \\["127.0.0.1:{s.smtp_port}"\\]',
        f'  Submission Addresses: \\["127.0.0.1:{s.submission_port}"\\]',
        f'  Submission\\+TLS Addresses: \\["127.0.0.1:{s.submission_tls_port}"\\]',
        '  Monitoring address: ""',
        f'  MDA: "{re.escape(str(s.mda))}" \\["-f" "%from%" "-d" "%to_user%"\\]',
        f'  Data directory: "{re.escape(str(s.data_dir))}"',
        '  Suffix separators: "\\+"',
        '  Drop characters: "\\."',
        f'  Mail log: "{re.escape(str(s.mail_log))}"',
        '  Dovecot auth: false \\("", ""\\)',
        "  HAProxy incoming: false",
        "  Max queue items: 200",
        "  Give up send after: 20h0m0s",
        "Loading certificates:",
        "  testserver",
        "Loading domains:",
        r"  testserver \(1 users, 0 aliases, 0 DKIM keys\)",
        f"Server listening on 127.0.0.1:{s.smtp_port} \\(SMTP\\)",
        f"Server listening on 127.0.0.1:{s.submission_port} \\(submission\\)",
        f"Server listening on 127.0.0.1:{s.submission_tls_port} \\(submission\\+TLS\\)",
    ]
    pos = 0
    for pattern in expected_in_order:
        for i in range(pos, len(lines)):
            if re.fullmatch(pattern, lines[i]):
                pos = i + 1
                break
        else:
            raise AssertionError(f"{pattern!r} not found (in order) in:\n{log}")
    # Every line has the level marker and a location column.
    assert all(re.match(r"^[☠E_.] \S", line) for line in log.splitlines()), log
    maillog = d.mail_log_text()
    for port in (s.smtp_port, s.submission_port, s.submission_tls_port):
        assert re.search(rf"^\S+ \S+ daemon listening on 127\.0\.0\.1:{port}$", maillog, re.M)


def _fatal_line(log: str) -> str:
    fatal = messages(log, "☠")
    assert len(fatal) == 1, log
    return fatal[0]


def test_missing_config_dir(chasquid_setup: Setup, tmp_path: Path) -> None:
    status, log = run_to_exit(chasquid_setup, [f"--config_dir={tmp_path}/nonono"])
    assert status == 1
    assert _fatal_line(log).startswith(
        f'Error loading config: failed to read config at "{tmp_path}/nonono/chasquid.conf"'
    )


def test_bad_config_names_file_line_and_key(chasquid_setup: Setup) -> None:
    chasquid_setup.extra_conf.append("max_data_size_mb: lots")
    chasquid_setup.write_conf()
    status, log = run_to_exit(chasquid_setup)
    assert status == 1
    line = _fatal_line(log)
    assert line.startswith("Error loading config: parsing config: ")
    assert "chasquid.conf" in line
    assert "max_data_size_mb" in line
    assert "chasquid.conf:8:" in line, "the line number of the bad key"


def test_no_certificates(chasquid_setup: Setup) -> None:
    certs = chasquid_setup.config_dir / "certs"
    for f in (certs / "testserver").iterdir():
        f.unlink()
    status, log = run_to_exit(chasquid_setup)
    assert status == 1
    assert (
        "    skipping: stat certs/testserver/fullchain.pem: no such file or directory"
        in messages(log, "_")
    )
    assert "No SSL/TLS certificates found" in messages(log, "E")
    assert _fatal_line(log) == "At least one valid certificate is needed"


@pytest.mark.parametrize("subdir", ["certs", "domains"])
def test_empty_config_subdir(chasquid_setup: Setup, subdir: str) -> None:
    (chasquid_setup.config_dir / subdir / "testserver").rename(chasquid_setup.root / "moved")
    status, log = run_to_exit(chasquid_setup)
    assert status == 1
    assert _fatal_line(log) == f'No entries found in "{subdir}/"'


def test_broken_users_file_at_startup(chasquid_setup: Setup) -> None:
    chasquid_setup.users_file().write_text("users:\n  - [broken\n")
    status, log = run_to_exit(chasquid_setup)
    assert status == 1
    line = _fatal_line(log)
    assert line.startswith("  testserver: users file error: "), line


def test_address_in_use(chasquid_setup: Setup) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", chasquid_setup.submission_port))
        busy.listen()
        status, log = run_to_exit(chasquid_setup)
    assert status == 1
    assert _fatal_line(log) == (
        f"Error listening: listen tcp 127.0.0.1:{chasquid_setup.submission_port}: "
        "bind: address already in use"
    )


def test_empty_listening_address(chasquid_setup: Setup) -> None:
    chasquid_setup.extra_conf.append('submission_address: ""')
    chasquid_setup.write_conf()
    # The empty value is an explicit list entry, replacing the address above it.
    conf = chasquid_setup.config_dir / "chasquid.conf"
    conf.write_text(
        "\n".join(
            line for line in conf.read_text().splitlines() if 'submission_address: "127' not in line
        )
    )
    status, log = run_to_exit(chasquid_setup)
    assert status == 1
    assert "Invalid empty listening address for submission" in messages(log, "E")
    assert _fatal_line(log) == "If you want to disable submission, remove it from the config"


def test_nothing_to_listen_on(chasquid_setup: Setup) -> None:
    conf = chasquid_setup.config_dir / "chasquid.conf"
    conf.write_text(
        "\n".join(line for line in conf.read_text().splitlines() if "_address" not in line)
    )
    status, log = run_to_exit(chasquid_setup)
    assert status == 1
    assert "Warning: No SMTP addresses/listeners" in log
    assert "If using systemd, check that you named the sockets" in log
    assert _fatal_line(log) == "No address to listen on"


def test_bad_mail_log_path(chasquid_setup: Setup) -> None:
    chasquid_setup.extra_conf.append('mail_log_path: "/proc/nonexistent-dir/mail.log"')
    conf = chasquid_setup.config_dir / "chasquid.conf"
    chasquid_setup.write_conf()
    conf.write_text(
        "\n".join(
            line
            for line in conf.read_text().splitlines()
            if not (line.startswith("mail_log_path") and "proc" not in line)
        )
    )
    status, log = run_to_exit(chasquid_setup)
    assert status == 1
    assert _fatal_line(log).startswith("Error opening mail log: ")


def test_no_warning_without_such_settings(
    chasquid_setup: Setup, chasquid_daemon: DaemonFactory
) -> None:
    assert messages(chasquid_daemon().log_text(), "E") == []
