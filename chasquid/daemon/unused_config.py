"""Configuration this version reads but does not act on yet, in words for the start-up log.

chasquid's config dir may hold settings for features this implementation has
not built yet (the monitoring server, Dovecot authentication, DKIM signing).
They are accepted, so an existing setup still starts, but the operator is told
once that they do nothing. Each entry goes when its feature lands.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from chasquid.confdir.config import Config
from chasquid.goquote import go_quote

#: How many DKIM key files a warning names before it only counts the rest.
MAX_NAMED_FILES = 3


def unused_config(config: Config, domain_dirs: Iterable[Path]) -> list[str]:
    """One warning per setting that has no effect in this version (empty when there is none)."""
    warnings = []
    if config.monitoring_address:
        warnings.append(
            f"monitoring_address {go_quote(config.monitoring_address)} is ignored: "
            "this version has no monitoring server yet"
        )
    if config.dovecot_auth:
        warnings.append(
            "dovecot_auth is ignored: this version cannot ask Dovecot yet, "
            "so only the users in the domains' users files exist and can log in"
        )
    keys = sorted(key for d in domain_dirs for key in d.glob("dkim:*.pem"))
    if keys:
        named = ", ".join(str(k) for k in keys[:MAX_NAMED_FILES])
        more = len(keys) - MAX_NAMED_FILES
        if more > 0:
            named += f" and {more} more"
        warnings.append(
            f"DKIM keys are not used: this version does not sign mail with DKIM yet ({named})"
        )
    return warnings
