"""The `smtp-check` command line.

TEMPORARY: only the flags exist, so that shell completions can be generated;
the checks themselves are a later issue. Running it prints "not implemented
yet" and exits 2.
"""

from __future__ import annotations

import sys

import click

from chasquid.version import version_option


@click.command(
    context_settings={"help_option_names": ["-h", "-help", "--help"]},
    help="Check a domain's mail setup from the outside: MTA-STS, MX, SPF and TLS.\n\n"
    "Not there yet: this version only says so and exits with status 2.",
)
@version_option("smtp-check", "-version", "--version")
@click.option("-port", "--port", "port", default="smtp", help="Port used to connect to each MX.")
@click.option("-localname", "--localname", "localname", default="localhost", help="EHLO name.")
@click.option(
    "-skip_tls_check",
    "--skip_tls_check",
    "--skip-tls-check",
    "skip_tls_check",
    is_flag=True,
    help="Do not connect to the MXs.",
)
@click.argument("domain", required=False)
def command(port: str, localname: str, skip_tls_check: bool, domain: str | None) -> None:
    """Placeholder until the checks are written."""
    click.echo("smtp-check: not implemented yet", err=True)
    sys.exit(2)


def main() -> None:
    """Console-script entry point."""
    command.main(prog_name="smtp-check")
