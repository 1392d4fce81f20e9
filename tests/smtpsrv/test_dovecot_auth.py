"""The Dovecot auth client against a real private Dovecot and against fake, hostile servers."""

from __future__ import annotations

import asyncio
import base64
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from helpers.dovecot import Dovecot, dovecot_factory

from chasquid.daemon.smtpsrv.dovecot import DovecotAuth, DovecotError, Limits

__all__ = ["dovecot_factory"]

USER = "dovi@example.com"
PASSWORD = "dovecot's secret"

Talk = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for unix sockets (pytest's tmp paths can exceed the ~107-byte limit)."""
    d = Path(tempfile.mkdtemp(prefix="dva-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def dovecot(dovecot_factory: Callable[..., Dovecot]) -> Dovecot:
    """A private Dovecot with one user."""
    return dovecot_factory(users={USER: PASSWORD, "other@example.com": "other"})


def real(dc: Dovecot) -> DovecotAuth:
    return DovecotAuth(str(dc.userdb_socket), str(dc.client_socket))


# --- against the real Dovecot -------------------------------------------------------------------


def test_real_exists(dovecot: Dovecot) -> None:
    async def main() -> None:
        auth = real(dovecot)
        assert await auth.exists(USER)
        assert await auth.exists("other@example.com")
        assert not await auth.exists("nobody@example.com")
        # Dovecot's default auth_username_format (%Lu) folds case.
        assert await auth.exists("Dovi@Example.com")

    asyncio.run(main())


def test_real_authenticate(dovecot: Dovecot) -> None:
    async def main() -> None:
        auth = real(dovecot)
        assert await auth.authenticate(USER, PASSWORD)
        assert not await auth.authenticate(USER, "wrong")
        assert not await auth.authenticate(USER, "")
        assert not await auth.authenticate("nobody@example.com", PASSWORD)
        # Another user's password is not this user's.
        assert not await auth.authenticate(USER, "other")

    asyncio.run(main())


def test_real_concurrent_questions_do_not_mix(dovecot: Dovecot) -> None:
    """Many exchanges at once, right and wrong: each gets its own answer."""

    async def main() -> None:
        auth = real(dovecot)
        cases = [(USER, PASSWORD, True), (USER, "nope", False)] * 5 + [
            ("other@example.com", "other", True),
            ("other@example.com", PASSWORD, False),
        ] * 3
        got = await asyncio.gather(*(auth.authenticate(u, p) for u, p, _ in cases))
        assert got == [want for _, _, want in cases]
        names = [USER, "x@example.com"] * 10
        exists = await asyncio.gather(*(auth.exists(n) for n in names))
        assert exists == [n == USER for n in names]

    asyncio.run(main())


def test_real_probe_and_autodetection(dovecot: Dovecot, sock_dir: Path) -> None:
    async def main() -> None:
        missing = str(sock_dir / "missing")
        auth = DovecotAuth(
            userdb_candidates=[missing, str(dovecot.userdb_socket)],
            client_candidates=[missing, str(dovecot.client_socket)],
        )
        await auth.probe()
        assert await auth.authenticate(USER, PASSWORD)
        assert str(auth) == 'DovecotAuth("", "")'

    asyncio.run(main())


def test_real_dovecot_stopped_and_back(dovecot: Dovecot) -> None:
    async def main() -> None:
        auth = real(dovecot)
        assert await auth.exists(USER)
        dovecot.stop()
        with pytest.raises(DovecotError, match="connect"):
            await auth.exists(USER)
        with pytest.raises(DovecotError, match="connect"):
            await auth.authenticate(USER, PASSWORD)
        with pytest.raises(DovecotError, match="failed to connect to dovecot"):
            await auth.probe()
        dovecot.start()
        assert await auth.exists(USER)
        assert await auth.authenticate(USER, PASSWORD)

    asyncio.run(main())


def test_real_user_added_while_running(dovecot: Dovecot) -> None:
    async def main() -> None:
        auth = real(dovecot)
        assert not await auth.exists("new@example.com")
        dovecot.add_user("new@example.com", "fresh")
        # Dovecot looks at the file's stamp at most once a second.
        deadline = time.monotonic() + 5
        while not await auth.exists("new@example.com"):
            assert time.monotonic() < deadline, "Dovecot did not pick up the new user"
            await asyncio.sleep(0.2)
        assert await auth.authenticate("new@example.com", "fresh")

    asyncio.run(main())


# --- against fake servers -----------------------------------------------------------------------


async def serve(path: Path, talk: Talk) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await talk(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_unix_server(handle, str(path))


def fake_pair(sock_dir: Path, limits: Limits | None = None) -> DovecotAuth:
    return DovecotAuth(
        str(sock_dir / "userdb"), str(sock_dir / "client"), limits=limits or Limits()
    )


async def send(writer: asyncio.StreamWriter, *lines: str) -> None:
    writer.write("".join(f"{line}\n" for line in lines).encode())
    await writer.drain()


def userdb_talk(answer: str, seen: list[str] | None = None) -> Talk:
    """A userdb server greeting properly and answering one USER request with ``answer``."""

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await send(writer, "VERSION\t1\t1", "SPID\t12345")
        for _ in range(2):
            line = (await reader.readline()).decode()
            if seen is not None:
                seen.append(line)
        await send(writer, answer)

    return talk


def client_talk(answer: str, seen: list[str] | None = None) -> Talk:
    """A client-socket server with Dovecot's handshake, answering one AUTH with ``answer``."""

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await send(
            writer,
            "VERSION\t1\t1",
            "SPID\t12345",
            "CUID\t12345",
            "COOKIE\tlovelycookie",
            "MECH\tPLAIN",
            "MECH\tLOGIN",
            "DONE",
        )
        for _ in range(3):
            line = (await reader.readline()).decode()
            if seen is not None:
                seen.append(line)
        await send(writer, answer)

    return talk


def test_reference_exchange_exists(sock_dir: Path) -> None:
    async def main() -> None:
        seen: list[str] = []
        await serve(sock_dir / "userdb", userdb_talk("USER\t1\tusername\tuid=10 gid=10", seen))
        assert await fake_pair(sock_dir).exists("username")
        assert seen == ["VERSION\t1\t1\n", "USER\t1\tusername\tservice=smtp\n"]

    asyncio.run(main())


def test_reference_exchange_auth(sock_dir: Path) -> None:
    async def main() -> None:
        seen: list[str] = []
        await serve(sock_dir / "userdb", userdb_talk("NOTFOUND\t1"))
        await serve(sock_dir / "client", client_talk("OK\t1", seen))
        assert await fake_pair(sock_dir).authenticate("username", "password")
        assert seen[0] == "VERSION\t1\t1\n"
        assert seen[1].startswith("CPID\t")
        resp = base64.b64encode(b"username\0username\0password").decode()
        assert seen[2] == (
            f"AUTH\t1\tPLAIN\tservice=smtp\tsecured\tno-penalty\tnologin\tresp={resp}\n"
        )

    asyncio.run(main())


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        ("FAIL\t1\tuser=username", False),
        ("OK\t1\tuser=username", True),
        ("OTHER", 'invalid response: "OTHER"'),
        ("FAIL\t2", 'invalid response: "FAIL\\t2"'),
    ],
)
def test_auth_answers(sock_dir: Path, answer: str, outcome: bool | str) -> None:
    async def main() -> None:
        await serve(sock_dir / "userdb", userdb_talk("NOTFOUND\t1"))
        await serve(sock_dir / "client", client_talk(answer))
        auth = fake_pair(sock_dir)
        if isinstance(outcome, bool):
            assert await auth.authenticate("username", "password") is outcome
        else:
            with pytest.raises(DovecotError) as e:
                await auth.authenticate("username", "password")
            assert str(e.value) == outcome

    asyncio.run(main())


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        ("USER\t1\tusername", True),
        ("NOTFOUND\t1", False),
        ("FAIL\t1\treason=boom", 'invalid response: "FAIL\\t1\\treason=boom"'),
        ("USER\t2\tusername", 'invalid response: "USER\\t2\\tusername"'),
    ],
)
def test_userdb_answers(sock_dir: Path, answer: str, outcome: bool | str) -> None:
    async def main() -> None:
        await serve(sock_dir / "userdb", userdb_talk(answer))
        auth = fake_pair(sock_dir)
        if isinstance(outcome, bool):
            assert await auth.exists("username") is outcome
        else:
            with pytest.raises(DovecotError) as e:
                await auth.exists("username")
            assert str(e.value) == outcome

    asyncio.run(main())


async def _closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept and hang up at once."""


async def _stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept and never say anything (until the client gives up)."""
    await reader.read()


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"\x00\xff\xfe HELLO?\r\n" * 3)
    await writer.drain()
    await reader.read()


async def _huge_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"VERSION\t1\t1" + b"x" * 1_000_000 + b"\n")
    await writer.drain()
    await reader.read()


async def _endless_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    for _ in range(100_000):
        writer.write(b"MECH\tPLAIN\n")
        await writer.drain()


async def _drips(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A byte every 0.2 s: each read makes progress, the exchange never ends."""
    for _ in range(1000):
        writer.write(b"V")
        await writer.drain()
        await asyncio.sleep(0.2)


HOSTILE = [
    (_closes, "error receiving version: EOF", "EOF|connection reset by peer"),
    (_stalls, "no answer from .* within 1s", "no answer from .* within 1s"),
    (_garbage, 'error receiving version: got "', "no answer from .* within 1s"),
    (_huge_line, "error receiving version: line too long", "line too long"),
    (_endless_handshake, 'error receiving version: got "MECH', "more than 100 lines"),
    (_drips, "no answer from .* within 1s", "no answer from .* within 1s"),
]


@pytest.mark.parametrize(("talk", "exists_error", "auth_error"), HOSTILE)
def test_hostile_servers_give_errors_within_bounds(
    sock_dir: Path, talk: Talk, exists_error: str, auth_error: str
) -> None:
    """Whatever the server does, the answer is an error (never yes), within the bounds."""

    async def main() -> None:
        await serve(sock_dir / "userdb", talk)
        await serve(sock_dir / "client", talk)
        auth = fake_pair(sock_dir, Limits(connect=1.0, exchange=1.0))
        for question, error in (
            (auth.exists("username"), exists_error),
            (auth.authenticate("username", "password"), auth_error),
        ):
            start = time.monotonic()
            with pytest.raises(DovecotError, match=error):
                await question
            # Connect and exchange bounds, plus scheduling slack.
            assert time.monotonic() - start < 2.0 + 1.0

    asyncio.run(main())


def test_stalling_server_default_bound(sock_dir: Path) -> None:
    """With the real limits, a silent Dovecot costs at most the 5 s exchange bound."""

    async def main() -> None:
        await serve(sock_dir / "userdb", _stalls)
        start = time.monotonic()
        with pytest.raises(DovecotError, match="within 5s"):
            await fake_pair(sock_dir).exists("username")
        assert 4.5 < time.monotonic() - start < 5.0 + 2.0

    asyncio.run(main())


def test_missing_sockets(sock_dir: Path) -> None:
    async def main() -> None:
        auth = fake_pair(sock_dir)
        with pytest.raises(DovecotError, match=r"dial unix .*/userdb: connect: no such file"):
            await auth.exists("username")
        with pytest.raises(DovecotError, match=r"failed to connect to dovecot: dial unix"):
            await auth.probe()
        # Not a socket at all.
        (sock_dir / "userdb").write_text("")
        with pytest.raises(DovecotError, match="connection refused"):
            await auth.exists("username")

    asyncio.run(main())


def test_autodetection_retries_until_found_then_pins(sock_dir: Path) -> None:
    async def main() -> None:
        first, second = sock_dir / "first-userdb", sock_dir / "second-userdb"
        cfirst, csecond = sock_dir / "first-client", sock_dir / "second-client"
        auth = DovecotAuth(
            userdb_candidates=[str(first), str(second)],
            client_candidates=[str(cfirst), str(csecond)],
        )
        with pytest.raises(DovecotError, match=r"^unable to find userdb socket$"):
            await auth.exists("username")
        # The userdb socket is looked for first, even to authenticate.
        with pytest.raises(DovecotError, match=r"^unable to find userdb socket$"):
            await auth.authenticate("username", "password")
        with pytest.raises(DovecotError, match=r"^unable to find userdb socket$"):
            await auth.probe()

        await serve(second, userdb_talk("USER\t1\tusername"))
        assert await auth.exists("username")
        with pytest.raises(DovecotError, match=r"^unable to find client socket$"):
            await auth.authenticate("username", "password")
        await serve(csecond, client_talk("OK\t1"))
        assert await auth.authenticate("username", "password")

        # Found once, kept: a socket appearing earlier in the list later changes nothing.
        await serve(first, userdb_talk("NOTFOUND\t1"))
        await serve(cfirst, client_talk("FAIL\t1"))
        assert await auth.exists("username")
        assert await auth.authenticate("username", "password")

    asyncio.run(main())


@pytest.mark.parametrize("name", ["user name", "user\tname", "user\nname", "user\u2003name"])
def test_unsafe_usernames_are_refused_before_connecting(sock_dir: Path, name: str) -> None:
    async def main() -> None:
        seen: list[str] = []
        await serve(sock_dir / "userdb", userdb_talk("USER\t1\tx", seen))
        auth = fake_pair(sock_dir)
        with pytest.raises(DovecotError, match=r"username not safe \(contains spaces\)"):
            await auth.exists(name)
        with pytest.raises(DovecotError, match=r"username not safe \(contains spaces\)"):
            await auth.authenticate(name, "password")
        with pytest.raises(DovecotError, match="control characters"):
            await auth.exists("user\x00name")
        assert seen == []

    asyncio.run(main())
