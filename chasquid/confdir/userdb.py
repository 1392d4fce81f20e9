"""The per-domain users file ``domains/<domain>/users`` (docs/users-format.md).

A :class:`UserDB` is an immutable snapshot: the ``with_*``/``without`` methods
return a new one, and ``save`` writes it out atomically.  ``load`` reads this
project's YAML format, and chasquid's own protobuf-text format transparently.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from chasquid.confdir.legacy_userdb import LegacyUserDBError, parse_legacy
from chasquid.confdir.passwords import (
    Entry,
    PasswordHash,
    Plain,
    RawScrypt,
    ReceiveOnly,
    b64decode_nopad,
    b64encode_nopad,
    hash_password,
    verify_at_full_cost,
)
from chasquid.errors import ChasquidError
from chasquid.fileio import atomic_write
from chasquid.normalize import NormalizationError, normalize_user

FORMAT_VERSION = 1
# The file holds password hashes: readable by its owner only (chasquid's 0660
# would let the whole group run offline guessing against them).
FILE_MODE = 0o600

_HEADER = (
    "# chasquid users database; format described in docs/users-format.md.\n"
    "# Edit with `chasquid-util user-add` / `user-remove`.\n"
)
# chasquid's own format starts (after comments) with a `users` field holding a message.
_LEGACY_START = re.compile(r"\A(?:\s|#[^\n]*)*users\s*:?\s*[{<\[]")
_COMMENTS_ONLY = re.compile(r"\A(?:\s|#[^\n]*)*\Z")


class UserDBError(ChasquidError):
    """A users file that cannot be read or written, or an invalid user; names file and line."""


def _check_name(user: str) -> None:
    try:
        normalized = normalize_user(user)
    except NormalizationError as e:
        raise UserDBError(f"invalid username {user!r}: {e}") from None
    if normalized != user:
        raise UserDBError(f"invalid username {user!r}: not normalized (it would be {normalized!r})")


@dataclass(frozen=True, eq=False)
class UserDB:
    """An immutable snapshot of one domain's users."""

    _entries: Mapping[str, Entry] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UserDB:
        """Read a users file; a missing file is an empty database.

        Both this project's YAML format and chasquid's protobuf-text format are
        accepted.  Anything unreadable raises UserDBError naming file and line.
        """
        source = os.fspath(path)
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            return cls()
        except OSError as e:
            raise UserDBError(f"{source}: cannot read users file: {e.strerror or e}") from None
        return cls(MappingProxyType(parse_users(data, source)))

    def exists(self, user: str) -> bool:
        """Whether the user has an entry (receive-only users exist too)."""
        return user in self._entries

    def authenticate(self, user: str, password: str) -> bool:
        """Whether password is the user's; never raises.

        This is deliberately slow (scrypt, tens of milliseconds) and blocking:
        async code runs it in a thread (``asyncio.to_thread``). It costs as
        much for an unknown or receive-only user as for a wrong password, so
        its timing does not reveal who exists.
        """
        return verify_at_full_cost(self._entries.get(user), password)

    def entry(self, user: str) -> Entry | None:
        """The stored entry of user, or None."""
        return self._entries.get(user)

    def users(self) -> list[str]:
        """The user names, sorted."""
        return sorted(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.users())

    def _with(self, user: str, entry: Entry) -> UserDB:
        _check_name(user)
        entries = dict(self._entries)
        entries[user] = entry
        return UserDB(MappingProxyType(entries))

    def with_user(self, user: str, password: str) -> UserDB:
        """A copy where user has a new scrypt hash of password (created or overwritten)."""
        _check_name(user)  # before hashing: a bad name should not cost a scrypt run
        return self._with(user, hash_password(password))

    def with_receive_only(self, user: str) -> UserDB:
        """A copy where user exists but can never authenticate."""
        return self._with(user, ReceiveOnly())

    def with_entry(self, user: str, entry: Entry) -> UserDB:
        """A copy where user has entry as it is (used when importing)."""
        return self._with(user, entry)

    def without(self, user: str) -> UserDB:
        """A copy without user (the same content if user was absent)."""
        entries = dict(self._entries)
        entries.pop(user, None)
        return UserDB(MappingProxyType(entries))

    def merged(self, other: UserDB) -> UserDB:
        """A copy with every entry of other added; other's entries win on equal names."""
        entries = dict(self._entries)
        entries.update(other._entries)
        return UserDB(MappingProxyType(entries))

    def to_yaml(self) -> str:
        """The text save() writes."""
        return dump_users(self._entries)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the database atomically, mode 0600.

        The owner and group are those of the existing file, or for a new file
        those of its directory, so that a file written by root stays readable by a
        daemon running as the owner of the config dir.
        """
        target = os.fspath(path)
        try:
            try:
                old = os.stat(target)
            except FileNotFoundError:
                old = os.stat(os.path.dirname(os.path.abspath(target)))
        except OSError as e:
            raise UserDBError(f"{target}: cannot write users file: {e.strerror or e}") from None
        try:
            atomic_write(
                target,
                self.to_yaml().encode("utf-8"),
                mode=FILE_MODE,
                owner=(old.st_uid, old.st_gid),
            )
        except OSError as e:
            raise UserDBError(f"{target}: cannot write users file: {e.strerror or e}") from None


def _entry_to_yaml(entry: Entry) -> dict[str, Any]:
    match entry:
        case PasswordHash(hash=text):
            return {"password": text}
        case RawScrypt(log_n=log_n, r=r, p=p, salt=salt, key=key):
            return {
                "scrypt": {
                    "ln": log_n,
                    "r": r,
                    "p": p,
                    "salt": b64encode_nopad(salt),
                    "key": b64encode_nopad(key),
                }
            }
        case Plain(password=pw):
            try:
                return {"plain": pw.decode("utf-8")}
            except UnicodeDecodeError:
                return {"plain": pw}  # written as !!binary, read back as bytes
        case _:
            return {"receive_only": True}


def dump_users(entries: Mapping[str, Entry]) -> str:
    """Render entries in this project's YAML users format."""
    doc = {
        "version": FORMAT_VERSION,
        "users": {name: _entry_to_yaml(entries[name]) for name in sorted(entries)},
    }
    body = yaml.safe_dump(doc, default_flow_style=False, allow_unicode=True, sort_keys=False)
    return _HEADER + body


def parse_users(data: bytes, source: str) -> dict[str, Entry]:
    """Parse the bytes of a users file in either format; UserDBError names file and line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserDBError(f"{source}:{line}: users file is not valid UTF-8") from None
    if _COMMENTS_ONLY.match(text):
        return {}
    try:
        return _parse_text(text, source)
    except RecursionError:
        # PyYAML composes nested collections recursively.
        raise UserDBError(f"{source}: users file is nested too deeply to be valid") from None


def _parse_text(text: str, source: str) -> dict[str, Entry]:
    if _LEGACY_START.match(text):
        doc = _yaml_mapping(text)
        if doc is None or "version" not in doc:
            try:
                return parse_legacy(text, source)
            except LegacyUserDBError as e:
                if doc is None:
                    raise UserDBError(
                        f"{e} (read as chasquid's protobuf-text users format)"
                    ) from None
                # Valid YAML that is not chasquid's format: report what our format lacks.
    return _parse_yaml(text, source)


def _yaml_mapping(text: str) -> dict[object, object] | None:
    """The top-level mapping if text is YAML with one, else None."""
    try:
        doc = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


class _Problem(Exception):
    """A shape error inside one node; turned into UserDBError with file and line."""

    def __init__(self, node: yaml.Node, message: str) -> None:
        super().__init__(message)
        self.node = node


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _parse_yaml(text: str, source: str) -> dict[str, Entry]:
    try:
        # The reader rejects control characters (e.g. NUL) as soon as it is made.
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as e:
        raise UserDBError(f"{source}: invalid YAML: {e}") from None
    try:
        root = loader.get_single_node()
        if root is None:
            return {}
        return _read_root(loader, root)
    except _Problem as p:
        raise UserDBError(f"{source}:{_line(p.node)}: {p}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise UserDBError(f"{where}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise UserDBError(f"{source}: invalid YAML: {e}") from None
    finally:
        loader.dispose()


def _key(loader: yaml.SafeLoader, node: yaml.Node) -> object:
    return loader.construct_object(node, deep=True)


def _read_root(loader: yaml.SafeLoader, root: yaml.Node) -> dict[str, Entry]:
    if not isinstance(root, yaml.MappingNode):
        raise _Problem(root, "the users file must be a mapping with 'version' and 'users' keys")
    version: object = None
    users_node: yaml.Node | None = None
    for knode, vnode in root.value:
        key = _key(loader, knode)
        if key == "version":
            version = loader.construct_object(vnode, deep=True)
            if version != FORMAT_VERSION:
                raise _Problem(vnode, f"unsupported version {version!r} (expected 1)")
        elif key == "users":
            users_node = vnode
        else:
            raise _Problem(knode, f"unknown key {key!r} (expected 'version' and 'users')")
    if version is None:
        raise _Problem(root, "missing 'version: 1'")
    if users_node is None or (
        isinstance(users_node, yaml.ScalarNode) and users_node.tag.endswith(":null")
    ):
        return {}
    if not isinstance(users_node, yaml.MappingNode):
        raise _Problem(users_node, "'users' must be a mapping of user name to entry")
    entries: dict[str, Entry] = {}
    for knode, vnode in users_node.value:
        name = _key(loader, knode)
        if not isinstance(name, str):
            raise _Problem(knode, f"user name {name!r} must be a string (quote it)")
        try:
            _check_name(name)
        except UserDBError as e:
            raise _Problem(knode, str(e)) from None
        if name in entries:
            raise _Problem(knode, f"user {name!r} is listed more than once")
        value = loader.construct_object(vnode, deep=True)
        try:
            entries[name] = _entry_from_yaml(value)
        except ValueError as e:
            raise _Problem(vnode, f"user {name!r}: {e}") from None
    return entries


_ENTRY_KINDS = "one of 'password', 'receive_only: true', 'plain' or 'scrypt'"


def _entry_from_yaml(value: object) -> Entry:
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f"entry must be a mapping with exactly {_ENTRY_KINDS}")
    ((kind, data),) = value.items()
    if kind == "password":
        if not isinstance(data, str):
            raise ValueError("'password' must be a hash string")
        return PasswordHash(data)
    if kind == "receive_only":
        if data is not True:
            raise ValueError("'receive_only' must be true (remove the user to delete it)")
        return ReceiveOnly()
    if kind == "plain":
        if isinstance(data, str):
            return Plain(data.encode("utf-8"))
        if isinstance(data, bytes):
            return Plain(data)
        raise ValueError("'plain' must be a string")
    if kind == "scrypt":
        return _raw_scrypt(data)
    raise ValueError(f"unknown key {kind!r}; an entry has {_ENTRY_KINDS}")


def _raw_scrypt(data: object) -> RawScrypt:
    fields = ("ln", "r", "p", "salt", "key")
    if not isinstance(data, dict) or set(data) != set(fields):
        raise ValueError("'scrypt' must have exactly the keys ln, r, p, salt, key")
    for k in ("ln", "r", "p"):
        if type(data[k]) is not int:
            raise ValueError(f"'scrypt.{k}' must be an integer")
    for k in ("salt", "key"):
        if not isinstance(data[k], str):
            raise ValueError(f"'scrypt.{k}' must be a base64 string")
    return RawScrypt(
        data["ln"],
        data["r"],
        data["p"],
        b64decode_nopad(data["salt"]),
        b64decode_nopad(data["key"]),
    )
