"""The user-database commands of chasquid-util: they touch files only, never the daemon."""

from __future__ import annotations

import contextlib
import os
import string
from dataclasses import dataclass
from pathlib import Path

from chasquid.confdir.layout import ConfigDir
from chasquid.confdir.passwords import ReceiveOnly
from chasquid.confdir.userdb import UserDB, UserDBError
from chasquid.goquote import go_quote
from chasquid.normalize import (
    NormalizationError,
    describe_character,
    domain_to_ascii,
    normalize_domain,
    normalize_user,
)
from chasquid_util.errors import UtilError

# Mode of a domain directory created by user-add.
DOMAIN_DIR_MODE = 0o755


@dataclass(frozen=True)
class UserTarget:
    """A user of a domain, resolved against the config dir, with the domain's database."""

    user: str
    domain: str
    domain_dir: Path
    users_file: Path
    db: UserDB

    @property
    def address(self) -> str:
        """The user as `user@domain`."""
        return f"{self.user}@{self.domain}"


@dataclass(frozen=True)
class UserEntry:
    """One line of `user-list`."""

    user: str
    domain: str
    receive_only: bool = False

    @property
    def address(self) -> str:
        """The user as `user@domain`."""
        return f"{self.user}@{self.domain}"


def require_config_dir(config_dir: Path) -> ConfigDir:
    """The config dir if it is a directory; UtilError otherwise (nothing is created)."""
    if not config_dir.is_dir():
        raise UtilError(
            f'Config directory "{config_dir}" does not exist; '
            "point to the right one with -C=DIR or --config_dir=DIR"
        )
    return ConfigDir(config_dir)


# ASCII characters a domain name may hold; other ASCII characters (spaces, "@",
# "/", quotes, ...) are typing mistakes, and a directory named with them would
# never receive mail.
_DOMAIN_ASCII = frozenset(string.ascii_letters + string.digits + "-_.")


def check_domain(domain: str) -> str:
    """Validate a domain typed by the operator and return its normalized form."""
    if not domain:
        raise UtilError("Domain missing, username should be of the form 'user@domain'")
    quoted = go_quote(domain)
    if domain.strip(".") == "" or domain.startswith("."):
        raise UtilError(f"Invalid domain {quoted}: not usable as a directory name")
    for i, c in enumerate(domain):
        if c.isascii() and c not in _DOMAIN_ASCII:
            raise UtilError(
                f"Invalid domain {quoted}: the character {describe_character(c)} at position "
                f'{i + 1} is not allowed in a domain name (letters, digits, "-" and "." are)'
            )
    try:
        normalized = normalize_domain(domain)
        domain_to_ascii(normalized)
    except NormalizationError as e:
        raise UtilError(sentence(e)) from None
    return normalized


def sentence(e: Exception) -> str:
    """A library error (``invalid user name ...``) as the sentence a command prints."""
    message = str(e)
    return message[:1].upper() + message[1:]


def find_domain_dir(cdir: ConfigDir, domain: str) -> Path:
    """The directory of domain: the one as typed, else one whose name normalizes the same.

    When none exists, the path of a new directory under the normalized name is
    returned, so that `Example.COM` and `example.com` never become two domains.
    """
    normalized = check_domain(domain)
    exact = cdir.domain_dir(domain)
    if exact.exists():
        return exact
    try:
        names = sorted(os.listdir(cdir.domains))
    except OSError:
        names = []
    for name in names:
        try:
            if normalize_domain(name) == normalized and (cdir.domains / name).is_dir():
                return cdir.domain_dir(name)
        except NormalizationError:
            continue
    return cdir.domain_dir(normalized)


def split_user_address(address: str) -> tuple[str, str]:
    """Split `user@domain` at the first `@`; UtilError when the domain is missing."""
    user, _, domain = address.partition("@")
    if not domain:
        raise UtilError("Domain missing, username should be of the form 'user@domain'")
    return user, domain


def load_db(path: Path) -> UserDB:
    """Load a users file (missing = empty), turning errors into UtilError."""
    try:
        return UserDB.load(path)
    except (UserDBError, OSError) as e:
        raise UtilError(f"Error loading database: {e}") from None


def resolve_user(config_dir: Path, address: str) -> UserTarget:
    """Validate `user@domain`, find the domain's directory and load its database.

    Nothing is written; the domain directory may not exist yet.
    """
    cdir = require_config_dir(config_dir)
    raw_user, raw_domain = split_user_address(address)
    domain_dir = find_domain_dir(cdir, raw_domain)
    users_file = domain_dir / "users"
    db = load_db(users_file)
    try:
        user = normalize_user(raw_user)
    except NormalizationError as e:
        raise UtilError(sentence(e)) from None
    return UserTarget(user, domain_dir.name, domain_dir, users_file, db)


def add_user(target: UserTarget, password: str | None) -> bool:
    """Store the user (receive-only when password is None); return whether the domain dir was made.

    An existing user is overwritten. The file is written atomically, mode 0660.
    """
    try:
        db = (
            target.db.with_receive_only(target.user)
            if password is None
            else target.db.with_user(target.user, password)
        )
    except UserDBError as e:
        raise UtilError(f"Error adding user: {e}") from None
    return _save_in_domain_dir(db, target.domain_dir, target.users_file)


def remove_user(target: UserTarget) -> None:
    """Remove the user; UtilError `Unknown user` if absent."""
    if not target.db.exists(target.user):
        raise UtilError("Unknown user")
    _save(target.db.without(target.user), target.users_file)


def authenticate(target: UserTarget, password: str) -> bool:
    """Check the password against the users file (no daemon, no Dovecot)."""
    return target.db.exists(target.user) and target.db.authenticate(target.user, password)


def check_userdb(config_dir: Path, domain: str) -> int:
    """Load a domain's users file and return its number of users."""
    cdir = require_config_dir(config_dir)
    path = find_domain_dir(cdir, domain) / "users" if domain else cdir.users_file(domain)
    if not path.exists():
        raise UtilError(f'Error: file "{path}" does not exist')
    return len(load_db(path))


def local_domains(config_dir: Path) -> list[str]:
    """Names of the domain directories of the config dir, sorted."""
    cdir = ConfigDir(config_dir)
    try:
        return sorted(e.name for e in os.scandir(cdir.domains) if e.is_dir())
    except OSError:
        return []


def list_users(config_dir: Path, domain: str | None = None) -> list[UserEntry]:
    """Every user of one domain (or of all domains), sorted by domain then user."""
    cdir = require_config_dir(config_dir)
    if domain is None:
        dirs = [cdir.domain_dir(d) for d in local_domains(config_dir)]
    else:
        found = find_domain_dir(cdir, domain)
        if not found.is_dir():
            raise UtilError(f'Unknown domain "{domain}": there is no directory {found}')
        dirs = [found]
    entries: list[UserEntry] = []
    for d in dirs:
        db = load_db(d / "users")
        entries.extend(
            UserEntry(u, d.name, isinstance(db.entry(u), ReceiveOnly)) for u in db.users()
        )
    return entries


def import_users(config_dir: Path, domain: str, source: Path | None) -> int:
    """Convert chasquid's protobuf-text users file into our format; return the user count.

    With no source, the domain's own users file is converted in place. With a
    source, its users are merged into the domain's database (imported entries
    win over existing ones of the same name). Hashes are kept as they are.
    """
    cdir = require_config_dir(config_dir)
    domain_dir = find_domain_dir(cdir, domain)
    target = domain_dir / "users"
    src = target if source is None else source
    if not src.is_file():
        raise UtilError(f'Error: file "{src}" does not exist')
    imported = load_db(src)
    db = load_db(target) if source is not None else UserDB()
    try:
        db = db.merged(imported)
    except UserDBError as e:
        raise UtilError(f"Error importing users: {e}") from None
    _save_in_domain_dir(db, domain_dir, target)
    return len(imported)


def _save_in_domain_dir(db: UserDB, domain_dir: Path, path: Path) -> bool:
    """Save db at path, creating domain_dir first if needed; return whether it was created.

    A directory made here is removed again if the save fails: an error changes nothing.
    """
    if domain_dir.is_dir():
        _save(db, path)
        return False
    try:
        os.makedirs(domain_dir, mode=DOMAIN_DIR_MODE)
    except OSError as e:
        raise UtilError(f"Error creating database dir: {e}") from None
    try:
        _save(db, path)
    except UtilError:
        with contextlib.suppress(OSError):
            domain_dir.rmdir()
        raise
    return True


def _save(db: UserDB, path: Path) -> None:
    try:
        db.save(path)
    except (UserDBError, OSError) as e:
        raise UtilError(f"Error writing database: {e}") from None
