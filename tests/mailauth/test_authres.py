"""Authentication-Results: our field's layout, and forged fields naming this host removed."""

from __future__ import annotations

import pytest

from chasquid.mailauth import authres


def test_value_layout() -> None:
    assert authres.value("mx.example.com", None, []) is None
    assert authres.value("mx.example.com", ("pass", "matched mx"), [";dkim=none"]) == (
        "mx.example.com\n;spf=pass (matched mx)\n;dkim=none"
    )
    assert authres.value("mx", None, [';dkim=fail  reason="x"', "  header.d=a"]) == (
        'mx\n;dkim=fail  reason="x"\n  header.d=a'
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b" mx.example.com; spf=pass", "mx.example.com"),
        (b" MX.Example.COM.;dkim=none", "mx.example.com"),
        (b" (a comment) mx.example.com 1; none", "mx.example.com"),
        (b'\r\n\t"mx.example.com"; none', "mx.example.com"),
        (b"\n mx.example.com\n\t;dkim=pass", "mx.example.com"),
        (b" ", ""),
    ],
)
def test_authserv_id(value: bytes, expected: str) -> None:
    assert authres.authserv_id(value) == expected


def test_forged_fields_are_removed_and_others_kept() -> None:
    message = (
        b"Received: from x\n"
        b"Authentication-Results: mx.example.com;\n"
        b"\tdkim=pass header.d=bank.example\n"
        b"authentication-results : (forged) MX.EXAMPLE.COM; spf=pass\n"
        b"Authentication-Results: other.example; dkim=fail\n"
        b"Subject: hi\n"
        b"\n"
        b"Authentication-Results: mx.example.com; in the body\n"
    )
    cleaned = authres.remove_forged(message, ["mx.example.com", "smtp.example.com"])
    assert cleaned == (
        b"Received: from x\n"
        b"Authentication-Results: other.example; dkim=fail\n"
        b"Subject: hi\n"
        b"\n"
        b"Authentication-Results: mx.example.com; in the body\n"
    )
    clean = b"Subject: hi\n\nbody\n"
    assert authres.remove_forged(clean, ["mx.example.com"]) is clean
    assert authres.remove_forged(cleaned, ["mx.example.com"]) is cleaned
