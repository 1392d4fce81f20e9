"""The local domains with their users and aliases, loaded as one immutable snapshot.

Every directory under ``domains/`` is a local domain (``localhost`` always
is one). The daemon keeps one `Domains` reference and swaps it for the result
of `reload()`; if that raises, the old snapshot stays in force.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from chasquid.confdir.aliases import (
    AliasError,
    HookResultListener,
    Recipient,
    Resolver,
    UserFallback,
    load_aliases,
)
from chasquid.confdir.dkimkeys import DKIMKey, DKIMKeyError, DKIMKeys, load_domain_keys
from chasquid.confdir.layout import ConfigDir
from chasquid.confdir.userdb import UserDB, UserDBError
from chasquid.errors import ChasquidError
from chasquid.goquote import go_quote_ascii
from chasquid.normalize import NormalizationError, normalize_domain

if TYPE_CHECKING:
    from chasquid.confdir.config import Config

#: Always a local domain, with no directory and no user database.
LOCALHOST = "localhost"


class DomainsError(ChasquidError):
    """The domains directory, or a domain's users, aliases or DKIM key file, could not be loaded."""


@dataclass(frozen=True)
class Domains:
    """One consistent view of the local domains, their users, aliases and DKIM keys.

    `local` includes `localhost`; `users` has one database per domain
    directory; `dirs` maps each normalized domain to its directory (named as
    on disk); `order` is the discovery order; `alias_counts` the number of
    aliases per domain; `dkim` the signing keys.
    """

    users: Mapping[str, UserDB]
    resolver: Resolver
    dirs: Mapping[str, Path] = field(default_factory=lambda: MappingProxyType({}))
    order: tuple[str, ...] = ()
    alias_counts: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    dkim: DKIMKeys = field(default_factory=DKIMKeys)

    @property
    def local(self) -> frozenset[str]:
        """The local domains, `localhost` included (the resolver's own set)."""
        return self.resolver.local_domains

    def is_local(self, addr: str) -> bool:
        """True if the domain of addr is empty or one of the local domains."""
        return self.resolver.is_local(addr)

    def summary_lines(self) -> list[str]:
        """Per-domain start-up log lines: `  <domain> (<n> users, <n> aliases, <n> DKIM keys)`."""
        return [
            f"  {d} ({len(self.users[d])} users, {self.alias_counts.get(d, 0)} aliases, "
            f"{len(self.dkim.for_domain(d))} DKIM keys)"
            for d in self.order
        ]


def discover(domains_dir: Path) -> list[tuple[str, Path]]:
    """List (normalized domain, directory) pairs under domains_dir, in name order.

    Every entry's name must be a valid domain, even regular files, which are
    then skipped.
    """
    try:
        entries = sorted(os.scandir(domains_dir), key=lambda e: e.name)
    except OSError as e:
        raise DomainsError(f'Error reading "domains/" directory: {e.strerror or e}') from e
    if not entries:
        raise DomainsError('No entries found in "domains/"')
    found: list[tuple[str, Path]] = []
    for entry in entries:
        try:
            domain = normalize_domain(entry.name)
        except NormalizationError as e:
            raise DomainsError(f"Invalid name {go_quote_ascii(entry.name)}: {e}") from e
        if entry.is_file(follow_symlinks=False):
            continue
        found.append((domain, Path(entry.path)))
    return found


def _load_one(
    domain: str, directory: Path, drops: str, separators: str
) -> tuple[UserDB, dict[str, tuple[Recipient, ...]], tuple[DKIMKey, ...]]:
    try:
        users = UserDB.load(directory / "users")
    except (UserDBError, OSError) as e:
        raise DomainsError(f"{domain}: users file error: {e}") from e
    try:
        aliases = load_aliases(directory / "aliases", domain, drops, separators)
    except (AliasError, OSError) as e:
        raise DomainsError(f"{domain}: aliases file error: {e}") from e
    try:
        keys = load_domain_keys(domain, directory)
    except DKIMKeyError as e:
        raise DomainsError(f"{domain}: DKIM loading error: {e}") from e
    return users, aliases, keys


def _build(
    dirs: list[tuple[str, Path]],
    template: Resolver,
) -> Domains:
    users: dict[str, UserDB] = {}
    aliases: dict[str, tuple[Recipient, ...]] = {}
    counts: dict[str, int] = {}
    keys: dict[str, tuple[DKIMKey, ...]] = {}
    for domain, directory in dirs:
        db, table, domain_keys = _load_one(domain, directory, template.drops, template.separators)
        users[domain] = db
        aliases.update(table)
        counts[domain] = counts.get(domain, 0) + len(table)
        if domain_keys:
            keys[domain] = keys.get(domain, ()) + domain_keys
    local = frozenset(users) | {LOCALHOST}
    # The template carries everything but the loaded tables.
    resolver = replace(template, aliases=aliases, local_domains=local, users=users)
    return Domains(
        users=MappingProxyType(users),
        resolver=resolver,
        dirs=MappingProxyType(dict(dirs)),
        order=tuple(dict.fromkeys(d for d, _ in dirs)),
        alias_counts=MappingProxyType(counts),
        dkim=DKIMKeys(MappingProxyType(keys)),
    )


def load_domains(
    config_dir: str | os.PathLike[str],
    config: Config,
    *,
    user_fallback: UserFallback | None = None,
    on_hook_result: HookResultListener | None = None,
) -> Domains:
    """Discover and load every local domain under config_dir (start-up).

    user_fallback (e.g. Dovecot) is asked about users a domain's database
    does not know; on_hook_result is told each alias-resolve hook outcome. Raises
    DomainsError with the message to log.
    """
    layout = ConfigDir(Path(config_dir))
    template = Resolver(
        drops=config.drop_characters,
        separators=config.suffix_separators,
        hook=layout.alias_resolve_hook,
        hook_cwd=layout.root,
        fallback=user_fallback,
        on_hook_result=on_hook_result,
    )
    return _build(discover(layout.domains), template)


def reload(previous: Domains) -> Domains:
    """Re-read the users, aliases and DKIM key files of the same set of domains.

    Raises DomainsError on any load error; the caller then keeps previous.
    """
    return _build(list(previous.dirs.items()), previous.resolver)
