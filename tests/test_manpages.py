"""The man pages in docs/man/: current, rendered without warnings, and complete."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
from pathlib import Path

import click
import pytest
from helpers.daemon import require_program

from chasquid.confdir.config import KEYS
from chasquid_util import roff
from chasquid_util.manpages import current_dates, generate, page_date, tool_page, write

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ["chasquid.1", "chasquid-util.1", "smtp-check.1", "mda-lmtp.1", "chasquid.conf.5"]


def render(page: Path) -> str:
    """What `man -l` shows, as plain text."""
    man = require_program("man")
    env = dict(os.environ, MANWIDTH="100", MAN_KEEP_FORMATTING="", LC_ALL="C.UTF-8")
    r = subprocess.run(
        [man, "-l", "-P", "cat", str(page)], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_checked_in_man_pages_are_current() -> None:
    expected = generate(DOCS, current_dates(DOCS))
    stale = [
        name
        for name, text in expected.items()
        if not (DOCS / "man" / name).is_file()
        or (DOCS / "man" / name).read_text(encoding="ascii") != text
    ]
    assert not stale, f"run `make man`: stale or missing {stale}"
    extra = sorted(p.name for p in (DOCS / "man").iterdir())
    assert extra == sorted(PAGES), "docs/man/ holds pages `make man` does not write"


@pytest.mark.parametrize("name", PAGES)
def test_pages_render_without_warnings(name: str) -> None:
    page = DOCS / "man" / name
    groff = require_program("groff")
    r = subprocess.run(
        [groff, "-man", "-t", "-ww", "-z", str(page)], capture_output=True, text=True, timeout=60
    )
    assert (r.returncode, r.stderr) == (0, "")
    mandoc = require_program("mandoc")
    r = subprocess.run(
        [mandoc, "-T", "lint", "-W", "warning", str(page)], capture_output=True, text=True
    )
    assert (r.returncode, r.stdout + r.stderr) == (0, "")
    assert page_date(page.read_text()) is not None
    datetime.date.fromisoformat(page_date(page.read_text()) or "")


def test_conf_page_shows_every_key() -> None:
    text = render(DOCS / "man" / "chasquid.conf.5")
    lines = [line.strip() for line in text.splitlines()]
    for key in KEYS:
        assert key in lines, f"{key} has no section in chasquid.conf(5)"


def test_tool_pages_show_every_option_and_command() -> None:
    from chasquid_util.cli import cli

    text = render(DOCS / "man" / "chasquid-util.1")
    for name in cli.list_commands(click.Context(cli)):
        assert f"chasquid-util {name} " in text
    assert "user-add [OPTIONS] USER@DOMAIN" in text and "--receive_only" in text
    daemon = render(DOCS / "man" / "chasquid.1")
    for flag in ("-config_dir", "--config_overrides", "-logtosyslog", "-testing__reload_every"):
        assert flag in daemon


def test_a_new_flag_is_in_the_page_by_itself() -> None:
    @click.group(help="A tool.\n\nMore words.")
    @click.option("--frob", metavar="N", default=3, show_default=True, help="How much to frob.")
    def tool(frob: int) -> None:
        pass

    @tool.command("sub")
    @click.argument("thing")
    @click.option("--shiny/--dull", help="The finish.")
    def sub(thing: str, shiny: bool) -> None:
        """Do it to THING."""

    page = tool_page("frob-tool", tool, roff.macro("TH", "FROB-TOOL", "1", "2026-01-02"), [])
    assert "frob\\-tool \\- a tool" in page
    assert "\\fB\\-\\-frob\\fR \\fIN\\fR" in page
    assert "How much to frob.  [default: 3]" in page
    assert '.SS "frob\\-tool sub [OPTIONS] THING"' in page
    assert "\\fB\\-\\-shiny\\fR / \\fB\\-\\-dull\\fR" in page
    assert "Do it to THING." in page


def test_make_man_writes_only_what_changed(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    assert write(docs) == []
    conf = docs / "configuration.md"
    text = conf.read_text()
    new_key = '### `brand_new_key`\nString. Default `""`.\n\n'
    heading = "## `chasquid-util print-config`"
    conf.write_text(text.replace(heading, new_key + heading, 1))
    assert write(docs) == [docs / "man" / "chasquid.conf.5"]
    page = (docs / "man" / "chasquid.conf.5").read_text()
    assert page_date(page) == datetime.date.today().isoformat()
    assert ".SS \\fBbrand_new_key\\fR\n" in page


def test_markdown_to_roff() -> None:
    md = (
        "## A `key` and **bold**\n\nText with `-v`, *em*, [a link](x.md), "
        "[site](https://example.com/) and caf\u00e9.\n\n"
        "- item one\n  continued\n* item two\n\n"
        "| name | default | meaning |\n| --- | --- | --- |\n| `a` | `1` | the a |\n\n"
        "```\n.dot \\\\ back\n```\n"
    )
    assert roff.markdown(md).splitlines() == [
        '.SH "A \\fBKEY\\fR AND \\fBBOLD\\fR"',
        ".PP",
        "Text with \\fB\\-v\\fR, \\fIem\\fR, a link, site <https://example.com/> and caf\\[u00E9].",
        ".IP \\(bu 2",
        "item one continued",
        ".IP \\(bu 2",
        "item two",
        ".TP",
        "\\fBa\\fR",
        "the a (default: \\fB1\\fR)",
        ".PP",
        ".RS 4",
        ".nf",
        "\\&.dot \\e\\e back",
        ".fi",
        ".RE",
    ]
