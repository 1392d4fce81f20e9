"""Dynamic shell completion of chasquid-util arguments: users and domains of the config dir."""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem

from chasquid.errors import ChasquidError
from chasquid_util.options import resolve_config_dir as config_dir_of
from chasquid_util.users import list_users, local_domains


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
