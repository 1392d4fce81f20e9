"""The `mda-lmtp` command line (spec/30 §5.1).

TEMPORARY: only the flags exist, so that shell completions can be generated;
the delivery itself is a later issue. Running it prints "not implemented yet"
and exits 2.
"""

from __future__ import annotations

import sys

import click

from chasquid.version import version_option


@click.command(
    context_settings={"help_option_names": ["-h", "-help", "--help"]},
    help="Deliver the message on stdin to an LMTP server (Dovecot, ...).\n\n"
    "Not there yet: this version only says so and exits with status 2. The "
    "daemon's own mail_lmtp_address setting delivers over LMTP.",
)
@version_option("mda-lmtp", "-version", "--version")
@click.option("-addr", "--addr", "addr", default="", help="LMTP server address (required).")
@click.option(
    "-addr_network",
    "--addr_network",
    "--addr-network",
    "addr_network",
    type=click.Choice(["unix", "tcp"]),
    default=None,
    help="unix or tcp; autodetected when empty.",
)
@click.option("-f", "sender", default="", help="Envelope sender; <> is the null sender.")
@click.option("-d", "recipient", default="", help="Recipient; <> is an empty address.")
@click.option(
    "-to_puny",
    "--to_puny",
    "--to-puny",
    "to_puny",
    is_flag=True,
    help="IDNA-encode sender and recipient before use.",
)
def command(
    addr: str, addr_network: str | None, sender: str, recipient: str, to_puny: bool
) -> None:
    """Placeholder until the delivery is written."""
    click.echo("mda-lmtp: not implemented yet", err=True)
    sys.exit(2)


def main() -> None:
    """Console-script entry point."""
    command.main(prog_name="mda-lmtp")
