"""The `chasquid-util` command line: a thin click layer over the library modules."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from chasquid.confdir.config import ConfigError, system_hostname
from chasquid.version import version_option
from chasquid_util import daemonless, daemonrpc, dkim_commands, queue_commands, render, users
from chasquid_util.argv import normalize_argv
from chasquid_util.completers import complete_domains, complete_new_user, complete_users
from chasquid_util.errors import UtilError
from chasquid_util.initdir import InitSettings, init_config_dir
from chasquid_util.options import (
    common_options,
    current_config_dir,
    reports_errors,
    verbose_option,
)
from chasquid_util.password import ask_password_twice
from chasquid_util.shellcomplete import run_completion

PROG_NAME = "chasquid-util"
COMPLETE_VAR = "_CHASQUID_UTIL_COMPLETE"


class UsageError(click.UsageError):
    """A command-line mistake; chasquid-util exits 1 for every error."""

    exit_code = 1


class UtilGroup(click.Group):
    """A group whose usage errors exit 1 and name unknown commands plainly."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        """click's, with usage errors exiting 1."""
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as e:
            raise UsageError(e.format_message(), e.ctx) from None

    def invoke(self, ctx: click.Context) -> Any:
        """click's, with usage errors of subcommands exiting 1."""
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise UsageError(e.format_message(), e.ctx) from None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """click's, with chasquid's wording for an unknown command."""
        name = args[0]
        if self.get_command(ctx, name) is None and not ctx.resilient_parsing:
            raise click.UsageError(f'Unknown argument "{name}"', ctx)
        return super().resolve_command(ctx, args)


def _ok(message: str) -> None:
    click.secho(message, fg="green")


def _get_password(password: str | None) -> str:
    if password is not None:
        return password
    return ask_password_twice(sys.stdin, sys.stdout)


@click.group(
    cls=UtilGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@common_options
@version_option(PROG_NAME)
@click.pass_context
def cli(ctx: click.Context, /, **_: Any) -> None:
    """Administer chasquid: users, aliases, domaininfo, configuration and DKIM keys.

    Options may be given before or after the command; values may be attached
    with "=" (-C=/etc/chasquid) or follow as the next word.
    """
    if ctx.invoked_subcommand is None:
        # No command is a mistake (exit 1), but the help is all there is to say.
        click.echo(ctx.get_help(), err=True)
        sys.exit(1)


PASSWORD_HELP = "The password; asked twice on the terminal (without echo) when absent."


@cli.command("user-add")
@click.argument("address", metavar="USER@DOMAIN", shell_complete=complete_new_user)
@click.option("--password", default=None, is_flag=False, flag_value="", help=PASSWORD_HELP)
@click.option(
    "--receive_only",
    "--receive-only",
    "receive_only",
    is_flag=True,
    help="The user can receive mail but never authenticate.",
)
@common_options
@reports_errors
def user_add(address: str, password: str | None, receive_only: bool, **_: Any) -> None:
    """Add a user, or replace its password."""
    target = users.resolve_user(current_config_dir(), address)
    if receive_only and password is not None:
        raise UtilError("Cannot specify both --receive_only and --password")
    secret = None if receive_only else _get_password(password)
    if users.add_user(target, secret):
        click.echo("Creating database")
    _ok("Added user")


@cli.command("user-remove")
@click.argument("address", metavar="USER@DOMAIN", shell_complete=complete_users)
@common_options
@reports_errors
def user_remove(address: str, **_: Any) -> None:
    """Remove a user."""
    users.remove_user(users.resolve_user(current_config_dir(), address))
    _ok("Removed user")


@cli.command("authenticate")
@click.argument("address", metavar="USER@DOMAIN", shell_complete=complete_users)
@click.option("--password", default=None, is_flag=False, flag_value="", help=PASSWORD_HELP)
@common_options
@reports_errors
def authenticate(address: str, password: str | None, **_: Any) -> None:
    """Check a user's password against the users file."""
    target = users.resolve_user(current_config_dir(), address)
    if users.authenticate(target, _get_password(password)):
        _ok("Authentication succeeded")
    else:
        raise UtilError("Authentication failed")


@cli.command("check-userdb")
@click.argument("domain", shell_complete=complete_domains)
@common_options
@reports_errors
def check_userdb(domain: str, **_: Any) -> None:
    """Check that a domain's users file loads."""
    n = users.check_userdb(current_config_dir(), domain)
    _ok(f"Database loaded ({n} users)")


@cli.command("user-list")
@click.argument("domain", required=False, shell_complete=complete_domains)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@common_options
@reports_errors
def user_list(domain: str | None, as_json: bool, **_: Any) -> None:
    """List the users of one domain, or of every domain."""
    entries = users.list_users(current_config_dir(), domain)
    out = sys.stdout
    if render.use_rich(out, as_json):
        render.users_table(entries, out)
    else:
        click.echo(
            render.users_json(entries) if as_json else render.users_plain(entries), nl=as_json
        )


@cli.command("aliases-resolve")
@click.argument("address")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@common_options
@reports_errors
def aliases_resolve(address: str, as_json: bool, **_: Any) -> None:
    """Show what an address resolves to (asks the daemon; the files if it is not running)."""
    resolved = daemonrpc.aliases_resolve(current_config_dir(), address)
    out = sys.stdout
    if render.use_rich(out, as_json):
        render.resolution_table(resolved, out)
    elif as_json:
        click.echo(render.resolution_json(resolved))
    else:
        click.echo(render.resolution_plain(resolved), nl=False)


@cli.command("domaininfo-remove")
@click.argument("domain")
@common_options
@reports_errors
def domaininfo_remove(domain: str, **_: Any) -> None:
    """Forget the security level seen for a domain (through the daemon when it runs)."""
    daemonrpc.domaininfo_remove(current_config_dir(), domain)


@cli.command("print-config")
@common_options
@reports_errors
def print_config(**_: Any) -> None:
    """Print the effective configuration (file plus defaults)."""
    click.echo(daemonless.print_config(current_config_dir()))


@cli.command("import-users")
@click.argument("domain", shell_complete=complete_domains)
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@common_options
@reports_errors
def import_users(domain: str, file: Path | None, **_: Any) -> None:
    """Convert a users file of chasquid (Go) into this format, keeping the passwords.

    Without FILE the domain's users file is converted in place; with FILE its
    users are added to the domain's database.
    """
    n = users.import_users(current_config_dir(), domain, file)
    _ok(f"Imported {n} users")


@cli.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--hostname",
    help="Host name of this mail server, the name its MX records point to "
    "(default: this machine's host name).",
)
@click.option("--domain", help="First local domain.")
@click.option("--data_dir", "--data-dir", "data_dir", help="Data directory.")
@click.option(
    "--self-signed/--no-self-signed",
    "--self_signed/--no_self_signed",
    "self_signed_cert",
    default=None,
    help="Write a self-signed certificate for the host name (for tests, not production).",
)
@verbose_option
@reports_errors
def init(
    directory: Path,
    hostname: str | None,
    domain: str | None,
    data_dir: str | None,
    self_signed_cert: bool | None,
    **_: Any,
) -> None:
    """Create a new config dir from flags, asking for what is missing. Never overwrites."""
    interactive = sys.stdin.isatty()
    if hostname is None:
        # The daemon's own default, so that init and a config without `hostname` agree.
        try:
            default_host: str | None = system_hostname()
        except ConfigError:
            default_host = None
        if interactive:
            hostname = click.prompt("Host name", default=default_host)
        elif default_host is None:
            raise UtilError("Missing --hostname: this machine's host name is unknown")
        else:
            hostname = default_host
    if domain is None:
        if not interactive:
            raise UtilError("Missing --domain (the first local domain, e.g. example.com)")
        domain = click.prompt("First domain")
    if data_dir is None:
        default_data = "/var/lib/chasquid"
        data_dir = (
            click.prompt("Data directory", default=default_data) if interactive else default_data
        )
    if self_signed_cert is None:
        self_signed_cert = interactive and click.confirm(
            "Write a self-signed certificate (for testing only)?", default=False
        )
    settings = InitSettings(str(hostname), str(domain), str(data_dir), bool(self_signed_cert))
    for path in init_config_dir(directory, settings):
        click.echo(f"Created {path}")
    if not settings.self_signed_cert:
        click.echo(
            f"Put a certificate pair in {directory / 'certs'}/<name>/ (certbot's live/ layout)."
        )


cli.add_command(queue_commands.queue)
for _command in dkim_commands.COMMANDS:
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `chasquid-util` console script."""
    instruction = os.environ.get(COMPLETE_VAR)
    if instruction:
        sys.exit(run_completion(cli, PROG_NAME, COMPLETE_VAR, instruction, normalize_argv))
    args = normalize_argv(sys.argv[1:] if argv is None else list(argv))
    cli.main(args, prog_name=PROG_NAME)
