"""`chasquid-util init`: lay out a new config dir; never overwrite anything."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from chasquid.confdir.layout import ConfigDir
from chasquid.fileio import atomic_write
from chasquid.selfsigned import self_signed
from chasquid_util.errors import UtilError
from chasquid_util.users import check_domain


@dataclass(frozen=True)
class InitSettings:
    """What `init` writes: the answers to its questions."""

    hostname: str
    domain: str
    data_dir: str
    self_signed_cert: bool


def yaml_string(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value, ensure_ascii=False)


def render_conf(settings: InitSettings) -> str:
    """The chasquid.conf written by init: only what differs from the defaults, with hints."""
    return (
        "# chasquid configuration, written by `chasquid-util init`.\n"
        "# Every key and its default: docs/configuration.md. Keys not listed here\n"
        "# keep their defaults.\n"
        f"hostname: {yaml_string(settings.hostname)}\n"
        f"data_dir: {yaml_string(settings.data_dir)}\n"
        "\n"
        "# The daemon binds these itself (the shipped chasquid.service lets it bind\n"
        "# ports below 1024). For systemd socket activation instead, delete these\n"
        "# three lines and enable the chasquid-*.socket units.\n"
        'smtp_address: ":25"\n'
        'submission_address: ":587"\n'
        'submission_over_tls_address: ":465"\n'
        "\n"
        "# Local mail goes to this program (the default), or to Dovecot with\n"
        '# mail_lmtp_address: "/run/dovecot/lmtp".\n'
        '# mail_delivery_agent_bin: "maildrop"\n'
    )


def check_hostname(hostname: str) -> str:
    """Validate the host name given to init."""
    # The name also becomes certs/<hostname>/, so it must be a plain directory name.
    bad = not hostname or hostname.startswith(".") or "/" in hostname or "\0" in hostname
    if bad or any(c.isspace() for c in hostname):
        raise UtilError(f'Invalid host name "{hostname}": give a name such as mx.example.com')
    return hostname


def init_config_dir(root: Path, settings: InitSettings) -> list[Path]:
    """Create the config dir at root and return the files and directories made.

    root may exist only as an empty directory. Everything is validated before
    the first write, so a bad answer leaves nothing behind.
    """
    check_hostname(settings.hostname)
    domain = check_domain(settings.domain)
    if not settings.data_dir:
        raise UtilError("The data directory must not be empty")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UtilError(f'"{root}" already exists and is not empty; init never overwrites files')
    cdir = ConfigDir(root)
    pair = self_signed([settings.hostname]) if settings.self_signed_cert else None
    # root and any missing parents, outermost first, so that a failure can remove them too.
    missing = [p for p in (root, *root.parents) if not p.exists()][::-1]
    created: list[Path] = []
    try:
        for d in (*missing, cdir.domains, cdir.domain_dir(domain), cdir.certs, cdir.hooks):
            d.mkdir(mode=0o755)
            created.append(d)
        atomic_write(cdir.conf, render_conf(settings).encode(), mode=0o644)
        created.append(cdir.conf)
        if pair is not None:
            cert_dir = cdir.certs / settings.hostname
            cert_dir.mkdir(mode=0o755)
            created.append(cert_dir)
            atomic_write(cert_dir / "fullchain.pem", pair.fullchain_pem, mode=0o644)
            created.append(cert_dir / "fullchain.pem")
            atomic_write(cert_dir / "privkey.pem", pair.privkey_pem, mode=0o600)
            created.append(cert_dir / "privkey.pem")
    except OSError as e:
        _remove(created)
        raise UtilError(f"Error creating {e.filename or root}: {e.strerror or e}") from None
    return created


def _remove(created: list[Path]) -> None:
    """Undo a failed init: what it made, newest first (an error must leave nothing behind)."""
    for path in reversed(created):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
