"""Typed paths of the config dir and the data dir."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chasquid.confdir.config import Config

# Requested modes before the umask, as chasquid creates them.
QUEUE_DIR_MODE = 0o700
DOMAININFO_DIR_MODE = 0o770
STS_CACHE_DIR_MODE = 0o770


@dataclass(frozen=True)
class ConfigDir:
    """The configuration directory: chasquid.conf, certs/, domains/, hooks/."""

    root: Path

    @property
    def conf(self) -> Path:
        """The main configuration file."""
        return self.root / "chasquid.conf"

    @property
    def certs(self) -> Path:
        """Directory of certificate pairs (certbot's live/ layout)."""
        return self.root / "certs"

    @property
    def domains(self) -> Path:
        """Directory with one sub-directory per local domain."""
        return self.root / "domains"

    @property
    def hooks(self) -> Path:
        """Directory of hook programs."""
        return self.root / "hooks"

    def domain_dir(self, domain: str) -> Path:
        """Directory of one local domain (name as it appears on disk)."""
        return self.domains / domain

    def users_file(self, domain: str) -> Path:
        """The users database of a domain."""
        return self.domain_dir(domain) / "users"

    def aliases_file(self, domain: str) -> Path:
        """The aliases file of a domain."""
        return self.domain_dir(domain) / "aliases"

    @cached_property
    def post_data_hook(self) -> Path:
        """The post-DATA hook (run only if it exists; looked up on every message)."""
        return self.hooks / "post-data"

    @property
    def alias_resolve_hook(self) -> Path:
        """The alias resolution hook (run only if it exists)."""
        return self.hooks / "alias-resolve"


@dataclass(frozen=True)
class DataDir:
    """The data directory: queue, domaininfo, MTA-STS cache, local RPC socket."""

    root: Path

    @property
    def queue(self) -> Path:
        """Queue items, one file per message."""
        return self.root / "queue"

    @property
    def domaininfo(self) -> Path:
        """Per-domain security-level store."""
        return self.root / "domaininfo"

    @property
    def sts_cache(self) -> Path:
        """MTA-STS policy cache."""
        return self.root / "sts-cache"

    @property
    def localrpc_socket(self) -> Path:
        """Unix socket of the local RPC server used by chasquid-util."""
        return self.root / "localrpc-v1"

    def ensure(self) -> None:
        """Create the data dir's sub-directories (and parents) with their modes.

        Existing directories are left as they are; OSError propagates so the
        caller can report which directory could not be created.
        """
        for path, mode in (
            (self.queue, QUEUE_DIR_MODE),
            (self.domaininfo, DOMAININFO_DIR_MODE),
            (self.sts_cache, STS_CACHE_DIR_MODE),
        ):
            os.makedirs(path, mode=mode, exist_ok=True)


def data_dir_for(config: Config, config_dir: str | os.PathLike[str]) -> DataDir:
    """The daemon's data dir: a relative data_dir is resolved against the config dir."""
    path = Path(config.data_dir)
    if not path.is_absolute():
        path = Path(config_dir) / path
    return DataDir(path)
