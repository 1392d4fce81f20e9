"""Fixtures for remote-delivery tests (peers and the network live in helpers.smtppeers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from helpers.dns import dns_server
from helpers.smtppeers import Net, shared_port


@pytest.fixture
def net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Net]:
    """A DNS server, the ports and CA, all set in the environment the courier reads."""
    ca = trustme.CA()
    cert_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cert_file))
    zone: dict[str, dict[str, list[Any]]] = {}
    port, https_port = shared_port(), shared_port()
    with dns_server(zone) as addr:
        monkeypatch.setenv("CHASQUID_TEST_DNS", addr)
        monkeypatch.setenv("CHASQUID_TEST_SMTP_PORT", str(port))
        monkeypatch.setenv("CHASQUID_TEST_HTTPS_PORT", str(https_port))
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
        yield Net(zone, port, https_port, ca, tmp_path)
