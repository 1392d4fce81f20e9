"""The ``mda-lmtp`` click command: its help text and shell completion.

Deliveries do not come through here: mda_lmtp.main parses the same flags
(declared once in mda_lmtp.flags) without loading click, which would more
than double the start-up time of a program run once per message. The
command still works when called, through the same ``run``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from chasquid.version import version_option
from mda_lmtp.flags import FLAGS, Flag
from mda_lmtp.main import run


def _option(flag: Flag) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    decls = [f"-{flag.name}", f"--{flag.name}"]
    if "_" in flag.name:
        decls.append(f"--{flag.name.replace('_', '-')}")
    decls.append(flag.name)
    if flag.is_bool:
        return click.option(*decls, is_flag=True, help=flag.help)
    kind = click.Choice(flag.choices) if flag.choices else click.STRING
    # None, not "": click would check an empty default against the choices.
    return click.option(*decls, type=kind, default=None, metavar=flag.metavar, help=flag.help)


def _build() -> click.Command:
    def callback(**values: Any) -> None:
        sys.exit(
            run(
                addr=values["addr"] or "",
                addr_network=values["addr_network"] or "",
                sender=values["f"] or "",
                recipient=values["d"] or "",
                to_puny=values["to_puny"],
            )
        )

    for flag in reversed(FLAGS):
        callback = _option(flag)(callback)
    callback = version_option("mda-lmtp", "-version", "--version")(callback)
    return click.command(
        name="mda-lmtp",
        context_settings={"help_option_names": ["-h", "-help", "--help"]},
        help=(
            "Deliver the message on stdin to an LMTP server (Dovecot, ...). "
            "Flags follow Go's conventions: -addr=x, -addr x, --addr x; -to_puny=false. "
            "Exit status: 0 delivered, 75 not delivered (try again later), 2 usage error."
        ),
    )(callback)


command = _build()
