"""The ports remote servers are reached on: SMTP 25 and HTTPS 443, or the test knobs' ports.

Tests point every tool at loopback servers through CHASQUID_TEST_SMTP_PORT and
CHASQUID_TEST_HTTPS_PORT (the DNS knob is in dnsconfig); nothing else changes.
"""

from __future__ import annotations

import os

TEST_SMTP_PORT_ENV = "CHASQUID_TEST_SMTP_PORT"
TEST_HTTPS_PORT_ENV = "CHASQUID_TEST_HTTPS_PORT"


def _knob(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else default


def smtp_port() -> int:
    """The port remote mail servers are reached on: 25, or CHASQUID_TEST_SMTP_PORT."""
    return _knob(TEST_SMTP_PORT_ENV, 25)


def https_port() -> int:
    """The port MTA-STS policies are fetched from: 443, or CHASQUID_TEST_HTTPS_PORT."""
    return _knob(TEST_HTTPS_PORT_ENV, 443)
