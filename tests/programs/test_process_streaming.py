"""Programs read a message body streamed from its file: memory does not grow with its size."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from helpers.programs import executable

from chasquid.msgbody import Body, FileRange
from chasquid.programs.process import ProgramInputError, run_program
from chasquid.smtpwire import EncodedReader

SIZE = 12 * 1024 * 1024 + 17


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    block = bytes(range(256)) * 4096
    with path.open("wb") as f:
        written = 0
        while written < SIZE + 100:
            f.write(block)
            written += len(block)
    return path


def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own: bool) -> str:
    # A program by path in the process's own directory runs from the loop
    # (loopspawn); elsewhere it runs from a worker thread.
    monkeypatch.chdir(tmp_path)
    return "." if own else str(tmp_path.parent)


@pytest.mark.parametrize("own", [True, False], ids=["loop", "thread"])
def test_body_streamed_to_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, big_file: Path, own: bool
) -> None:
    prog = executable(tmp_path / "prog", "#!/bin/sh\nsha256sum\n")
    body = Body((b"Header: x\n\n", FileRange(str(big_file), 100, SIZE)))
    result = asyncio.run(
        run_program(
            [str(prog)], stdin=body.reader(), cwd=_cwd(tmp_path, monkeypatch, own), timeout=60
        )
    )
    expected = hashlib.sha256(b"Header: x\n\n" + big_file.read_bytes()[100 : 100 + SIZE])
    assert result.ok and result.stdout.split()[0].decode() == expected.hexdigest()


@pytest.mark.parametrize("own", [True, False], ids=["loop", "thread"])
def test_encoded_body_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own: bool) -> None:
    prog = executable(tmp_path / "prog", "#!/bin/sh\ncat\n")
    body = Body((b"a\nb\n", b".c\r", b"\nd"))
    result = asyncio.run(
        run_program(
            [str(prog)],
            stdin=EncodedReader(body, stuff=True),
            cwd=_cwd(tmp_path, monkeypatch, own),
            timeout=10,
        )
    )
    assert result.stdout == b"a\r\nb\r\n..c\r\nd\r\n.\r\n"


@pytest.mark.parametrize("own", [True, False], ids=["loop", "thread"])
def test_unreadable_body_kills_the_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, big_file: Path, own: bool
) -> None:
    # The range runs past the end of the file: the program must never see EOF
    # as if the message were whole, so it is killed before its next step.
    prog = executable(tmp_path / "prog", '#!/bin/sh\ncat >/dev/null && touch "$0.done"\n')
    body = Body((FileRange(str(big_file), 0, SIZE * 2),))
    with pytest.raises(ProgramInputError, match="file ends before its message does"):
        asyncio.run(
            run_program(
                [str(prog)], stdin=body.reader(), cwd=_cwd(tmp_path, monkeypatch, own), timeout=60
            )
        )
    assert not Path(f"{prog}.done").exists()
