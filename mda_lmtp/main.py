"""The ``mda-lmtp`` entry point: parse the flags, deliver, exit with the status an MTA expects.

An MTA runs this once per message, so the usual path imports neither click
nor the chasquid package: the flags are parsed by mda_lmtp.flags. Only help
(``-h``), ``-version`` and shell completion load the click command of
mda_lmtp.cli.

Exit status: 0 delivered; 75 (EX_TEMPFAIL) not delivered, try again later;
2 the command line is wrong, nothing was sent. A usage or delivery problem
is one line; flag errors go to stderr, the rest to stdout (what an MTA puts
in its log or bounce).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from mda_lmtp.deliver import DeliveryFailure, UsageError, deliver, request
from mda_lmtp.flags import FlagError, HelpRequested, VersionRequested, parse

EX_OK = 0
EX_USAGE = 2
EX_TEMPFAIL = 75
PROG = "mda-lmtp"
COMPLETE_VAR = "_MDA_LMTP_COMPLETE"


def run(addr: str, addr_network: str, sender: str, recipient: str, to_puny: bool) -> int:
    """Deliver stdin as the flags say, printing the reason of a failure; the exit status."""
    try:
        req = request(addr, addr_network, sender, recipient, to_puny)
    except UsageError as e:
        print(e, flush=True)
        return EX_USAGE
    try:
        deliver(req, sys.stdin.fileno())
    except DeliveryFailure as e:
        print(e, flush=True)
        return EX_TEMPFAIL
    return EX_OK


def main(args: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    argv = sys.argv[1:] if args is None else list(args)
    if COMPLETE_VAR in os.environ:
        _click(argv)
    try:
        values = parse(argv)
    except HelpRequested:
        _click(["--help"])
    except VersionRequested:
        _click(["--version"])
    except FlagError as e:
        print(f"{PROG}: {e} (see {PROG} -h)", file=sys.stderr, flush=True)
        sys.exit(EX_USAGE)
    sys.exit(
        run(
            addr=str(values["addr"]),
            addr_network=str(values["addr_network"]),
            sender=str(values["f"]),
            recipient=str(values["d"]),
            to_puny=bool(values["to_puny"]),
        )
    )


def _click(argv: list[str]) -> None:
    from mda_lmtp.cli import command

    command.main(argv, prog_name=PROG)
    sys.exit(EX_OK)


if __name__ == "__main__":
    main()
