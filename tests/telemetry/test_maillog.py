"""The mail log: destinations, line framing and the exact text of every event."""

from __future__ import annotations

import logging
import os
import socket
import stat
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from helpers.requirements import unavailable

from chasquid.daemon.telemetry.maillog import MailLog, MailLogError, format_client

STAMP = datetime(2025, 6, 3, 10, 11, 12, 345678)
PREFIX = "2025-06-03 10:11:12.345678 "


def file_log(tmp_path: Path) -> tuple[MailLog, Path]:
    path = tmp_path / "mail.log"
    return MailLog.open(str(path), clock=lambda: STAMP), path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.mark.parametrize(
    ("client", "text"),
    [
        (("192.0.2.7", 41234), "192.0.2.7:41234"),
        (("2001:db8::7", 5123, 0, 0), "[2001:db8::7]:5123"),
        (("::ffff:192.0.2.7", 25, 0, 0), "192.0.2.7:25"),
        (("fe80::1%eth0", 25, 0, 2), "[fe80::1%eth0]:25"),
        (("::", 25, 0, 0), "[::]:25"),
        ("10.0.0.1:99", "10.0.0.1:99"),
    ],
)
def test_client_rendering(client: tuple[str, int] | str, text: str) -> None:
    assert format_client(client) == text


def test_reception_events_exact_lines(tmp_path: Path) -> None:
    ml, path = file_log(tmp_path)
    ml.listening(":25")
    ml.listening(("::", 465, 0, 0))
    ml.auth(("192.0.2.7", 41234), "bob@example.com", False)
    ml.auth(("::ffff:192.0.2.7", 41234, 0, 0), "bob@example.com", True)
    ml.auth(("192.0.2.7", 41234), "bob@", False)
    ml.rejected(("192.0.2.7", 41234), "x@spam.example", [], "failed SPF: matched all")
    ml.rejected(
        ("2001:db8::7", 5123, 0, 0),
        "a@example.org",
        ["nobody@example.com"],
        "local user does not exist",
    )
    ml.rejected(("192.0.2.7", 1), "", ["a@b", "c@d"], "")
    ml.queued(
        ("192.0.2.7", 41234),
        "a@example.org",
        ["bob@example.com", "carol@example.com"],
        "q1w2e3r4t5y",
    )
    ml.queued(("192.0.2.7", 41234), "<>", ["bob@example.com"], "q1w2e3r4t5y")
    ml.close()
    assert lines(path) == [
        PREFIX + "daemon listening on :25",
        PREFIX + "daemon listening on [::]:465",
        PREFIX + "192.0.2.7:41234 auth failed for bob@example.com",
        PREFIX + "192.0.2.7:41234 auth succeeded for bob@example.com",
        PREFIX + "192.0.2.7:41234 auth failed for bob@",
        PREFIX + "192.0.2.7:41234 rejected from=x@spam.example - failed SPF: matched all",
        PREFIX + "[2001:db8::7]:5123 rejected from=a@example.org to=[nobody@example.com]"
        " - local user does not exist",
        PREFIX + "192.0.2.7:1 rejected to=[a@b c@d] - ",
        PREFIX + "q1w2e3r4t5y from=a@example.org queued ip=192.0.2.7:41234"
        " to=[bob@example.com carol@example.com]",
        PREFIX + "q1w2e3r4t5y from=<> queued ip=192.0.2.7:41234 to=[bob@example.com]",
    ]


def test_queue_events_exact_lines(tmp_path: Path) -> None:
    ml, path = file_log(tmp_path)
    ml.sent("AAAAAAAAAAA", "a@example.org", "b@example.com")
    ml.failed("AAAAAAAAAAA", "a@example.org", "b@x.com", "550 5.1.1 no such user", True)
    ml.failed("AAAAAAAAAAA", "<>", "|cmd arg", "exit status 75", False)
    ml.queue_loop("AAAAAAAAAAA", "a@example.org", 97.512093114)
    ml.queue_loop("AAAAAAAAAAA", "a@example.org", 1200)
    ml.queue_loop("AAAAAAAAAAA", "a@example.org", 3600 + 61.5)
    ml.all_done("AAAAAAAAAAA", "a@example.org")
    ml.close()
    assert lines(path) == [
        PREFIX + "AAAAAAAAAAA from=a@example.org to=b@example.com sent",
        PREFIX + "AAAAAAAAAAA from=a@example.org to=b@x.com failed (permanent):"
        " 550 5.1.1 no such user",
        PREFIX + "AAAAAAAAAAA from=<> to=|cmd arg failed (temporary): exit status 75",
        PREFIX + "AAAAAAAAAAA from=a@example.org completed loop, next in 1m37.512093114s",
        PREFIX + "AAAAAAAAAAA from=a@example.org completed loop, next in 20m0s",
        PREFIX + "AAAAAAAAAAA from=a@example.org completed loop, next in 1h1m1.5s",
        PREFIX + "AAAAAAAAAAA from=a@example.org all done",
    ]


def test_multiline_errors_stay_on_their_line(tmp_path: Path) -> None:
    ml, path = file_log(tmp_path)
    ml.failed("id", "f@x", "t@y", "550-first\n550 second\n", True)
    ml.all_done("id", "f@x")
    ml.close()
    assert path.read_text() == (
        PREFIX + "id from=f@x to=t@y failed (permanent): 550-first\\n550 second\\n\n"
        f"{PREFIX}id from=f@x all done\n"
    )


def test_every_field_is_escaped(tmp_path: Path) -> None:
    # What clients and remote servers choose: AUTH identities, addresses
    # (undecodable bytes arrive as surrogates), reasons, replies.
    ml, path = file_log(tmp_path)
    ml.auth(("192.0.2.7", 1), "x@evil.test\n1.2.3.4:5 auth succeeded for y@z", False)
    ml.rejected(("192.0.2.7", 1), "a\x1b[31m@b\x00", ["c\udcff@d\u2028"], "r\r\x07")
    ml.queued(("192.0.2.7", 1), "a\x85@b", ["c\u202e@d"], "id")
    ml.failed("id", "f@x", "t@y\t", "550 a\r\n550 b", True)
    ml.close()
    assert path.read_bytes().decode("utf-8") == "".join(
        PREFIX + line + "\n"
        for line in [
            "192.0.2.7:1 auth failed for x@evil.test\\n1.2.3.4:5 auth succeeded for y@z",
            "192.0.2.7:1 rejected from=a\\x1b[31m@b\\x00 to=[c\\xff@d\\u2028] - r\\r\\x07",
            "id from=a\\x85@b queued ip=192.0.2.7:1 to=[c\\u202e@d]",
            "id from=f@x to=t@y\\t failed (permanent): 550 a\\r\\n550 b",
        ]
    )


def test_timestamp_is_local_time_with_microseconds(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    ml = MailLog.open(str(path))
    before = datetime.now().replace(microsecond=0)
    ml.listening(":25")
    ml.close()
    (line,) = lines(path)
    stamp = datetime.strptime(line[:26], "%Y-%m-%d %H:%M:%S.%f")
    assert line[26:] == " daemon listening on :25"
    assert before <= stamp <= datetime.now()


def test_file_is_created_with_parents_and_appended(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "mail.log"
    old_umask = os.umask(0)
    try:
        ml = MailLog.open(str(path), clock=lambda: STAMP)
    finally:
        os.umask(old_umask)
    ml.listening(":25")
    ml.close()
    # It holds addresses, client IPs and login names: not for every local user.
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o775
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o775
    ml2 = MailLog.open(str(path), clock=lambda: STAMP)
    ml2.listening(":587")
    ml2.close()
    assert lines(path) == [PREFIX + "daemon listening on :25", PREFIX + "daemon listening on :587"]


def test_reopen_follows_rotation(tmp_path: Path) -> None:
    ml, path = file_log(tmp_path)
    ml.listening(":25")
    path.rename(tmp_path / "mail.log.1")
    ml.listening(":26")
    ml.reopen()
    ml.listening(":27")
    ml.close()
    assert lines(tmp_path / "mail.log.1") == [
        PREFIX + "daemon listening on :25",
        PREFIX + "daemon listening on :26",
    ]
    assert lines(path) == [PREFIX + "daemon listening on :27"]


def test_open_failure_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(MailLogError, match=r"cannot open mail log file .*file/mail.log"):
        MailLog.open(str(tmp_path / "file" / "mail.log"))


def test_write_failure_is_reported_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if not os.path.exists("/dev/full"):
        unavailable("/dev/full is needed to provoke a write error")
    ml = MailLog.open("/dev/full", clock=lambda: STAMP)
    with caplog.at_level(logging.ERROR, logger="chasquid.maillog"):
        ml.listening(":25")
        ml.listening(":26")
        ml.all_done("x", "y")
    ml.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "chasquid.maillog"]
    assert len(messages) == 2
    assert messages[0].startswith("failed to write to maillog: ")
    assert messages[1] == "(will not report this again)"


@pytest.mark.parametrize(("dest", "stream"), [("<stdout>", "stdout"), ("<stderr>", "stderr")])
def test_standard_streams(dest: str, stream: str) -> None:
    code = (
        "from chasquid.daemon.telemetry.maillog import MailLog\n"
        f"ml = MailLog.open({dest!r})\n"
        "ml.queued(('192.0.2.7', 1), 'a@b', ['c@d'], 'q1w2e3r4t5y')\n"
        "ml.sent('q1w2e3r4t5y', 'a@b', 'c@d')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    out = res.stdout if stream == "stdout" else res.stderr
    other = res.stderr if stream == "stdout" else res.stdout
    assert other == ""
    got = out.splitlines()
    assert [line[27:] for line in got] == [
        "q1w2e3r4t5y from=a@b queued ip=192.0.2.7:1 to=[c@d]",
        "q1w2e3r4t5y from=a@b to=c@d sent",
    ]
    for line in got:
        datetime.strptime(line[:26], "%Y-%m-%d %H:%M:%S.%f")


def test_syslog_datagrams(tmp_path: Path) -> None:
    sock_path = str(tmp_path / "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(sock_path)
    server.settimeout(10)
    try:
        ml = MailLog.open("<syslog>", syslog_socket=sock_path)
        ml.auth(("192.0.2.7", 41234), "bob@example.com", False)
        ml.all_done("AAAAAAAAAAA", "<>")
        first = server.recv(4096).decode()
        second = server.recv(4096).decode()
        ml.close()
    finally:
        server.close()
    # Facility MAIL (2), severity INFO (6): priority 22; tag chasquid; no timestamp of ours.
    assert first.startswith("<22>")
    header, entry = first.split(": ", 1)
    assert header.endswith(f" chasquid[{os.getpid()}]")
    assert entry == "192.0.2.7:41234 auth failed for bob@example.com\n"
    assert second.split(": ", 1)[1] == "AAAAAAAAAAA from=<> all done\n"


def test_syslog_missing_socket_says_so(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-log")
    with pytest.raises(MailLogError, match=r"no-such-log does not exist"):
        MailLog.open("<syslog>", syslog_socket=missing)
