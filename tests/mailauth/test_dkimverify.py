"""DKIM signing and verifying through the library, keys served by a test DNS server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
from helpers.dkimtest import write_keys, zone_for
from helpers.dns import dns_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chasquid.confdir.dkimkeys import DKIMKey
from chasquid.mailauth import dkimsign, dkimverify
from chasquid.mailauth.dkimverify import Verification, dns_lookup, fixed_lookup, verify

MESSAGE = (
    b"From: Ana <ana@example.com>\n"
    b"To: bob@example.org\n"
    b"Subject: hello\n"
    b"Date: Tue, 03 Jun 2025 10:11:12 +0200\n"
    b"Message-ID: <1@example.com>\n"
    b"\n"
    b"Hello  Bob,\n"
    b"\n"
    b"  bye.\n"
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DKIMKey]:
    specs = {"rsa": ("r1", "rsa"), "ed25519": ("e1", "ed25519"), "other": ("gone", "rsa")}
    return write_keys(tmp_path_factory.mktemp("keys"), "example.com", specs)


@pytest.fixture
def dns(keys: dict[str, DKIMKey], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, object]]:
    zone: dict[str, object] = dict(zone_for([keys["rsa"], keys["ed25519"]]))
    with dns_server(zone) as addr:  # type: ignore[arg-type]
        monkeypatch.setenv("CHASQUID_TEST_DNS", addr)
        yield zone


def signed(message: bytes, *keys: DKIMKey) -> bytes:
    return b"".join(reversed(dkimsign.sign(message, list(keys)))) + message


def check(message: bytes, **kw: object) -> Verification:
    return asyncio.run(verify(message, **kw))  # type: ignore[arg-type]


def results(v: Verification) -> list[str]:
    return [r.result for r in v.results]


@pytest.mark.parametrize("algo", ["rsa", "ed25519"])
def test_signed_message_passes(keys: dict[str, DKIMKey], dns: object, algo: str) -> None:
    v = check(signed(MESSAGE, keys[algo]))
    assert results(v) == ["pass"]
    r = v.results[0]
    assert r.domain == "example.com"
    assert v.lines() == [f";dkim=pass  header.b={r.b12}  header.d=example.com"]
    assert v.valid and v.found


def test_signature_layout(keys: dict[str, DKIMKey]) -> None:
    (field,) = dkimsign.sign(MESSAGE, [keys["rsa"]], now=1700000000)
    tags = dict(
        (k.strip(), re.sub(rb"\s+", b"", v))
        for k, _, v in (t.partition(b"=") for t in field.split(b":", 1)[1].split(b";"))
        if k.strip()
    )
    assert tags[b"a"] == b"rsa-sha256"
    assert tags[b"c"] == b"relaxed/relaxed"
    assert (tags[b"d"], tags[b"s"], tags[b"t"]) == (b"example.com", b"r1", b"1700000000")
    assert b"l" not in tags
    # Present fields once each, then the over-signed set; no Cc in the message, yet signed.
    assert tags[b"h"].split(b":") == [
        b"from", b"subject", b"date", b"to", b"message-id",
        b"from", b"subject", b"date", b"to", b"cc", b"message-id",
    ]  # fmt: skip


def test_every_key_signs_and_dkimpy_agrees(keys: dict[str, DKIMKey], dns: object) -> None:
    data = signed(MESSAGE, keys["rsa"], keys["ed25519"])
    assert data.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256")
    assert results(check(data)) == ["pass", "pass"]
    records = {k.dns_name() + ".": k.dns_value().encode() for k in (keys["rsa"], keys["ed25519"])}
    crlf = data.replace(b"\n", b"\r\n")
    for idx in (0, 1):
        d = dkim.DKIM(crlf)
        assert d.verify(idx=idx, dnsfunc=lambda name, timeout=5: records[name.decode()])


def test_added_from_or_changed_body_fail(keys: dict[str, DKIMKey], dns: object) -> None:
    good = signed(MESSAGE, keys["rsa"])
    v = check(good.replace(b"Hello  Bob", b"Hello Eve"))
    assert results(v) == ["fail"]
    assert v.results[0].reason.startswith("body hash mismatch")
    v = check(b"From: mallory@evil.example\n" + good)
    assert results(v) == ["fail"]
    assert v.results[0].reason == "signature did not verify"
    # Whitespace changes relaxed canonicalization forgives.
    assert results(check(good.replace(b"Subject: hello", b"Subject:   hello "))) == ["pass"]


def test_missing_key_is_permerror(keys: dict[str, DKIMKey], dns: object) -> None:
    v = check(signed(MESSAGE, keys["other"]))
    assert results(v) == ["permerror"]
    assert "NXDOMAIN" in v.results[0].reason
    assert v.lines()[1] == f"  header.b={v.results[0].b12}  header.d=example.com"


def test_dns_timeout_is_temperror(keys: dict[str, DKIMKey], dns: dict[str, object]) -> None:
    dns[keys["rsa"].dns_name()] = {"RCODE": ["NOREPLY"]}
    dns[keys["ed25519"].dns_name()] = {"RCODE": ["SERVFAIL"]}
    v = check(signed(MESSAGE, keys["rsa"], keys["ed25519"]), lookup=dns_lookup(timeout=0.5))
    # The last key's signature is on top.
    assert results(v) == ["temperror", "temperror"]
    assert v.results[0].reason == "key look-up failed (server failure)"
    assert v.results[1].reason == "key look-up timed out"


def test_key_records_that_cannot_verify(keys: dict[str, DKIMKey]) -> None:
    message = signed(MESSAGE, keys["rsa"])
    cases = {
        b"v=DKIM1; k=rsa; p=": "key revoked",
        b"v=DKIM1; k=rsa; h=sha1; p=" + keys["rsa"].dns_value().encode().split(b"p=")[1]: "sha256",
        b"v=DKIM1; k=ed25519; p=" + base64.b64encode(keys["ed25519"].public_key): "does not match",
        b"v=DKIM1; p=AAAA": "bad key",
        b"garbage": "key syntax error",
    }
    for record, reason in cases.items():
        v = check(message, lookup=fixed_lookup([record]))
        assert results(v) == ["permerror"], record
        assert reason in v.results[0].reason
    # A usable key that is not the signer's: the signature fails.
    v = check(message, lookup=fixed_lookup([keys["other"].dns_value().encode()]))
    assert results(v) == ["fail"]
    # Several records: the one that verifies wins.
    v = check(message, lookup=fixed_lookup([b"garbage", keys["rsa"].dns_value().encode()]))
    assert results(v) == ["pass"]


def tamper(message: bytes, old: bytes, new: bytes) -> bytes:
    assert old in message
    return message.replace(old, new, 1)


def without_from(message: bytes) -> bytes:
    """The message with `from` taken out of its first field's h= (folded or not)."""
    end = re.search(rb"\n(?=[^ \t])", message)
    assert end is not None
    field = re.sub(rb"from\s*:\s*", b"", message[: end.end()])
    assert b"from" not in field
    return field + message[end.end() :]


def test_malformed_signatures_are_permerror(keys: dict[str, DKIMKey], dns: object) -> None:
    good = signed(MESSAGE, keys["rsa"])
    lookup = fixed_lookup([keys["rsa"].dns_value().encode()])
    cases = {
        tamper(good, b"a=rsa-sha256", b"a=rsa-sha1"): "unsupported algorithm rsa-sha1",
        tamper(good, b"v=1;", b"v=2;"): "malformed signature",
        tamper(good, b"v=1;", b"v=1; v=1;"): "malformed signature",
        tamper(good, b" d=example.com;", b""): "malformed signature",
        without_from(good): "From is not signed",
        tamper(good, b"c=relaxed/relaxed", b"c=fancy"): "canonicalization",
        tamper(good, b"v=1;", b"v=1; l=99999;"): "l= is beyond the end of the body",
        b"DKIM-Signature: just text\n" + MESSAGE: "malformed signature",
        b"DKIM-Signature:\n" + MESSAGE: "malformed signature",
    }
    for data, reason in cases.items():
        v = check(data, lookup=lookup)
        assert results(v) == ["permerror"], data
        assert reason in v.results[0].reason, (reason, v.results[0].reason)
        (line, *_) = v.lines()
        assert line.startswith(';dkim=permerror  reason="')


def test_body_length_within_the_body_passes(keys: dict[str, DKIMKey]) -> None:
    # Signed by dkimpy with l=, then text appended: l= covers the original body only.
    crlf = MESSAGE.replace(b"\n", b"\r\n")
    pem = keys["rsa"].path.read_bytes()
    sig = dkim.sign(
        crlf, b"r1", b"example.com", pem, canonicalize=(b"relaxed", b"relaxed"), length=True
    )
    data = (sig + crlf + b"appended\r\n").replace(b"\r\n", b"\n")
    v = check(data, lookup=fixed_lookup([keys["rsa"].dns_value().encode()]))
    assert results(v) == ["pass"]


def test_no_signature_and_unparsable_headers() -> None:
    v = check(MESSAGE)
    assert (v.found, v.valid, v.error, v.lines()) == (False, False, None, [";dkim=none"])
    v = check(b" folded first line\n\nbody\n")
    assert v.error is not None and v.lines() == []


def test_only_the_first_five_signatures_count(keys: dict[str, DKIMKey]) -> None:
    data = signed(MESSAGE, *([keys["ed25519"]] * 7))
    v = check(data, lookup=fixed_lookup([keys["ed25519"].dns_value().encode()]))
    assert results(v) == ["pass"] * 5


def test_huge_header_sections_are_not_verified(keys: dict[str, DKIMKey]) -> None:
    big = b"X-Filler: " + b"a" * 1000 + b"\n"
    data = signed(big * 300 + MESSAGE, keys["rsa"])
    v = check(data, lookup=fixed_lookup([keys["rsa"].dns_value().encode()]))
    assert results(v) == ["permerror"]
    assert "header section over" in v.results[0].reason
    assert v.lines() == [f';dkim=permerror  reason="{v.results[0].reason}"']
    many = b"X-A: b\n" * (dkimverify.MAX_FIELDS + 1)
    assert results(check(signed(many + MESSAGE, keys["rsa"]))) == ["permerror"]
    assert results(check(many + MESSAGE)) == []


def test_large_messages_verify_in_a_thread(keys: dict[str, DKIMKey], dns: object) -> None:
    body = b"".join(b"line %d with  some   text \t\n" % i for i in range(60000))
    data = signed(MESSAGE + body, keys["ed25519"], keys["rsa"])
    assert len(data) > dkimverify.OFFLOAD_BYTES
    assert results(check(data)) == ["pass", "pass"]
    assert results(check(data.replace(b"line 5999 ", b"line 5998 "))) == ["fail", "fail"]


def test_reasons_and_domains_cannot_break_the_header() -> None:
    r = dkimverify.SignatureResult("permerror", 'bad "x" \\ \r\n\x00é', "", "")
    assert r.lines() == [';dkim=permerror  reason="bad \\"x\\" \\\\ ????"']
    domain, b12 = dkimverify._identity(b" d=evil.com\r\n X-Injected: 1; b=AAA\r\n\tBBBB%;")
    assert (domain, b12) == ("", "")


_fields = st.sampled_from(
    [
        b"From: a@example.com\n",
        b"Subject: x\n",
        b"To: b@example.org\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=r1; h=from; bh=AAAA; b=AAAA\n",
        b"DKIM-Signature: v=1; a=ed25519-sha256; d=; s=; h=; bh=; b=\n",
        b"DKIM-Signature: v=1; l=10; a=rsa-sha256; d=x; s=y; h=from:from; bh=!; b=?\n",
        b"DKIM-Signature: \x00\xff;;=;==\n",
        b"DKIM-Signature: i=a; d=a; v=1\n",
        b" continued\n",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=st.lists(_fields, max_size=12),
    body=st.binary(max_size=200),
    sign_with=st.sampled_from(["", "rsa", "ed25519"]),
)
def test_verify_never_raises(
    keys: dict[str, DKIMKey], headers: list[bytes], body: bytes, sign_with: str
) -> None:
    data = b"".join(headers) + b"\n" + body
    if sign_with:
        with contextlib.suppress(dkimsign.SigningError):
            data = signed(data, keys[sign_with])
    lookup = fixed_lookup([keys["rsa"].dns_value().encode(), b"p="])
    v = check(data, lookup=lookup)
    for r in v.results:
        assert r.result in ("pass", "fail", "permerror", "temperror")
        for line in r.lines():
            assert "\n" not in line and "\r" not in line


def test_signing_a_message_without_header_section_fails_cleanly(keys: dict[str, DKIMKey]) -> None:
    with pytest.raises(dkimsign.SigningError):
        dkimsign.sign(b" bad\n\nbody\n", [keys["rsa"]])
    assert dkimsign.sign(MESSAGE, []) == []


def test_signed_header_names_counts_repeats(tmp_path: Path) -> None:
    fields = [[b"Received", b""], [b"To", b""], [b"to ", b""], [b"Reply-To", b""]]
    names = dkimsign.signed_header_names(fields)
    assert names[:3] == [b"reply-to", b"to", b"to"]
    assert b"received" not in names


def test_a_body_on_disk_signs_and_verifies_as_in_memory(
    keys: dict[str, DKIMKey], dns: object, tmp_path: Path
) -> None:
    from chasquid.mailauth.dkimverify import verify_parts
    from chasquid.mailauth.message import split
    from chasquid.msgbody import Body, FileRange

    data = MESSAGE + b"a line  with\t spaces \n" * 50_000
    parts = split(data)
    section = data[: parts.header_end]
    path = tmp_path / "message"
    path.write_bytes(data)
    body = Body((FileRange(str(path), parts.body_start, len(data) - parts.body_start),))
    on_disk = dkimsign.sign_parts(section, body.pieces, [keys["rsa"]], now=1_700_000_000)
    assert on_disk == dkimsign.sign(data, [keys["rsa"]], now=1_700_000_000)
    signature = on_disk[0]
    v = asyncio.run(verify_parts(signature + section, body.pieces))
    assert results(v) == ["pass"]
    # A body changed on disk does not verify.
    path.write_bytes(data.replace(b"spaces", b"SPACES", 1))
    assert results(asyncio.run(verify_parts(signature + section, body.pieces))) == ["fail"]
