"""Tests for chasquid.confdir.domains: discovery, users/aliases loading, reload."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TypedDict, Unpack

import pytest
from helpers.dkimtest import write_key
from helpers.programs import shell_script

from chasquid.confdir.aliases import RcptStatus, Recipient
from chasquid.confdir.config import Config
from chasquid.confdir.domains import DomainsError, load_domains, reload
from chasquid.confdir.userdb import UserDB


class ConfigOverrides(TypedDict, total=False):
    drop_characters: str
    suffix_separators: str


def config(**kw: Unpack[ConfigOverrides]) -> Config:
    return Config(hostname="test.example", **kw)


def add_users(directory: Path, *names: str) -> None:
    db = UserDB.load(directory / "users")
    for name in names:
        db = db.with_receive_only(name)
    db.save(directory / "users")


@pytest.fixture
def cfg_dir(tmp_path: Path) -> Path:
    domains = tmp_path / "domains"
    (domains / "b.com").mkdir(parents=True)
    (domains / "a.com").mkdir()
    (domains / "xn--aca-6ma").mkdir()
    (domains / ".gitignore").write_text("")
    add_users(domains / "a.com", "ana", "bob")
    (domains / "a.com" / "aliases").write_text("# x\nsales: ana, bob\nin.fo: ana\ninfo: bob\n")
    (domains / "b.com" / "aliases").write_text("*: ana@a.com\n")
    write_key(domains / "b.com", "b.com", "s2", "ed25519")
    write_key(domains / "b.com", "b.com", "s1", "ed25519")
    return tmp_path


def test_discovery_counts_and_summary(cfg_dir: Path) -> None:
    d = load_domains(cfg_dir, config())
    assert d.local == frozenset({"a.com", "b.com", "ñaca", "localhost"})
    assert d.order == ("a.com", "b.com", "ñaca")
    assert d.dirs["ñaca"] == cfg_dir / "domains" / "xn--aca-6ma"
    assert d.users["a.com"].exists("ana")
    assert [k.selector for k in d.dkim.for_domain("b.com")] == ["s1", "s2"]
    assert d.summary_lines() == [
        "  a.com (2 users, 2 aliases, 0 DKIM keys)",
        "  b.com (0 users, 1 aliases, 2 DKIM keys)",
        "  ñaca (0 users, 0 aliases, 0 DKIM keys)",
    ]
    assert d.is_local("x@ñaca")
    assert d.is_local("x@localhost")
    assert not d.is_local("x@c.com")


def test_resolver_uses_config_and_hook(cfg_dir: Path) -> None:
    hook = cfg_dir / "hooks" / "alias-resolve"
    hook.parent.mkdir()
    shell_script(hook, '[ "$1" = "hooked@localhost" ] && cat marker\nexit 0\n')
    (cfg_dir / "marker").write_text("x@remote\n")  # read relative to the config dir
    d = load_domains(cfg_dir, config(drop_characters="-", suffix_separators="_"))
    r = d.resolver
    assert asyncio.run(r.resolve("sales_x@a.com")) == [
        Recipient("ana@a.com"),
        Recipient("bob@a.com"),
    ]
    assert asyncio.run(r.resolve("zzz@b.com")) == [Recipient("ana@a.com")]
    assert asyncio.run(r.resolve("hooked@localhost")) == [Recipient("x@remote")]
    assert asyncio.run(r.check_recipient("b-o-b@a.com")) is RcptStatus.ACCEPT
    assert asyncio.run(r.check_recipient("carl@a.com")) is RcptStatus.UNKNOWN


def test_user_fallback(cfg_dir: Path) -> None:
    async def fallback(addr: str) -> bool:
        return addr == "dove@a.com"

    d = load_domains(cfg_dir, config(), user_fallback=fallback)
    assert asyncio.run(d.resolver.check_recipient("dove@a.com")) is RcptStatus.ACCEPT
    again = reload(d)
    assert asyncio.run(again.resolver.check_recipient("dove@a.com")) is RcptStatus.ACCEPT


def test_missing_and_empty_domains_dir(tmp_path: Path) -> None:
    with pytest.raises(DomainsError, match=r'^Error reading "domains/" directory: '):
        load_domains(tmp_path, config())
    (tmp_path / "domains").mkdir()
    with pytest.raises(DomainsError, match=r'^No entries found in "domains/"$'):
        load_domains(tmp_path, config())


def test_invalid_name_is_fatal_even_for_files(tmp_path: Path) -> None:
    (tmp_path / "domains").mkdir()
    (tmp_path / "domains" / "ok.com").mkdir()
    (tmp_path / "domains" / "xn---").write_text("")
    with pytest.raises(DomainsError, match=r'^Invalid name "xn---": '):
        load_domains(tmp_path, config())


def test_only_regular_files_are_skipped(tmp_path: Path) -> None:
    domains = tmp_path / "domains"
    domains.mkdir()
    (tmp_path / "real").mkdir()
    (domains / "linked.com").symlink_to(tmp_path / "real")
    (domains / "file.com").write_text("")
    d = load_domains(tmp_path, config())
    assert d.local == frozenset({"linked.com", "localhost"})


def test_load_errors_name_the_domain(cfg_dir: Path) -> None:
    (cfg_dir / "domains" / "b.com" / "aliases").write_text("ok: x\nbroken\n")
    with pytest.raises(DomainsError) as exc:
        load_domains(cfg_dir, config())
    path = cfg_dir / "domains" / "b.com" / "aliases"
    assert str(exc.value) == f"b.com: aliases file error: \"{path}\" line 2: missing ':' in line"
    (cfg_dir / "domains" / "b.com" / "aliases").write_text("")
    (cfg_dir / "domains" / "a.com" / "users").write_text("[[[ not a user database\n")
    with pytest.raises(DomainsError, match=r"^a\.com: users file error: "):
        load_domains(cfg_dir, config())


def test_reload_rereads_files_and_fails_cleanly(cfg_dir: Path) -> None:
    d = load_domains(cfg_dir, config())
    a = cfg_dir / "domains" / "a.com"
    (a / "aliases").write_text("sales: carl@remote\n")
    add_users(a, "carl")
    (cfg_dir / "domains" / "new.com").mkdir()
    d2 = reload(d)
    assert d2.local == d.local  # the domain set is fixed until restart
    assert asyncio.run(d2.resolver.resolve("sales@a.com")) == [Recipient("carl@remote")]
    assert d2.users["a.com"].exists("carl")
    assert d2.summary_lines()[0] == "  a.com (3 users, 1 aliases, 0 DKIM keys)"
    # The previous snapshot is untouched.
    assert asyncio.run(d.resolver.resolve("sales@a.com")) == [
        Recipient("ana@a.com"),
        Recipient("bob@a.com"),
    ]
    (a / "aliases").write_text("bad line\n")
    with pytest.raises(DomainsError, match=r"^a\.com: aliases file error: "):
        reload(d2)
    (a / "aliases").write_text("")
    (a / "aliases").unlink()
    (a / "users").unlink()
    d3 = reload(d2)
    assert len(d3.users["a.com"]) == 0
    assert d3.alias_counts["a.com"] == 0


def test_dkim_keys_load_and_reload_with_the_domains(cfg_dir: Path) -> None:
    b = cfg_dir / "domains" / "b.com"
    d = load_domains(cfg_dir, config())
    assert len(d.dkim.for_domain("b.com")) == 2 and d.dkim.for_domain("a.com") == ()
    new = write_key(cfg_dir / "domains" / "a.com", "a.com", "new", "rsa")
    d2 = reload(d)
    assert d2.dkim.for_domain("a.com") == (new,)
    (b / "dkim:s3.pem").write_text("-----BEGIN RSA PRIVATE KEY-----\n")
    with pytest.raises(DomainsError) as e:
        reload(d2)
    assert str(e.value) == (
        f"b.com: DKIM loading error: {b / 'dkim:s3.pem'}: error decoding PEM block"
    )
    with pytest.raises(DomainsError, match=r"^b\.com: DKIM loading error: "):
        load_domains(cfg_dir, config())
