"""Binding configured addresses and deciding the listeners of each mode."""

from __future__ import annotations

import logging
import socket

import pytest
from helpers.requirements import unavailable

from chasquid.daemon.listeners import (
    EmptyAddressError,
    ListenError,
    bind_tcp,
    plan_listeners,
    split_host_port,
)
from chasquid.daemon.smtpsrv.server import Mode


def test_split_host_port() -> None:
    assert split_host_port(":25") == ("", 25)
    assert split_host_port("[::1]:587") == ("::1", 587)
    assert split_host_port("127.0.0.1:465") == ("127.0.0.1", 465)
    with pytest.raises(ListenError, match="missing port"):
        split_host_port("localhost")
    with pytest.raises(ListenError, match="too many colons"):
        split_host_port("::1:25")


def test_all_addresses_accepts_ipv4_and_ipv6() -> None:
    sock = bind_tcp(":0")
    with sock:
        port = sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        if socket.has_ipv6:
            try:
                c = socket.create_connection(("::1", port), timeout=5)
            except OSError:
                unavailable("no IPv6 loopback on this machine")
            c.close()


def test_specific_address() -> None:
    with bind_tcp("127.0.0.1:0") as sock:
        assert sock.getsockname()[0] == "127.0.0.1"


def test_address_in_use() -> None:
    with bind_tcp("127.0.0.1:0") as sock:
        port = sock.getsockname()[1]
        with pytest.raises(ListenError) as e:
            bind_tcp(f"127.0.0.1:{port}").close()
    assert str(e.value) == f"listen tcp 127.0.0.1:{port}: bind: address already in use"


def test_plan_warns_for_modes_without_listeners(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    planned = plan_listeners({Mode.SMTP: ("127.0.0.1:1",), Mode.SUBMISSION: ("systemd",)}, {})
    assert [(p.mode.display, p.address) for p in planned] == [("SMTP", "127.0.0.1:1")]
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert msgs == [
        "Warning: No submission addresses/listeners",
        "If using systemd, check that you named the sockets",
        "Warning: No submission+TLS addresses/listeners",
        "If using systemd, check that you named the sockets",
    ]


def test_plan_uses_inherited_sockets() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        planned = plan_listeners({Mode.SUBMISSION: ("systemd",)}, {"submission": [s]})
        assert len(planned) == 1
        assert planned[0].via_systemd
        assert planned[0].address == f"127.0.0.1:{s.getsockname()[1]}"


def test_plan_empty_address_is_fatal(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(EmptyAddressError, match="If you want to disable submission, remove it"):
        plan_listeners({Mode.SMTP: (":25",), Mode.SUBMISSION: ("",)}, {})
    assert "Invalid empty listening address for submission" in caplog.text


def test_plan_nothing_to_listen_on() -> None:
    with pytest.raises(ListenError, match=r"^No address to listen on$"):
        plan_listeners({}, {})
