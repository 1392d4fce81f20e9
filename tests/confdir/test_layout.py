"""Tests for the config dir and data dir layout."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from chasquid.confdir.config import Config
from chasquid.confdir.layout import ConfigDir, DataDir, data_dir_for


def test_config_dir_paths() -> None:
    c = ConfigDir(Path("/etc/chasquid"))
    assert c.conf == Path("/etc/chasquid/chasquid.conf")
    assert c.certs == Path("/etc/chasquid/certs")
    assert c.domains == Path("/etc/chasquid/domains")
    assert c.hooks == Path("/etc/chasquid/hooks")
    assert c.domain_dir("example.com") == Path("/etc/chasquid/domains/example.com")
    assert c.users_file("example.com") == Path("/etc/chasquid/domains/example.com/users")
    assert c.aliases_file("example.com") == Path("/etc/chasquid/domains/example.com/aliases")
    assert c.post_data_hook == Path("/etc/chasquid/hooks/post-data")
    assert c.alias_resolve_hook == Path("/etc/chasquid/hooks/alias-resolve")


def test_data_dir_paths() -> None:
    d = DataDir(Path("/var/lib/chasquid"))
    assert d.queue == Path("/var/lib/chasquid/queue")
    assert d.domaininfo == Path("/var/lib/chasquid/domaininfo")
    assert d.sts_cache == Path("/var/lib/chasquid/sts-cache")
    assert d.localrpc_socket == Path("/var/lib/chasquid/localrpc-v1")


def test_ensure_creates_dirs_with_modes(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        d = DataDir(tmp_path / "a" / "b" / "data")
        d.ensure()
        d.ensure()  # idempotent
    finally:
        os.umask(old)
    assert stat.S_IMODE(d.queue.stat().st_mode) == 0o700
    assert stat.S_IMODE(d.domaininfo.stat().st_mode) == 0o750  # 0770 minus umask 022
    assert stat.S_IMODE(d.sts_cache.stat().st_mode) == 0o750


def test_ensure_reports_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a dir")
    with pytest.raises(OSError):
        DataDir(tmp_path / "data").ensure()


def test_data_dir_for_resolves_relative_against_config_dir(tmp_path: Path) -> None:
    assert data_dir_for(Config(hostname="h", data_dir="../data"), tmp_path / "etc") == DataDir(
        tmp_path / "etc" / "../data"
    )
    assert data_dir_for(Config(hostname="h", data_dir="/abs"), tmp_path) == DataDir(Path("/abs"))
