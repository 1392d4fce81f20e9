"""MDA and pipe couriers against real programs written to tmp_path."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from helpers.bigbody import big_body, crlf
from helpers.programs import python_script

from chasquid.daemon.courier.base import DeliveryError
from chasquid.daemon.courier.mda import MDACourier, sanitize, substitute_args
from chasquid.daemon.courier.pipe import PipeCourier
from chasquid.msgbody import Body

DATA = b"Subject: hi\n\nline 1\r\nline 2\n\nlast"


# Records argv, cwd and stdin into the files named by the first argument.
RECORDER = """
out = sys.argv[1]
data = sys.stdin.buffer.read()
with open(out + ".json", "w") as f:
    json.dump({"argv": sys.argv[2:], "cwd": os.getcwd()}, f)
with open(out + ".stdin", "wb") as f:
    f.write(data)
"""


def deliver(courier: MDACourier | PipeCourier, sender: str, rcpt: str, data: bytes) -> None:
    asyncio.run(courier.deliver(sender, rcpt, Body.of(data)))


def failure(courier: MDACourier | PipeCourier, rcpt: str = "u@d") -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        deliver(courier, "s@x", rcpt, DATA)
    return info.value


def test_mda_success_args_cwd_and_crlf_stdin(tmp_path: Path) -> None:
    prog = python_script(tmp_path / "mda", RECORDER)
    rec = tmp_path / "rec"
    conf = tmp_path / "conf"
    conf.mkdir()
    args = (str(rec), "-f", "%from%", "-d", "%to_user%", "%to_domain%", "<%from_user%|%to%>")
    deliver(MDACourier(str(prog), args, conf), "ñandú@x.org", "pepe@dom", DATA)
    seen = json.loads((tmp_path / "rec.json").read_text())
    assert seen["argv"] == ["-f", "ñandú@x.org", "-d", "pepe", "dom", "<ñandú|pepe@dom>"]
    assert seen["cwd"] == str(conf)
    assert (tmp_path / "rec.stdin").read_bytes() == (
        b"Subject: hi\r\n\r\nline 1\r\nline 2\r\n\r\nlast"
    )


def test_mda_null_sender_placeholders(tmp_path: Path) -> None:
    prog = python_script(tmp_path / "mda", RECORDER)
    rec = tmp_path / "rec"
    args = (str(rec), "%from%", "%from_user%", "[%from_domain%]")
    deliver(MDACourier(str(prog), args, tmp_path), "<>", "u@d", b"x\n")
    assert json.loads((tmp_path / "rec.json").read_text())["argv"] == ["<>", "<>", "[]"]


def test_mda_relative_binary_is_relative_to_config_dir(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "bin").mkdir(parents=True)
    python_script(conf / "bin" / "mda", RECORDER)
    rec = tmp_path / "rec"
    deliver(MDACourier("bin/mda", (str(rec), "%to%"), conf), "a@b", "c@d", b"x\n")
    assert json.loads((tmp_path / "rec.json").read_text())["argv"] == ["c@d"]


def test_mda_bare_name_looked_up_in_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    python_script(bindir / "my-test-mda", RECORDER)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    rec = tmp_path / "rec"
    deliver(MDACourier("my-test-mda", (str(rec), "%to%"), tmp_path), "a@b", "c@d", b"x\n")
    assert json.loads((tmp_path / "rec.json").read_text())["argv"] == ["c@d"]


def test_mda_exit_75_is_temporary_with_output(tmp_path: Path) -> None:
    prog = python_script(tmp_path / "mda", 'print("mailbox locked"); sys.exit(75)')
    err = failure(MDACourier(str(prog), (), tmp_path))
    assert not err.permanent
    assert err.message == 'MDA delivery failed: exit status 75 - "mailbox locked\\n"'


def test_mda_exit_1_is_permanent_with_quoted_output(tmp_path: Path) -> None:
    body = 'sys.stdout.write("out \\"q\\" ñ\\t"); sys.stdout.flush()\n'
    body += 'sys.stderr.write("err\\x01\\n"); sys.exit(1)'
    prog = python_script(tmp_path / "mda", body)
    err = failure(MDACourier(str(prog), (), tmp_path))
    assert err.permanent
    assert err.message == 'MDA delivery failed: exit status 1 - "out \\"q\\" ñ\\terr\\x01\\n"'


def test_mda_killed_by_signal_is_permanent(tmp_path: Path) -> None:
    prog = python_script(tmp_path / "mda", "os.kill(os.getpid(), signal.SIGKILL)")
    err = failure(MDACourier(str(prog), (), tmp_path))
    assert err.permanent
    assert err.message == 'MDA delivery failed: signal: killed - ""'


def test_mda_timeout_is_temporary_and_kills_the_group(tmp_path: Path) -> None:
    marker = tmp_path / "child-survived"
    # The child stays in the MDA's process group and would write the marker
    # after the timeout unless the whole group is killed.
    child = tmp_path / "child.py"
    child.write_text(f"import time\ntime.sleep(1.5)\nopen({str(marker)!r}, 'w').close()\n")
    body = f"import subprocess\nsubprocess.Popen([sys.executable, {str(child)!r}])\ntime.sleep(30)"
    prog = python_script(tmp_path / "mda", body)
    start = time.monotonic()
    err = failure(MDACourier(str(prog), (), tmp_path, timeout=0.5))
    assert time.monotonic() - start < 10
    assert not err.permanent
    assert err.message == "operation timed out"
    time.sleep(2)
    assert not marker.exists()


def test_mda_cannot_execute_is_permanent(tmp_path: Path) -> None:
    not_exec = tmp_path / "mda"
    not_exec.write_text("#!/bin/sh\nexit 0\n")
    err = failure(MDACourier(str(not_exec), (), tmp_path))
    assert err.permanent
    assert err.message.startswith("MDA delivery failed: ")
    assert str(not_exec) in err.message
    missing = failure(MDACourier("no-such-mda-program-xyz", (), tmp_path))
    assert missing.permanent
    assert "no-such-mda-program-xyz" in missing.message


def test_mda_output_is_bounded(tmp_path: Path) -> None:
    prog = python_script(tmp_path / "mda", 'sys.stdout.write("x" * 1000000); sys.exit(1)')
    err = failure(MDACourier(str(prog), (), tmp_path))
    assert err.permanent
    assert 64 * 1024 <= len(err.message) < 70 * 1024


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("-x@dom", "-x@dom"),
        ("../../etc/passwd@d", "....etcpasswd@d"),
        ("$(rm -rf /)@d", "rm-rf@d"),
        ("a b\tc\u00a0d\u2003e@d", "abcde@d"),
        ("q'u\"o`t`e@d", "quote@d"),
        ("ctl\x01\x1f\x7f\x85\x9f@d", "ctl@d"),
        ("x;y|z&w*v!u%t@d", "xyzwvut@d"),
        ("[a]{b}(c)\\d@d", "abcd@d"),
        ("ñ~=#+<>_.-\u200d@d", "ñ~=#+<>_.-\u200d@d"),
    ],
)
def test_sanitize(raw: str, clean: str) -> None:
    assert sanitize(raw) == clean


def test_hostile_values_stay_single_arguments(tmp_path: Path) -> None:
    prog = python_script(tmp_path / "mda", RECORDER)
    rec = tmp_path / "rec"
    args = (str(rec), "-f", "%from%", "-d", "%to_user%", "--domain=%to_domain%")
    sender = "-x $(touch pwned) 'a\"b@evil"
    rcpt = "../../x y@../dom"
    deliver(MDACourier(str(prog), args, tmp_path), sender, rcpt, b"x\n")
    argv = json.loads((tmp_path / "rec.json").read_text())["argv"]
    assert argv == ["-f", "-xtouchpwnedab@evil", "-d", "....xy", "--domain=..dom"]
    assert not (tmp_path / "pwned").exists()
    assert all("/" not in a for a in argv)


def test_substitution_is_one_pass() -> None:
    # Sanitization removes %, so values can never expand into placeholders.
    assert substitute_args(["%to%%from%", "%to_user%x%to_user%"], "%to%@a", "u@d") == [
        "u@dto@a",
        "uxu",
    ]
    assert substitute_args(["%unknown%", "%from"], "s@a", "u@d") == ["%unknown%", "%from"]


def test_pipe_success_with_lf_stdin_and_split_words(tmp_path: Path) -> None:
    prog = python_script(tmp_path / "pipe", RECORDER)
    rec = tmp_path / "rec"
    deliver(PipeCourier(tmp_path), "s@x", f"{prog}  {rec}   arg1\targ2", DATA)
    seen = json.loads((tmp_path / "rec.json").read_text())
    assert seen["argv"] == ["arg1", "arg2"]
    assert seen["cwd"] == str(tmp_path)
    assert (tmp_path / "rec.stdin").read_bytes() == DATA


def test_pipe_relative_to_config_dir(tmp_path: Path) -> None:
    python_script(tmp_path / "handler", RECORDER)
    deliver(PipeCourier(tmp_path), "s@x", f"./handler {tmp_path / 'rec'}", b"x\n")
    assert (tmp_path / "rec.stdin").read_bytes() == b"x\n"


def test_pipe_failures_are_permanent(tmp_path: Path) -> None:
    assert failure(PipeCourier(tmp_path), "   ").message == "empty pipe"
    exit3 = python_script(tmp_path / "exit3", 'print("ignored"); sys.exit(3)')
    err = failure(PipeCourier(tmp_path), str(exit3))
    assert (err.permanent, err.message) == (True, "exit status 3")
    sleeper = python_script(tmp_path / "sleeper", "time.sleep(30)")
    start = time.monotonic()
    err = failure(PipeCourier(tmp_path, timeout=0.5), str(sleeper))
    assert time.monotonic() - start < 10
    assert (err.permanent, err.message) == (True, "signal: killed")
    missing = failure(PipeCourier(tmp_path), "/nonexistent/prog arg")
    assert missing.permanent
    assert "/nonexistent/prog" in missing.message


def test_pipe_that_ignores_stdin_succeeds(tmp_path: Path) -> None:
    prog = python_script(tmp_path / "noread", "sys.exit(0)")
    deliver(PipeCourier(tmp_path), "s@x", str(prog), b"x" * (4 * 1024 * 1024))


def test_large_body_streams_from_its_file(tmp_path: Path) -> None:
    body, data = big_body(tmp_path / "message")
    prog = python_script(tmp_path / "mda", RECORDER)
    asyncio.run(
        MDACourier(str(prog), (str(tmp_path / "rec"),), tmp_path).deliver("a@x", "b@y", body)
    )
    assert (tmp_path / "rec.stdin").read_bytes() == crlf(data)
    pipe = python_script(tmp_path / "pipe", RECORDER)
    asyncio.run(PipeCourier(tmp_path).deliver("a@x", f"{pipe} {tmp_path / 'p'}", body))
    assert (tmp_path / "p.stdin").read_bytes() == data


@pytest.mark.parametrize("size", ["small", "large"])
def test_unreadable_body_is_a_temporary_failure(tmp_path: Path, size: str) -> None:
    # A small message is read at once, a large one streamed: both fail alike.
    body, _ = big_body(tmp_path / "message", chunks=12 if size == "large" else 0)
    (tmp_path / "message").unlink()
    prog = python_script(tmp_path / "mda", RECORDER)
    with pytest.raises(DeliveryError) as info:
        asyncio.run(
            MDACourier(str(prog), (str(tmp_path / "rec"),), tmp_path).deliver("a@x", "b@y", body)
        )
    assert not info.value.permanent
    assert "No such file" in info.value.message
    assert not (tmp_path / "rec.stdin").exists()
