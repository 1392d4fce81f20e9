"""Dynamic shell completion of chasquid-util arguments: users, domains and DKIM selectors."""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem

from chasquid.confdir.dkimkeys import key_files
from chasquid.errors import ChasquidError
from chasquid_util.errors import UtilError
from chasquid_util.options import resolve_config_dir as config_dir_of
from chasquid_util.users import (
    find_domain_dir,
    list_users,
    local_domains,
    require_config_dir,
)


def complete_users(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Existing `user@domain` names of the config dir."""
    try:
        entries = list_users(config_dir_of(ctx))
    except ChasquidError:
        return []
    return [CompletionItem(e.address) for e in entries if e.address.startswith(incomplete)]


def complete_domains(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Domain directories of the config dir."""
    return [
        CompletionItem(d) for d in local_domains(config_dir_of(ctx)) if d.startswith(incomplete)
    ]


def complete_new_user(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """For user-add: `user@` typed so far is completed with the local domains."""
    user, at, partial = incomplete.partition("@")
    if not at:
        return []
    return [
        CompletionItem(f"{user}@{d}")
        for d in local_domains(config_dir_of(ctx))
        if d.startswith(partial)
    ]


def complete_selectors(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Selectors of the key files of the domain given before (the DKIM commands)."""
    domain = ctx.params.get("domain")
    if not domain:
        return []
    try:
        directory = find_domain_dir(require_config_dir(config_dir_of(ctx)), domain)
        found = key_files(directory)
    except (UtilError, OSError):
        return []
    return [CompletionItem(s) for s, _ in found if s.startswith(incomplete)]
