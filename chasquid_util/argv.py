"""Command-line normalisation done before click sees the arguments."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# Options whose value may be attached with "=" to a short name (`-C=DIR`),
# which click would otherwise read as the value "=DIR".
VALUE_OPTIONS: frozenset[str] = frozenset({"-C", "--config_dir", "--config-dir", "--configdir"})


def normalize_argv(args: Sequence[str], value_options: Iterable[str] = VALUE_OPTIONS) -> list[str]:
    """Rewrite `-C=DIR` (and bash's split form `-C = DIR`) into `-C DIR`.

    Everything after a `--` is left alone, as are options that are not in
    value_options.
    """
    names = frozenset(value_options)
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out.extend(args[i:])
            break
        name, eq, value = arg.partition("=")
        if eq and name in names:
            out.extend((name, value))
        elif arg in names and i + 1 < len(args) and args[i + 1] == "=":
            # Bash splits words at "=" when completing: `-C=DIR` arrives as
            # three words. "=" alone is never a sensible directory name.
            out.append(arg)
            i += 1
        else:
            out.append(arg)
        i += 1
    return out
