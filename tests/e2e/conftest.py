"""End-to-end tests run the real chasquid process; the fixtures live in tests/helpers/daemon.py."""

from helpers.daemon import chasquid_daemon, chasquid_setup

__all__ = ["chasquid_daemon", "chasquid_setup"]
