"""Writing man pages: roff escaping, and the Markdown of docs/ turned into man(7) markup.

Only the Markdown the docs use is understood: headings, paragraphs, ``-``/``*``
lists, pipe tables, fenced code blocks, and inline code, bold, italics and
links. Everything is written as plain ASCII (other characters as ``\\[uXXXX]``)
so that groff and mandoc render it the same everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_INLINE = re.compile(
    r"(?P<code>`[^`]+`)"
    r"|(?P<bold>\*\*[^*]+\*\*)"
    r"|(?P<italic>(?<![\w*])\*[^*\s][^*]*\*(?![\w*]))"
    r"|(?P<link>\[[^\]]+\]\([^)\s]+\))"
)


def escape(text: str) -> str:
    """Text for a roff line: backslashes, and characters outside ASCII, escaped."""
    out = []
    for c in text.replace("\\", "\\e"):
        out.append(c if c.isascii() else f"\\[u{ord(c):04X}]")
    return "".join(out)


def literal(text: str) -> str:
    """A command, option or other literal: also every ``-`` is a real minus sign."""
    return escape(text).replace("-", "\\-")


def bold(text: str) -> str:
    """A literal in bold (commands, options, file names, keys)."""
    return f"\\fB{literal(text)}\\fR"


def italic(text: str) -> str:
    """A placeholder in italics (METAVARS)."""
    return f"\\fI{literal(text)}\\fR"


def line(text: str) -> str:
    """One input line: a leading ``.`` or ``'`` would be read as a request."""
    return "\\&" + text if text.startswith((".", "'")) else text


def macro(name: str, *args: str) -> str:
    """A request line such as ``.SH NAME``; arguments with spaces are quoted."""
    quoted = []
    for arg in args:
        arg = arg.replace('"', "\\(dq")
        quoted.append(f'"{arg}"' if " " in arg or not arg else arg)
    return " ".join([f".{name}", *quoted])


def inline(markdown: str) -> str:
    """A line of Markdown prose with its inline markup in roff."""
    out = []
    pos = 0
    for m in _INLINE.finditer(markdown):
        out.append(escape(markdown[pos : m.start()]))
        token = m.group(0)
        if m.group("code"):
            out.append(bold(token[1:-1]))
        elif m.group("bold"):
            out.append(f"\\fB{inline(token[2:-2])}\\fR")
        elif m.group("italic"):
            out.append(f"\\fI{inline(token[1:-1])}\\fR")
        else:
            text, target = token[1:].split("](", 1)
            out.append(inline(text))
            if target.startswith(("http://", "https://")):
                out.append(f" <{escape(target[:-1])}>")
        pos = m.end()
    out.append(escape(markdown[pos:]))
    return "".join(out)


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def _table(rows: list[str]) -> Iterator[str]:
    """A pipe table as a tagged list: the first cell is the tag; the others its text."""
    header = _cells(rows[0])
    for row in rows[2:]:
        cells = _cells(row)
        yield ".TP"
        yield line(inline(cells[0]))
        extra = [f"({header[i]}: {c})" for i, c in enumerate(cells[1:-1], 1) if c]
        yield line(inline(" ".join([cells[-1], *extra]) if len(cells) > 1 else ""))


def markdown(text: str, *, top: int = 2) -> str:
    """Markdown blocks in man(7) markup; ``top``-level headings become ``.SH``, the next ``.SS``."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        current = lines[i]
        stripped = current.strip()
        if not stripped:
            i += 1
        elif stripped.startswith("```"):
            end = i + 1
            while end < len(lines) and not lines[end].strip().startswith("```"):
                end += 1
            out += [".PP", ".RS 4", ".nf"]
            out += [line(literal(code)) for code in lines[i + 1 : end]]
            out += [".fi", ".RE"]
            i = end + 1
        elif m := re.match(r"^(#+) +(.*)$", stripped):
            level = len(m.group(1))
            if level <= top:
                out.append(macro("SH", inline(m.group(2).upper())))
            else:
                out.append(macro("SS", inline(m.group(2))))
            i += 1
        elif stripped.startswith("|"):
            end = i
            while end < len(lines) and lines[end].strip().startswith("|"):
                end += 1
            out += list(_table(lines[i:end]))
            i = end
        elif re.match(r"^[-*] ", stripped):
            item = [stripped[2:]]
            i += 1
            while i < len(lines) and lines[i].startswith("  ") and lines[i].strip():
                item.append(lines[i].strip())
                i += 1
            out += [".IP \\(bu 2", line(inline(" ".join(item)))]
        else:
            paragraph = [stripped]
            i += 1
            while i < len(lines) and lines[i].strip() and not _starts_block(lines[i]):
                paragraph.append(lines[i].strip())
                i += 1
            out += [".PP", line(inline(" ".join(paragraph)))]
    return "\n".join(out) + "\n"


def tidy(page: str) -> str:
    """Drop paragraph breaks that mean nothing (right after a heading or another break)."""
    out: list[str] = []
    for current in page.splitlines():
        if current == ".PP" and out and (out[-1] == ".PP" or out[-1].startswith((".SH", ".SS"))):
            continue
        out.append(current)
    return "\n".join(out) + "\n"


def _starts_block(text: str) -> bool:
    s = text.strip()
    return s.startswith(("```", "|", "#")) or bool(re.match(r"^[-*] ", s))
