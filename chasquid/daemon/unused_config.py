"""Configuration this version reads but does not act on yet, in words for the start-up log.

chasquid's config dir may hold settings for features this implementation has
not built yet (the monitoring server).
They are accepted, so an existing setup still starts, but the operator is told
once that they do nothing. Each entry goes when its feature lands.
"""

from __future__ import annotations

from chasquid.confdir.config import Config
from chasquid.goquote import go_quote


def unused_config(config: Config) -> list[str]:
    """One warning per setting that has no effect in this version (empty when there is none)."""
    warnings = []
    if config.monitoring_address:
        warnings.append(
            f"monitoring_address {go_quote(config.monitoring_address)} is ignored: "
            "this version has no monitoring server yet"
        )
    return warnings
