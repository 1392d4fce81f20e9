"""The helper that hands out test listener ports: never ephemeral, one slice per worker."""

from __future__ import annotations

import socket

import pytest
from helpers import ports


def test_worker_slices_are_disjoint_and_never_ephemeral(monkeypatch: pytest.MonkeyPatch) -> None:
    eph_lo, eph_hi = ports._ephemeral_range()
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    slices = []
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        slices.append(set(ports._worker_slice()))
    assert slices[0] and slices[1]
    assert not slices[0] & slices[1]
    assert not any(eph_lo <= p <= eph_hi for p in slices[0] | slices[1])


def test_free_port_can_be_listened_on_at_once_on_every_host() -> None:
    hosts = ("127.0.0.2", "127.0.0.3")
    port = ports.free_port(*hosts)
    listeners = []
    try:
        for host in hosts:
            s = socket.socket()
            listeners.append(s)
            s.bind((host, port))
            s.listen()
    finally:
        for s in listeners:
            s.close()
    assert ports.free_port(*hosts) != port
