"""Tests for chasquid.confdir.domaininfo: levels, persistence, clear, reload."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from chasquid.confdir.domaininfo import DomainInfoError, DomainInfoStore, SecLevel, file_name


def test_levels_are_ordered() -> None:
    assert SecLevel.PLAIN < SecLevel.TLS_CLIENT < SecLevel.TLS_INSECURE < SecLevel.TLS_SECURE


def test_file_names_escape_any_domain() -> None:
    assert file_name("srv-b") == "s:srv-b"
    assert file_name("ñaca.com") == "s:%C3%B1aca.com"
    assert file_name("a b/c") == "s:a+b%2Fc"
    assert file_name("..") == "s:.."


def test_new_domain_is_created_and_persisted(tmp_path: Path) -> None:
    d = tmp_path / "domaininfo"
    store = DomainInfoStore(d)
    assert stat.S_IMODE(d.stat().st_mode) & 0o700 == 0o700
    assert store.incoming_ok("example.com", SecLevel.PLAIN)
    assert (d / "s:example.com").exists()
    assert DomainInfoStore(d).get("example.com") is not None


def test_incoming_increase_then_downgrade_denied(tmp_path: Path) -> None:
    store = DomainInfoStore(tmp_path)
    assert store.incoming_ok("d.com", SecLevel.TLS_CLIENT)
    assert store.incoming_ok("d.com", SecLevel.TLS_CLIENT)
    assert not store.incoming_ok("d.com", SecLevel.PLAIN)
    # Outgoing is tracked separately.
    assert store.outgoing_ok("d.com", SecLevel.PLAIN)
    assert store.outgoing_ok("d.com", SecLevel.TLS_SECURE)
    assert not store.outgoing_ok("d.com", SecLevel.TLS_INSECURE)
    # Durable: a new store over the same directory sees the same levels.
    again = DomainInfoStore(tmp_path)
    assert not again.incoming_ok("d.com", SecLevel.PLAIN)
    assert not again.outgoing_ok("d.com", SecLevel.TLS_INSECURE)
    info = again.get("d.com")
    assert info is not None
    assert (info.incoming, info.outgoing) == (SecLevel.TLS_CLIENT, SecLevel.TLS_SECURE)


def test_keys_are_normalized(tmp_path: Path) -> None:
    store = DomainInfoStore(tmp_path)
    assert store.outgoing_ok("xn--aca-6ma.Com", SecLevel.TLS_SECURE)
    assert store.outgoing_ok("xn--aca-6ma.com", SecLevel.TLS_SECURE)
    assert not store.outgoing_ok("ÑACA.com", SecLevel.PLAIN)
    assert store.domains() == ["ñaca.com"]
    assert (tmp_path / "s:%C3%B1aca.com").exists()


def test_clear(tmp_path: Path) -> None:
    store = DomainInfoStore(tmp_path)
    with pytest.raises(DomainInfoError, match=r"^does not exist$"):
        store.clear("nope.com")
    store.incoming_ok("Dom.com", SecLevel.TLS_CLIENT)
    store.clear("DOM.com")
    assert store.incoming_ok("dom.com", SecLevel.PLAIN)
    assert (tmp_path / "s:dom.com").exists()
    assert DomainInfoStore(tmp_path).incoming_ok("dom.com", SecLevel.PLAIN)


def test_file_format_and_chasquid_files(tmp_path: Path) -> None:
    store = DomainInfoStore(tmp_path)
    store.incoming_ok("a.com", SecLevel.TLS_CLIENT)
    text = (tmp_path / "s:a.com").read_text()
    assert text == "name: a.com\nincoming_sec_level: TLS_CLIENT\noutgoing_sec_level: PLAIN\n"
    # A file written by chasquid (protobuf text, PLAIN omitted) under a raw key.
    (tmp_path / "s:B.com").write_text('name: "B.com"\noutgoing_sec_level: TLS_SECURE\n')
    (tmp_path / "other-file").write_text("ignored")
    store.reload()
    assert not store.outgoing_ok("b.com", SecLevel.TLS_INSECURE)
    store.clear("b.com")
    assert not (tmp_path / "s:B.com").exists()
    assert DomainInfoStore(tmp_path).outgoing_ok("b.com", SecLevel.PLAIN)


def test_reload_rereads_and_keeps_state_on_error(tmp_path: Path) -> None:
    store = DomainInfoStore(tmp_path)
    store.incoming_ok("a.com", SecLevel.TLS_CLIENT)
    (tmp_path / "s:a.com").unlink()
    store.reload()
    assert store.get("a.com") is None
    store.incoming_ok("c.com", SecLevel.TLS_CLIENT)
    (tmp_path / "s:bad.com").write_text("name: bad.com\nincoming_sec_level: SUPER\n")
    with pytest.raises(DomainInfoError, match=r"s:bad.com.*incoming_sec_level.*SUPER"):
        store.reload()
    assert not store.incoming_ok("c.com", SecLevel.PLAIN)
    with pytest.raises(DomainInfoError, match=r"s:bad\.com"):
        DomainInfoStore(tmp_path)


def test_unusable_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(DomainInfoError, match="file"):
        DomainInfoStore(tmp_path / "file")
