"""Bad input never gets a trace, a hang or a malformed reply: tables and random byte lines."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator

import pytest
from helpers.rawclient import RawClient
from helpers.reception import HOSTNAME, Running
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chasquid.daemon.smtpsrv.server import Mode

MakeServer = Callable[..., Running]

REPLY_LINE = re.compile(rb"^[2-5][0-9][0-9]([ -][\x20-\x7e\x80-\xff]*)?$")


def _read_reply(c: RawClient) -> list[bytes]:
    lines = [c._line()]
    while lines[-1][3:4] == b"-":
        lines.append(c._line())
    return lines


def _assert_well_formed(lines: list[bytes]) -> None:
    for line in lines:
        assert REPLY_LINE.match(line), line
    codes = {line[:3] for line in lines}
    assert len(codes) == 1, lines


@pytest.fixture
def no_traces(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO)
    yield
    traces = [r for r in caplog.records if r.exc_info or "unexpected error" in r.getMessage()]
    assert not traces, [r.getMessage() for r in traces]


def _session(srv: Running) -> RawClient:
    c = RawClient(srv.port, timeout=10)
    assert c.reply() == f"220 {HOSTNAME} ESMTP chasquid"
    return c


BAD_LINES = [
    b"HELO \xff\xfe",
    b"EHLO \xc3\x28",
    b"\xff\xff\xff\xff",
    b"MAIL FROM:<\xff@example.org>",
    b"MAIL FROM:<a@\xff.example>",
    b"MAIL FROM:<a@example.org> SIZE=\xff\xfe BODY=8BITMIME",
    b'MAIL FROM:<"\xff"@example.org>',
    b"MAIL FROM:<a@[\xff]>",
    b"MAIL FROM:<a@xn--zz.example>",
    b"MAIL FROM:<a@xn--.example>",
    b"MAIL FROM:<@a,@b:c@d>",
    b"MAIL FROM:<<<>>>",
    b"MAIL FROM:<a@b>)",
    b"MAIL FROM:\x00",
    b"MAIL FROM:<a\x00b@example.org>",
    b"RCPT TO:<\xff@example.com>",
    b"RCPT TO:<user@\xff>",
    b"RCPT TO:<us\xc3\x28er@example.com>",
    b"RCPT TO:<user@example.com> NOTIFY=\xff",
    b"RCPT TO:<\xe2\x80\xaeuser@example.com>",
    b"RCPT TO:<xn--@xn--bcher-kva.example>",
    b"AUTH PLAIN \xff\xfe",
    b"AUTH \xff",
    b"NOOP \xff",
    b"\x00\x00",
    b"\t",
    b" ",
    b"MAIL",
    b"RCPT",
]


@pytest.mark.parametrize("line", BAD_LINES)
def test_bad_lines_get_a_reply(srv: Running, no_traces: None, line: bytes) -> None:
    c = _session(srv)
    c.send(b"EHLO client.example\r\n")
    _assert_well_formed(_read_reply(c))
    c.send(b"MAIL FROM:<>\r\n")
    _assert_well_formed(_read_reply(c))
    c.send(line + b"\r\n")
    _assert_well_formed(_read_reply(c))
    c.send(b"RSET\r\n")
    reply = _read_reply(c)
    _assert_well_formed(reply)
    c.close()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"MAIL FROM:<\xff@example.org>", b"501 5.1.7"),
        (b'MAIL FROM:<"\xff"@example.org>', b"501 5.1.7"),
        (b"MAIL FROM:<a@example.org> SIZE=\xff\xfe", b"250 2.1.5"),
        (b"RCPT TO:<us\xc3\x28er@example.com>", b"501 5.1.3"),
        (b"RCPT TO:<user@\xff>", b"501 5.1.3"),
        (b"RCPT TO:<user@example.com> NOTIFY=\xff", b"250 2.1.5"),
    ],
)
def test_invalid_utf8_in_addresses(
    srv: Running, no_traces: None, line: bytes, expected: bytes
) -> None:
    c = _session(srv)
    if line.startswith(b"RCPT"):
        c.send(b"MAIL FROM:<>\r\n")
        _read_reply(c)
    c.send(line + b"\r\n")
    assert _read_reply(c)[0].startswith(expected)
    c.close()


@pytest.mark.parametrize("response", [b"\xff\xfe", b"AP8A/w==", b"====", b"*", b"a"])
def test_bad_auth_responses(make_server: MakeServer, no_traces: None, response: bytes) -> None:
    srv = make_server(Mode.SUBMISSION_TLS)
    c = RawClient(srv.port)
    c.wrap(srv.client_tls(), HOSTNAME)
    c.reply()
    c.send(b"AUTH PLAIN " + response + b"\r\n")
    assert _read_reply(c)[0].startswith(b"501 5.5.2")
    c.close()


def _transaction(c: RawClient, helo: bytes = b"client.example") -> None:
    for line in (b"HELO " + helo, b"MAIL FROM:<>", b"RCPT TO:<user@example.com>"):
        c.send(line + b"\r\n")
        assert _read_reply(c)[0][:1] == b"2", line
    c.send(b"DATA\r\n")
    assert _read_reply(c)[0].startswith(b"354")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"Subject: \xff\xfe bytes\r\n\r\nbody \xff\r\n", b"250"),
        (b"Sub\xffject: x\r\n\r\nbody\r\n", b"554"),
        (b"\xff\r\n\r\n", b"554"),
        (b": empty name\r\n\r\n", b"554"),
        (b"Subject: a\x00b\r\n\r\n", b"554"),
        (b"Subject: ok\r\n continued\r\n\r\n", b"250"),
        (b"", b"554"),
    ],
)
def test_bad_headers(srv: Running, no_traces: None, body: bytes, expected: bytes) -> None:
    c = _session(srv)
    _transaction(c)
    c.send(body + b".\r\n")
    reply = _read_reply(c)
    _assert_well_formed(reply)
    assert reply[0].startswith(expected), reply
    queued = list(srv.queue_dir.glob("m:*"))
    assert len(queued) == (1 if expected == b"250" else 0)
    c.close()


def test_invalid_utf8_helo_is_queued(srv: Running, no_traces: None) -> None:
    c = _session(srv)
    _transaction(c, helo=b"h\xff\xfest")
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert _read_reply(c)[0].startswith(b"250")
    (item,) = srv.queue_dir.glob("m:*")
    assert item.stat().st_size > 0
    c.close()


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 \xff 127.0.0.1 1 2",
        b"PROXY TCP4 1.2.3.4 127.0.0.1 99999 25",
        b"PROXY TCP4 1.2.3.4 ::1 1 2 extra",
        b"PROXY TCP4 1.2.3.4 127.0.0.1 -1 25",
        b"PROXY TCP4 1.2.3.4 127.0.0.1 1",
        b"\x00" * 50,
        b"x" * 5000,
    ],
)
def test_bad_proxy_lines_close_silently(
    make_server: MakeServer, no_traces: None, caplog: pytest.LogCaptureFixture, line: bytes
) -> None:
    srv = make_server(conf="haproxy_incoming: true\n")
    c = RawClient(srv.port, timeout=10)
    c.send(line + b"\r\n")
    assert c.closed()
    c.close()


_LINES = st.lists(
    st.one_of(
        st.binary(max_size=120).filter(lambda b: b"\n" not in b),
        st.sampled_from(
            [b"MAIL FROM:", b"RCPT TO:", b"AUTH PLAIN ", b"HELO ", b"EHLO ", b"NOOP ", b"RSET"]
        ).flatmap(
            lambda verb: (
                st.binary(max_size=80)
                .filter(lambda b: b"\n" not in b)
                .map(lambda rest: verb + rest)
            )
        ),
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(lines=_LINES)
def test_random_lines(srv: Running, lines: list[bytes]) -> None:
    c = _session(srv)
    try:
        c.send(b"EHLO fuzz.example\r\n")
        _read_reply(c)
        for line in lines:
            c.send(line + b"\r\n")
            try:
                reply = _read_reply(c)
            except EOFError:
                break  # closed after 421, 502 (HTTP verb) or 221 (QUIT)
            _assert_well_formed(reply)
            if reply[-1][:3] == b"334":
                c.send(b"*\r\n")
                _assert_well_formed(_read_reply(c))
    except TimeoutError as e:
        raise AssertionError(f"server hung on {lines!r}") from e
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server closed first (421, HTTP verb, QUIT): allowed
    finally:
        c.close()
    # The server still serves.
    c2 = _session(srv)
    c2.send(b"QUIT\r\n")
    assert _read_reply(c2)[0].startswith(b"221")
    c2.close()
