"""Tests for chasquid.normalize: reference examples and properties over arbitrary text."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chasquid.normalize import (
    NormalizationError,
    addr_to_ascii,
    clean,
    domain_to_ascii,
    domain_to_unicode,
    normalize_addr,
    normalize_domain,
    normalize_user,
    remove_drops,
    split_addr,
)

# Text that looks like addresses: letters of several scripts, controls, '@', '.', 'xn--'.
_alphabet = st.characters(
    exclude_categories=["Cs"],  # surrogates cannot come from a UTF-8 wire
)
_pieces = st.one_of(
    st.text(_alphabet, max_size=6),
    st.sampled_from(
        ["xn--", "XN--", "@", ".", "+", "-", "lca", "aca-6ma", "ñ", "Ñ", "\x00", "\ud800"]
    ),
)
addr_text = st.lists(_pieces, max_size=8).map("".join)


@pytest.mark.parametrize(
    ("addr", "expected"),
    [("a@b", ("a", "b")), ("a@b@c", ("a", "b@c")), ("abc", ("abc", "")), ("<>", ("<>", ""))],
)
def test_split(addr: str, expected: tuple[str, str]) -> None:
    assert split_addr(addr) == expected


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("ÑAndÚ", "ñandú"),
        ("xn--aca-6ma", "ñaca"),
        ("xn--lca", "ñ"),
        ("e\u0301", "é"),
        ("Example.COM", "example.com"),
        ("_dmarc.Example.com", "_dmarc.example.com"),
        ("a..b.", "a..b."),
        ("", ""),
        ("XN--LCA", "ñ"),
        ("xn--n3h.net", "☃.net"),
    ],
)
def test_normalize_domain(domain: str, expected: str) -> None:
    assert normalize_domain(domain) == expected


@pytest.mark.parametrize("domain", ["xn---", "xn--xyz-ñ", "xn--", "a.xn--abc-", "xn--ab\ud800"])
def test_normalize_domain_errors(domain: str) -> None:
    with pytest.raises(NormalizationError, match="invalid domain"):
        normalize_domain(domain)


@pytest.mark.parametrize(
    ("user", "expected"),
    [("ÑAndÚ", "ñandú"), ("Pingüino", "pingüino"), ("a+b-c_d.e*f=g", "a+b-c_d.e*f=g")],
)
def test_normalize_user(user: str, expected: str) -> None:
    assert normalize_user(user) == expected


@pytest.mark.parametrize(
    "user",
    ["", "a b", "a\tb", "a\rb", "a\vb", "a\fb", "a\x85b", "a\xa0b", "\u265a", "\u00b9", "\u2163"],
)
def test_normalize_user_errors(user: str) -> None:
    with pytest.raises(NormalizationError, match=r"^invalid user name .*: (it is empty|the .*)"):
        normalize_user(user)


@pytest.mark.parametrize(
    ("user", "problem"),
    [
        ("", "it is empty"),
        ("a b", "the space (U+0020 SPACE) at position 2 is not allowed in a user name"),
        ("ab\x00", "the control character (U+0000) at position 3 is not allowed in a user name"),
        (
            "x\u265a",
            'the symbol "\u265a" (U+265A BLACK CHESS KING) at position 2 is not allowed in a '
            "user name",
        ),
        ("a\u0600", "it mixes right-to-left and left-to-right text in a way that is not allowed"),
    ],
)
def test_user_errors_say_what_is_wrong(user: str, problem: str) -> None:
    with pytest.raises(NormalizationError) as info:
        normalize_user(user)
    assert str(info.value).endswith(": " + problem)
    assert "precis" not in str(info.value) and "DISALLOWED" not in str(info.value)


def test_normalize_addr() -> None:
    assert normalize_addr("ÑAndÚ@xn--aca-6ma") == "ñandú@ñaca"
    assert normalize_addr("Pepe") == "pepe@"
    with pytest.raises(NormalizationError):
        normalize_addr("a b@x")
    with pytest.raises(NormalizationError):
        normalize_addr("ab@xn---")


def test_domain_to_unicode_keeps_user() -> None:
    assert domain_to_unicode("PePe@ÑAndÚ") == "PePe@ñandú"
    assert domain_to_unicode("<>") == "<>"
    with pytest.raises(NormalizationError):
        domain_to_unicode("pepe@xn---")


def test_ascii_forms() -> None:
    assert domain_to_ascii("ñandú.com") == "xn--and-6ma2c.com"
    assert domain_to_ascii("ÑAndÚ.COM") == "xn--and-6ma2c.com"
    assert domain_to_ascii("_dmarc.example.com") == "_dmarc.example.com"
    assert addr_to_ascii("Pepe@ñandú") == "Pepe@xn--and-6ma2c"
    assert addr_to_ascii("<>") == "<>"
    with pytest.raises(NormalizationError):
        domain_to_ascii("x" * 60 + "ñ" * 10)  # label longer than 63 octets
    with pytest.raises(NormalizationError):
        domain_to_ascii("a⒈b")  # UTS 46 maps it to a different name


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("a.b+c.d", "ab+c.d"),
        ("ño.ño+ña.ña", "ñoño+ña.ña"),
        ("a_b-c.d", "ab-c.d"),
        ("abc+blah", "abc+blah"),
        ("A.b+c@D.E", "ab+c@D.E"),
    ],
)
def test_remove_drops(addr: str, expected: str) -> None:
    assert remove_drops(addr, "._", "-+") == expected


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("a.bc+blah", "abc"),
        ("a.b~c", "abc"),
        ("ab-+xy", "ab"),
        ("ab+-xy", "ab"),
        ("ab-", "ab"),
        ("ab--xy", "ab"),
        ("ab+xy-z", "ab"),
        ("x.yz@d.ef", "xyz@d.ef"),
    ],
)
def test_clean(addr: str, expected: str) -> None:
    assert clean(addr, ".~", "-+") == expected


def test_empty_sets_disable_cleaning() -> None:
    assert clean("a.b+c@d", "", "") == "a.b+c@d"
    assert remove_drops("a.b+c@d", "", "+") == "a.b+c@d"


def test_clean_invalid_user_kept() -> None:
    assert clean("A B.c+d@x", ".", "+") == "A Bc@x"


_FUNCS: list[Callable[[str], str]] = [
    normalize_user,
    normalize_domain,
    normalize_addr,
    domain_to_unicode,
    domain_to_ascii,
    addr_to_ascii,
]


@settings(max_examples=300, deadline=None)
@given(addr_text)
@example("xn--xn---")
@example("a＠b@c")
@example("\u0130")
def test_only_normalization_errors(text: str) -> None:
    for func in _FUNCS:
        with contextlib.suppress(NormalizationError):
            func(text)
    remove_drops(text, ".", "+")
    clean(text, ".", "+")


@settings(max_examples=300, deadline=None)
@given(addr_text)
@example("\u0130")
@example("ẞ")
def test_normalize_idempotent(text: str) -> None:
    for func in (normalize_user, normalize_domain, normalize_addr, domain_to_unicode):
        try:
            once = func(text)
        except NormalizationError:
            continue
        assert func(once) == once, func.__name__


@settings(max_examples=300, deadline=None)
@given(addr_text)
@example("ÑAndÚ")
@example("ß.de")
def test_domain_ascii_round_trip(text: str) -> None:
    try:
        domain = normalize_domain(text)
        wire = domain_to_ascii(domain)
    except NormalizationError:
        return
    assert wire.isascii()
    assert normalize_domain(wire) == domain


@settings(max_examples=300, deadline=None)
@given(addr_text, st.text(_alphabet, max_size=3), st.text(_alphabet, max_size=3))
@example("ab＋x", ".", "+")
@example("A", "a", "+")
def test_clean_leaves_no_separator_or_drop(text: str, drops: str, seps: str) -> None:
    user, _ = split_addr(clean(text, drops, seps))
    assert not any(c in drops or c in seps for c in user)
