"""Interop tests against real third-party servers; fixtures live in tests/helpers/."""

from helpers.daemon import chasquid_daemon, chasquid_setup
from helpers.dovecot import dovecot_factory
from helpers.postfix import postfix_factory

__all__ = ["chasquid_daemon", "chasquid_setup", "dovecot_factory", "postfix_factory"]
