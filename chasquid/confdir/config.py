"""chasquid.conf: keys, defaults, parsing, validation and overrides.

The file is YAML whose top-level mapping uses chasquid's key names. For
compatibility with existing chasquid.conf files, top-level keys may be
indented with tabs or spaces, tabs may separate tokens, and list keys may be
repeated (occurrences are concatenated in file order). PyYAML's composer
gives us the node tree with line numbers; we walk the top-level mapping
ourselves so repeated keys are seen instead of silently collapsed.

Layering: defaults, then the file, then the
overrides; a layer replaces every key it contains, and an explicit value
(`false`, `0`, `""`) means what it says. Out-of-range values are errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from chasquid.durations import DurationError, parse_duration
from chasquid.errors import ChasquidError
from chasquid.goquote import go_quote

CONF_FILE_NAME = "chasquid.conf"
OVERRIDES_SOURCE = "--config_overrides"

DEFAULT_GIVE_UP_SEND_AFTER = "20h"
MAX_INT64 = (1 << 63) - 1
MAX_UINT32 = (1 << 32) - 1

_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_NULL_TAG = "tag:yaml.org,2002:null"

#: Values of auth_sender_policy: who an authenticated user may send as (docs/security.md).
SENDER_POLICIES = ("any", "domain", "own")

_TRUE_WORDS = frozenset({"true", "yes", "on"})
_DECIMAL_RE = re.compile(r"[-+]?[0-9]+\Z")
_KEY_LINE_RE = re.compile(r"^[ ]*([A-Za-z_][A-Za-z0-9_]*)[ ]*:(?=[ ]|$)")


def system_hostname() -> str:
    """The host name of this machine: the default of `hostname`, and what `init` suggests."""
    try:
        name = socket.gethostname()
    except OSError as e:
        raise ConfigError(f"could not get hostname: {e}") from e
    if not name:
        raise ConfigError("could not get hostname: the system host name is empty")
    return name


@dataclass(frozen=True)
class Config:
    """The effective configuration: one field per chasquid.conf key, in canonical order."""

    hostname: str = field(default_factory=system_hostname)
    max_data_size_mb: int = 50
    smtp_address: tuple[str, ...] = ("systemd",)
    submission_address: tuple[str, ...] = ("systemd",)
    submission_over_tls_address: tuple[str, ...] = ("systemd",)
    monitoring_address: str = ""
    mail_delivery_agent_bin: str = "maildrop"
    mail_delivery_agent_args: tuple[str, ...] = ("-f", "%from%", "-d", "%to_user%")
    mail_lmtp_address: str = ""
    data_dir: str = "/var/lib/chasquid"
    suffix_separators: str = "+"
    drop_characters: str = "."
    mail_log_path: str = "<syslog>"
    dovecot_auth: bool = False
    dovecot_userdb_path: str = ""
    dovecot_client_path: str = ""
    haproxy_incoming: bool = False
    max_queue_items: int = 200
    give_up_send_after: float = 20 * 3600.0
    auth_sender_policy: str = "domain"
    max_connections: int = 1000
    max_connections_per_ip: int = 100
    give_up_send_after_text: str = DEFAULT_GIVE_UP_SEND_AFTER

    @property
    def max_data_size(self) -> int:
        """Maximum message size in bytes."""
        return self.max_data_size_mb * 1024 * 1024


class ConfigError(ChasquidError):
    """The configuration cannot be loaded; the message names file, line and key."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.source = source
        self.line = line
        self.key = key


Kind = Literal["str", "list", "int", "bool", "duration"]


@dataclass(frozen=True)
class Setting:
    """One key as written in one layer: its parsed value and where it came from."""

    key: str
    value: str | int | bool | tuple[str, ...]
    source: str
    line: int


@dataclass(frozen=True)
class _KeySpec:
    kind: Kind
    check: Callable[[object], str | None] | None = None


def _nonempty(what: str) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if value == "":
            return f"must not be empty ({what}); leave the key out to use the default"
        return None

    return check


def _int_range(low: int, high: int) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        assert isinstance(value, int)
        if not low <= value <= high:
            return f"must be between {low} and {high}, got {value}"
        return None

    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if value not in choices:
            return f"must be one of {', '.join(choices)}; got {go_quote(str(value))}"
        return None

    return check


def _check_lmtp_address(value: object) -> str | None:
    assert isinstance(value, str)
    if value == "" or "/" in value:
        return None
    host, sep, port = value.rpartition(":")
    if host.startswith("[") != host.endswith("]"):
        sep = ""
    ok = bool(sep and host.strip("[]") and port.isdigit() and 0 < int(port) <= 65535)
    if not ok:
        return f"expected a unix socket path (containing '/') or host:port, got {go_quote(value)}"
    return None


_SPECS: dict[str, _KeySpec] = {
    "hostname": _KeySpec("str", _nonempty("it is the name this server uses in SMTP")),
    "max_data_size_mb": _KeySpec("int", _int_range(1, MAX_INT64)),
    "smtp_address": _KeySpec("list"),
    "submission_address": _KeySpec("list"),
    "submission_over_tls_address": _KeySpec("list"),
    "monitoring_address": _KeySpec("str"),
    "mail_delivery_agent_bin": _KeySpec("str"),
    "mail_delivery_agent_args": _KeySpec("list"),
    "mail_lmtp_address": _KeySpec("str", _check_lmtp_address),
    "data_dir": _KeySpec("str", _nonempty("it is where the queue is kept")),
    "suffix_separators": _KeySpec("str"),
    "drop_characters": _KeySpec("str"),
    "mail_log_path": _KeySpec("str"),
    "dovecot_auth": _KeySpec("bool"),
    "dovecot_userdb_path": _KeySpec("str"),
    "dovecot_client_path": _KeySpec("str"),
    "haproxy_incoming": _KeySpec("bool"),
    "max_queue_items": _KeySpec("int", _int_range(1, MAX_UINT32)),
    "give_up_send_after": _KeySpec("duration"),
    "auth_sender_policy": _KeySpec("str", _one_of(SENDER_POLICIES)),
    "max_connections": _KeySpec("int", _int_range(1, MAX_UINT32)),
    "max_connections_per_ip": _KeySpec("int", _int_range(1, MAX_UINT32)),
}

KEYS: tuple[str, ...] = tuple(_SPECS)
"""Every chasquid.conf key, in canonical order."""


# --------------------------------------------------------------------------
# Compatibility pre-processing


def _preprocess(text: str) -> str:
    """Make legacy chasquid.conf text acceptable to YAML without moving any line.

    Tabs outside quoted strings become spaces (YAML forbids them as token
    separators and indentation), and leading whitespace before a top-level
    `key:` is removed so tab- or space-indented legacy entries line up.
    """
    out_lines: list[str] = []
    quote: str | None = None
    for line in text.split("\n"):
        starts_in_quote = quote is not None
        chars = list(line)
        i = 0
        prev = ""
        while i < len(chars):
            c = chars[i]
            if quote is None:
                if c == "\t":
                    chars[i] = c = " "
                if c == "#" and (i == 0 or prev in " \t"):
                    break  # the rest is a comment; quotes in it mean nothing
                if c in "\"'" and (i == 0 or prev in " \t[{,"):
                    quote = c
            elif quote == '"':
                if c == "\\":
                    prev = chars[i + 1] if i + 1 < len(chars) else c
                    i += 2
                    continue
                if c == '"':
                    quote = None
            elif c == "'":
                if i + 1 < len(chars) and chars[i + 1] == "'":
                    i += 2
                    prev = "'"
                    continue
                quote = None
            prev = chars[i]
            i += 1
        new = "".join(chars)
        if not starts_in_quote:
            stripped = new.lstrip(" ")
            if stripped != new and _KEY_LINE_RE.match(stripped):
                new = stripped
        out_lines.append(new)
    return "\n".join(out_lines)


def _key_at_line(text: str, line: int) -> str | None:
    """The top-level key whose entry covers 1-based `line` of pre-processed text."""
    key = None
    for n, content in enumerate(text.split("\n"), start=1):
        if n > line:
            break
        m = _KEY_LINE_RE.match(content)
        if m and not content.startswith(" "):
            key = m.group(1)
    return key


# --------------------------------------------------------------------------
# Parsing one layer


class _LayerParser:
    def __init__(self, source: str, prefix: str) -> None:
        self.source = source
        self.prefix = prefix

    def error(
        self, line: int | None, key: str | None, detail: str, *, prefixed: bool = True
    ) -> ConfigError:
        where = self.source if line is None else f"{self.source}:{line}"
        prefix = self.prefix if prefixed else ""
        msg = f"{prefix}{where}: {key}: {detail}" if key else f"{prefix}{where}: {detail}"
        return ConfigError(msg, source=self.source, line=line, key=key)

    def parse(self, text: str) -> dict[str, Setting]:
        pre = _preprocess(text)
        try:
            root = yaml.compose(pre, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else None
            # The construct being parsed (e.g. a flow list) tells which key
            # the broken entry belongs to better than the line of the problem.
            ctx = e.context_mark if e.context_mark and e.context_mark.column > 0 else None
            key_line = ctx.line + 1 if ctx else line
            key = _key_at_line(pre, key_line) if key_line else None
            detail = f"YAML syntax error: {e.problem or 'invalid syntax'}"
            if mark:
                detail += f" at column {mark.column + 1}"
            if e.context and ctx and ctx.line + 1 != line:
                detail += f" ({e.context} that starts on line {ctx.line + 1})"
            raise self.error(line, key, detail) from e
        except yaml.YAMLError as e:
            raise self.error(None, None, f"YAML error: {e}") from e
        except RecursionError:
            # PyYAML composes nested collections recursively.
            raise self.error(None, None, "YAML nested too deeply") from None
        if root is None:
            return {}
        if not isinstance(root, MappingNode):
            raise self.error(
                root.start_mark.line + 1,
                None,
                "expected `key: value` lines (a YAML mapping) at the top level",
            )
        settings: dict[str, Setting] = {}
        for key_node, value_node in root.value:
            self._add(settings, key_node, value_node)
        return settings

    def _add(self, settings: dict[str, Setting], key_node: Node, value_node: Node) -> None:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, ScalarNode) or not isinstance(key_node.value, str):
            raise self.error(line, None, "a key must be a plain name")
        key = key_node.value
        spec = _SPECS.get(key)
        if spec is None:
            hint = difflib.get_close_matches(key, KEYS, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise self.error(line, key, f"unknown key{extra}")
        value = self._value(key, spec, value_node)
        previous = settings.get(key)
        if previous is not None:
            if spec.kind != "list":
                raise self.error(
                    line,
                    key,
                    f"set more than once (first on line {previous.line}); "
                    "only list keys may be repeated",
                )
            assert isinstance(previous.value, tuple) and isinstance(value, tuple)
            value = previous.value + value
            line = previous.line
        settings[key] = Setting(key, value, self.source, line)

    def _value(self, key: str, spec: _KeySpec, node: Node) -> str | int | bool | tuple[str, ...]:
        line = node.start_mark.line + 1
        if spec.kind == "list":
            if isinstance(node, SequenceNode):
                return tuple(self._string(key, item) for item in node.value)
            return (self._string(key, node),)
        if spec.kind in ("str", "duration"):
            value: str | int | bool = self._string(key, node)
        elif spec.kind == "int":
            value = self._int(key, node)
        else:
            value = self._bool(key, node)
        if spec.check is not None:
            problem = spec.check(value)
            if problem:
                raise self.error(line, key, problem)
        if spec.kind == "duration":
            assert isinstance(value, str)
            self._check_duration(line, value)
        return value

    def _scalar(self, key: str, node: Node, expected: str) -> ScalarNode:
        line = node.start_mark.line + 1
        if isinstance(node, ScalarNode):
            if node.tag == _NULL_TAG and node.style is None:
                raise self.error(
                    line, key, f'missing value: expected {expected} (write "" for an empty string)'
                )
            return node
        what = "a list" if isinstance(node, SequenceNode) else "a mapping"
        raise self.error(line, key, f"expected {expected}, got {what}")

    def _string(self, key: str, node: Node) -> str:
        scalar = self._scalar(key, node, "a string")
        line = node.start_mark.line + 1
        if scalar.tag != _STR_TAG:
            raise self.error(
                line,
                key,
                f"expected a string, got {scalar.value}; "
                f'write it in quotes ("{scalar.value}") if it is meant as text',
            )
        value: str = scalar.value
        if any("\ud800" <= c <= "\udfff" for c in value):
            raise self.error(line, key, "string contains an invalid Unicode surrogate")
        return value

    def _int(self, key: str, node: Node) -> int:
        scalar = self._scalar(key, node, "an integer")
        line = node.start_mark.line + 1
        text = scalar.value
        if scalar.tag != _INT_TAG or not _DECIMAL_RE.match(text):
            raise self.error(line, key, f"expected an integer, got {go_quote(text)}")
        return int(text, 10)

    def _bool(self, key: str, node: Node) -> bool:
        scalar = self._scalar(key, node, "true or false")
        line = node.start_mark.line + 1
        if scalar.tag != _BOOL_TAG:
            raise self.error(line, key, f"expected true or false, got {go_quote(scalar.value)}")
        return scalar.value.lower() in _TRUE_WORDS

    def _check_duration(self, line: int, text: str) -> None:
        key = "give_up_send_after"
        try:
            seconds = parse_duration(text)
        except DurationError as e:
            detail = f"invalid {key} value {go_quote(text)}: {e}"
            raise self.error(line, None, detail, prefixed=False) from e
        if seconds <= 0:
            detail = f"invalid {key} value {go_quote(text)}: must be greater than 0"
            raise self.error(line, None, detail, prefixed=False)


def parse_layer(text: str, source: str, *, is_override: bool = False) -> dict[str, Setting]:
    """Parse one layer (file or overrides) into validated settings with their origins."""
    prefix = "parsing override: " if is_override else "parsing config: "
    return _LayerParser(source, prefix).parse(text)


def parse_text(text: str, source: str) -> dict[str, str | int | bool | tuple[str, ...]]:
    """Parse chasquid.conf text into {key: value} for the keys it contains."""
    return {k: s.value for k, s in parse_layer(text, source).items()}


# --------------------------------------------------------------------------
# Loading


def conf_path(config_dir: str | os.PathLike[str]) -> str:
    """Path of chasquid.conf as shown in messages: `<config dir>/chasquid.conf` verbatim."""
    return os.path.join(os.fspath(config_dir), CONF_FILE_NAME)


def _read_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        reason = (e.strerror or str(e)).lower()
        raise ConfigError(
            f"failed to read config at {go_quote(path)}: open {path}: {reason}", source=path
        ) from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"parsing config: {path}:{line}: the file is not valid UTF-8 (byte offset {e.start})",
            source=path,
            line=line,
        ) from e


def build(*layers: Mapping[str, Setting]) -> Config:
    """Build the Config from defaults overlaid by each layer in order."""
    values: dict[str, object] = {}
    for layer in layers:
        for key, setting in layer.items():
            values[key] = setting.value
    if "give_up_send_after" in values:
        text = values["give_up_send_after"]
        assert isinstance(text, str)
        values["give_up_send_after_text"] = text
        values["give_up_send_after"] = parse_duration(text)
    return Config(**values)  # type: ignore[arg-type]


def load_with_origins(
    config_dir: str | os.PathLike[str], overrides: str = ""
) -> tuple[Config, dict[str, Setting]]:
    """Load like load(), also returning where each explicitly set key came from."""
    path = conf_path(config_dir)
    file_layer = parse_layer(_read_file(path), path)
    override_layer = parse_layer(overrides, OVERRIDES_SOURCE, is_override=True)
    config = build(file_layer, override_layer)
    return config, {**file_layer, **override_layer}


def load(config_dir: str | os.PathLike[str], overrides: str = "") -> Config:
    """Load `<config_dir>/chasquid.conf` over the defaults, then apply the overrides text."""
    return load_with_origins(config_dir, overrides)[0]


# --------------------------------------------------------------------------
# Rendering


def render(config: Config) -> str:
    """print-config's canonical flat form; load() reads it back to an equal Config.

    Every line ends with a newline and the text ends with one empty line.
    Keys at a value that means "nothing" (false, or "" where that is the
    default) are left out; an explicit value that differs from the default
    is always written, even `""` or `[]`, so the round trip is exact.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    lines: list[str] = []
    for key in KEYS:
        kind = _SPECS[key].kind
        value = getattr(config, key)
        if kind == "list":
            if value:
                lines.extend(f"{key}: {go_quote(v)}" for v in value)
            else:
                lines.append(f"{key}: []")
        elif kind == "duration":
            lines.append(f"{key}: {go_quote(config.give_up_send_after_text)}")
        elif kind == "bool":
            if value:
                lines.append(f"{key}: true")
        elif kind == "int":
            lines.append(f"{key}: {value}")
        elif value or key in ("suffix_separators", "drop_characters") or value != defaults[key]:
            lines.append(f"{key}: {go_quote(value)}")
    return "".join(line + "\n" for line in lines) + "\n"
