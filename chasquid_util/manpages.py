"""Generate the man pages of the four tools and of chasquid.conf (`make man`).

Usage: python -m chasquid_util.manpages DOCS_DIR

Writes DOCS_DIR/man/<tool>.1 from each tool's click command (the same help
texts, options and defaults that ``--help`` shows, so a new flag appears by
itself) and DOCS_DIR/man/chasquid.conf.5 from DOCS_DIR/configuration.md.
"""

from __future__ import annotations

import datetime
import inspect
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import click

from chasquid_util import roff
from chasquid_util.completions import TOOLS

#: Sections of configuration.md that are not for the man page's readers.
SKIPPED_SECTIONS = ("For developers",)
CONF_PAGE = "chasquid.conf.5"


def _paragraphs(help_text: str) -> Iterator[str]:
    """A click help text as man paragraphs: reflowed, except click's ``\\b`` blocks."""
    text = inspect.cleandoc(help_text).split("\f", 1)[0]
    for block in re.split(r"\n\s*\n", text):
        if block.startswith("\b\n"):
            verbatim = [roff.line(roff.escape(b)) for b in block[2:].splitlines()]
            yield "\n".join([".PP", ".nf", *verbatim, ".fi"])
        elif block.strip():
            yield ".PP\n" + roff.line(roff.escape(" ".join(block.split())))


def summary(cmd: click.Command) -> str:
    """The NAME line's description: the first sentence of the help, starting in lower case."""
    first = inspect.cleandoc(cmd.help or "").split("\n\n", 1)[0]
    sentence = re.split(r"(?<=\.)\s", " ".join(first.split()), maxsplit=1)[0].rstrip(".")
    if sentence[:2].istitle():
        sentence = sentence[0].lower() + sentence[1:]
    return sentence


def _names(record: str) -> str:
    """click's option names with metavar (``-C, --config_dir DIR``) in roff: names bold."""
    out = []
    for word in re.split(r"(\s+|, | / )", record):
        if re.fullmatch(r"-{1,2}[\w-]+", word):
            out.append(roff.bold(word))
        elif re.fullmatch(r"[A-Z][A-Z0-9_@.]*(\.\.\.)?|\[[^\]]+\]", word):
            out.append(roff.italic(word))
        else:
            out.append(roff.escape(word))
    return "".join(out)


def _options(ctx: click.Context, skip: frozenset[str] = frozenset()) -> list[str]:
    out = []
    for param in ctx.command.get_params(ctx):
        if not isinstance(param, click.Option) or param.hidden or param.name in skip:
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        out += [".TP", roff.line(_names(record[0])), roff.line(roff.escape(record[1] or ""))]
    return out


def _synopsis(ctx: click.Context) -> list[str]:
    pieces = " ".join(ctx.command.collect_usage_pieces(ctx))
    return [f"{roff.bold(ctx.command_path)} {_names(pieces)}".rstrip()]


def _subcommands(ctx: click.Context, common: frozenset[str]) -> Iterator[str]:
    """Each command of a group (recursively) as a sub-section with its usage and options."""
    group = ctx.command
    assert isinstance(group, click.Group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        sub = click.Context(cmd, info_name=name, parent=ctx, **cmd.context_settings)
        usage = " ".join([sub.command_path, *cmd.collect_usage_pieces(sub)])
        yield roff.macro("SS", roff.literal(usage))
        yield from _paragraphs(cmd.help or "")
        options = _options(sub, common)
        if options:
            yield ".PP\nOptions:"
            yield ".RS 4"
            yield from options
            yield ".RE"
        if isinstance(cmd, click.Group):
            yield from _subcommands(sub, common)


def tool_page(prog: str, cmd: click.Command, th: str, others: list[str]) -> str:
    """The section 1 page of a tool from its click command; th is its .TH line."""
    ctx = click.Context(cmd, info_name=prog, **cmd.context_settings)
    out = [
        th,
        ".SH NAME",
        f"{roff.literal(prog)} \\- {roff.escape(summary(cmd))}",
        ".SH SYNOPSIS",
        *_synopsis(ctx),
        ".SH DESCRIPTION",
        *_paragraphs(cmd.help or ""),
        ".SH OPTIONS",
        *_options(ctx),
    ]
    if isinstance(cmd, click.Group):
        # The group's own options (and --help) are the same on every command: said once.
        common = frozenset(p.name for p in cmd.get_params(ctx) if p.name)
        out += [
            ".SH COMMANDS",
            ".PP",
            "Every command also takes the options above that choose the configuration "
            "directory and verbosity, before or after the command name.",
            *_subcommands(ctx, common),
        ]
    out += [".SH SEE ALSO", _see_also(others)]
    return "\n".join(out) + "\n"


def _see_also(pages: list[str]) -> str:
    refs = []
    for page in pages:
        name, _, section = page.rpartition(".")
        refs.append(f"{roff.bold(name)}({section})")
    return ",\n".join(refs)


def conf_page(configuration_md: str, th: str, others: list[str]) -> str:
    """chasquid.conf(5) from docs/configuration.md, minus its sections for developers."""
    intro, *sections = re.split(r"^(?=## )", configuration_md.split("\n", 1)[1], flags=re.M)
    kept = [s for s in sections if not s.startswith(tuple(f"## {t}" for t in SKIPPED_SECTIONS))]
    return (
        "\n".join(
            [
                th,
                ".SH NAME",
                f"{roff.literal('chasquid.conf')} \\- configuration of the chasquid mail server",
                ".SH DESCRIPTION",
            ]
        )
        + "\n"
        + roff.markdown(intro + "".join(kept))
        + ".SH SEE ALSO\n"
        + _see_also(others)
        + "\n"
    )


def generate(docs_dir: Path, dates: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every page, keyed by its file name under docs_dir/man/, dated from dates (else today)."""
    today = datetime.date.today().isoformat()
    names = [f"{t.prog}.1" for t in TOOLS] + [CONF_PAGE]

    def th(name: str) -> str:
        title, _, section = name.rpartition(".")
        date = (dates or {}).get(name, today)
        header = roff.macro("TH", title.upper(), section, date, "chasquid", "chasquid manual")
        # No hyphenation: option names and paths must not break at their dashes.
        return header + "\n.nh"

    pages = {}
    for tool in TOOLS:
        name = f"{tool.prog}.1"
        others = [n for n in names if n != name]
        pages[name] = tool_page(tool.prog, tool.command(), th(name), others)
    conf_md = (docs_dir / "configuration.md").read_text(encoding="utf-8")
    pages[CONF_PAGE] = conf_page(conf_md, th(CONF_PAGE), [n for n in names if n != CONF_PAGE])
    return {name: roff.tidy(text) for name, text in pages.items()}


def page_date(text: str) -> str | None:
    """The date of a page's .TH line."""
    m = re.match(r'\.TH \S+ \S+ "?([^"\s]+)', text)
    return m.group(1) if m else None


def current_dates(docs_dir: Path) -> dict[str, str]:
    """The dates of the pages under docs_dir/man/ as they are."""
    dates = {}
    for path in (docs_dir / "man").glob("*.[1-9]"):
        date = page_date(path.read_text(encoding="ascii"))
        if date:
            dates[path.name] = date
    return dates


def write(docs_dir: Path) -> list[Path]:
    """Write the pages under docs_dir/man/ that changed, dated today; return those paths.

    A page whose text is unchanged keeps its date, so regenerating changes
    nothing unless a help text, an option or configuration.md changed.
    """
    out = docs_dir / "man"
    out.mkdir(exist_ok=True)
    kept = generate(docs_dir, current_dates(docs_dir))
    fresh = generate(docs_dir)
    written = []
    for name, text in kept.items():
        path = out / name
        if not path.exists() or path.read_text(encoding="ascii") != text:
            path.write_text(fresh[name], encoding="ascii")
            written.append(path)
    return written


def main(argv: list[str]) -> int:
    """`python -m chasquid_util.manpages DOCS_DIR`."""
    if len(argv) != 1:
        print("Usage: python -m chasquid_util.manpages DOCS_DIR", file=sys.stderr)
        return 2
    written = write(Path(argv[0]))
    for path in written:
        print(f"wrote {path}")
    if not written:
        print("man pages are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
