"""chasquid-util dkim-keygen, dkim-dns, dkim-sign, dkim-verify: transcripts of real runs."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.dkimtest import pkcs8_pem, private_key
from helpers.dns import dns_server

UTIL = Path(sys.executable).parent / "chasquid-util"
MESSAGE = b"From: Ana <ana@example.com>\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"


def util(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(UTIL), *args], input=stdin, capture_output=True, timeout=60, env=env, check=False
    )


@pytest.fixture
def cdir(tmp_path: Path) -> Path:
    (tmp_path / "domains" / "example.com").mkdir(parents=True)
    return tmp_path


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


RECORD = re.compile(
    r'^(?P<name>\S+)\tTXT\t(?P<strings>"v=DKIM1; k=(?P<k>rsa|ed25519); p=[^"]+"( "[^"]+")*)$'
)


def record_text(line: str) -> str:
    match = RECORD.match(line)
    assert match, line
    return "".join(re.findall(r'"([^"]*)"', match["strings"]))


@pytest.mark.parametrize(("algo", "k", "strings"), [("rsa", "rsa", 2), ("ed25519", "ed25519", 1)])
def test_keygen_writes_a_private_key_and_prints_the_record(
    cdir: Path, algo: str, k: str, strings: int
) -> None:
    r = util(f"-C={cdir}", "dkim-keygen", "example.com", "sel1", f"--algo={algo}")
    assert r.returncode == 0, r.stderr
    path = cdir / "domains" / "example.com" / "dkim:sel1.pem"
    out = r.stdout.decode().splitlines()
    assert out[:2] == [f'Key written to "{path}"', ""]
    match = RECORD.match(out[2])
    assert match and match["name"] == "sel1._domainkey.example.com" and match["k"] == k
    assert match["strings"].count('" "') == strings - 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    # dkim-dns prints the same record for the key on disk.
    dns = util(f"-C={cdir}", "dkim-dns", "example.com")
    assert dns.returncode == 0 and dns.stdout.decode().splitlines() == [out[2]]


def test_keygen_never_overwrites_and_defaults_to_todays_selector(cdir: Path) -> None:
    today = time.strftime("%Y%m%d", time.gmtime())
    r = util("dkim-keygen", "example.com", "-C", str(cdir), "--algo=ed25519")
    assert r.returncode == 0, r.stderr
    path = cdir / "domains" / "example.com" / f"dkim:{today}.pem"
    before = path.read_bytes()
    again = util(f"-C={cdir}", "dkim-keygen", "example.com", today, "--algo=ed25519")
    assert again.returncode == 1
    assert again.stderr.decode() == f'Error: key already exists at "{path}"\n'
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["dkim-keygen"], "Error: missing domain parameter"),
        (["dkim-keygen", "nowhere.org", "s"], "the domain needs its directory under domains/"),
        (["dkim-keygen", "example.com", "bad selector"], 'Invalid selector "bad selector"'),
        (["dkim-keygen", "example.com", "--algo=dsa"], "Invalid value for '--algo'"),
        (["dkim-dns", "example.com"], "No DKIM keys found in "),
        (["dkim-dns", "example.com", "nope"], "no such file or directory"),
        (["dkim-sign", "example.com"], "No DKIM keys found in "),
    ],
)
def test_errors_change_nothing(cdir: Path, args: list[str], error: str) -> None:
    before = tree(cdir)
    r = util(f"-C={cdir}", *args, stdin=MESSAGE)
    assert r.returncode == 1
    assert error in r.stderr.decode()
    assert tree(cdir) == before


def test_dns_reports_a_broken_key_file(cdir: Path) -> None:
    (cdir / "domains" / "example.com" / "dkim:s.pem").write_text("garbage\n")
    r = util(f"-C={cdir}", "dkim-dns", "example.com", "s")
    assert r.returncode == 1
    assert r.stderr.decode().endswith("dkim:s.pem: error decoding PEM block\n")


def test_sign_then_verify_with_the_record(cdir: Path) -> None:
    assert util(f"-C={cdir}", "dkim-keygen", "example.com", "s1").returncode == 0
    sign = util(f"-C={cdir}", "-v", "dkim-sign", stdin=MESSAGE)
    assert sign.returncode == 0, sign.stderr
    assert sign.stderr.decode() == "Signing for example.com / s1 with rsa\n"
    field = sign.stdout
    assert field.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    assert field.endswith(b"\r\n") and b"\n" not in field.replace(b"\r\n", b"")
    record = record_text(util(f"-C={cdir}", "dkim-dns", "example.com").stdout.decode().strip())

    verify = util("dkim-verify", "-v", f"--txt={record}", stdin=field + MESSAGE)
    assert verify.returncode == 0, verify.stderr
    text = verify.stdout.decode()
    expected = (
        r"Authentication-Results: \S+\r\n\t;dkim=pass  header\.b=\S{12}  header\.d=example\.com"
    )
    assert re.fullmatch(expected + "\r\n", text), text
    assert verify.stderr.decode().startswith("Found 1 signatures, 1 valid\n")

    tampered = util("dkim-verify", f"--txt={record}", stdin=field + MESSAGE + b"more\r\n")
    assert ';dkim=fail  reason="body hash mismatch' in tampered.stdout.decode()
    unsigned = util("dkim-verify", stdin=MESSAGE)
    assert unsigned.stdout.decode().endswith("\r\n\t;dkim=none\r\n")


def test_verify_looks_keys_up_in_dns(cdir: Path) -> None:
    path = cdir / "domains" / "example.com" / "dkim:ed.pem"
    path.write_bytes(pkcs8_pem(private_key("ed25519")))
    signed = util(f"-C={cdir}", "dkim-sign", "example.com", "ed", stdin=MESSAGE).stdout + MESSAGE
    record = record_text(
        util(f"-C={cdir}", "dkim-dns", "example.com", "ed").stdout.decode().strip()
    )
    with dns_server({"ed._domainkey.example.com": {"TXT": [record]}}) as addr:
        env = {**os.environ, "CHASQUID_TEST_DNS": addr}
        r = util("dkim-verify", stdin=signed, env=env)
    assert ";dkim=pass  header.b=" in r.stdout.decode()
    with dns_server({}) as addr:
        env = {**os.environ, "CHASQUID_TEST_DNS": addr}
        r = util("dkim-verify", stdin=signed, env=env)
    assert ';dkim=permerror  reason="no key for signature (NXDOMAIN)"' in r.stdout.decode()


def test_sign_takes_the_domain_from_the_from_field(cdir: Path) -> None:
    r = util(f"-C={cdir}", "dkim-sign", stdin=b"Subject: no from\r\n\r\nx\r\n")
    assert r.returncode == 1
    assert r.stderr.decode() == "Error parsing From: header: no From: header\n"
    r = util(f"-C={cdir}", "dkim-sign", stdin=b"From: nobody\r\n\r\nx\r\n")
    assert r.returncode == 1 and "no address with a domain" in r.stderr.decode()


def test_verify_refuses_an_unparsable_message() -> None:
    r = util("dkim-verify", stdin=b" folded\r\n\r\nbody\r\n")
    assert r.returncode == 1
    assert r.stderr.decode().startswith("Error verifying message: ")


def complete(cdir: Path, words: list[str]) -> list[str]:
    env = {
        **os.environ,
        "_CHASQUID_UTIL_COMPLETE": "bash_complete",
        "COMP_WORDS": " ".join(["chasquid-util", f"-C={cdir}", *words]),
        "COMP_CWORD": str(len(words) + 1),
    }
    r = subprocess.run([str(UTIL)], capture_output=True, text=True, timeout=60, env=env, check=True)
    return [line.split(",", 1)[1] for line in r.stdout.splitlines() if line]


def test_completion_of_domains_and_selectors(cdir: Path) -> None:
    (cdir / "domains" / "other.org").mkdir()
    for sel in ("b2", "a1"):
        (cdir / "domains" / "example.com" / f"dkim:{sel}.pem").write_text("")
    assert complete(cdir, ["dkim-dns", ""]) == ["example.com", "other.org"]
    assert complete(cdir, ["dkim-dns", "example.com", ""]) == ["a1", "b2"]
    assert complete(cdir, ["dkim-keygen", "example.com", "b"]) == ["b2"]
    assert complete(cdir, ["dkim-sign", "other.org", ""]) == []
