"""Address normalization: user names, domains, drop characters and suffixes.

Internally every domain is kept in Unicode form, lower case; the ASCII (IDNA)
form is produced only for the wire.  User parts follow the PRECIS
UsernameCaseMapped profile (RFC 8265).

Every public function raises only :class:`NormalizationError`.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import idna
import precis_i18n

from chasquid.errors import ChasquidError
from chasquid.goquote import go_quote

_ACE_PREFIX = "xn--"
# Bounds the NFC/lowercase fixed-point loop; real text settles in one or two rounds.
_MAX_ROUNDS = 8


class NormalizationError(ChasquidError):
    """A user name, domain or address that cannot be normalized."""


def split_addr(addr: str) -> tuple[str, str]:
    """Split an address at the first ``@`` into (user, domain); no ``@`` gives domain ``""``."""
    user, _, domain = addr.partition("@")
    return user, domain


_USERNAME_PROFILE = precis_i18n.get_profile("UsernameCaseMapped")


@functools.lru_cache(maxsize=4096)
def normalize_user(user: str) -> str:
    """Apply the PRECIS UsernameCaseMapped profile (width map, lower case, NFC, validation).

    Memoized: every RCPT normalizes the same few local parts several times (existence
    check, aliases, clean), and the profile is the costliest step of a transaction.
    """
    try:
        result = _USERNAME_PROFILE.enforce(user)
    except UnicodeError as e:
        raise _invalid_user(user, _precis_problem(e)) from None
    except (ValueError, TypeError, IndexError) as e:
        raise _invalid_user(user, str(e)) from None
    if not isinstance(result, str):
        raise _invalid_user(user, "it cannot be normalized")
    return result


def _invalid_user(user: str, problem: str) -> NormalizationError:
    return NormalizationError(f"invalid user name {go_quote(user)}: {problem}")


# What precis_i18n's reasons ("DISALLOWED/<kind>") mean, in words: the kind of
# character found, or the problem with the whole name.
_CHARACTER_KINDS = {
    "spaces": "space",
    "symbols": "symbol",
    "punctuation": "punctuation mark",
    "controls": "control character",
    "precis_ignorable_properties": "invisible character",
    "old_hangul_jamo": "old Hangul jamo",
    "unassigned": "unassigned code point",
}
_WHOLE_NAME = {
    "empty": "it is empty",
    "bidi_rule": "it mixes right-to-left and left-to-right text in a way that is not allowed",
    "not_idempotent": "it changes each time it is normalized",
}


def describe_character(c: str) -> str:
    """``"é" (U+00E9 LATIN SMALL LETTER E WITH ACUTE)``; an invisible one without its glyph."""
    name = unicodedata.name(c, "")
    label = f"(U+{ord(c):04X} {name})" if name else f"(U+{ord(c):04X})"
    if not c.isprintable() or c.isspace():
        return label
    return f'"{c}" {label}'


def _precis_problem(e: UnicodeError) -> str:
    """A precis_i18n error in words: which character is not allowed, and where."""
    kind = str(getattr(e, "reason", "")).removeprefix("DISALLOWED/")
    if kind in _WHOLE_NAME:
        return _WHOLE_NAME[kind]
    text, start = getattr(e, "object", ""), getattr(e, "start", -1)
    if not isinstance(text, str) or not 0 <= start < len(text):
        return f"it is not allowed ({kind or e})"
    what = _CHARACTER_KINDS.get(kind, "character")
    return (
        f"the {what} {describe_character(text[start])} at position {start + 1} "
        "is not allowed in a user name"
    )


def _fold(label: str) -> str:
    """NFC then full lower case, repeated until stable (lower case can undo NFC)."""
    for _ in range(_MAX_ROUNDS):
        folded = unicodedata.normalize("NFC", label).lower()
        if folded == label:
            return folded
        label = folded
    return label


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def _decode_label(label: str, domain: str) -> str:
    """Decode one already-folded ``xn--`` label with raw punycode (no IDNA validation)."""
    payload = label[len(_ACE_PREFIX) :]
    bad = (
        f"invalid domain {go_quote(domain)}: the label {go_quote(label)} starts with "
        '"xn--" but is not valid punycode'
    )
    if not payload or not payload.isascii() or payload.endswith("-"):
        raise NormalizationError(bad)
    try:
        decoded = payload.encode("ascii").decode("punycode")
    except (UnicodeError, ValueError, IndexError, OverflowError):
        raise NormalizationError(bad) from None
    decoded = _fold(decoded)
    # An A-label always stands for a non-ASCII name; an ASCII result (or one that is
    # itself an A-label) would decode differently a second time.
    if decoded.isascii() or decoded.startswith(_ACE_PREFIX) or _has_surrogate(decoded):
        raise NormalizationError(bad)
    if "." in decoded:
        raise NormalizationError(bad)
    return decoded


def normalize_domain(domain: str) -> str:
    """Return the domain in Unicode form: ``xn--`` labels decoded, NFC, lower case.

    Labels other than ``xn--`` ones are not validated, so names such as
    ``_dmarc`` or empty labels are kept.  The ``xn--`` prefix is recognised in any
    case (``XN--LCA`` is ``ñ``) so that the result is stable when normalized again.
    """
    if _has_surrogate(domain):
        raise NormalizationError(
            f"invalid domain {go_quote(domain)}: it contains surrogate characters"
        )
    labels = []
    for raw in domain.split("."):
        label = _fold(raw)
        if label.startswith(_ACE_PREFIX):
            label = _decode_label(label, domain)
        labels.append(label)
    return ".".join(labels)


def normalize_addr(addr: str) -> str:
    """Normalize the user (PRECIS) and the domain of an address; no ``@`` gives ``user@``."""
    user, domain = split_addr(addr)
    norm_user = normalize_user(user)
    if "@" in norm_user:
        # Width mapping turns U+FF20 into "@", which would move the split point.
        raise NormalizationError(
            f'invalid address {go_quote(addr)}: its user part holds a character that stands for "@"'
        )
    return f"{norm_user}@{normalize_domain(domain)}"


def domain_to_unicode(addr: str) -> str:
    """Normalize only the domain of an address; the user part is kept exactly; ``<>`` as is."""
    if addr == "<>":
        return addr
    user, domain = split_addr(addr)
    return f"{user}@{normalize_domain(domain)}"


def _label_to_ascii(label: str, domain: str) -> str:
    if label.isascii():
        return label
    try:
        mapped = idna.uts46_remap(label, std3_rules=False, transitional=False)
        encoded = idna.alabel(mapped).decode("ascii")
    except (ValueError, IndexError, TypeError) as e:
        raise NormalizationError(
            f"invalid domain {go_quote(domain)}: the label {go_quote(label)} cannot be "
            f"written in ASCII: {e}"
        ) from None
    return encoded


def domain_to_ascii(domain: str) -> str:
    """Return the ASCII (IDNA, punycode) wire form of a domain.

    ASCII labels are kept as they are (lower case); other labels go through UTS 46
    mapping and IDNA2008 encoding.  Names whose ASCII form would not normalize
    back to the same domain cannot be represented and raise NormalizationError.
    """
    norm = normalize_domain(domain)
    result = ".".join(_label_to_ascii(label, domain) for label in norm.split("."))
    if normalize_domain(result) != norm:
        raise NormalizationError(
            f"invalid domain {go_quote(domain)}: it cannot be written in ASCII without "
            f"changing it ({go_quote(result)} means something else)"
        )
    return result


def addr_to_ascii(addr: str) -> str:
    """Convert the domain of an address to its ASCII form; the user part is kept exactly."""
    if addr == "<>" or "@" not in addr:
        return addr
    user, domain = split_addr(addr)
    return f"{user}@{domain_to_ascii(domain)}"


def _try_normalize_user(user: str) -> str:
    try:
        normalized = normalize_user(user)
    except NormalizationError:
        return user
    # A user part that normalizes to one with "@" would change where the address splits.
    return user if "@" in normalized else normalized


def _first_separator(user: str, separators: str) -> int:
    positions = [i for i, c in enumerate(user) if c in separators]
    return positions[0] if positions else len(user)


def _drop(text: str, drops: str) -> str:
    return "".join(c for c in text if c not in drops)


def _rejoin(addr: str, user: str) -> str:
    _, at, domain = addr.partition("@")
    return f"{user}{at}{domain}"


def remove_drops(addr: str, drops: str, separators: str) -> str:
    """Remove drop characters before the first suffix separator of the user part.

    The separator and the suffix are kept verbatim; the user part is then
    normalized if it can be (otherwise kept as computed).  The domain is untouched.
    """
    user, _ = split_addr(addr)
    cut = _first_separator(user, separators)
    stripped = _drop(user[:cut], drops) + user[cut:]
    return _rejoin(addr, _try_normalize_user(stripped))


def clean(addr: str, drops: str, separators: str) -> str:
    """Cut the user part at the first suffix separator, remove drop characters, normalize.

    The result's user part never contains a separator or a drop character, even
    when normalization (width mapping, lower case) would bring one back.
    """
    user, _ = split_addr(addr)
    for _ in range(_MAX_ROUNDS):
        cut = _drop(user[: _first_separator(user, separators)], drops)
        normalized = _try_normalize_user(cut)
        if normalized == cut:
            break
        user = normalized
    return _rejoin(addr, cut)


_LDH_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def valid_hostname(name: str) -> bool:
    """Whether ``name`` is a syntactically valid host name: ASCII letters, digits, hyphens.

    Labels of 1-63 characters that neither start nor end with a hyphen, 253
    characters at most, one trailing dot allowed. IDNs must be given in their
    ASCII form (``domain_to_ascii``).
    """
    if not name or len(name) > 253:
        return False
    labels = name.removesuffix(".").split(".")
    return all(_LDH_LABEL.match(label) for label in labels)
