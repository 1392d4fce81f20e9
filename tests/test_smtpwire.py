"""chasquid.smtpwire: CRLF conversion and the dot-stuffed DATA payload, whole or streamed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from chasquid.msgbody import Body, FileRange
from chasquid.smtpwire import EncodedReader, WireEncoder, dot_stuff, encoded_chunks, to_crlf


def test_to_crlf() -> None:
    assert to_crlf(b"a\nb\r\nc\n") == b"a\r\nb\r\nc\r\n"
    assert to_crlf(b"no newline") == b"no newline"
    assert to_crlf(b"\n\n") == b"\r\n\r\n"


def test_dot_stuff() -> None:
    assert dot_stuff(b".a\nb\n.\n") == b"..a\r\nb\r\n..\r\n.\r\n"
    assert dot_stuff(b"no end") == b"no end\r\n.\r\n"
    assert dot_stuff(b"") == b".\r\n"


@given(st.lists(st.binary().map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))))
def test_dot_stuff_is_undone_by_the_receiver(lines: list[bytes]) -> None:
    # What a receiver does: read lines up to the lone dot, drop one leading dot from each.
    wire = dot_stuff(b"".join(line + b"\n" for line in lines))
    received = wire.split(b"\r\n")
    assert received[-2:] == [b".", b""]
    assert [line[1:] if line.startswith(b".") else line for line in received[:-2]] == lines


# Bytes that matter to the encodings, in every order.
pieces = st.lists(st.sampled_from([b"a", b".", b"\n", b"\r", b"\r\n", b"..", b"\n."]), max_size=40)


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    out, pos = [], 0
    for cut in cuts:
        out.append(data[pos : pos + cut])
        pos += cut
    return [*out, data[pos:]]


@given(pieces, st.lists(st.integers(0, 6), max_size=20), st.booleans())
def test_encoder_matches_the_whole_message_encodings(
    parts: list[bytes], cuts: list[int], stuff: bool
) -> None:
    data = b"".join(parts)
    encoder = WireEncoder(stuff=stuff)
    out = b"".join(encoder.feed(c) for c in _chunked(data, cuts)) + encoder.end()
    assert out == (dot_stuff(data) if stuff else to_crlf(data))


def test_encoded_reader_and_chunks(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b".a\nb\n.")
    body = Body((FileRange(str(path), 0, 6),))
    reader = EncodedReader(body, stuff=True)
    assert reader.read(3) + reader.read() == b"..a\r\nb\r\n..\r\n.\r\n"
    assert reader.read() == b""

    async def collect() -> bytes:
        return b"".join([c async for c in encoded_chunks(body, stuff=False)])

    assert asyncio.run(collect()) == b".a\r\nb\r\n."
