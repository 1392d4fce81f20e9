"""The settings the daemon accepts but does not act on yet, and how it words them."""

from __future__ import annotations

from pathlib import Path

from chasquid.confdir.config import Config
from chasquid.daemon.unused_config import unused_config


def test_nothing_to_say_by_default(tmp_path: Path) -> None:
    (tmp_path / "example.com").mkdir()
    assert unused_config(Config(hostname="mx"), [tmp_path / "example.com"]) == []


def test_dkim_keys_are_named_then_counted(tmp_path: Path) -> None:
    dirs = []
    for domain, selectors in (("a.example", ["s1", "s2"]), ("b.example", ["s1", "s2", "s3"])):
        d = tmp_path / domain
        d.mkdir()
        dirs.append(d)
        for sel in selectors:
            (d / f"dkim:{sel}.pem").write_text("key\n")
    (dirs[0] / "dkim-notes.txt").write_text("not a key\n")
    [warning] = unused_config(Config(hostname="mx"), dirs)
    assert warning == (
        "DKIM keys are not used: this version does not sign mail with DKIM yet "
        f"({dirs[0]}/dkim:s1.pem, {dirs[0]}/dkim:s2.pem, {dirs[1]}/dkim:s1.pem and 2 more)"
    )


def test_monitoring_and_dovecot(tmp_path: Path) -> None:
    config = Config(hostname="mx", monitoring_address="[::1]:99", dovecot_auth=True)
    warnings = unused_config(config, [])
    assert warnings[0].startswith('monitoring_address "[::1]:99" is ignored')
    assert warnings[1].startswith("dovecot_auth is ignored")
    assert len(warnings) == 2
