"""No NUL reaches a hook's environment; a program that cannot take one is an error, not a crash."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from helpers.programs import executable

from chasquid.daemon.smtpsrv.posthook import hook_env, run_post_data
from chasquid.msgbody import Body
from chasquid.programs.process import ProgramStartError, run_program


def test_hook_env_values_never_carry_a_nul(tmp_path: Path) -> None:
    env = hook_env(
        config_dir=tmp_path,
        remote_addr="127.0.0.1:1",
        ehlo_domain="mx\x00.example",
        mail_from="a\x00b@example.org",
        rcpt_to=["c\x00@example.com", "d@example.com"],
        auth_as="",
        on_tls=False,
        from_local_domain=False,
        spf_pass=False,
        base={"PATH": "/bin\x00:/usr/bin"},
    )
    assert not [name for name, value in env.items() if "\x00" in value]
    assert env["EHLO_DOMAIN_RAW"] == "mx.example"
    assert env["MAIL_FROM"] == "ab@example.org"
    assert env["RCPT_TO"] == "c@example.com d@example.com"


@pytest.mark.parametrize("cwd_is_own", [True, False])
def test_nul_in_environment_is_a_start_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cwd_is_own: bool
) -> None:
    # Both ways of starting a program: from the loop (program run in the
    # process's own directory) and from a worker thread.
    program = executable(tmp_path / "prog", "#!/bin/sh\nexit 0\n")
    monkeypatch.chdir(tmp_path)
    cwd = "." if cwd_is_own else str(tmp_path.parent)
    with pytest.raises(ProgramStartError, match="null"):
        asyncio.run(
            run_program([str(program)], stdin=None, cwd=cwd, timeout=5, env={"X": "a\x00b"})
        )


def test_post_data_hook_that_cannot_start_is_a_temporary_failure(tmp_path: Path) -> None:
    hook = executable(tmp_path / "post-data", "#!/bin/sh\ncat >/dev/null\n")
    outcome = asyncio.run(
        run_post_data(hook, Body.of(b"Subject: x\n\nbody\n"), {"X": "a\x00b"}, tmp_path)
    )
    assert (outcome.reply_code, outcome.result) == (451, "fail")
