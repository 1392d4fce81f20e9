"""Commands that load chasquid.conf: print-config, and the file-based aliases-resolve and
domaininfo-remove (used when the daemon is not running)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from chasquid.confdir import config as configmod
from chasquid.confdir.domaininfo import DomainInfoError, DomainInfoStore
from chasquid.confdir.domains import load_domains
from chasquid.confdir.layout import data_dir_for
from chasquid.errors import ChasquidError
from chasquid_util.errors import UtilError
from chasquid_util.users import require_config_dir

# Order of the recipient types in aliases-resolve's output (lexicographic, as chasquid prints them).
_KIND_LABELS = {"email": "(email)", "forward": "(forward)", "pipe": "(pipe)"}


@dataclass(frozen=True)
class Resolved:
    """One recipient printed by aliases-resolve."""

    kind: str
    address: str
    via: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The type as printed: `(email)`, `(forward)` or `(pipe)`."""
        return _KIND_LABELS.get(self.kind, f"({self.kind})")


def load_config(config_dir: Path) -> configmod.Config:
    """Load chasquid.conf without overrides, as the util does."""
    require_config_dir(config_dir)
    try:
        return configmod.load(str(config_dir))
    except ChasquidError as e:
        raise UtilError(f"Error loading config: {e}") from None


def print_config(config_dir: Path) -> str:
    """The effective configuration in print-config's canonical flat form."""
    return configmod.render(load_config(config_dir))


def aliases_resolve(config_dir: Path, address: str) -> list[Resolved]:
    """Resolve address as delivery would, from the files of the config dir.

    The result is grouped by type in lexicographic order, keeping the
    resolution order within a type.
    """
    config = load_config(config_dir)
    try:
        domains = load_domains(config_dir, config)
        recipients = asyncio.run(domains.resolver.resolve(address))
    except ChasquidError as e:
        raise UtilError(f"Error resolving: {e}") from None
    resolved = [Resolved(str(r.kind), r.address, tuple(r.via)) for r in recipients]
    return sorted(resolved, key=lambda r: r.label)


def domaininfo_remove(config_dir: Path, domain: str) -> None:
    """Reset the stored security levels of domain to plain, in the data dir's store.

    A relative data_dir is resolved against the config dir, as the daemon does,
    so the files changed are the ones the daemon uses.
    """
    config = load_config(config_dir)
    store_dir = data_dir_for(config, config_dir).domaininfo
    if not store_dir.is_dir():
        # Opening the store would create the directory: an error must write nothing.
        raise UtilError("Error removing domaininfo entry: does not exist")
    try:
        DomainInfoStore(store_dir).clear(domain)
    except DomainInfoError as e:
        raise UtilError(f"Error removing domaininfo entry: {e}") from None
