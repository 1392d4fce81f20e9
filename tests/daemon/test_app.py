"""The daemon in-process: start, serve, reload and stop in the test's own event loop.

The subprocess tests (tests/e2e) cover the command, its signals and its logs;
these drive chasquid.daemon.app directly, the way the command does.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trustme
from helpers.daemon import Setup, make_setup
from helpers.dns import dns_server
from helpers.mail import maildir_mda, maildir_messages

from chasquid.daemon.app import Daemon, DaemonOptions, FatalError, load_config

MESSAGE = b"Subject: in-process\r\n\r\nHello.\r\n"


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    """A config dir delivering to a Maildir, with no real DNS and no systemd sockets."""
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    s = make_setup(tmp_path)
    s.set_mda(maildir_mda(s.root))
    with dns_server({}) as dns:
        monkeypatch.setenv("CHASQUID_TEST_DNS", dns)
        yield s


def run(setup: Setup, scenario: Callable[[Daemon], Awaitable[None]]) -> None:
    """Start the daemon in a fresh loop, run the scenario, stop it."""

    async def main() -> None:
        options = DaemonOptions(config_dir=str(setup.config_dir), reload_every=3600)
        daemon = await Daemon.start(options, load_config(options))
        try:
            await scenario(daemon)
        finally:
            await daemon.stop()

    asyncio.run(main())


def login(setup: Setup, user: str, password: str) -> bool:
    """Whether AUTH succeeds on the submission port (STARTTLS first)."""
    with smtplib.SMTP("127.0.0.1", setup.submission_port, timeout=10) as c:
        c.starttls(context=setup.client_context())
        try:
            c.login(f"{user}@{setup.domain}", password)
        except smtplib.SMTPAuthenticationError:
            return False
        return True


def send(setup: Setup) -> None:
    with smtplib.SMTP_SSL(
        "127.0.0.1", setup.submission_tls_port, context=setup.client_context(), timeout=10
    ) as c:
        c.login(setup.user_addr, setup.password)
        c.sendmail(setup.user_addr, [setup.user_addr], MESSAGE)


async def until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.05)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_start_serves_every_listener_delivers_and_stop_closes_them(setup: Setup) -> None:
    ports = [setup.smtp_port, setup.submission_port, setup.submission_tls_port]

    async def scenario(daemon: Daemon) -> None:
        assert [lst.mode.display for lst in daemon.listeners] == [
            "SMTP",
            "submission",
            "submission+TLS",
        ]
        await asyncio.to_thread(send, setup)
        await until(lambda: len(maildir_messages(setup.root, "user")) == 1, "the delivery")
        [got] = maildir_messages(setup.root, "user")
        assert got.startswith(b"Received: ") and got.endswith(MESSAGE)
        await until(lambda: len(daemon.services.queue) == 0, "the queue to empty")
        assert not await asyncio.to_thread(lambda: any(refused(p) for p in ports))

    run(setup, scenario)
    assert all(refused(p) for p in ports)
    log = setup.mail_log.read_text()
    assert f"daemon listening on 127.0.0.1:{setup.smtp_port}" in log
    assert " from=user@testserver to=user@testserver sent" in log


def test_reload_picks_up_users_and_keeps_them_when_the_file_breaks(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(daemon: Daemon) -> None:
        assert not await asyncio.to_thread(login, setup, "new", "new-pass")
        setup.add_user("new", "new-pass")
        await daemon.reload(full=False)
        assert await asyncio.to_thread(login, setup, "new", "new-pass")

        setup.users_file().write_text("users: [not, a, mapping\n")
        with caplog.at_level(logging.ERROR, logger="chasquid.daemon"):
            await daemon.reload(full=False)
        assert "Error reloading domains, keeping the previous ones" in caplog.text
        assert await asyncio.to_thread(login, setup, "new", "new-pass")

    run(setup, scenario)


def test_full_reload_swaps_the_certificate(setup: Setup) -> None:
    def served_issuer() -> str:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with (
            socket.create_connection(("127.0.0.1", setup.submission_tls_port), timeout=10) as raw,
            ctx.wrap_socket(raw) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return ssl.DER_cert_to_PEM_cert(der)

    other_ca = trustme.CA()

    async def scenario(daemon: Daemon) -> None:
        before = await asyncio.to_thread(served_issuer)
        cert_dir = next((setup.config_dir / "certs").iterdir())
        leaf = other_ca.issue_cert(setup.domain, "localhost")
        (cert_dir / "fullchain.pem").write_bytes(leaf.cert_chain_pems[0].bytes())
        leaf.private_key_pem.write_to_path(str(cert_dir / "privkey.pem"))
        await daemon.reload(full=False)
        assert await asyncio.to_thread(served_issuer) == before
        await daemon.reload(full=True)
        after = await asyncio.to_thread(served_issuer)
        assert after != before
        assert after == leaf.cert_chain_pems[0].bytes().decode()

    run(setup, scenario)


def test_a_port_in_use_is_fatal_and_leaves_nothing_running(setup: Setup) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", setup.submission_port))
    busy.listen()

    async def main() -> None:
        options = DaemonOptions(config_dir=str(setup.config_dir))
        with pytest.raises(
            FatalError, match=r"Error listening: listen tcp .*address already in use"
        ):
            await Daemon.start(options, load_config(options))
        # The queue's loops, the STS refresher and the reload timer were all stopped.
        assert asyncio.all_tasks() == {asyncio.current_task()}

    try:
        asyncio.run(main())
    finally:
        busy.close()
    assert refused(setup.smtp_port)


def test_stop_lets_a_transaction_in_progress_finish(setup: Setup) -> None:
    setup.set_mda("cat >/dev/null; exit 75")  # keep what is accepted in the queue

    async def scenario(daemon: Daemon) -> None:
        def transaction_across_stop(stopping: asyncio.Future[None]) -> tuple[int, bytes]:
            with smtplib.SMTP_SSL(
                "127.0.0.1", setup.submission_tls_port, context=setup.client_context(), timeout=10
            ) as c:
                c.login(setup.user_addr, setup.password)
                c.mail(setup.user_addr)
                c.rcpt(setup.user_addr)
                loop.call_soon_threadsafe(stopping.set_result, None)
                return c.data(MESSAGE)

        loop = asyncio.get_running_loop()
        stopping: asyncio.Future[None] = loop.create_future()
        client = asyncio.create_task(asyncio.to_thread(transaction_across_stop, stopping))
        await stopping
        await daemon.stop()
        code, _ = await client
        assert code == 250
        assert any(b"Hello." in f.read_bytes() for f in setup.queue_dir.iterdir())

    run(setup, scenario)
