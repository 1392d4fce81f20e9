"""Talking to the running daemon over the local RPC, with the file-based fallbacks.

``aliases-resolve`` and ``domaininfo-remove`` ask the daemon when it runs (so
the answer reflects what it has loaded, and domaininfo changes are not
overwritten by it); when it does not, they work on the files and say so on
stderr.
"""

from __future__ import annotations

from pathlib import Path

import click

from chasquid.confdir.layout import data_dir_for
from chasquid.localrpc.client import call
from chasquid.localrpc.protocol import DaemonNotRunningError, RPCError
from chasquid_util import daemonless
from chasquid_util.daemonless import Resolved
from chasquid_util.errors import UtilError


def socket_path(config_dir: Path) -> Path:
    """The daemon's RPC socket: ``<data_dir>/localrpc-v1`` (relative data_dir: under config_dir).

    A relative ``data_dir`` is resolved as the daemon resolves it (it runs in
    its config dir), so the util finds the socket from any directory.
    """
    config = daemonless.load_config(config_dir)
    return data_dir_for(config, config_dir).localrpc_socket


def _fallback_note(e: DaemonNotRunningError, what: str) -> None:
    click.echo(f"chasquid is not running ({e}); {what}", err=True)


def aliases_resolve(config_dir: Path, address: str) -> list[Resolved]:
    """Resolve through the daemon, or from the files when it is not running."""
    path = socket_path(config_dir)
    try:
        result = call(path, "AliasResolve", [("Address", address)])
    except DaemonNotRunningError as e:
        _fallback_note(e, "resolving from the files instead")
        return daemonless.aliases_resolve(config_dir, address)
    except RPCError as e:
        raise UtilError(f"Error resolving: {e}") from None
    resolved = [Resolved(key.strip("()"), value) for key, value in result]
    return sorted(resolved, key=lambda r: r.label)


def domaininfo_remove(config_dir: Path, domain: str) -> None:
    """Clear through the daemon, or in the data dir's files when it is not running."""
    path = socket_path(config_dir)
    try:
        call(path, "DomaininfoClear", [("Domain", domain)])
    except DaemonNotRunningError as e:
        _fallback_note(e, "changing the domaininfo files directly")
        daemonless.domaininfo_remove(config_dir, domain)
    except RPCError as e:
        raise UtilError(f"Error removing domaininfo entry: {e}") from None
