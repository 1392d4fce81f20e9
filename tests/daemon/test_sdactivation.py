"""systemd socket activation: the LISTEN_* protocol, with real inherited sockets."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chasquid.daemon.sdactivation import SDActivationError, listen_fds_with_names

LAUNCHER = Path(__file__).parent.parent / "helpers" / "sdlaunch.py"

CHILD = """
import json, os
from chasquid.daemon.sdactivation import listen_fds_with_names, SDActivationError
try:
    socks = listen_fds_with_names()
except SDActivationError as e:
    print(json.dumps({"error": str(e)}))
else:
    print(json.dumps({
        "names": {n: [s.getsockname()[1] for s in l] for n, l in socks.items()},
        "cloexec": all(not s.get_inheritable() for l in socks.values() for s in l),
        "env": [v for v in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") if v in os.environ],
    }))
"""


def test_absent_variables_mean_no_sockets() -> None:
    assert listen_fds_with_names({}, pid=1) == {}


def test_pid_mismatch() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    with pytest.raises(SDActivationError, match=r"^\$LISTEN_PID != our PID$"):
        listen_fds_with_names(env, pid=2)
    assert env == {}, "the variables are removed even on error"


def test_wrong_number_of_names() -> None:
    env = {"LISTEN_PID": "7", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "smtp"}
    with pytest.raises(SDActivationError, match="Incorrect LISTEN_FDNAMES, have you set"):
        listen_fds_with_names(env, pid=7)


def test_bad_fds_number() -> None:
    with pytest.raises(SDActivationError, match="LISTEN_FDS"):
        listen_fds_with_names({"LISTEN_PID": "7", "LISTEN_FDS": "x"}, pid=7)


def _run_child(names: str, socks: list[socket.socket]) -> str:
    fds = [s.fileno() for s in socks]
    proc = subprocess.run(
        [sys.executable, str(LAUNCHER), names, *map(str, fds), "--", sys.executable, "-c", CHILD],
        pass_fds=fds,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_inherited_sockets_by_name() -> None:
    a, b, c = _listener(), _listener(), _listener()
    with a, b, c:
        out = _run_child("smtp:submission:smtp", [a, b, c])
        ports = [s.getsockname()[1] for s in (a, b, c)]
    import json

    got = json.loads(out)
    assert got["names"] == {"smtp": [ports[0], ports[2]], "submission": [ports[1]]}
    assert got["cloexec"] is True
    assert got["env"] == []


def test_without_names_sockets_are_unnamed() -> None:
    import json

    with _listener() as a:
        got = json.loads(_run_child("-", [a]))
    assert list(got["names"]) == [""]


def test_non_listening_socket_is_an_error() -> None:
    import json

    with socket.socket() as s:
        got = json.loads(_run_child("smtp", [s]))
    assert "not a listening socket" in got["error"]
