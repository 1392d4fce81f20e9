"""Local delivery through a mail delivery agent program.

The MDA runs without a shell, one process per recipient. Sender and recipient
are sanitized before they are substituted into the arguments, so they cannot
smuggle shell syntax or path separators. Sanitization cannot stop a value
from *starting* with ``-``: a sender like ``-x@y`` stays one argv element, but
a program that parses options would see an option. Configure the MDA so every
placeholder is the value of an option that takes one (as the default
``-f %from% -d %to_user%`` does), never a bare positional argument.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from chasquid.daemon.courier.base import DeliveryError
from chasquid.goquote import go_quote
from chasquid.msgbody import Body
from chasquid.normalize import split_addr
from chasquid.programs.process import (
    ProgramInputError,
    ProgramStartError,
    resolve_program,
    run_program,
)
from chasquid.smtpwire import encoded_stdin

#: EX_TEMPFAIL from sysexits.h: the only exit code that means "try again later".
EX_TEMPFAIL = 75

DEFAULT_TIMEOUT = 30.0

_REMOVED = frozenset("/;\"'\\|*&$%()[]{}`!")
_PLACEHOLDER = re.compile(r"%(from|from_user|from_domain|to|to_user|to_domain)%")


def sanitize(value: str) -> str:
    """Remove whitespace, control characters and shell/path metacharacters."""
    return "".join(
        c
        for c in value
        if c not in _REMOVED and not c.isspace() and unicodedata.category(c) != "Cc"
    )


def placeholder_values(sender: str, rcpt: str) -> dict[str, str]:
    """The value of each placeholder (without the % signs) for this delivery."""
    s = sanitize(sender)
    if s in ("<>", ""):
        from_user, from_domain = "<>", ""
        s = "<>"
    else:
        from_user, from_domain = split_addr(s)
    r = sanitize(rcpt)
    to_user, to_domain = split_addr(r)
    return {
        "from": s,
        "from_user": from_user,
        "from_domain": from_domain,
        "to": r,
        "to_user": to_user,
        "to_domain": to_domain,
    }


def substitute_args(args: Sequence[str], sender: str, rcpt: str) -> list[str]:
    """Replace every placeholder in every argument, in one pass (no re-expansion)."""
    values = placeholder_values(sender, rcpt)
    return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], a) for a in args]


@dataclass(frozen=True)
class MDACourier:
    """Delivers local mail by running the configured MDA once per recipient."""

    binary: str
    args: tuple[str, ...]
    config_dir: Path
    timeout: float = DEFAULT_TIMEOUT

    async def deliver(self, sender: str, rcpt: str, body: Body) -> None:
        """Run the MDA with the message (CRLF endings) streamed to its stdin.

        DeliveryError tells temporary from permanent failures.
        """
        try:
            program = resolve_program(self.binary, self.config_dir)
            argv = [program, *substitute_args(self.args, sender, rcpt)]
            result = await run_program(
                argv,
                stdin=encoded_stdin(body),
                cwd=self.config_dir,
                timeout=self.timeout,
            )
        except ProgramStartError as e:
            raise DeliveryError(f'MDA delivery failed: {e} - ""', permanent=True) from e
        except (ProgramInputError, OSError) as e:
            # The message could not be read (from the queue's file): try again later.
            raise DeliveryError(f"MDA delivery failed: {e}", permanent=False) from e
        if result.timed_out:
            raise DeliveryError("operation timed out", permanent=False)
        if result.returncode == 0:
            return
        raise DeliveryError(
            f"MDA delivery failed: {result.reason()} - {go_quote(result.output)}",
            permanent=result.returncode != EX_TEMPFAIL,
        )


def mda_from_config(
    binary: str, args: Sequence[str], config_dir: str | os.PathLike[str]
) -> MDACourier:
    """An MDACourier for the mail_delivery_agent_bin/_args keys of chasquid.conf."""
    return MDACourier(binary, tuple(args), Path(config_dir))
