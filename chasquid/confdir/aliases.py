"""Aliases files and alias resolution, including the alias-resolve hook.

The file syntax is documented for users in docs/aliases.md. Resolution goes
beyond chasquid in two ways: an alias that
lists its own address delivers to that address instead of looping, and an
existing user wins over the catch-all after suffix and drop-character removal.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from chasquid.errors import ChasquidError
from chasquid.normalize import (
    NormalizationError,
    clean,
    normalize_addr,
    remove_drops,
    split_addr,
)
from chasquid.programs.hooks import HookError, HookMissingError, run_hook

#: Maximum depth of alias expansion before resolution fails.
RECURSION_LIMIT = 10
#: Seconds the alias-resolve hook may run before it is killed.
HOOK_TIMEOUT = 5.0
#: Longest line accepted in an aliases file.
MAX_LINE = 64 * 1024

_VIA = " via "


class AliasError(ChasquidError):
    """An aliases file that does not parse, or a resolution that failed."""


class RecipientKind(enum.StrEnum):
    """How a resolved recipient is delivered."""

    EMAIL = "email"
    PIPE = "pipe"
    FORWARD = "forward"


@dataclass(frozen=True)
class Recipient:
    """One resolved recipient: an address, a pipe command, or an address forwarded via servers."""

    address: str
    kind: RecipientKind = RecipientKind.EMAIL
    via: tuple[str, ...] = ()


class RcptStatus(enum.Enum):
    """Outcome of the RCPT-time existence check for a local recipient."""

    ACCEPT = "accept"
    UNKNOWN = "unknown"
    TEMPORARY_ERROR = "temporary-error"


class UserStore(Protocol):
    """What the resolver needs from a domain's user database."""

    def exists(self, user: str) -> bool:
        """True if user has an entry (including receive-only)."""
        ...


#: Asked with `user@domain` when a domain's store does not know the user
#: (e.g. Dovecot); raises ChasquidError or OSError when the backend fails.
UserFallback = Callable[[str], Awaitable[bool]]
#: Told each alias-resolve hook outcome: notset, skip, success, fail or parse_err.
HookResultListener = Callable[[str], None]


class _RhsError(Exception):
    """A right side that does not parse; the caller adds where it came from."""


def _normalized(address: str) -> str:
    try:
        return normalize_addr(address)
    except NormalizationError as e:
        raise _RhsError(f"right-side: normalizing address {address!r}: {e}") from None


def _with_domain(address: str, domain: str) -> str:
    return address if "@" in address else f"{address}@{domain}"


def parse_rhs(rhs: str, domain: str) -> tuple[Recipient, ...]:
    """Parse the right side of an alias (or a hook's output) with implicit domain `domain`.

    Raises AliasError with the bare message (no file or line).
    """
    try:
        return _parse_rhs(rhs.strip(), domain)
    except _RhsError as e:
        raise AliasError(str(e)) from None


def _parse_rhs(rhs: str, domain: str) -> tuple[Recipient, ...]:
    if rhs.startswith("|"):
        command = rhs[1:].strip()
        if not command:
            raise _RhsError("right-side: the pipe alias is missing a command")
        return (Recipient(command, RecipientKind.PIPE),)
    result: list[Recipient] = []
    for raw in rhs.split(","):
        element = raw.strip()
        if not element:
            continue
        # Looked for before trimming, so that ", via x" is a forward without address.
        if _VIA in raw:
            addr_part, _, servers_part = raw.partition(_VIA)
            addr_part = addr_part.strip()
            if not addr_part:
                raise _RhsError("right-side: forwarding alias is missing the address")
            servers = tuple(s.strip() for s in servers_part.split("/"))
            if any(not s for s in servers):
                raise _RhsError("right-side: empty server in via list")
            address = _normalized(_with_domain(addr_part, domain))
            result.append(Recipient(address, RecipientKind.FORWARD, servers))
        else:
            result.append(Recipient(_normalized(_with_domain(element, domain))))
    return tuple(result)


def alias_key(user: str, domain: str, drops: str, separators: str) -> str:
    """The table key of a left side `user` in `domain`: drops removed, normalized if possible."""
    key = remove_drops(f"{user}@{domain}", drops, separators)
    try:
        return normalize_addr(key)
    except NormalizationError:
        return key


def parse_aliases(
    text: str, domain: str, source: str, drops: str, separators: str
) -> dict[str, tuple[Recipient, ...]]:
    """Parse an aliases file's text into {full address key: recipients}; the last entry wins.

    Errors are AliasError with the text `"<source>" line <N>: <message>`.
    """
    table: dict[str, tuple[Recipient, ...]] = {}
    for number, raw in enumerate(text.split("\n"), start=1):

        def fail(message: str, number: int = number) -> AliasError:
            return AliasError(f'"{source}" line {number}: {message}')

        if len(raw.encode("utf-8", "surrogateescape")) > MAX_LINE:
            raise fail(f"line longer than {MAX_LINE} bytes")
        line = raw.removesuffix("\r").strip()
        if not line or line.startswith("#"):
            continue
        if ":" not in line:
            raise fail("missing ':' in line")
        lhs, _, rhs = line.partition(":")
        lhs, rhs = lhs.strip(), rhs.strip()
        if not lhs or not rhs:
            raise fail("missing address or alias")
        if "@" in lhs:
            raise fail("left-side: cannot contain @")
        try:
            recipients = _parse_rhs(rhs, domain)
        except _RhsError as e:
            raise fail(str(e)) from None
        table[alias_key(lhs, domain, drops, separators)] = recipients
    return table


def load_aliases(
    path: str | os.PathLike[str], domain: str, drops: str, separators: str
) -> dict[str, tuple[Recipient, ...]]:
    """Read and parse an aliases file; a missing file is an empty table."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise AliasError(f'"{path}": {e.strerror or e}') from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise AliasError(f'"{path}" line {line}: invalid UTF-8') from None
    return parse_aliases(text, domain, str(path), drops, separators)


def _is_catchall_template(r: Recipient) -> bool:
    return r.kind is not RecipientKind.PIPE and split_addr(r.address)[0] == "*"


@dataclass(frozen=True)
class Resolver:
    """An immutable snapshot of every local domain's aliases, able to resolve addresses.

    `aliases` maps full-address keys to recipients for all domains together;
    `local_domains` are the domains where aliases, suffixes and drop characters
    apply; `users` gives each domain's user store (domains without one, like
    localhost, rely on `fallback`). `hook` is the alias-resolve program
    (checked for existence on every lookup), run in `hook_cwd`.
    """

    aliases: Mapping[str, tuple[Recipient, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    local_domains: frozenset[str] = frozenset()
    users: Mapping[str, UserStore] = field(default_factory=lambda: MappingProxyType({}))
    drops: str = "."
    separators: str = "+"
    hook: Path | None = None
    hook_cwd: Path | None = None
    hook_timeout: float = HOOK_TIMEOUT
    fallback: UserFallback | None = None
    on_hook_result: HookResultListener | None = field(default=None, compare=False)

    _hook_path: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Freeze the caller's dicts so the snapshot cannot change under a session.
        object.__setattr__(self, "aliases", MappingProxyType(dict(self.aliases)))
        object.__setattr__(self, "users", MappingProxyType(dict(self.users)))
        object.__setattr__(self, "_hook_path", "" if self.hook is None else str(self.hook))

    def hook_present(self) -> bool:
        """Whether the alias-resolve hook may run now (one stat: it may come and go).

        A stat failing for another reason than absence counts as present, so
        that running it reports the error.
        """
        if not self._hook_path:
            return False
        try:
            os.stat(self._hook_path)
        except FileNotFoundError:
            return False
        except OSError:
            return True
        return True

    def is_local(self, addr: str) -> bool:
        """True if addr's domain is empty or one of the local domains."""
        _, domain = split_addr(addr)
        return not domain or domain in self.local_domains

    def _count(self, result: str) -> None:
        if self.on_hook_result is not None:
            self.on_hook_result(result)

    async def _run_hook(self, addr: str) -> tuple[Recipient, ...]:
        if self.hook is None:
            self._count("notset")
            return ()
        try:
            result = await run_hook(self.hook, [addr], cwd=self.hook_cwd, timeout=self.hook_timeout)
        except HookMissingError:
            self._count("skip")
            return ()
        except HookError as e:
            self._count("fail")
            raise AliasError(str(e)) from None
        if not result.ok:
            self._count("fail")
            raise AliasError(result.error_text())
        output = result.stdout.decode("utf-8", "replace").strip()
        try:
            parsed = _parse_rhs(output, split_addr(addr)[1]) if output else ()
        except _RhsError as e:
            self._count("parse_err")
            raise AliasError(f"alias-resolve hook output: {e}") from None
        self._count("success")
        return parsed

    def _key(self, addr: str) -> str:
        return remove_drops(addr, self.drops, self.separators)

    async def lookup(self, addr: str, *, hook: bool | None = None) -> tuple[Recipient, ...]:
        """The file entries for addr's key followed by the hook's entries for addr.

        hook says whether the hook exists when the caller has just checked it
        (hook_present) for several look-ups in a row; None checks now.
        """
        entries = self.aliases.get(self._key(addr), ()) if self.aliases else ()
        if hook is None:
            hook = self.hook_present()
        if not hook:
            self._count("notset" if self.hook is None else "skip")
            return entries
        return entries + await self._run_hook(addr)

    async def _user_exists(self, user: str, domain: str) -> bool:
        store = self.users.get(domain)
        if store is not None and store.exists(user):
            return True
        if self.fallback is None:
            return False
        return await self.fallback(f"{user}@{domain}" if domain else user)

    async def resolve(self, addr: str) -> list[Recipient]:
        """Expand addr into its final recipients; AliasError on failure (hook, recursion)."""
        return await self._resolve(addr, 0)

    async def _resolve(self, addr: str, depth: int) -> list[Recipient]:
        if depth >= RECURSION_LIMIT:
            raise AliasError("recursion limit exceeded")
        user, domain = split_addr(addr)
        if domain not in self.local_domains:
            return [Recipient(addr)]

        hook = self.hook_present()
        looked_up = addr
        entries = await self.lookup(addr, hook=hook)
        if not entries:
            looked_up = clean(addr, self.drops, self.separators)
            entries = await self.lookup(looked_up, hook=hook)
        from_catchall = False
        if not entries:
            cleaned_user, _ = split_addr(looked_up)
            # The cleaned user is tried too, so an existing user
            # wins over the catch-all whatever suffix or drops were used.
            if await self._exists_backend(user, domain) or (
                cleaned_user != user and await self._exists_backend(cleaned_user, domain)
            ):
                return [Recipient(looked_up)]
            entries = await self.lookup(f"*@{domain}", hook=hook)
            if not entries:
                return [Recipient(looked_up)]
            from_catchall = True

        own_key = self._key(looked_up)
        result: list[Recipient] = []
        for entry in entries:
            if entry.kind is RecipientKind.PIPE:
                result.append(entry)
                continue
            if _is_catchall_template(entry):
                _, target_domain = split_addr(entry.address)
                entry = replace(entry, address=f"{user}@{target_domain}")
            elif not from_catchall and self._key(entry.address) == own_key:
                # An alias listing its own address keeps a copy for
                # the local user instead of expanding itself again.
                cleaned = clean(entry.address, self.drops, self.separators)
                result.append(replace(entry, address=cleaned))
                continue
            if entry.kind is RecipientKind.FORWARD:
                result.append(entry)
                continue
            result.extend(await self._resolve(entry.address, depth + 1))
        return result

    async def _exists_backend(self, user: str, domain: str) -> bool:
        try:
            return await self._user_exists(user, domain)
        except (ChasquidError, OSError) as e:
            raise AliasError(f"checking whether {user}@{domain} exists: {e}") from e

    async def alias_exists(self, addr: str) -> bool:
        """True if addr, its cleaned form or the domain's catch-all has aliases.

        Hook failures count as "no alias" here.
        """
        _, domain = split_addr(addr)
        # One existence check of the hook for the three look-ups of one RCPT.
        hook = self.hook_present()
        for candidate in (addr, clean(addr, self.drops, self.separators), f"*@{domain}"):
            try:
                if await self.lookup(candidate, hook=hook):
                    return True
            except AliasError:
                continue
        return False

    async def check_recipient(self, addr: str) -> RcptStatus:
        """RCPT-time rule for a normalized local address: aliases, then the user store.

        TEMPORARY_ERROR means a user backend failed (reply 451 4.4.3); UNKNOWN
        means 550 5.1.1.
        """
        if await self.alias_exists(addr):
            return RcptStatus.ACCEPT
        user, domain = split_addr(addr)
        cleaned_user, _ = split_addr(clean(addr, self.drops, self.separators))
        try:
            if await self._user_exists(cleaned_user, domain):
                return RcptStatus.ACCEPT
            if cleaned_user != user and await self._user_exists(user, domain):
                return RcptStatus.ACCEPT
        except (ChasquidError, OSError):
            return RcptStatus.TEMPORARY_ERROR
        return RcptStatus.UNKNOWN

    async def exists(self, addr: str) -> bool:
        """True if mail to the local address addr would be accepted at RCPT time.

        A failing user backend raises AliasError (callers wanting the
        three-way answer use check_recipient).
        """
        status = await self.check_recipient(addr)
        if status is RcptStatus.TEMPORARY_ERROR:
            raise AliasError(f"could not check whether {addr} exists: user backend error")
        return status is RcptStatus.ACCEPT
