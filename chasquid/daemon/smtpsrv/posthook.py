"""The post-DATA hook."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from chasquid.daemon.smtpsrv.headers import hook_output_is_valid
from chasquid.msgbody import Body
from chasquid.programs.hooks import HookError, HookMissingError, run_hook
from chasquid.programs.process import ProgramInputError

log = logging.getLogger("chasquid.smtpsrv")

TIMEOUT = 60.0
PERMANENT_EXIT = 20
_EHLO_UNSAFE = re.compile(r"[^a-zA-Z0-9\-.\[\]:]")


@dataclass(frozen=True)
class HookOutcome:
    """What the hook decided: headers to prepend, or a rejection reply."""

    headers: bytes = b""
    reply_code: int = 0  # 0: accepted; 554 permanent or 451 temporary rejection
    reply_text: str = ""
    result: str = "skip"  # counter label suffix: skip, fail, badoutput, success


def sanitize_ehlo(domain: str) -> str:
    """Keep only ``a-z A-Z 0-9 - . [ ] :`` of the HELO/EHLO domain."""
    return _EHLO_UNSAFE.sub("", domain)


def hook_env(
    *,
    config_dir: Path,
    remote_addr: str,
    ehlo_domain: str,
    mail_from: str,
    rcpt_to: list[str],
    auth_as: str,
    on_tls: bool,
    from_local_domain: bool,
    spf_pass: bool,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Exactly the environment the hook gets; nothing else is inherited.

    Values hold what the client sent (reception refuses control characters
    in names and addresses); a NUL, which no environment can carry, is
    dropped from every value all the same.
    """
    base = os.environ if base is None else base
    env = {
        "USER": base.get("USER", ""),
        "SHELL": base.get("SHELL", ""),
        "PATH": base.get("PATH", ""),
        "PWD": str(config_dir.absolute()),
        "REMOTE_ADDR": remote_addr,
        "EHLO_DOMAIN": sanitize_ehlo(ehlo_domain),
        "EHLO_DOMAIN_RAW": ehlo_domain,
        "MAIL_FROM": mail_from or "<>",
        "RCPT_TO": " ".join(rcpt_to),
        "AUTH_AS": auth_as,
        "ON_TLS": "1" if on_tls else "0",
        "FROM_LOCAL_DOMAIN": "1" if from_local_domain else "0",
        "SPF_PASS": "1" if spf_pass else "0",
    }
    return {name: value.replace("\0", "") for name, value in env.items()}


def _last_line(stdout: bytes) -> str:
    end = stdout.rfind(b"\n")
    if end < 0:
        return ""
    start = stdout.rfind(b"\n", 0, end) + 1
    return stdout[start:end].decode("utf-8", "replace")


async def run_post_data(
    path: Path, message: Body, env: Mapping[str, str], cwd: Path, timeout: float = TIMEOUT
) -> HookOutcome:
    """Run the hook on ``message`` (streamed to its stdin) and interpret its exit and output."""
    try:
        result = await run_hook(path, (), stdin=message.stdin(), env=env, cwd=cwd, timeout=timeout)
    except HookMissingError:
        return HookOutcome()
    except (HookError, ProgramInputError, OSError) as e:
        log.info("post-data hook failed to run: %s", e)
        return HookOutcome(reply_code=451, reply_text="", result="fail")
    if not result.ok:
        log.info("post-data hook failed: %s", result.error_text())
        code = 554 if result.returncode == PERMANENT_EXIT and not result.timed_out else 451
        return HookOutcome(reply_code=code, reply_text=_last_line(result.stdout), result="fail")
    if not hook_output_is_valid(result.stdout):
        log.info("post-data hook produced invalid headers; ignoring them")
        return HookOutcome(result="badoutput")
    return HookOutcome(headers=result.stdout, result="success")
