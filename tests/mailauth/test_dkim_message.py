"""The body hash and header fields DKIM is computed over, against dkimpy's own canonicalization."""

from __future__ import annotations

import hashlib

import pytest
from dkim.canonicalization import Relaxed, Simple
from hypothesis import given, settings
from hypothesis import strategies as st

from chasquid.mailauth import message

# Bodies made of what canonicalization cares about: spaces, tabs, empty lines.
_pieces = st.sampled_from([b"a", b"b", b" ", b"\t", b"\n", b"  \n", b"\n\n", b"x y"])
bodies = st.lists(_pieces, max_size=40).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(body=bodies, chunk=st.integers(1, 16), relaxed=st.booleans())
def test_body_hash_matches_dkimpy(body: bytes, chunk: int, relaxed: bool) -> None:
    # SMTP bodies always end with a line break; dkimpy keeps trailing blanks of
    # an unterminated last line, which RFC 6376 §3.4.4 says to remove.
    if body and not body.endswith(b"\n"):
        body += b"\n"
    canonical = (Relaxed if relaxed else Simple).canonicalize_body(body.replace(b"\n", b"\r\n"))
    got = message.body_hash(body, relaxed, chunk_size=chunk)
    assert got.digest == hashlib.sha256(canonical).digest()
    assert got.length == len(canonical)
    limited = message.body_hash(body, relaxed, limit=chunk, chunk_size=chunk)
    assert limited.digest == hashlib.sha256(canonical[:chunk]).digest()
    assert limited.length == len(canonical)


def test_unterminated_last_line_loses_its_trailing_blanks() -> None:
    assert message.body_hash(b"a \n \t", relaxed=True).length == len(b"a\r\n")
    assert message.body_hash(b"", relaxed=True).length == 0
    assert message.body_hash(b"", relaxed=False).length == 2


def test_split_and_header_fields() -> None:
    data = b"Subject: a\n b\nFrom : x\n\nbody\n"
    parts = message.split(data)
    assert data[parts.body_start :] == b"body\n"
    assert message.header_fields(data[: parts.header_end]) == [
        [b"Subject", b" a\r\n b\r\n"],
        [b"From ", b" x\r\n"],
    ]
    assert message.split(b"\nbody\n") == message.Parts(0, 1)
    only_headers = b"Subject: a\n"
    assert message.split(only_headers) == message.Parts(len(only_headers), len(only_headers))
    for bad in (b" folded first\n", b"no colon here\n", b": empty name\n"):
        with pytest.raises(message.MessageFormatError):
            message.header_fields(bad)


@settings(max_examples=300, deadline=None)
@given(body=bodies, cuts=st.lists(st.integers(0, 7), max_size=12), relaxed=st.booleans())
def test_body_hash_of_pieces_read_from_disk_is_the_same(
    body: bytes, cuts: list[int], relaxed: bool
) -> None:
    # A body read from a file comes in pieces that cut lines anywhere.
    pieces, pos = [], 0
    for cut in cuts:
        pieces.append(body[pos : pos + cut])
        pos += cut
    pieces.append(body[pos:])
    for limit in (None, 3):
        whole = message.body_hash(body, relaxed, limit, chunk_size=4)
        assert message.body_hash(lambda: iter(pieces), relaxed, limit, chunk_size=4) == whole
