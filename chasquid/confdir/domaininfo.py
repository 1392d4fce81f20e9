"""Per-domain incoming and outgoing TLS security levels, kept durably on disk.

Once a domain has been seen using TLS (incoming with SPF pass, or outgoing to
its MX), a later downgrade is refused. The format of the files is described
in docs/data-formats.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.parse
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path
from typing import Any

import yaml

from chasquid.confdir.layout import DOMAININFO_DIR_MODE
from chasquid.errors import ChasquidError
from chasquid.fileio import atomic_write
from chasquid.normalize import NormalizationError, normalize_domain

log = logging.getLogger(__name__)

_PREFIX = "s:"
_FILE_MODE = 0o660


class DomainInfoError(ChasquidError):
    """The domaininfo store could not be read, or an entry does not exist."""


class SecLevel(IntEnum):
    """Security level of a connection, ordered from worst to best."""

    PLAIN = 0
    TLS_CLIENT = 1
    TLS_INSECURE = 2
    TLS_SECURE = 3


@dataclass(frozen=True)
class DomainInfo:
    """The levels recorded for one domain."""

    name: str
    incoming: SecLevel = SecLevel.PLAIN
    outgoing: SecLevel = SecLevel.PLAIN


def file_name(domain: str) -> str:
    """Name of the file holding domain's record: `s:` plus the query-escaped name."""
    return _PREFIX + urllib.parse.quote_plus(domain, safe="")


def domain_key(domain: str) -> str:
    """The key a domain is stored under: its normalized (unicode, lower case) form."""
    try:
        return normalize_domain(domain)
    except NormalizationError:
        # An unnormalizable name still gets tracked, under its lower-cased self.
        return domain.lower()


def _level(value: Any, path: Path, key: str) -> SecLevel:
    if value is None:
        return SecLevel.PLAIN
    if isinstance(value, str) and value in SecLevel.__members__:
        return SecLevel[value]
    if isinstance(value, int) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            return SecLevel(value)
    names = ", ".join(SecLevel.__members__)
    raise DomainInfoError(
        f'"{path}": key {key!r}: invalid level {value!r} (expected one of {names})'
    )


def _parse(path: Path) -> DomainInfo:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DomainInfoError(f'"{path}": {e}') from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DomainInfoError(f'"{path}": invalid YAML: {e}') from e
    if not isinstance(data, dict):
        raise DomainInfoError(f'"{path}": expected a mapping with a "name" key')
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise DomainInfoError(f"\"{path}\": key 'name': missing or not a string")
    unknown = set(data) - {"name", "incoming_sec_level", "outgoing_sec_level"}
    if unknown:
        raise DomainInfoError(f'"{path}": unknown key {sorted(unknown)[0]!r}')
    return DomainInfo(
        name=name,
        incoming=_level(data.get("incoming_sec_level"), path, "incoming_sec_level"),
        outgoing=_level(data.get("outgoing_sec_level"), path, "outgoing_sec_level"),
    )


def _render(info: DomainInfo) -> bytes:
    doc = {
        "name": info.name,
        "incoming_sec_level": info.incoming.name,
        "outgoing_sec_level": info.outgoing.name,
    }
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False).encode("utf-8")


class DomainInfoStore:
    """The domaininfo database in one directory (`<data_dir>/domaininfo`).

    Every change is written to disk (atomically, with fsync) before the method
    returns. The writes block: they are small, but async callers may offload
    them to a thread. Not thread-safe; meant for one event loop.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open (creating the directory if needed) and load the store at path."""
        self.path = Path(path)
        self._info: dict[str, DomainInfo] = {}
        # Other files whose record normalized to the same key (e.g. written by
        # chasquid under a raw name): removed when the key is rewritten.
        self._strays: dict[str, list[Path]] = {}
        try:
            self.path.mkdir(mode=DOMAININFO_DIR_MODE, parents=True, exist_ok=True)
        except OSError as e:
            raise DomainInfoError(f"creating {str(self.path)!r}: {e.strerror or e}") from e
        self.reload()

    def reload(self) -> None:
        """Re-read every record from disk; on error the current contents are kept."""
        info: dict[str, DomainInfo] = {}
        strays: dict[str, list[Path]] = {}
        try:
            entries = sorted(self.path.iterdir())
        except OSError as e:
            raise DomainInfoError(f"reading {str(self.path)!r}: {e.strerror or e}") from e
        for entry in entries:
            if not entry.name.startswith(_PREFIX) or not entry.is_file():
                continue
            try:
                urllib.parse.unquote_plus(entry.name[len(_PREFIX) :], errors="strict")
            except UnicodeDecodeError:
                continue
            record = _parse(entry)
            key = domain_key(record.name)
            record = replace(record, name=key)
            if entry.name != file_name(key):
                strays.setdefault(key, []).append(entry)
            old = info.get(key)
            if old is not None:
                record = DomainInfo(
                    key, max(old.incoming, record.incoming), max(old.outgoing, record.outgoing)
                )
            info[key] = record
        self._info = info
        self._strays = strays

    def get(self, domain: str) -> DomainInfo | None:
        """The record of domain, or None if there is none."""
        return self._info.get(domain_key(domain))

    def domains(self) -> list[str]:
        """Every domain with a record, sorted."""
        return sorted(self._info)

    def __len__(self) -> int:
        return len(self._info)

    def incoming_ok(self, domain: str, level: SecLevel) -> bool:
        """Check an incoming connection's level for domain; raise and persist the stored one."""
        return self._check(domain, level, incoming=True)

    def outgoing_ok(self, domain: str, level: SecLevel) -> bool:
        """Check an outgoing connection's level for domain; raise and persist the stored one."""
        return self._check(domain, level, incoming=False)

    def clear(self, domain: str) -> None:
        """Reset domain's levels to PLAIN; DomainInfoError `does not exist` if it has no record."""
        key = domain_key(domain)
        if key not in self._info:
            raise DomainInfoError("does not exist")
        self._info[key] = DomainInfo(key)
        self._write(self._info[key], strict=True)

    def _check(self, domain: str, level: SecLevel, *, incoming: bool) -> bool:
        key = domain_key(domain)
        current = self._info.get(key)
        record = current or DomainInfo(key)
        stored = record.incoming if incoming else record.outgoing
        if level < stored:
            return False
        if level > stored and incoming:
            record = replace(record, incoming=level)
        elif level > stored:
            record = replace(record, outgoing=level)
        # A first sighting is recorded even at PLAIN; one write covers it and a raise.
        if record != current:
            self._info[key] = record
            self._write(record, strict=False)
        return True

    def _write(self, info: DomainInfo, *, strict: bool) -> None:
        # The in-memory state is updated regardless: a full disk must not stop
        # mail flowing, but the failure is logged (or raised, for admin clears).
        try:
            atomic_write(self.path / file_name(info.name), _render(info), mode=_FILE_MODE)
            for stray in self._strays.pop(info.name, []):
                with contextlib.suppress(FileNotFoundError):
                    stray.unlink()
        except OSError as e:
            msg = f"writing domaininfo for {info.name!r} in {str(self.path)!r}: {e.strerror or e}"
            if strict:
                raise DomainInfoError(msg) from e
            log.error("%s", msg)
