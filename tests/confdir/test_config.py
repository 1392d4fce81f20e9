"""Tests for chasquid.conf loading, validation, overrides and print-config rendering."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import string
from pathlib import Path

import pytest
from helpers.confdirs import write_conf
from hypothesis import given, settings
from hypothesis import strategies as st

from chasquid.confdir import config as cfg
from chasquid.confdir.config import (
    KEYS,
    Config,
    ConfigError,
    load,
    load_with_origins,
    parse_text,
    render,
)
from chasquid.durations import parse_duration

TESTDATA = Path(__file__).parent.parent / "testdata"


def load_text(tmp_path: Path, text: str, overrides: str = "") -> Config:
    return load(write_conf(tmp_path, text), overrides)


def load_error(tmp_path: Path, text: str, overrides: str = "") -> str:
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text, overrides)
    return str(e.value)


# --------------------------------------------------------------------------
# Defaults and the example files


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    c = load_text(tmp_path, "# only a comment\n\n")
    assert c.hostname == socket.gethostname()
    assert c.max_data_size_mb == 50
    assert c.max_data_size == 50 * 1024 * 1024
    assert c.smtp_address == ("systemd",)
    assert c.submission_address == ("systemd",)
    assert c.submission_over_tls_address == ("systemd",)
    assert c.monitoring_address == ""
    assert c.mail_delivery_agent_bin == "maildrop"
    assert c.mail_delivery_agent_args == ("-f", "%from%", "-d", "%to_user%")
    assert c.mail_lmtp_address == ""
    assert c.data_dir == "/var/lib/chasquid"
    assert c.suffix_separators == "+"
    assert c.drop_characters == "."
    assert c.mail_log_path == "<syslog>"
    assert c.dovecot_auth is False
    assert c.dovecot_userdb_path == ""
    assert c.dovecot_client_path == ""
    assert c.haproxy_incoming is False
    assert c.max_queue_items == 200
    assert c.give_up_send_after == 20 * 3600
    assert c.give_up_send_after_text == "20h"


def test_fields_follow_canonical_key_order() -> None:
    names = [f.name for f in dataclasses.fields(Config)]
    assert names[: len(KEYS)] == list(KEYS)
    assert names[len(KEYS) :] == ["give_up_send_after_text"]
    assert KEYS.index("mail_lmtp_address") == KEYS.index("mail_delivery_agent_args") + 1


def test_chasquid_style_example_with_tab_indented_lines(tmp_path: Path) -> None:
    shutil.copy(TESTDATA / "chasquid-example.conf", tmp_path / "chasquid.conf")
    c, origins = load_with_origins(tmp_path)
    defaults = Config(hostname="mx.example.org", max_data_size_mb=25)
    assert c == defaults
    assert origins["hostname"].line == 64
    assert origins["max_data_size_mb"].line == 65
    assert origins["hostname"].source == str(tmp_path / "chasquid.conf")


def test_commented_keys_in_example_become_a_valid_config(tmp_path: Path) -> None:
    # Uncommenting every key line of the example must give a loadable file
    # whose values are the documented defaults.
    text = (TESTDATA / "chasquid-example.conf").read_text(encoding="utf-8")
    lines = []
    for line in text.splitlines():
        stripped = line.lstrip("\t ")
        if stripped.startswith("#") and stripped[1:2] in string.ascii_lowercase:
            lines.append(stripped[1:])
        elif not stripped.startswith(("hostname", "max_data_size_mb")):
            lines.append(line)
    c = load_text(tmp_path, "\n".join(lines))
    assert c == Config(hostname="mx.example.com", monitoring_address="127.0.0.1:1099")


def test_shipped_example_config_loads(tmp_path: Path) -> None:
    shipped = Path(__file__).parents[2] / "etc" / "chasquid" / "chasquid.conf"
    shutil.copy(shipped, tmp_path / "chasquid.conf")
    c = load(tmp_path)
    assert c.smtp_address == (":25",)
    assert c.submission_address == (":587",)
    assert c.submission_over_tls_address == (":465",)
    assert (
        dataclasses.replace(
            c,
            smtp_address=("systemd",),
            submission_address=("systemd",),
            submission_over_tls_address=("systemd",),
        )
        == Config()
    )


# --------------------------------------------------------------------------
# Syntax forms


def test_repeated_list_keys_concatenate_in_file_order(tmp_path: Path) -> None:
    c = load_text(
        tmp_path,
        'smtp_address: ":25"\n'
        'hostname: "h"\n'
        'smtp_address: "[::1]:2525"\n'
        'mail_delivery_agent_args: "--from"\n'
        'mail_delivery_agent_args: "%from%"\n'
        'mail_delivery_agent_args: "--to"\n'
        'mail_delivery_agent_args: "%to%"\n',
    )
    assert c.smtp_address == (":25", "[::1]:2525")
    assert c.mail_delivery_agent_args == ("--from", "%from%", "--to", "%to%")
    assert c.submission_address == ("systemd",)


def test_spec_example_all_forms(tmp_path: Path) -> None:
    c = load_text(
        tmp_path,
        "# comment\n"
        'hostname: "mx.example.com"\n'
        "max_data_size_mb: 50\n"
        'smtp_address: ":25"\n'
        'smtp_address: "[::1]:2525"          # repeated list key: appended\n'
        'submission_address: [":587"]         # flow list\n'
        "submission_over_tls_address:\n"
        '  - ":465"\n'
        'mail_delivery_agent_args: "-f"\n'
        'mail_delivery_agent_args: "%from%"\n'
        "dovecot_auth: true\n"
        'give_up_send_after: "48h"\n',
    )
    assert c.hostname == "mx.example.com"
    assert c.smtp_address == (":25", "[::1]:2525")
    assert c.submission_address == (":587",)
    assert c.submission_over_tls_address == (":465",)
    assert c.mail_delivery_agent_args == ("-f", "%from%")
    assert c.dovecot_auth is True
    assert c.give_up_send_after == 48 * 3600
    assert c.give_up_send_after_text == "48h"


def test_mixed_list_forms_and_empty_list(tmp_path: Path) -> None:
    c = load_text(
        tmp_path,
        "smtp_address: [':25', \"x:1\"]\n"
        "smtp_address: []\n"
        "smtp_address:\n  - a:1\n  - 'b:2'\n"
        "submission_address: []\n",
    )
    assert c.smtp_address == (":25", "x:1", "a:1", "b:2")
    assert c.submission_address == ()


def test_empty_list_element_is_kept(tmp_path: Path) -> None:
    c = load_text(tmp_path, 'submission_address: ""\n')
    assert c.submission_address == ("",)


def test_plain_single_quoted_and_escaped_strings(tmp_path: Path) -> None:
    c = load_text(
        tmp_path,
        "hostname: mx.example.com\n"
        "mail_log_path: '/var/log/it''s'\n"
        'mail_delivery_agent_bin: "/usr/bin/a\\tb\\x41\\u00f1\\"q\\\\"\n'
        "monitoring_address: 127.0.0.1:1099\n",
    )
    assert c.hostname == "mx.example.com"
    assert c.mail_log_path == "/var/log/it's"
    assert c.mail_delivery_agent_bin == '/usr/bin/a\tbAñ"q\\'
    assert c.monitoring_address == "127.0.0.1:1099"


def test_tabs_and_spaces_before_keys_and_between_tokens(tmp_path: Path) -> None:
    c = load_text(
        tmp_path,
        '\thostname:\t"a\tb"\n'
        "  max_data_size_mb: 7\n"
        '\t \tsmtp_address:\t[":1",\t":2"]\t# a tab comment\n'
        'drop_characters: "-"\n',
    )
    assert c.hostname == "a\tb"
    assert c.max_data_size_mb == 7
    assert c.smtp_address == (":1", ":2")
    assert c.drop_characters == "-"


def test_apostrophe_in_comment_does_not_open_a_quote(tmp_path: Path) -> None:
    c = load_text(tmp_path, "# don't do this\n\thostname: \"h\"\n# it's fine\n")
    assert c.hostname == "h"


def test_explicit_values_are_honoured(tmp_path: Path) -> None:
    (tmp_path / "chasquid.conf").write_text(
        'dovecot_auth: true\nhaproxy_incoming: true\nsuffix_separators: "-"\n'
    )
    c = load(
        tmp_path,
        'dovecot_auth: false\nsuffix_separators: ""\ndrop_characters: ""\n'
        'mail_delivery_agent_bin: ""\n',
    )
    assert c.dovecot_auth is False
    assert c.haproxy_incoming is True
    assert c.suffix_separators == ""
    assert c.drop_characters == ""
    assert c.mail_delivery_agent_bin == ""


def test_lmtp_address_forms(tmp_path: Path) -> None:
    for value in ["/run/dovecot/lmtp", "./lmtp.sock", "127.0.0.1:24", "[::1]:24", "lmtp:2424"]:
        assert load_text(tmp_path, f'mail_lmtp_address: "{value}"\n').mail_lmtp_address == value


# --------------------------------------------------------------------------
# Overrides


def test_overrides_as_text(tmp_path: Path) -> None:
    write_conf(tmp_path, 'hostname: "file"\nsmtp_address: ":25"\nsmtp_address: ":26"\n')
    c, origins = load_with_origins(tmp_path, 'hostname: "over"\nsmtp_address: ":2525"\n')
    assert c.hostname == "over"
    # An overlay replaces a list key wholesale.
    assert c.smtp_address == (":2525",)
    assert origins["hostname"].source == "--config_overrides"
    assert origins["hostname"].line == 1
    assert origins["smtp_address"].line == 2


def test_overrides_as_flow_mapping(tmp_path: Path) -> None:
    write_conf(tmp_path, 'hostname: "file"\nmax_data_size_mb: 3\ndata_dir: "/d"\n')
    c = load(tmp_path, '{hostname: "a", max_data_size_mb: 10}')
    assert c.hostname == "a"
    assert c.max_data_size_mb == 10
    assert c.data_dir == "/d"


def test_empty_overrides_change_nothing(tmp_path: Path) -> None:
    write_conf(tmp_path, "max_data_size_mb: 3\n")
    assert load(tmp_path, "") == load(tmp_path, "   \n# nothing\n")
    assert load(tmp_path).max_data_size_mb == 3


def test_override_errors_name_the_flag(tmp_path: Path) -> None:
    write_conf(tmp_path, "")
    with pytest.raises(ConfigError) as e:
        load(tmp_path, 'hostname: "x"\nmax_queue_items: -1\n')
    assert str(e.value) == (
        "parsing override: --config_overrides:2: max_queue_items: "
        "must be between 1 and 4294967295, got -1"
    )
    assert e.value.source == "--config_overrides"
    assert e.value.line == 2
    assert e.value.key == "max_queue_items"


# --------------------------------------------------------------------------
# Errors: every class names file, line and key


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / ".nonono"
    with pytest.raises(ConfigError) as e:
        load(missing)
    path = f"{missing}/chasquid.conf"
    assert str(e.value) == (
        f'failed to read config at "{path}": open {path}: no such file or directory'
    )


def test_relative_config_dir_path_verbatim(tmp_path: Path) -> None:
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ConfigError) as e:
            load(".nonono")
    finally:
        os.chdir(old)
    assert str(e.value) == (
        'failed to read config at ".nonono/chasquid.conf": '
        "open .nonono/chasquid.conf: no such file or directory"
    )


def test_unreadable_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "chasquid.conf").mkdir()
    with pytest.raises(ConfigError) as e:
        load(tmp_path)
    assert str(e.value).endswith(": is a directory")


@pytest.mark.parametrize(
    ("text", "line", "key", "detail"),
    [
        ('x: 1\nfoo: "bar"\n', 1, "x", "unknown key"),
        ('\n\nhostnme: "a"\n', 3, "hostnme", "unknown key; did you mean 'hostname'?"),
        (
            'hostname: "a"\n\nhostname: "b"\n',
            3,
            "hostname",
            "set more than once (first on line 1); only list keys may be repeated",
        ),
        (
            "\n\n\n\n\n\nmax_data_size_mb: abc\n",
            7,
            "max_data_size_mb",
            'expected an integer, got "abc"',
        ),
        ('max_data_size_mb: "10"\n', 1, "max_data_size_mb", 'expected an integer, got "10"'),
        ("max_data_size_mb: 1.5\n", 1, "max_data_size_mb", 'expected an integer, got "1.5"'),
        ("max_data_size_mb: 0x10\n", 1, "max_data_size_mb", 'expected an integer, got "0x10"'),
        (
            "max_data_size_mb: 0\n",
            1,
            "max_data_size_mb",
            "must be between 1 and 9223372036854775807, got 0",
        ),
        (
            "max_data_size_mb: -5\n",
            1,
            "max_data_size_mb",
            "must be between 1 and 9223372036854775807, got -5",
        ),
        (
            "max_data_size_mb: 9223372036854775808\n",
            1,
            "max_data_size_mb",
            "must be between 1 and 9223372036854775807, got 9223372036854775808",
        ),
        ("max_queue_items: 0\n", 1, "max_queue_items", "must be between 1 and 4294967295, got 0"),
        (
            "max_queue_items: 4294967296\n",
            1,
            "max_queue_items",
            "must be between 1 and 4294967295, got 4294967296",
        ),
        (
            "hostname: 25\n",
            1,
            "hostname",
            'expected a string, got 25; write it in quotes ("25") if it is meant as text',
        ),
        (
            "monitoring_address: true\n",
            1,
            "monitoring_address",
            'expected a string, got true; write it in quotes ("true") if it is meant as text',
        ),
        (
            "smtp_address:\n  - 25\n",
            2,
            "smtp_address",
            'expected a string, got 25; write it in quotes ("25") if it is meant as text',
        ),
        (
            "hostname:\n",
            1,
            "hostname",
            'missing value: expected a string (write "" for an empty string)',
        ),
        (
            "data_dir: null\n",
            1,
            "data_dir",
            'missing value: expected a string (write "" for an empty string)',
        ),
        (
            'hostname: ""\n',
            1,
            "hostname",
            "must not be empty (it is the name this server uses in SMTP); "
            "leave the key out to use the default",
        ),
        (
            'data_dir: ""\n',
            1,
            "data_dir",
            "must not be empty (it is where the queue is kept); "
            "leave the key out to use the default",
        ),
        ('dovecot_auth: "true"\n', 1, "dovecot_auth", 'expected true or false, got "true"'),
        ("dovecot_auth: 1\n", 1, "dovecot_auth", 'expected true or false, got "1"'),
        ("hostname: [a]\n", 1, "hostname", "expected a string, got a list"),
        ("smtp_address: {a: b}\n", 1, "smtp_address", "expected a string, got a mapping"),
        ("smtp_address: [[a]]\n", 1, "smtp_address", "expected a string, got a list"),
        (
            'mail_lmtp_address: "localhost"\n',
            1,
            "mail_lmtp_address",
            "expected a unix socket path (containing '/') or host:port, got \"localhost\"",
        ),
        (
            'mail_lmtp_address: "h:99999"\n',
            1,
            "mail_lmtp_address",
            "expected a unix socket path (containing '/') or host:port, got \"h:99999\"",
        ),
    ],
)
def test_value_errors(tmp_path: Path, text: str, line: int, key: str, detail: str) -> None:
    path = tmp_path / "chasquid.conf"
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text)
    assert str(e.value) == f"parsing config: {path}:{line}: {key}: {detail}"
    assert (e.value.source, e.value.line, e.value.key) == (str(path), line, key)


def test_yaml_syntax_error_names_line_and_key(tmp_path: Path) -> None:
    msg = load_error(tmp_path, 'hostname: "a"\nsmtp_address: [":25"\nmax_queue_items: 5\n')
    path = tmp_path / "chasquid.conf"
    assert msg.startswith(f"parsing config: {path}:3: smtp_address: YAML syntax error: ")


def test_unterminated_string(tmp_path: Path) -> None:
    msg = load_error(tmp_path, '\nhostname: "abc\n')
    assert msg.startswith(f"parsing config: {tmp_path / 'chasquid.conf'}:")
    assert "hostname: YAML syntax error" in msg


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "- a\n- b\n")
    assert msg == (
        f"parsing config: {tmp_path / 'chasquid.conf'}:1: "
        "expected `key: value` lines (a YAML mapping) at the top level"
    )


def test_invalid_utf8(tmp_path: Path) -> None:
    (tmp_path / "chasquid.conf").write_bytes(b'hostname: "a"\nmail_log_path: "\xff"\n')
    with pytest.raises(ConfigError) as e:
        load(tmp_path)
    assert str(e.value).startswith(f"parsing config: {tmp_path / 'chasquid.conf'}:2: ")
    assert "not valid UTF-8" in str(e.value)


# --------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20h", 72000), ("360m", 21600), ("1h30m", 5400), ("2.5h", 9000), ("90s", 90)],
)
def test_give_up_send_after(tmp_path: Path, text: str, seconds: float) -> None:
    c = load_text(tmp_path, f'give_up_send_after: "{text}"\n')
    assert c.give_up_send_after == seconds
    assert c.give_up_send_after_text == text


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("0", "must be greater than 0"),
        ("0s", "must be greater than 0"),
        ("-1h", "must be greater than 0"),
        ("abc", 'time: invalid duration "abc"'),
        ("10", 'time: missing unit in duration "10"'),
        ("1d", 'time: unknown unit "d" in duration "1d"'),
        ("", 'time: invalid duration ""'),
    ],
)
def test_give_up_send_after_errors(tmp_path: Path, value: str, error: str) -> None:
    msg = load_error(tmp_path, f'hostname: "h"\ngive_up_send_after: "{value}"\n')
    assert msg == (
        f'{tmp_path / "chasquid.conf"}:2: invalid give_up_send_after value "{value}": {error}'
    )


def test_give_up_send_after_needs_a_string(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "give_up_send_after: 0\n")
    assert "give_up_send_after: expected a string, got 0" in msg


# --------------------------------------------------------------------------
# Rendering (print-config)


def test_render_spec_example(tmp_path: Path) -> None:
    c = dataclasses.replace(load_text(tmp_path, 'data_dir: ".data"\n'), hostname="myhost")
    assert render(c) == (
        'hostname: "myhost"\n'
        "max_data_size_mb: 50\n"
        'smtp_address: "systemd"\n'
        'submission_address: "systemd"\n'
        'submission_over_tls_address: "systemd"\n'
        'mail_delivery_agent_bin: "maildrop"\n'
        'mail_delivery_agent_args: "-f"\n'
        'mail_delivery_agent_args: "%from%"\n'
        'mail_delivery_agent_args: "-d"\n'
        'mail_delivery_agent_args: "%to_user%"\n'
        'data_dir: ".data"\n'
        'suffix_separators: "+"\n'
        'drop_characters: "."\n'
        'mail_log_path: "<syslog>"\n'
        "max_queue_items: 200\n"
        'give_up_send_after: "20h"\n'
        'auth_sender_policy: "domain"\n'
        "max_connections: 1000\n"
        "max_connections_per_ip: 100\n"
        "\n"
    )


def test_render_explicit_empty_values(tmp_path: Path) -> None:
    c = Config(
        hostname="h",
        submission_address=(),
        suffix_separators="",
        drop_characters="",
        mail_delivery_agent_bin="",
        dovecot_auth=True,
        monitoring_address="127.0.0.1:1099",
    )
    text = render(c)
    assert "submission_address: []\n" in text
    assert 'suffix_separators: ""\n' in text
    assert 'drop_characters: ""\n' in text
    assert 'mail_delivery_agent_bin: ""\n' in text
    assert "dovecot_auth: true\n" in text
    assert "haproxy_incoming" not in text
    assert "dovecot_userdb_path" not in text
    assert load_text(tmp_path, text) == c


def test_render_round_trips_through_load(tmp_path: Path) -> None:
    c = load_text(
        tmp_path,
        'hostname: "ñandú\\u00a0\\x01"\nsmtp_address: ["a\\"b", "\\\\"]\n'
        'give_up_send_after: "1h30m"\nmail_lmtp_address: "/run/lmtp"\n'
        "haproxy_incoming: true\n",
    )
    assert load_text(tmp_path, render(c)) == c


_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_nonempty = _text.filter(bool)


@settings(max_examples=60, deadline=None)
@given(
    hostname=_nonempty,
    max_data_size_mb=st.integers(1, (1 << 63) - 1),
    addresses=st.lists(_text, max_size=3).map(tuple),
    mda_args=st.lists(_text, max_size=5).map(tuple),
    strings=st.tuples(_text, _text, _text, _text, _text, _text),
    data_dir=_nonempty,
    flags=st.tuples(st.booleans(), st.booleans()),
    max_queue_items=st.integers(1, (1 << 32) - 1),
    duration=st.sampled_from(["20h", "1h30m", "2.5h", "90s", "100ms", "0.5h"]),
)
def test_render_load_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory,
    hostname: str,
    max_data_size_mb: int,
    addresses: tuple[str, ...],
    mda_args: tuple[str, ...],
    strings: tuple[str, str, str, str, str, str],
    data_dir: str,
    flags: tuple[bool, bool],
    max_queue_items: int,
    duration: str,
) -> None:
    monitoring, mda_bin, suffix, drops, log_path, dovecot = strings
    c = dataclasses.replace(
        cfg.build({}, {}),
        hostname=hostname,
        max_data_size_mb=max_data_size_mb,
        smtp_address=addresses,
        mail_delivery_agent_args=mda_args,
        monitoring_address=monitoring,
        mail_delivery_agent_bin=mda_bin,
        suffix_separators=suffix,
        drop_characters=drops,
        mail_log_path=log_path,
        dovecot_userdb_path=dovecot,
        data_dir=data_dir,
        dovecot_auth=flags[0],
        haproxy_incoming=flags[1],
        max_queue_items=max_queue_items,
        give_up_send_after=parse_duration(duration),
        give_up_send_after_text=duration,
    )
    tmp = tmp_path_factory.mktemp("rt")
    assert load_text(tmp, render(c)) == c


def test_parse_text_layer(tmp_path: Path) -> None:
    values = parse_text('hostname: "a"\nsmtp_address: ":1"\nsmtp_address: ":2"\n', "x.conf")
    assert values == {"hostname": "a", "smtp_address": (":1", ":2")}


def test_hostname_failure_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken() -> str:
        raise OSError("no name for you")

    monkeypatch.setattr(socket, "gethostname", broken)
    assert load_error(tmp_path, "") == "could not get hostname: no name for you"
    # An explicit hostname never asks the system.
    assert load_text(tmp_path, 'hostname: "h"\n').hostname == "h"


def test_deeply_nested_yaml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_text("smtp_address: " + "[" * 5000, "chasquid.conf")
