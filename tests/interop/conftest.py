"""Interop tests against real third-party MTAs; fixtures live in tests/helpers/."""

from helpers.daemon import chasquid_daemon, chasquid_setup
from helpers.postfix import postfix_factory

__all__ = ["chasquid_daemon", "chasquid_setup", "postfix_factory"]
