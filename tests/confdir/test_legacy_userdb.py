"""Tests for chasquid.confdir.legacy_userdb and loading chasquid's users files through UserDB."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from chasquid.confdir.legacy_userdb import LegacyUserDBError, parse_legacy
from chasquid.confdir.passwords import PasswordHash, Plain, RawScrypt, ReceiveOnly, verify
from chasquid.confdir.userdb import UserDB, UserDBError

# Includes bytes that chasquid's writer escapes in octal (NUL, quote, backslash, high bytes).
SALT = b"\x00\x01\"\\'\n\xff\xfe\x80abc\x7f\x10\x11\x12"


def c_escape_octal(data: bytes) -> str:
    """Render bytes the way protobuf's text writer does: printable ASCII or \\NNN."""
    out = []
    for b in data:
        if b in (0x22, 0x27, 0x5C):
            out.append("\\" + chr(b))
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03o}")
    return "".join(out)


def c_escape_hex(data: bytes) -> str:
    return "".join(f"\\x{b:02x}" for b in data)


def scrypt_key(password: str, salt: bytes, log_n: int, key_len: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=2**log_n, r=8, p=1, dklen=key_len)


def legacy_file() -> str:
    alice_key = scrypt_key("alice's secret", SALT, 14, 32)
    dave_key = scrypt_key("dave pw", SALT, 10, 24)
    return (
        "# chasquid users file\n"
        "users: {\n"
        '  key: "alice"\n'
        "  value: {\n"
        "    scrypt: {\n"
        "      logN: 14\n"
        "      r: 8\n"
        "      p: 1\n"
        "      keyLen: 32\n"
        f'      salt: "{c_escape_octal(SALT)}"\n'
        f'      encrypted: "{c_escape_octal(alice_key)}"\n'
        "    }\n"
        "  }\n"
        "}\n"
        "users <\n"
        "  key: 'bob'\n"
        "  value <plain <password: 'b\\x6f' \"b\\'s pw\">>\n"  # adjacent strings join
        ">\n"
        'users { key: "carol" value { denied {} } }  # receive only\n'
        'users: { key: "ñandú" value: { plain: { password: "p\\303\\241jaro" } } }\n'
        "users: { key: 'dave' value: { scrypt: { logN: 10 r: 8 p: 1 keyLen: 24\n"
        f"  salt: '{c_escape_hex(SALT)}' encrypted: '{c_escape_hex(dave_key)}' }} }} }}\n"
        "users: { key: 'erin' value: { } }\n"
    )


def test_parse_legacy_entries() -> None:
    users = parse_legacy(legacy_file(), "users")
    assert sorted(users) == ["alice", "bob", "carol", "dave", "erin", "ñandú"]
    alice = users["alice"]
    assert isinstance(alice, PasswordHash)
    assert alice.hash.startswith("$scrypt$ln=14,r=8,p=1$")
    assert users["bob"] == Plain(b"bob's pw")
    assert users["carol"] == ReceiveOnly()
    assert users["erin"] == ReceiveOnly()
    assert users["ñandú"] == Plain("pájaro".encode())
    dave = users["dave"]
    assert isinstance(dave, RawScrypt)
    assert (dave.log_n, dave.salt, len(dave.key)) == (10, SALT, 24)


def test_passlib_string_verifies_legacy_password() -> None:
    alice = parse_legacy(legacy_file(), "users")["alice"]
    assert verify(alice, "alice's secret")
    assert not verify(alice, "alice's secreT")


def test_userdb_loads_legacy_file_and_saves_yaml(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(legacy_file(), encoding="utf-8")
    db = UserDB.load(path)
    assert len(db) == 6
    assert db.authenticate("alice", "alice's secret")
    assert db.authenticate("bob", "bob's pw")
    assert db.authenticate("ñandú", "pájaro")
    assert db.authenticate("dave", "dave pw")
    assert not db.authenticate("dave", "dave pw!")
    assert db.exists("carol")
    assert not db.authenticate("carol", "")
    # Saving converts to our YAML format, and the passwords still work afterwards.
    db.with_user("frank", "f").save(path)
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[2] == "version: 1"
    again = UserDB.load(path)
    assert again.users() == ["alice", "bob", "carol", "dave", "erin", "frank", "ñandú"]
    for user, pw in [("alice", "alice's secret"), ("bob", "bob's pw"), ("dave", "dave pw")]:
        assert again.authenticate(user, pw)
    assert not again.authenticate("carol", "")


def test_legacy_with_lists_and_separators() -> None:
    text = "users: [{key: 'a', value: {denied: {}}}, {key: 'b'; value: <plain: <password: 'x'>>}]"
    users = parse_legacy(text, "f")
    assert users == {"a": ReceiveOnly(), "b": Plain(b"x")}


def test_key_length_mismatch_never_authenticates() -> None:
    key = scrypt_key("pw", b"s", 4, 32)
    text = (
        f"users {{ key: 'a' value {{ scrypt {{ logN: 4 r: 8 p: 1 keyLen: 16 salt: 's' "
        f"encrypted: '{c_escape_hex(key)}' }} }} }}"
    )
    entry = parse_legacy(text, "f")["a"]
    assert not verify(entry, "pw")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("users {\n  key: 'a'\n  value { scrypt { bogus: 1 } }\n}\n", 3, "unknown field 'bogus'"),
        ("users {\n key: 'a'\n", 3, "unexpected end of file"),
        ("# c\nusers { key: 'a\\q' }\n", 2, "unknown escape"),
        ("users {\n key: 'Alice' }\n", 1, "not normalized"),
        ("users { key: 'a' }\nusers { key: 'a' }\n", 2, "listed more than once"),
        ("users {\n key: 'a' value { plain { password: 3 } } }\n", 2, "must be a string"),
        ("users {\n key: 'a' value { denied {} plain {} } }\n", 2, "more than one"),
        ("users { key: 'a' }\n$\n", 2, "unexpected character"),
        ("users {\n key: '\\777' }\n", 2, "out of range"),
        ("users { key: 'a' value { scrypt { logN: 09 } } }", 1, "unexpected character"),
    ],
)
def test_legacy_errors_name_file_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(LegacyUserDBError) as exc:
        parse_legacy(text, "/x/users")
    assert str(exc.value).startswith(f"/x/users:{line}: ")
    assert fragment in str(exc.value)


def test_userdb_reports_legacy_errors(tmp_path: Path) -> None:
    path = tmp_path / "users"
    original = b"users {\n key: 'a'\n value { scrypt { logN: 'x' } }\n}\n"
    path.write_bytes(original)
    with pytest.raises(UserDBError, match=rf"{path}:3: .*protobuf-text"):
        UserDB.load(path)
    assert path.read_bytes() == original


def test_deep_nesting_is_an_error_with_its_line() -> None:
    text = 'users {\n key: "a"\n value ' + "{ x " * 5000 + "}" * 5000 + "\n}\n"
    with pytest.raises(LegacyUserDBError, match=r"^f:3: messages nested more than \d+ deep"):
        parse_legacy(text, "f")
