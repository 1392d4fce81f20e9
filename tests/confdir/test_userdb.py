"""Tests for chasquid.confdir.userdb: the YAML users file, its operations and its errors."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from chasquid.confdir.passwords import PasswordHash, Plain, RawScrypt, verify
from chasquid.confdir.userdb import UserDB, UserDBError


@pytest.fixture(scope="module")
def db() -> UserDB:
    return UserDB().with_user("alice", "sesame").with_receive_only("bob")


def test_add_exists_authenticate(db: UserDB) -> None:
    assert db.exists("alice")
    assert db.exists("bob")
    assert not db.exists("carol")
    assert len(db) == 2
    assert db.users() == ["alice", "bob"]
    assert db.authenticate("alice", "sesame")
    assert not db.authenticate("alice", "Sesame")
    assert not db.authenticate("alice", "")
    assert not db.authenticate("carol", "sesame")


def test_new_hash_parameters(db: UserDB) -> None:
    entry = db.entry("alice")
    assert isinstance(entry, PasswordHash)
    assert entry.hash.startswith("$scrypt$ln=14,r=8,p=1$")


def test_receive_only_never_authenticates(db: UserDB) -> None:
    for pw in ("", "sesame", "receive_only", "true"):
        assert not db.authenticate("bob", pw)


def test_overwrite_and_remove(db: UserDB) -> None:
    changed = db.with_user("alice", "new").with_user("bob", "pw")
    assert changed.authenticate("alice", "new")
    assert not changed.authenticate("alice", "sesame")
    assert changed.authenticate("bob", "pw")
    # The snapshot it came from is unchanged.
    assert db.authenticate("alice", "sesame")
    removed = changed.without("alice")
    assert not removed.exists("alice")
    assert removed.users() == ["bob"]
    assert removed.without("nobody").users() == ["bob"]
    made_receive_only = changed.with_receive_only("alice")
    assert made_receive_only.exists("alice")
    assert not made_receive_only.authenticate("alice", "new")


@pytest.mark.parametrize("name", ["Alice", "a b", "", "ÑAndÚ", "\u2163"])
def test_invalid_username_raises(name: str) -> None:
    with pytest.raises(UserDBError, match="invalid username"):
        UserDB().with_user(name, "pw")
    with pytest.raises(UserDBError, match="invalid username"):
        UserDB().with_receive_only(name)


def test_unicode_user(tmp_path: Path) -> None:
    path = tmp_path / "users"
    UserDB().with_user("ñandú", "pájaro").save(path)
    loaded = UserDB.load(path)
    assert loaded.authenticate("ñandú", "pájaro")
    assert "ñandú" in path.read_text(encoding="utf-8")


def test_save_load_round_trip(db: UserDB, tmp_path: Path) -> None:
    path = tmp_path / "users"
    db.save(path)
    loaded = UserDB.load(path)
    assert loaded.users() == ["alice", "bob"]
    assert loaded.authenticate("alice", "sesame")
    assert not loaded.authenticate("bob", "")
    text = path.read_text()
    assert "version: 1" in text
    assert "receive_only: true" in text
    assert "sesame" not in text


def test_save_mode_0600_and_no_temp_file(db: UserDB, tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("version: 1\nusers: {}\n")
    path.chmod(0o644)
    db.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["users"]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_save_keeps_owner(db: UserDB, tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("")
    os.chown(path, 12345, 23456)
    db.save(path)
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (12345, 23456)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_new_file_takes_directory_owner(db: UserDB, tmp_path: Path) -> None:
    domain_dir = tmp_path / "example.com"
    domain_dir.mkdir()
    os.chown(domain_dir, 12345, 23456)
    db.save(domain_dir / "users")
    st = (domain_dir / "users").stat()
    assert (st.st_uid, st.st_gid) == (12345, 23456)


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert len(UserDB.load(tmp_path / "nope")) == 0


def test_empty_or_comment_only_file(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("# nothing here yet\n\n")
    assert len(UserDB.load(path)) == 0


def test_unreadable_path_is_error(tmp_path: Path) -> None:
    with pytest.raises(UserDBError, match=str(tmp_path)):
        UserDB.load(tmp_path)  # a directory


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("version: 1\nusers:\n  alice:\n    password: [unclosed\n  bob: x\n")
    with pytest.raises(UserDBError) as exc:
        UserDB.load(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}:")
    assert ":5:" in msg


def test_not_utf8_names_line(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(b"version: 1\nusers:\n  al\xffice:\n    receive_only: true\n")
    with pytest.raises(UserDBError, match=rf"{path}:3: .*UTF-8"):
        UserDB.load(path)


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        ("  alice:\n    pasword: x\n", 4, "user 'alice': unknown key 'pasword'"),
        ("  alice:\n    receive_only: false\n", 4, "user 'alice'"),
        ("  alice:\n    password: x\n    plain: y\n", 4, "user 'alice': entry must be"),
        ("  alice: x\n", 3, "user 'alice': entry must be"),
        ("  alice:\n    password: 3\n", 4, "user 'alice': 'password' must be"),
        ("  Alice:\n    receive_only: true\n", 3, "invalid username 'Alice'"),
        ("  123:\n    receive_only: true\n", 3, "user name 123 must be a string"),
        (
            "  a:\n    receive_only: true\n  a:\n    receive_only: true\n",
            5,
            "user 'a' is listed more than once",
        ),
        ("  alice:\n    scrypt: {ln: 14}\n", 4, "user 'alice': 'scrypt' must have"),
    ],
)
def test_shape_errors_name_user_and_line(
    tmp_path: Path, body: str, line: int, fragment: str
) -> None:
    path = tmp_path / "users"
    path.write_text("version: 1\nusers:\n" + body)
    with pytest.raises(UserDBError) as exc:
        UserDB.load(path)
    assert str(exc.value).startswith(f"{path}:{line}: ")
    assert fragment in str(exc.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("users: {}\n", "missing 'version: 1'"),
        ("version: 2\nusers: {}\n", "unsupported version 2"),
        ("version: 1\nuser: {}\n", "unknown key 'user'"),
        ("- a\n- b\n", "must be a mapping"),
        ("version: 1\nusers: [a]\n", "'users' must be a mapping"),
    ],
)
def test_top_level_errors(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "users"
    path.write_text(text)
    with pytest.raises(UserDBError, match=str(path)) as exc:
        UserDB.load(path)
    assert fragment in str(exc.value)


def test_users_null_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("version: 1\nusers:\n")
    assert len(UserDB.load(path)) == 0


def test_failed_load_leaves_file_untouched(tmp_path: Path) -> None:
    """The user-add sequence (load, change, save) aborts before writing a broken file."""
    path = tmp_path / "users"
    original = b"version: 1\nusers:\n  alice: {password: [\n"
    path.write_bytes(original)
    with pytest.raises(UserDBError):
        UserDB.load(path).with_user("bob", "pw").save(path)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["users"]


def test_save_into_missing_dir_is_error(db: UserDB, tmp_path: Path) -> None:
    with pytest.raises(UserDBError, match="cannot write"):
        db.save(tmp_path / "no-such-domain" / "users")


def test_unusable_entries_fail_without_raising(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(
        "version: 1\nusers:\n"
        "  unknown:\n    password: '$6$rounds=5000$salt$abc'\n"
        "  huge:\n    password: '$scrypt$ln=30,r=8,p=1$AAAA$" + "A" * 43 + "'\n"
        "  garbage:\n    password: '$scrypt$nonsense'\n"
        "  badraw:\n    scrypt: {ln: 40, r: 8, p: 1, salt: AAAA, key: AAAA}\n"
    )
    db = UserDB.load(path)
    for user in ("unknown", "huge", "garbage", "badraw"):
        assert db.exists(user)
        assert not db.authenticate(user, "")
        assert not db.authenticate(user, "x")


def test_plain_and_raw_scrypt_entries(tmp_path: Path) -> None:
    salt = b"\x00salt\xff"
    key = hashlib.scrypt(b"raw pw", salt=salt, n=2**10, r=8, p=1, dklen=16)
    db = (
        UserDB()
        .with_entry("raw", RawScrypt(10, 8, 1, salt, key))
        .with_entry("plain", Plain(b"pl"))
        .with_entry("binary", Plain(b"\xff\xfe"))
    )
    path = tmp_path / "users"
    db.save(path)
    loaded = UserDB.load(path)
    assert loaded.authenticate("raw", "raw pw")
    assert not loaded.authenticate("raw", "raw pwx")
    assert loaded.authenticate("plain", "pl")
    assert not loaded.authenticate("plain", "pl ")
    assert loaded.entry("binary") == Plain(b"\xff\xfe")
    entry = loaded.entry("raw")
    assert entry is not None
    assert verify(entry, "raw pw")


def test_merged_prefers_other(db: UserDB) -> None:
    other = UserDB().with_user("bob", "pw").with_receive_only("carol")
    merged = db.merged(other)
    assert merged.users() == ["alice", "bob", "carol"]
    assert merged.authenticate("bob", "pw")
    assert merged.authenticate("alice", "sesame")


@pytest.mark.parametrize(
    "text",
    [
        "version: 1\nusers: " + "[" * 5000,
        "version: 1\nusers:\n  a: " + "{x: " * 5000,
        'users { key: "a" value ' + "{ x " * 5000,
    ],
)
def test_deeply_nested_file_is_a_users_file_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "users"
    path.write_text(text)
    with pytest.raises(UserDBError, match=str(path)):
        UserDB.load(path)


def test_control_character_is_a_users_file_error(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text('version: 1\nusers:\n  a: {plain: "x\x00"}\n')
    with pytest.raises(UserDBError, match="invalid YAML"):
        UserDB.load(path)
