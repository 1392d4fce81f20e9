"""The settings the daemon accepts but does not act on yet, and how it words them."""

from __future__ import annotations

from chasquid.confdir.config import Config
from chasquid.daemon.unused_config import unused_config


def test_nothing_to_say_by_default() -> None:
    assert unused_config(Config(hostname="mx")) == []


def test_monitoring() -> None:
    config = Config(hostname="mx", monitoring_address="[::1]:99", dovecot_auth=True)
    [warning] = unused_config(config)
    assert warning.startswith('monitoring_address "[::1]:99" is ignored')
