"""Credentials of the users database: entry kinds, new hashes, verification.

Shared by the YAML users file (userdb.py) and the reader of chasquid's own
format (legacy_userdb.py).  Verification is CPU-heavy by design (scrypt) and
blocking: async callers run it in a thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass

from passlib.hash import scrypt as passlib_scrypt

# Parameters of every new hash; never lower them.
NEW_LOG_N = 14
NEW_R = 8
NEW_P = 1
SALT_BYTES = 16

# Stored parameters beyond these would let one users-file entry take gigabytes of
# memory or minutes of CPU per login attempt; such entries simply never authenticate.
_MAX_LOG_N = 22
_MAX_MEMORY = 1 << 30
_MAX_WORK = 1 << 26  # N * r * p


@dataclass(frozen=True)
class PasswordHash:
    """A password hash string in passlib's format, e.g. ``$scrypt$ln=14,r=8,p=1$salt$key``."""

    hash: str


@dataclass(frozen=True)
class RawScrypt:
    """scrypt parameters and key that passlib cannot express (key length other than 32)."""

    log_n: int
    r: int
    p: int
    salt: bytes
    key: bytes


@dataclass(frozen=True)
class Plain:
    """A clear-text password (legacy, for tests and debugging only)."""

    password: bytes


@dataclass(frozen=True)
class ReceiveOnly:
    """A user that exists (receives mail) but can never authenticate."""


Entry = PasswordHash | RawScrypt | Plain | ReceiveOnly


def b64encode_nopad(data: bytes) -> str:
    """Standard base64 without ``=`` padding, as in passlib's scrypt strings."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64decode_nopad(text: str) -> bytes:
    """Decode standard base64 with or without padding; ValueError when malformed."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"not valid base64: {e}") from None


def hash_password(password: str) -> PasswordHash:
    """A new scrypt hash (ln=14, r=8, p=1, 16-byte random salt) of password."""
    handler = passlib_scrypt.using(
        rounds=NEW_LOG_N, block_size=NEW_R, parallelism=NEW_P, salt_size=SALT_BYTES
    )
    return PasswordHash(handler.hash(password))


def scrypt_entry(log_n: int, r: int, p: int, salt: bytes, key: bytes) -> Entry:
    """The entry for raw scrypt parameters: a passlib string when passlib can express it."""
    if len(key) == 32:
        text = f"$scrypt$ln={log_n},r={r},p={p}${b64encode_nopad(salt)}${b64encode_nopad(key)}"
        try:
            passlib_scrypt.from_string(text)
        except (ValueError, TypeError):
            pass
        else:
            return PasswordHash(text)
    return RawScrypt(log_n, r, p, salt, key)


def _affordable(log_n: int, r: int, p: int) -> bool:
    if not (1 <= log_n <= _MAX_LOG_N and r >= 1 and p >= 1):
        return False
    n = 1 << log_n
    return 128 * r * n <= _MAX_MEMORY and n * r * p <= _MAX_WORK


def _scrypt_matches(password: bytes, salt: bytes, log_n: int, r: int, p: int, key: bytes) -> bool:
    if not key or not _affordable(log_n, r, p):
        return False
    try:
        derived = hashlib.scrypt(
            password,
            salt=salt,
            n=1 << log_n,
            r=r,
            p=p,
            dklen=len(key),
            maxmem=_MAX_MEMORY + (1 << 24),
        )
    except (ValueError, MemoryError, OverflowError):
        return False
    return hmac.compare_digest(derived, key)


def _verify_hash(password: bytes, text: str) -> bool:
    try:
        parsed = passlib_scrypt.from_string(text)
        log_n, r, p = int(parsed.rounds), int(parsed.block_size), int(parsed.parallelism)
        salt, key = bytes(parsed.salt), bytes(parsed.checksum)
    except (ValueError, TypeError, AttributeError):
        # Not a scrypt string passlib understands: the user exists but cannot log in.
        return False
    return _scrypt_matches(password, salt, log_n, r, p, key)


def verify(entry: Entry, password: str) -> bool:
    """Whether password matches entry; never raises (a broken entry just fails)."""
    try:
        pw = password.encode("utf-8")
    except UnicodeError:
        return False
    match entry:
        case PasswordHash(hash=text):
            return _verify_hash(pw, text)
        case RawScrypt(log_n=log_n, r=r, p=p, salt=salt, key=key):
            return _scrypt_matches(pw, salt, log_n, r, p, key)
        case Plain(password=stored):
            return hmac.compare_digest(pw, stored)
        case _:
            return False


# A check that can never succeed, at the cost of a new hash: what an identity
# with nothing to check (unknown, receive-only) costs, so that its answer takes
# as long as a wrong password's and tells nothing about who exists.
# Written as a users file writes a new hash, so that checking it takes exactly
# the path (passlib's parsing, then scrypt) a real user's check takes.
_NOTHING_MATCHES = PasswordHash(
    f"$scrypt$ln={NEW_LOG_N},r={NEW_R},p={NEW_P}"
    f"${b64encode_nopad(os.urandom(SALT_BYTES))}${b64encode_nopad(os.urandom(32))}"
)


def verify_at_full_cost(entry: Entry | None, password: str) -> bool:
    """``verify`` that costs at least one scrypt whatever the entry (None: unknown user).

    Unknown users, receive-only users and clear-text entries run one scrypt
    of the default parameters that cannot match, so that timing does not
    tell them from a user with a wrong password.
    """
    if isinstance(entry, PasswordHash | RawScrypt):
        return verify(entry, password)
    verify(_NOTHING_MATCHES, password)
    return entry is not None and verify(entry, password)
