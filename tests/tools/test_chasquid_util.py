"""chasquid-util: transcripts of real runs (command, output, exit status) and its libraries."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.confdirs import make_config_dir
from helpers.requirements import unavailable
from helpers.terminal import on_terminal, scripted

from chasquid_util import render
from chasquid_util.argv import normalize_argv
from chasquid_util.daemonless import Resolved
from chasquid_util.errors import UtilError
from chasquid_util.initdir import InitSettings, init_config_dir
from chasquid_util.password import read_password
from chasquid_util.users import UserEntry

UTIL = Path(sys.executable).parent / "chasquid-util"


def run(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run chasquid-util as a user would, from a fresh process."""
    return subprocess.run(
        [str(UTIL), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
        input=stdin,
    )


def make_config(tmp_path: Path, conf: str = "") -> Path:
    """A config dir with one domain, example.com, and the given chasquid.conf."""
    return make_config_dir(tmp_path / "config", conf, ("example.com",))


def tree(root: Path) -> list[str]:
    """Every path under root, to check that nothing was written."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- argument normalisation -------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-C=/x", "user-add"], ["-C", "/x", "user-add"]),
        (["-C", "/x"], ["-C", "/x"]),
        (["--config_dir=/x"], ["--config_dir", "/x"]),
        (["--config-dir=/x"], ["--config-dir", "/x"]),
        (["-C", "=", "/x", "check-userdb"], ["-C", "/x", "check-userdb"]),
        (["-C="], ["-C", ""]),
        (["user-add", "a@b", "--password=x=y"], ["user-add", "a@b", "--password=x=y"]),
        (["--", "-C=/x"], ["--", "-C=/x"]),
        (["a=b", "-Cx"], ["a=b", "-Cx"]),
    ],
)
def test_normalize_argv(argv: list[str], expected: list[str]) -> None:
    assert normalize_argv(argv) == expected


def test_read_password_refuses_a_non_terminal_before_prompting() -> None:
    out = io.StringIO()
    with pytest.raises(UtilError, match=r"^Cannot ask for the password: stdin is not a terminal"):
        read_password("Password: ", io.StringIO("pw\n"), out)
    assert out.getvalue() == ""


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (InitSettings("bad host", "d.example", "/var/lib/chasquid", False), "Invalid host name"),
        (InitSettings("..", "d.example", "/var/lib/chasquid", True), "Invalid host name"),
        (InitSettings("mx", "../x", "/var/lib/chasquid", False), "Invalid domain"),
        (InitSettings("mx", "", "/var/lib/chasquid", False), "Domain missing"),
        (InitSettings("mx", "d.example", "", False), "data directory"),
    ],
)
def test_init_validates_before_writing(
    tmp_path: Path, settings: InitSettings, message: str
) -> None:
    with pytest.raises(UtilError, match=message):
        init_config_dir(tmp_path / "new", settings)
    assert not (tmp_path / "new").exists()


def test_init_failing_half_way_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    # A name too long for the file system fails after domains/ was made.
    settings = InitSettings("mx", "a" * 300 + ".example", "/var/lib/chasquid", False)
    with pytest.raises(UtilError, match=r"Error creating .*: File name too long"):
        init_config_dir(tmp_path / "new" / "etc", settings)
    assert not (tmp_path / "new").exists()


# --- the "done when" ------------------------------------------------


def test_add_then_authenticate_from_new_processes(tmp_path: Path) -> None:
    cdir = tmp_path / "c"
    cdir.mkdir()
    add = run(f"-C={cdir}", "user-add", "u@example.com", "--password=x")
    assert (add.returncode, add.stderr) == (0, "")
    assert add.stdout == "Creating database\nAdded user\n"
    ok = run(f"-C={cdir}", "authenticate", "u@example.com", "--password=x")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "Authentication succeeded\n", "")
    bad = run(f"-C={cdir}", "authenticate", "u@example.com", "--password=y")
    assert (bad.returncode, bad.stdout, bad.stderr) == (1, "", "Authentication failed\n")


@pytest.mark.parametrize(
    "spelling",
    [
        ["-C={d}"],
        ["-C", "{d}"],
        ["--config_dir", "{d}"],
        ["--config_dir={d}"],
        ["--config-dir", "{d}"],
        ["--config-dir={d}"],
    ],
)
def test_config_dir_spellings(tmp_path: Path, spelling: list[str]) -> None:
    cdir = make_config(tmp_path)
    opts = [s.format(d=cdir) for s in spelling]
    before = run(*opts, "check-userdb", "example.com")
    assert before.returncode == 1
    # Options are accepted after the command too, as chasquid allows.
    assert run("user-add", "u@example.com", "--password=pw", *opts).returncode == 0
    after = run(*opts, "check-userdb", "example.com")
    assert (after.returncode, after.stdout) == (0, "Database loaded (1 users)\n")


def test_deprecated_configdir_warns(tmp_path: Path) -> None:
    cdir = make_config(tmp_path)
    r = run(f"--configdir={cdir}", "user-add", "a@example.com", "--password=p")
    assert r.returncode == 0
    assert "Option --configdir is deprecated, use --config_dir instead" in r.stderr


# --- user database commands -------------------------------------------------


def test_user_add_errors_write_nothing(tmp_path: Path) -> None:
    cdir = make_config(tmp_path)
    snapshot = tree(tmp_path)
    cases = {
        ("user-add", "nodomain", "--password=x"): (
            "Domain missing, username should be of the form 'user@domain'"
        ),
        ("user-add", "a b@example.com", "--password=x"): (
            'Invalid user name "a b": the space (U+0020 SPACE) at position 2 is not allowed '
            "in a user name\n"
        ),
        ("user-add", "@example.com", "--password=x"): 'Invalid user name "": it is empty\n',
        ("user-add", "a\N{GRINNING FACE}@example.com", "--password=x"): (
            'Invalid user name "a\N{GRINNING FACE}": the symbol "\N{GRINNING FACE}" '
            "(U+1F600 GRINNING FACE) at position 2 is not allowed in a user name\n"
        ),
        ("user-add", "a@exa mple.com", "--password=x"): (
            'Invalid domain "exa mple.com": the character (U+0020 SPACE) at position 4 is not '
            'allowed in a domain name (letters, digits, "-" and "." are)\n'
        ),
        ("user-add", "a@new.example", "--password=x", "--receive_only"): (
            "Cannot specify both --receive_only and --password"
        ),
        ("user-add", "a@../evil", "--password=x"): 'Invalid domain "../evil"',
        ("user-add", "a@xn---", "--password=x"): 'Invalid domain "xn---"',
    }
    for args, message in cases.items():
        r = run(f"-C={cdir}", *args)
        assert r.returncode == 1, args
        assert r.stdout == ""
        assert r.stderr.startswith(message), (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    missing = run(f"-C={tmp_path / 'nope'}", "user-add", "a@example.com", "--password=x")
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
    assert tree(tmp_path) == snapshot


@pytest.mark.parametrize("command", ["user-add", "authenticate"])
def test_password_without_a_terminal_is_one_line(tmp_path: Path, command: str) -> None:
    cdir = make_config(tmp_path)
    r = run(f"-C={cdir}", command, "a@example.com", stdin="secret\nsecret\n")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (
        "Cannot ask for the password: stdin is not a terminal; give it with --password=...\n"
    )
    assert not (cdir / "domains" / "example.com" / "users").exists()


def _pty_session(args: list[str], answers: list[tuple[str, str]]) -> tuple[int, str]:
    """Run chasquid-util on a terminal; each (prompt, answer) is typed once its prompt shows."""
    return on_terminal([str(UTIL), *args], scripted(answers))


def test_user_add_prompts_twice_without_echo(tmp_path: Path) -> None:
    cdir = make_config(tmp_path)
    answers = [("Password: ", "s3cr3t-pw"), ("Confirm password: ", "s3cr3t-pw")]
    code, out = _pty_session([f"-C={cdir}", "user-add", "tty@example.com"], answers)
    assert code == 0, out
    assert "Password: \n" in out
    assert "Confirm password: \n" in out
    assert "Added user" in out
    assert "s3cr3t-pw" not in out
    ok = run(f"-C={cdir}", "authenticate", "tty@example.com", "--password=s3cr3t-pw")
    assert ok.returncode == 0


def test_prompted_passwords_must_match(tmp_path: Path) -> None:
    cdir = make_config(tmp_path)
    answers = [("Password: ", "one"), ("Confirm password: ", "two")]
    code, out = _pty_session([f"-C={cdir}", "user-add", "tty@example.com"], answers)
    assert code == 1
    assert "Passwords don't match" in out
    assert not (cdir / "domains" / "example.com" / "users").exists()


def test_receive_only_user_exists_but_cannot_authenticate(tmp_path: Path) -> None:
    cdir = make_config(tmp_path)
    r = run(f"-C={cdir}", "user-add", "ro@example.com", "--receive_only")
    assert (r.returncode, r.stdout) == (0, "Added user\n")
    auth = run(f"-C={cdir}", "authenticate", "ro@example.com", "--password=")
    assert (auth.returncode, auth.stderr) == (1, "Authentication failed\n")
    assert run(f"-C={cdir}", "check-userdb", "example.com").stdout == "Database loaded (1 users)\n"


def test_user_remove(tmp_path: Path) -> None:
    cdir = make_config(tmp_path)
    unknown = run(f"-C={cdir}", "user-remove", "x@example.com")
    assert (unknown.returncode, unknown.stderr) == (1, "Unknown user\n")
    run(f"-C={cdir}", "user-add", "X@Example.com", "--password=p")
    removed = run(f"-C={cdir}", "user-remove", "x@example.com")
    assert (removed.returncode, removed.stdout) == (0, "Removed user\n")
    again = run(f"-C={cdir}", "user-remove", "x@example.com")
    assert again.returncode == 1


def test_user_add_uses_existing_domain_dir_and_mode(tmp_path: Path) -> None:
    cdir = make_config(tmp_path)
    assert run(f"-C={cdir}", "user-add", "Pepe@EXAMPLE.com", "--password=p").returncode == 0
    assert sorted(os.listdir(cdir / "domains")) == ["example.com"]
    users = cdir / "domains" / "example.com" / "users"
    assert users.stat().st_mode & 0o007 == 0  # password hashes: not world-readable
    ok = run(f"-C={cdir}", "authenticate", "pepe@example.com", "--password=p")
    assert ok.returncode == 0


def test_check_userdb(tmp_path: Path) -> None:
    cdir = make_config(tmp_path)
    r = run(f"-C={cdir}", "check-userdb", "example.com")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == f'Error: file "{cdir}/domains/example.com/users" does not exist\n'
    (cdir / "domains" / "example.com" / "users").write_text("users: [this is not valid\n")
    bad = run(f"-C={cdir}", "check-userdb", "example.com")
    assert bad.returncode == 1
    assert bad.stderr.startswith("Error loading database:")


def test_user_list(tmp_path: Path) -> None:
    cdir = make_config(tmp_path)
    for a in ("b@example.com", "a@example.com", "z@other.org"):
        assert run(f"-C={cdir}", "user-add", a, "--password=p").returncode == 0
    r = run(f"-C={cdir}", "user-list")
    assert (r.returncode, r.stdout) == (0, "a@example.com\nb@example.com\nz@other.org\n")
    one = run(f"-C={cdir}", "user-list", "other.org", "--json")
    assert json.loads(one.stdout) == [
        {"address": "z@other.org", "user": "z", "domain": "other.org", "receive_only": False}
    ]
    unknown = run(f"-C={cdir}", "user-list", "nowhere.example")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith('Unknown domain "nowhere.example"')


def test_user_list_is_a_table_on_a_terminal(tmp_path: Path) -> None:
    cdir = make_config(tmp_path)
    assert run(f"-C={cdir}", "user-add", "ro@example.com", "--receive_only").returncode == 0
    code, out = _pty_session([f"-C={cdir}", "user-list"], [])
    assert code == 0, out
    header = next(line for line in out.splitlines() if "user" in line and "domain" in line)
    assert "receive only" in header
    row = next(line for line in out.splitlines() if "ro" in line and "example.com" in line)
    assert "yes" in row
    assert "ro@example.com" not in out  # the plain form is for pipes


# --- commands that read chasquid.conf ---------------------------------------


def test_print_config(tmp_path: Path) -> None:
    cdir = make_config(tmp_path, 'hostname: "mx.example.com"\ndata_dir: ".data"\n')
    r = run(f"-C={cdir}", "print-config")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == 'hostname: "mx.example.com"'
    assert 'data_dir: ".data"' in lines
    assert "max_queue_items: 200" in lines
    assert r.stdout.endswith("\n\n")


def test_print_config_errors(tmp_path: Path) -> None:
    cdir = make_config(tmp_path, "unknown_key: 1\n")
    r = run(f"-C={cdir}", "print-config")
    assert r.returncode == 1
    assert r.stderr.startswith("Error loading config:")
    assert "unknown_key" in r.stderr
    gone = run(f"-C={tmp_path / 'absent'}", "print-config")
    assert gone.returncode == 1
    assert "does not exist" in gone.stderr


def test_aliases_resolve_offline(tmp_path: Path) -> None:
    cdir = make_config(tmp_path, f'data_dir: "{tmp_path / "data"}"\n')
    (cdir / "domains" / "example.com" / "aliases").write_text(
        "sales: ana, bob@remote.org\nlog: | cat\n"
    )
    r = run(f"-C={cdir}", "aliases-resolve", "sales@example.com")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "(email)  ana@example.com\n(email)  bob@remote.org\n"
    pipe = run(f"-C={cdir}", "aliases-resolve", "log@example.com", "--json")
    assert json.loads(pipe.stdout) == [{"type": "pipe", "address": "cat", "via": []}]
    unknown = run(f"-C={cdir}", "aliases-resolve", "who@else.org")
    assert unknown.stdout == "(email)  who@else.org\n"


def test_domaininfo_remove_offline(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cdir = make_config(tmp_path, f'data_dir: "{data}"\n')
    missing = run(f"-C={cdir}", "domaininfo-remove", "example.org")
    # Without a daemon it says so and falls back to the files.
    assert missing.returncode == 1
    assert missing.stderr.startswith("chasquid is not running (dial unix ")
    assert missing.stderr.endswith("\nError removing domaininfo entry: does not exist\n")
    assert not data.exists()

    from chasquid.confdir.domaininfo import DomainInfoStore, SecLevel

    store = DomainInfoStore(data / "domaininfo")
    store.incoming_ok("example.org", SecLevel.TLS_SECURE)
    r = run(f"-C={cdir}", "domaininfo-remove", "EXAMPLE.org")
    assert (r.returncode, r.stdout) == (0, "")
    assert "changing the domaininfo files directly" in r.stderr
    assert DomainInfoStore(data / "domaininfo").incoming_ok("example.org", SecLevel.PLAIN)


# --- import-users -----------------------------------------------------------


def _octal(data: bytes) -> str:
    return "".join(f"\\{b:03o}" for b in data)


def test_import_users_keeps_passwords(tmp_path: Path) -> None:
    cdir = make_config(tmp_path)
    salt = bytes(range(16))
    key = hashlib.scrypt(b"old-secret", salt=salt, n=2**14, r=8, p=1, dklen=32)
    legacy = tmp_path / "users.chasquid"
    legacy.write_text(
        'users: {\n  key: "juan"\n  value: {\n    scrypt: {\n'
        f"      logN: 14\n      r: 8\n      p: 1\n      keyLen: 32\n"
        f'      salt: "{_octal(salt)}"\n      encrypted: "{_octal(key)}"\n'
        "    }\n  }\n}\n"
        'users: < key: "solo" value: < denied: < > > >\n'
    )
    r = run(f"-C={cdir}", "import-users", "example.com", str(legacy))
    assert (r.returncode, r.stdout) == (0, "Imported 2 users\n"), r.stderr
    ok = run(f"-C={cdir}", "authenticate", "juan@example.com", "--password=old-secret")
    assert ok.returncode == 0
    assert run(f"-C={cdir}", "authenticate", "solo@example.com", "--password=").returncode == 1
    text = (cdir / "domains" / "example.com" / "users").read_text()
    assert isinstance(yaml.safe_load(text), dict)
    assert "old-secret" not in text


def test_import_users_in_place(tmp_path: Path) -> None:
    cdir = make_config(tmp_path)
    users = cdir / "domains" / "example.com" / "users"
    users.write_text('users: { key: "p" value: { plain: { password: "pw" } } }\n')
    r = run(f"-C={cdir}", "import-users", "example.com")
    assert (r.returncode, r.stdout) == (0, "Imported 1 users\n"), r.stderr
    assert run(f"-C={cdir}", "authenticate", "p@example.com", "--password=pw").returncode == 0
    assert not users.read_text().startswith("users: {")


# --- tables -----------------------------------------------------------------


def test_tables_show_brackets_literally() -> None:
    # Square brackets are legal in a local part; rich would take them as markup
    # (and raise on a closing tag that matches nothing).
    out = io.StringIO()
    render.users_table([UserEntry("a[/x]b", "example.com"), UserEntry("[bold]c", "d.test")], out)
    render.resolution_table([Resolved("email", "[red]e@f.test", ("[/]",))], out)
    text = out.getvalue()
    assert "a[/x]b" in text and "[bold]c" in text
    assert "[red]e@f.test" in text and "[/]" in text


# --- init -------------------------------------------------------------------


def test_init_from_flags(tmp_path: Path) -> None:
    target = tmp_path / "etc-chasquid"
    r = run(
        "init",
        str(target),
        "--hostname=mx.example.com",
        "--domain=Example.COM",
        "--data_dir=/var/lib/chasquid",
        "--self-signed",
    )
    assert r.returncode == 0, r.stderr
    assert (target / "domains" / "example.com").is_dir()
    assert (target / "hooks").is_dir()
    key = target / "certs" / "mx.example.com" / "privkey.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (
        (target / "certs" / "mx.example.com" / "fullchain.pem")
        .read_bytes()
        .startswith(b"-----BEGIN CERTIFICATE-----")
    )
    printed = run(f"-C={target}", "print-config").stdout.splitlines()
    assert 'hostname: "mx.example.com"' in printed
    # The daemon binds its ports itself with the shipped unit, no socket units needed.
    for line in ('smtp_address: ":25"', 'submission_address: ":587"'):
        assert line in printed
    assert 'submission_over_tls_address: ":465"' in printed
    assert "docs/configuration.md" in (target / "chasquid.conf").read_text()


def test_init_suggests_the_daemons_default_host_name(tmp_path: Path) -> None:
    import socket

    from chasquid.confdir.config import Config

    target = tmp_path / "c"
    assert run("init", str(target), "--domain=example.com").returncode == 0
    conf = (target / "chasquid.conf").read_text()
    assert f'hostname: "{socket.gethostname()}"' in conf.splitlines()
    assert Config().hostname == socket.gethostname()


def test_init_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "c"
    target.mkdir()
    (target / "chasquid.conf").write_text("# mine\n")
    r = run("init", str(target), "--hostname=h", "--domain=d.example", "--no-self-signed")
    assert r.returncode == 1
    assert "already exists" in r.stderr
    assert (target / "chasquid.conf").read_text() == "# mine\n"
    assert tree(target) == ["chasquid.conf"]


def test_init_needs_a_domain_when_not_interactive(tmp_path: Path) -> None:
    r = run("init", str(tmp_path / "c"), "--hostname=h")
    assert r.returncode == 1
    assert "--domain" in r.stderr
    assert not (tmp_path / "c").exists()


def test_init_asks_on_a_terminal(tmp_path: Path) -> None:
    target = tmp_path / "c"
    answers = [("Host name", "mx.test"), ("First domain", "test.example")]
    answers.append(("(for testing only)?", "y"))
    code, out = _pty_session(["init", str(target), "--data_dir=/srv/mail"], answers)
    assert code == 0, out
    assert (target / "domains" / "test.example").is_dir()
    assert (target / "certs" / "mx.test" / "fullchain.pem").is_file()
    assert '"/srv/mail"' in (target / "chasquid.conf").read_text()


# --- general behaviour ------------------------------------------------------


def test_unknown_and_missing_command() -> None:
    r = run("frobnicate")
    assert r.returncode == 1
    assert 'Unknown argument "frobnicate"' in r.stdout + r.stderr
    none = run()
    assert (none.returncode, none.stdout) == (1, "")
    # The help alone, exactly as --help prints it.
    assert none.stderr == run("--help").stdout


def test_help_on_every_command() -> None:
    top = run("--help")
    assert top.returncode == 0
    for command in (
        "user-add",
        "user-remove",
        "authenticate",
        "check-userdb",
        "user-list",
        "aliases-resolve",
        "domaininfo-remove",
        "print-config",
        "import-users",
        "init",
    ):
        assert command in top.stdout
        sub = run(command, "--help")
        assert sub.returncode == 0, command
        assert "Usage:" in sub.stdout


def test_missing_argument_exits_1() -> None:
    r = run("user-add")
    assert r.returncode == 1
    assert "Missing argument" in r.stderr


# --- shell completion -------------------------------------------------------


def complete(words: list[str], env_extra: dict[str, str] | None = None) -> list[str]:
    """Ask chasquid-util for bash completions the way click's bash script does."""
    env = dict(os.environ)
    env.update(
        {
            "_CHASQUID_UTIL_COMPLETE": "bash_complete",
            "COMP_WORDS": " ".join(["chasquid-util", *words]),
            "COMP_CWORD": str(len(words)),
        }
    )
    env.update(env_extra or {})
    r = subprocess.run([str(UTIL)], capture_output=True, text=True, timeout=60, env=env, check=True)
    return [line.split(",", 1)[1] for line in r.stdout.splitlines() if line]


def test_completes_users_and_domains(tmp_path: Path) -> None:
    cdir = make_config(tmp_path)
    (cdir / "domains" / "other.org").mkdir()
    for a in ("ana@example.com", "bob@example.com", "cid@other.org"):
        assert run(f"-C={cdir}", "user-add", a, "--password=p").returncode == 0
    everyone = ["ana@example.com", "bob@example.com", "cid@other.org"]
    assert complete([f"-C={cdir}", "user-remove", ""]) == everyone
    # Bash hands "-C=DIR" over as three words.
    assert complete(["-C", "=", str(cdir), "user-remove", "b"]) == ["bob@example.com"]
    assert complete([f"--config_dir={cdir}", "authenticate", "c"]) == ["cid@other.org"]
    assert complete(["user-remove", f"-C={cdir}", ""]) == everyone
    assert complete([f"-C={cdir}", "check-userdb", ""]) == ["example.com", "other.org"]
    assert complete([f"-C={cdir}", "check-userdb", "o"]) == ["other.org"]
    assert complete([f"-C={cdir}", "user-add", "new@ex"]) == ["new@example.com"]
    assert complete([f"-C={tmp_path / 'none'}", "user-remove", ""]) == []
    assert "user-remove" in complete(["user-r"])


def test_checked_in_completions_are_current() -> None:
    from chasquid_util.completions import generate

    root = Path(__file__).resolve().parents[2] / "completions"
    expected = generate()
    stale = [
        str(rel)
        for rel, text in expected.items()
        if not (root / rel).is_file() or (root / rel).read_text(encoding="utf-8") != text
    ]
    assert not stale, f"run `make completions`: stale or missing {stale}"
    for shell in ("bash", "zsh", "fish"):
        names = {p.name for p in (root / shell).iterdir()}
        assert len(names) == 4, (shell, names)


def test_completion_script_is_loadable_by_bash(tmp_path: Path) -> None:
    import shutil

    bash = shutil.which("bash")
    if bash is None:
        unavailable("bash is not installed")
    root = Path(__file__).resolve().parents[2] / "completions" / "bash"
    script = f"source {root / 'chasquid-util'} && complete -p chasquid-util"
    r = subprocess.run([bash, "-c", script], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "_chasquid_util_completion" in r.stdout


@pytest.mark.parametrize(
    ("prog", "words", "expected"),
    [
        ("smtp-check", ["-sk"], "-skip_tls_check"),
        ("mda-lmtp", ["--addr_network", ""], "unix"),
        ("chasquid", ["-config_d"], "-config_dir"),
    ],
)
def test_other_tools_complete_their_flags(prog: str, words: list[str], expected: str) -> None:
    env = dict(os.environ)
    env.update(
        {
            f"_{prog.replace('-', '_').upper()}_COMPLETE": "bash_complete",
            "COMP_WORDS": " ".join([prog, *words]),
            "COMP_CWORD": str(len(words)),
        }
    )
    exe = Path(sys.executable).parent / prog
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, env=env)
    assert f"plain,{expected}" in r.stdout.splitlines()


@pytest.mark.parametrize("prog", ["chasquid", "chasquid-util", "smtp-check", "mda-lmtp"])
def test_every_tool_has_version(prog: str) -> None:
    exe = Path(sys.executable).parent / prog
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr) == (0, "")
    assert re.fullmatch(rf"{prog} \S+ \(source date: [^)]+\)\n", r.stdout), r.stdout


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_verbose_flag_is_accepted(tmp_path: Path, where: str) -> None:
    cdir = make_config(tmp_path)
    args = ["user-add", "v@example.com", "--password=pw"]
    r = run("-v", f"-C={cdir}", *args) if where == "before" else run(*args, f"-C={cdir}", "-v")
    assert r.returncode == 0, r.stderr
    assert "Added user" in r.stdout
    assert "-v" in run("--help").stdout
