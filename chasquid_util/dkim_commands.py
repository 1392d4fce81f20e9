"""`chasquid-util dkim-keygen`, `dkim-dns`, `dkim-sign`, `dkim-verify`: click over dkimtool."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

import click

from chasquid.confdir.dkimkeys import dns_record_line
from chasquid_util import dkimtool
from chasquid_util.completers import complete_domains, complete_selectors
from chasquid_util.options import common_options, current_config_dir, is_verbose, reports_errors

_DOMAIN = click.argument("domain", required=False, default="", shell_complete=complete_domains)
_SELECTOR = click.argument("selector", required=False, shell_complete=complete_selectors)
_KEYFILE = click.argument(
    "keyfile", required=False, type=click.Path(dir_okay=False, path_type=Path)
)


def _trace(message: str) -> None:
    if is_verbose(click.get_current_context()):
        click.echo(message, err=True)


@click.command("dkim-keygen")
@_DOMAIN
@_SELECTOR
@_KEYFILE
@click.option(
    "--algo",
    type=click.Choice([a.value for a in dkimtool.Algorithm], case_sensitive=False),
    default=dkimtool.Algorithm.RSA.value,
    show_default=True,
    help="Key type: rsa (2048 bits), rsa3072, rsa4096 or ed25519 (not every verifier knows it).",
)
@common_options
@reports_errors
def dkim_keygen(
    domain: str, selector: str | None, keyfile: Path | None, algo: str, **_: Any
) -> None:
    """Generate a DKIM key for DOMAIN and print the DNS record to publish.

    SELECTOR defaults to today's date (YYYYMMDD, UTC); the key goes to
    domains/DOMAIN/dkim:SELECTOR.pem unless KEYFILE is given. An existing file
    is never overwritten.
    """
    ref = dkimtool.key_ref(
        current_config_dir(), domain, selector or dkimtool.default_selector(), keyfile
    )
    key = dkimtool.keygen(ref, dkimtool.Algorithm(algo.lower()))
    click.echo(f'Key written to "{ref.path}"')
    click.echo()
    click.echo(dns_record_line(key))


@click.command("dkim-dns")
@_DOMAIN
@_SELECTOR
@_KEYFILE
@common_options
@reports_errors
def dkim_dns(domain: str, selector: str | None, keyfile: Path | None, **_: Any) -> None:
    """Print the DNS record of a DKIM key of DOMAIN (strings of at most 255 characters).

    Without SELECTOR, the domain's first dkim:*.pem file is used.
    """
    key = dkimtool.load(dkimtool.key_ref(current_config_dir(), domain, selector, keyfile))
    click.echo(dns_record_line(key))


@click.command("dkim-sign")
@click.argument("domain", required=False, default=None, shell_complete=complete_domains)
@_SELECTOR
@_KEYFILE
@common_options
@reports_errors
def dkim_sign(domain: str | None, selector: str | None, keyfile: Path | None, **_: Any) -> None:
    """Sign the message on standard input and print its DKIM-Signature field (a testing aid).

    DOMAIN defaults to the domain of the From: address; SELECTOR to the
    domain's first key. With -v, what is signed goes to standard error.
    """
    message = sys.stdin.buffer.read()
    if domain is None:
        domain = dkimtool.from_domain(message)
    key = dkimtool.load(dkimtool.key_ref(current_config_dir(), domain, selector, keyfile))
    sys.stdout.buffer.write(dkimtool.sign(message, key, _trace))
    sys.stdout.flush()


@click.command("dkim-verify")
@click.option(
    "--txt",
    metavar="RECORD",
    default=None,
    help="Use this key record for every signature instead of looking keys up in DNS.",
)
@common_options
@reports_errors
def dkim_verify(txt: str | None, **_: Any) -> None:
    """Verify the DKIM signatures of the message on standard input (a testing aid).

    Prints the Authentication-Results field this host would add. With -v,
    the number of signatures and of valid ones goes to standard error.
    """
    message = sys.stdin.buffer.read()
    result = asyncio.run(dkimtool.verify(message, txt))
    valid = sum(r.result == "pass" for r in result.results)
    _trace(f"Found {len(result.results)} signatures, {valid} valid")
    for r in result.results:
        _trace(f"  {r.domain or '?'}: {r.result}" + (f" ({r.reason})" if r.reason else ""))
    sys.stdout.write(dkimtool.results_field(socket.gethostname(), result))
    sys.stdout.flush()


COMMANDS = (dkim_keygen, dkim_dns, dkim_sign, dkim_verify)
