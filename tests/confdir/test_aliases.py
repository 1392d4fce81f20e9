"""Tests for chasquid.confdir.aliases: parsing, resolution and the alias-resolve hook."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypedDict, Unpack

import pytest
from helpers.programs import shell_script

from chasquid.confdir.aliases import (
    AliasError,
    RcptStatus,
    Recipient,
    RecipientKind,
    Resolver,
    UserFallback,
    load_aliases,
    parse_aliases,
    parse_rhs,
)

EMAIL, PIPE, FORWARD = RecipientKind.EMAIL, RecipientKind.PIPE, RecipientKind.FORWARD


class Users:
    """A user store over a fixed set of names (the real UserDB has the same exists())."""

    def __init__(self, names: Iterable[str] = (), everyone: bool = False) -> None:
        self.names = set(names)
        self.everyone = everyone

    def exists(self, user: str) -> bool:
        return self.everyone or user in self.names


def table(
    files: dict[str, str], drops: str = ".", seps: str = "+"
) -> dict[str, tuple[Recipient, ...]]:
    out: dict[str, tuple[Recipient, ...]] = {}
    for domain, text in files.items():
        out.update(parse_aliases(text, domain, f"{domain}/aliases", drops, seps))
    return out


class ResolverOptions(TypedDict, total=False):
    drops: str
    separators: str
    hook: Path | None
    hook_cwd: Path | None
    hook_timeout: float
    fallback: UserFallback | None
    on_hook_result: Callable[[str], None] | None


def resolver(
    files: dict[str, str],
    users: dict[str, Users] | None = None,
    **kw: Unpack[ResolverOptions],
) -> Resolver:
    return Resolver(
        aliases=table(files),
        local_domains=frozenset(files) | frozenset(users or {}),
        users=users or {},
        **kw,
    )


def resolve(r: Resolver, addr: str) -> list[Recipient]:
    return asyncio.run(r.resolve(addr))


def emails(*addrs: str) -> list[Recipient]:
    return [Recipient(a) for a in addrs]


# --- parsing ---------------------------------------------------------------


def test_parse_kinds() -> None:
    text = (
        "# comment\n"
        "\n"
        "  a : b, c@Other.COM ,\r\n"
        "p: |  cmd  arg1 arg2 \n"
        "notpipe: b, | cmd\n"
        "f: x via s1 / S2, y@z via s3\n"
        "empty: ,\n"
        "all: *@remote, * via primary\n"
    )
    with pytest.raises(AliasError):
        parse_aliases(text, "dom", "f", ".", "+")
    text = text.replace("notpipe: b, | cmd\n", "")
    t = parse_aliases(text, "dom", "f", ".", "+")
    assert t["a@dom"] == (Recipient("b@dom"), Recipient("c@other.com"))
    assert t["p@dom"] == (Recipient("cmd  arg1 arg2", PIPE),)
    assert t["f@dom"] == (
        Recipient("x@dom", FORWARD, ("s1", "S2")),
        Recipient("y@z", FORWARD, ("s3",)),
    )
    assert t["empty@dom"] == ()
    assert t["all@dom"] == (Recipient("*@remote"), Recipient("*@dom", FORWARD, ("primary",)))


def test_parse_left_side_normalization_and_override() -> None:
    t = parse_aliases("P.Q: pa\np.q+r: pc\npq+r: pd\npq: pb\n*: x\n", "dom", "f", ".", "+")
    assert t["pq@dom"] == (Recipient("pb@dom"),)
    assert t["pq+r@dom"] == (Recipient("pd@dom"),)
    assert t["*@dom"] == (Recipient("x@dom"),)
    assert len(t) == 3


def test_remote_right_side_is_lowercased() -> None:
    assert parse_rhs("bB@dom-B", "d") == (Recipient("bb@dom-b"),)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("abc", "missing ':' in line"),
        (": b", "missing address or alias"),
        ("a:", "missing address or alias"),
        ("a@b: c", "left-side: cannot contain @"),
        ("a: |", "right-side: the pipe alias is missing a command"),
        ("a: |   ", "right-side: the pipe alias is missing a command"),
        ("a: b # c", "right-side: normalizing address 'b # c@dom': "),
        ("a: b,  via s1", "right-side: forwarding alias is missing the address"),
        ("a: b via s1//s2", "right-side: empty server in via list"),
        ("a: b via s1/", "right-side: empty server in via list"),
    ],
)
def test_parse_errors(line: str, message: str) -> None:
    with pytest.raises(AliasError) as exc:
        parse_aliases(f"# first\n{line}\n", "dom", "/cfg/domains/dom/aliases", ".", "+")
    assert str(exc.value).startswith(f'"/cfg/domains/dom/aliases" line 2: {message}')


def test_load_missing_and_long_line(tmp_path: Path) -> None:
    assert load_aliases(tmp_path / "nope", "dom", ".", "+") == {}
    p = tmp_path / "aliases"
    p.write_text("a: b\nx: " + "y" * 70000 + "\n")
    with pytest.raises(AliasError, match=rf'^"{p}" line 2: '):
        load_aliases(p, "dom", ".", "+")


# --- resolution: reference examples ---------------------------------------

REFERENCE = """
pq: pa
p.q: pb
p.q+r: pc
pq+r: pd
ppp1: p.q+r
ppp2: p.q
ppp3: ppp2
f1: f2 via server1, f3 via server2/server3, c
c: d@e, f,
"""


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("p.q@dom", emails("pb@dom")),
        ("p..q+r@dom", emails("pd@dom")),
        ("pq+z@dom", emails("pb@dom")),
        ("ppp1@dom", emails("pd@dom")),
        ("ppp3@dom", emails("pb@dom")),
        ("unknown@dom", emails("unknown@dom")),
        ("a.b+c@remote", emails("a.b+c@remote")),
        (
            "f1@dom",
            [
                Recipient("f2@dom", FORWARD, ("server1",)),
                Recipient("f3@dom", FORWARD, ("server2", "server3")),
                Recipient("d@e"),
                Recipient("f@dom"),
            ],
        ),
    ],
)
def test_reference_examples(addr: str, expected: list[Recipient]) -> None:
    r = resolver({"dom": REFERENCE}, {"dom": Users(everyone=True)})
    assert resolve(r, addr) == expected


def test_right_side_star_chain() -> None:
    r = resolver({"dom1": "*: *@dom2\n", "dom2": "*: *@remote\n"})
    assert resolve(r, "xyz@dom1") == emails("xyz@remote")
    assert resolve(r, "xyz+abcd@dom1") == emails("xyz+abcd@remote")
    assert resolve(r, "x.y.z@dom1") == emails("x.y.z@remote")


def test_star_several_targets_and_secondary_mx() -> None:
    r = resolver({"dom": "*: *@remote1, *@remote2, fixed@remote3\n", "dodo": "*: * via primary\n"})
    assert resolve(r, "u@dom") == emails("u@remote1", "u@remote2", "fixed@remote3")
    assert resolve(r, "b@dodo") == [Recipient("b@dodo", FORWARD, ("primary",))]


def test_chain_into_catchall_uses_last_user() -> None:
    r = resolver({"dom5": "a: b\n*: *@remote\n"})
    assert resolve(r, "a@dom5") == emails("b@remote")


def test_local_right_side_is_cleaned() -> None:
    r = resolver({"dom": "recu: ab+cd@p-q.com\n", "p-q.com": ""}, {"p-q.com": Users(["ab"])})
    assert resolve(r, "recu@dom") == emails("ab@p-q.com")


def test_pipes_are_not_expanded() -> None:
    r = resolver({"dom": "a: | /bin/cmd x, y\nb: a, c@remote\n"})
    assert resolve(r, "b@dom") == [Recipient("/bin/cmd x, y", PIPE), Recipient("c@remote")]


# --- loops, and an alias listing its own address -------------------------


def test_self_listing_alias_keeps_a_copy() -> None:
    r = resolver({"dom": "pepe: pepe, jose@elsewhere\nlist: p.e.p.e+x, ana\n"})
    assert resolve(r, "pepe@dom") == emails("pepe@dom", "jose@elsewhere")
    assert resolve(r, "pe.pe@dom") == emails("pepe@dom", "jose@elsewhere")
    assert resolve(r, "list@dom") == emails("pepe@dom", "jose@elsewhere", "ana@dom")


def test_real_loops_hit_the_limit() -> None:
    for files in (
        {"dom": "a: b\nb: a\n"},
        {"dom": "a: b, x@remote\nb: c\nc: a\n"},
        {"dom": "*: *@dom\n"},
        {"dom": "a: x\n*: a\n"},
    ):
        r = resolver(files)
        with pytest.raises(AliasError, match=r"^recursion limit exceeded$"):
            resolve(r, "a@dom")


def test_depth_nine_is_fine_ten_is_not() -> None:
    chain = "".join(f"a{i}: a{i + 1}\n" for i in range(9))
    assert resolve(resolver({"dom": chain}), "a0@dom") == emails("a9@dom")
    chain = "".join(f"a{i}: a{i + 1}\n" for i in range(10))
    with pytest.raises(AliasError, match="recursion limit exceeded"):
        resolve(resolver({"dom": chain}), "a0@dom")


# --- a real user wins over the catch-all ------------------------------------


def test_real_user_wins_over_catchall() -> None:
    r = resolver({"dom": "*: catch@remote\n"}, {"dom": Users(["user"])})
    assert resolve(r, "user@dom") == emails("user@dom")
    assert resolve(r, "user+tag@dom") == emails("user@dom")
    assert resolve(r, "u.ser@dom") == emails("user@dom")
    assert resolve(r, "nobody@dom") == emails("catch@remote")
    assert resolve(r, "nobody+tag@dom") == emails("catch@remote")


def test_without_catchall_unknown_is_delivered_cleaned() -> None:
    r = resolver({"dom": ""}, {"dom": Users(["user"])})
    assert resolve(r, "user+tag@dom") == emails("user@dom")
    assert resolve(r, "no.body+x@dom") == emails("nobody@dom")


# --- existence at RCPT time ---------------------------------------------------


def test_check_recipient() -> None:
    r = resolver({"dom": "al.ias: x@remote\n", "other": "*: x@remote\n"}, {"dom": Users(["user"])})

    def check(addr: str) -> RcptStatus:
        return asyncio.run(r.check_recipient(addr))

    assert check("alias@dom") is RcptStatus.ACCEPT
    assert check("alias+x@dom") is RcptStatus.ACCEPT
    assert check("us.er+x@dom") is RcptStatus.ACCEPT
    assert check("nobody@dom") is RcptStatus.UNKNOWN
    assert check("anyone@other") is RcptStatus.ACCEPT
    assert asyncio.run(r.exists("user@dom"))
    assert not asyncio.run(r.exists("nobody@dom"))


def test_fallback_and_backend_errors() -> None:
    from chasquid.errors import ChasquidError

    async def fallback(addr: str) -> bool:
        if addr.startswith("broken"):
            raise ChasquidError("dovecot unreachable")
        return addr == "dove@dom"

    r = resolver({"dom": "*: *@remote\n"}, {"dom": Users()}, fallback=fallback)
    r2 = resolver({"dom": ""}, {"dom": Users()}, fallback=fallback)
    assert asyncio.run(r2.check_recipient("dove@dom")) is RcptStatus.ACCEPT
    assert asyncio.run(r2.check_recipient("broken@dom")) is RcptStatus.TEMPORARY_ERROR
    assert asyncio.run(r2.check_recipient("nobody@dom")) is RcptStatus.UNKNOWN
    assert resolve(r, "dove@dom") == emails("dove@dom")
    with pytest.raises(AliasError, match="dovecot unreachable"):
        resolve(r, "broken@dom")


# --- the alias-resolve hook --------------------------------------------------


def hook(tmp_path: Path, body: str, mode: int = 0o755) -> Path:
    return shell_script(tmp_path / "hooks" / "alias-resolve", body, mode)


def test_hook_success(tmp_path: Path) -> None:
    h = hook(
        tmp_path,
        'echo "$1" >> args.log\n'
        'case "$1" in\n'
        '  hooked@dom) echo " r1@remote, local2, fw via mx1 " ;;\n'
        '  piped@dom) echo "| some cmd" ;;\n'
        "esac\n",
    )
    r = resolver({"dom": "filed: f@remote\nhooked: file@remote\n"}, hook=h, hook_cwd=tmp_path)
    assert resolve(r, "hooked@dom") == [
        Recipient("file@remote"),
        Recipient("r1@remote"),
        Recipient("local2@dom"),
        Recipient("fw@dom", FORWARD, ("mx1",)),
    ]
    assert resolve(r, "piped@dom") == [Recipient("some cmd", PIPE)]
    # Remote addresses never reach the hook.
    assert resolve(r, "x@remote") == emails("x@remote")
    args = (tmp_path / "args.log").read_text().split()
    assert "x@remote" not in args
    assert args[:2] == ["hooked@dom", "local2@dom"]


def test_hook_exit_status(tmp_path: Path) -> None:
    h = hook(tmp_path, "exit 1\n")
    r = resolver({"dom": ""}, hook=h, hook_cwd=tmp_path)
    with pytest.raises(AliasError, match=r"^exit status 1$"):
        resolve(r, "a@dom")
    # At RCPT time a failing hook counts as "no alias".
    assert asyncio.run(r.check_recipient("a@dom")) is RcptStatus.UNKNOWN


def test_hook_timeout(tmp_path: Path) -> None:
    h = hook(tmp_path, "sleep 30\n")
    r = resolver({"dom": ""}, hook=h, hook_cwd=tmp_path, hook_timeout=0.3)
    with pytest.raises(AliasError, match="timed out"):
        resolve(r, "a@dom")


def test_hook_output_parse_error(tmp_path: Path) -> None:
    h = hook(tmp_path, 'echo "bad address"\n')
    r = resolver({"dom": ""}, hook=h, hook_cwd=tmp_path)
    with pytest.raises(AliasError, match=r"normalizing address 'bad address@dom'"):
        resolve(r, "a@dom")


def test_hook_not_executable(tmp_path: Path) -> None:
    h = hook(tmp_path, "echo x@remote\n", mode=0o644)
    r = resolver({"dom": ""}, hook=h, hook_cwd=tmp_path)
    with pytest.raises(AliasError, match="not an executable"):
        resolve(r, "a@dom")


def test_hook_missing_is_skipped(tmp_path: Path) -> None:
    r = resolver({"dom": ""}, hook=tmp_path / "hooks" / "alias-resolve", hook_cwd=tmp_path)
    assert resolve(r, "a@dom") == emails("a@dom")


def test_hook_outcomes_are_reported(tmp_path: Path) -> None:
    outcomes: list[str] = []
    missing = tmp_path / "hooks" / "alias-resolve"
    resolve(resolver({"dom": "a: b@remote\n"}, on_hook_result=outcomes.append), "a@dom")
    assert outcomes == ["notset"]
    outcomes.clear()
    resolve(resolver({"dom": ""}, hook=missing, on_hook_result=outcomes.append), "a@dom")
    assert outcomes == ["skip"] * 3  # exact, cleaned, catch-all
    outcomes.clear()
    h = hook(tmp_path, 'case "$1" in ok*) echo x@remote;; bad*) echo "a b";; *) exit 3;; esac\n')
    r = resolver({"dom": ""}, hook=h, hook_cwd=tmp_path, on_hook_result=outcomes.append)
    resolve(r, "ok@dom")
    assert outcomes == ["success"]
    with pytest.raises(AliasError):
        resolve(r, "bad@dom")
    assert outcomes[-1] == "parse_err"
    with pytest.raises(AliasError, match="exit status 3"):
        resolve(r, "fail@dom")
    assert outcomes[-1] == "fail"


def test_hook_appearing_or_vanishing_is_seen_at_the_next_lookup(tmp_path: Path) -> None:
    missing = tmp_path / "hooks" / "alias-resolve"
    r = resolver({"dom": ""}, hook=missing, hook_cwd=tmp_path)
    assert asyncio.run(r.check_recipient("whoever@dom")) is RcptStatus.UNKNOWN
    assert resolve(r, "whoever@dom") == emails("whoever@dom")
    hook(tmp_path, 'if [ "$1" = "whoever@dom" ]; then echo w@remote; fi\n')
    assert asyncio.run(r.check_recipient("whoever@dom")) is RcptStatus.ACCEPT
    assert resolve(r, "whoever@dom") == emails("w@remote")
    missing.unlink()
    assert asyncio.run(r.check_recipient("whoever@dom")) is RcptStatus.UNKNOWN
    assert resolve(r, "whoever@dom") == emails("whoever@dom")


def test_hook_makes_recipient_exist(tmp_path: Path) -> None:
    h = hook(tmp_path, 'if [ "$1" = "*@dom" ]; then echo all@remote; fi\n')
    r = resolver({"dom": ""}, hook=h, hook_cwd=tmp_path)
    assert asyncio.run(r.check_recipient("whoever@dom")) is RcptStatus.ACCEPT
    assert resolve(r, "whoever@dom") == emails("all@remote")
