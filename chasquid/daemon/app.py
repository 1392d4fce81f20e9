"""The daemon: its services built once at start-up, reloaded in place, stopped gracefully.

``Daemon.start(options, config)`` builds everything in start-up order, logging
what it loads: the mail log, the monitoring server (early, so its pages
answer while the rest loads), the Dovecot fallback, the certificates, the
domains, domaininfo, the MTA-STS cache, the queue with its delivery loops,
the listening plan, the local RPC server, the periodic reload and finally
the listeners. Anything
that prevents serving raises FatalError, whose message is the line to log,
after closing whatever had been started.

A running daemon reloads users, aliases and domains every ``reload_every``
seconds; ``reload(full=True)`` (SIGHUP) also reopens the logs and reloads
domaininfo and the certificates. A file that fails to load keeps the version
in force and is logged with its file and line. ``stop()`` stops listening
and starting delivery attempts, lets transactions and attempts in progress
finish for up to ``shutdown_grace`` seconds (both within the same grace), and
stops the queue once every outcome is on disk.

The daemon runs in whichever event loop calls it and never touches the
process's directory, signal handlers or executor: the ``chasquid`` command
(chasquid.daemon.cli) does that, and tests run the daemon in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path

from chasquid import __version__
from chasquid.confdir.aliases import UserFallback
from chasquid.confdir.config import Config, ConfigError, load
from chasquid.confdir.domaininfo import DomainInfoStore
from chasquid.confdir.domains import Domains, load_domains
from chasquid.confdir.layout import STS_CACHE_DIR_MODE, ConfigDir, DataDir, data_dir_for
from chasquid.daemon import sdactivation
from chasquid.daemon.courier.smtp import SMTPCourier
from chasquid.daemon.courier.sts import StsCache
from chasquid.daemon.listeners import Listener, ListenError, bind_tcp, plan_listeners
from chasquid.daemon.mainlog import MainLog
from chasquid.daemon.monitoring.server import MonitoringServer, is_loopback_address
from chasquid.daemon.monitoring.sources import BuildInfo, Flag, Sources
from chasquid.daemon.queue import admin
from chasquid.daemon.queue.delivery import (
    DEFAULT_RETRY_SCHEDULE,
    Delivery,
    couriers_for,
    start_delivery,
)
from chasquid.daemon.queue.queue import Queue, QueueError
from chasquid.daemon.queue.store import QueueStore
from chasquid.daemon.smtpsrv.auth import Authenticator
from chasquid.daemon.smtpsrv.certs import Certificates, load_certificates
from chasquid.daemon.smtpsrv.dovecot import DovecotAuth, DovecotError
from chasquid.daemon.smtpsrv.server import Mode, ReceptionContext, start_server
from chasquid.daemon.snapshot import Snapshot
from chasquid.daemon.telemetry import metrics
from chasquid.daemon.telemetry.maillog import SPECIAL_DESTINATIONS, MailLog, MailLogError
from chasquid.daemon.telemetry.metrics import Counters
from chasquid.daemon.telemetry.trace import Tracer
from chasquid.durations import format_duration
from chasquid.errors import ChasquidError, os_reason
from chasquid.goquote import go_list, go_quote
from chasquid.localrpc import server as localrpc
from chasquid.version import source_date

log = logging.getLogger("chasquid.daemon")

#: How long stopping waits for transactions and delivery attempts in progress
#: before closing them.
SHUTDOWN_GRACE = 30.0


class FatalError(ChasquidError):
    """Start-up cannot go on; the message is the fatal log line."""


@dataclass(frozen=True)
class DaemonOptions:
    """What the command line gives the daemon besides logging."""

    #: Where chasquid.conf and everything relative in it are; "." once the
    #: command has changed into it.
    config_dir: str = "/etc/chasquid"
    config_overrides: str = ""
    reload_every: float = 30.0
    max_received_headers: int = 50
    #: Retry delays of the delivery loop (``--testing__retry_schedule``); () = the default.
    retry_schedule: tuple[float, ...] = ()
    #: How long a stop lets transactions and delivery attempts in progress go on.
    shutdown_grace: float = SHUTDOWN_GRACE
    #: Every flag with its value, for the monitoring server's /debug/flags.
    flags: tuple[Flag, ...] = ()


def load_config(options: DaemonOptions) -> Config:
    """chasquid.conf with the command line's overrides; FatalError naming file, line and key."""
    try:
        return load(options.config_dir, options.config_overrides)
    except ConfigError as e:
        raise FatalError(f"Error loading config: {e}") from None


def log_config(config: Config) -> None:
    """The ``Configuration:`` block of the start-up log, in chasquid's format."""
    lines = [
        "Configuration:",
        f"  Hostname: {go_quote(config.hostname)}",
        f"  Max data size (MB): {config.max_data_size_mb}",
        f"  SMTP Addresses: {go_list(config.smtp_address)}",
        f"  Submission Addresses: {go_list(config.submission_address)}",
        f"  Submission+TLS Addresses: {go_list(config.submission_over_tls_address)}",
        f"  Monitoring address: {go_quote(config.monitoring_address)}",
        f"  MDA: {go_quote(config.mail_delivery_agent_bin)} "
        f"{go_list(config.mail_delivery_agent_args)}",
        f"  Data directory: {go_quote(config.data_dir)}",
        f"  Suffix separators: {go_quote(config.suffix_separators)}",
        f"  Drop characters: {go_quote(config.drop_characters)}",
        f"  Mail log: {go_quote(config.mail_log_path)}",
        f"  Dovecot auth: {_go_bool(config.dovecot_auth)} "
        f"({go_quote(config.dovecot_userdb_path)}, {go_quote(config.dovecot_client_path)})",
        f"  HAProxy incoming: {_go_bool(config.haproxy_incoming)}",
        f"  Max queue items: {config.max_queue_items}",
        f"  Give up send after: {format_duration(config.give_up_send_after)}",
    ]
    for line in lines:
        log.info("%s", line)


def _go_bool(value: bool) -> str:
    return "true" if value else "false"


def _domain_error_line(message: str) -> str:
    """Per-domain load errors are indented under ``Loading domains:``."""
    for kind in ("users file error", "aliases file error", "DKIM loading error"):
        if f": {kind}: " in message:
            return "  " + message
    return message


def user_fallback(dovecot: DovecotAuth | None) -> UserFallback | None:
    """Who says whether a user the domains' databases do not know exists (Dovecot)."""
    return dovecot.exists if dovecot is not None else None


def hook_result_counter(counters: Counters) -> Callable[[str], None]:
    """What the alias resolver is given to count the alias-resolve hook's outcomes."""

    def count(outcome: str) -> None:
        counters.inc(metrics.ALIAS_HOOK_RESULTS, f"resolve:{outcome}")

    return count


@dataclass(frozen=True)
class Services:
    """What the daemon built at start-up. None of it is replaced while running:
    a reload swaps what the snapshots hold."""

    config: Config
    config_dir: ConfigDir
    data_dir: DataDir
    counters: Counters
    #: Traces of connections, queue items and deliveries, for the monitoring pages.
    tracer: Tracer
    maillog: MailLog
    #: With dovecot_auth: who AUTH and RCPT ask about users the domains do not know.
    dovecot: DovecotAuth | None
    certificates: Snapshot[Certificates]
    domains: Snapshot[Domains]
    domaininfo: DomainInfoStore
    queue: Queue
    delivery: Delivery
    reception: ReceptionContext


class _Builder:
    """The start-up steps; each registers how to undo itself on the exit stack."""

    def __init__(
        self,
        options: DaemonOptions,
        config: Config,
        counters: Counters,
        stack: Stack,
        exit_requested: asyncio.Event,
    ) -> None:
        self.options = options
        self.config = config
        self.counters = counters
        self.stack = stack
        self.exit_requested = exit_requested
        self.tracer = Tracer()
        #: The queue's delivery, once loaded (the monitoring queue page waits for it).
        self.delivery: Delivery | None = None
        self.dovecot: DovecotAuth | None = None
        self.config_dir = ConfigDir(Path(options.config_dir))
        self.data_dir = data_dir_for(config, options.config_dir)

    async def build(self) -> tuple[Services, list[Listener]]:
        maillog = self.open_maillog()
        if self.config.monitoring_address:
            await self.start_monitoring(self.config.monitoring_address)
        self.dovecot = await self.start_dovecot()
        log.info("Loading certificates:")
        certificates = self.load_certificates()
        domains = Snapshot(self.load_domains())
        domaininfo = self.open_domaininfo()
        sts = self.open_sts_cache()
        queue, delivery = await self.load_queue(maillog, domains, domaininfo, sts)
        planned = self.plan_listeners()
        if certificates is None:
            log.error("No SSL/TLS certificates found")
            log.error("Ideally there should be a certificate for each MX you act as")
            raise FatalError("At least one valid certificate is needed")
        certs = Snapshot(certificates)
        reception = ReceptionContext(
            config=self.config,
            config_dir=self.config_dir,
            certs=certs.current,
            domains=domains.current,
            domaininfo=domaininfo,
            queue=queue,
            maillog=maillog,
            counters=self.counters,
            authenticator=Authenticator(fallback=self.dovecot),
            max_received_headers=self.options.max_received_headers,
            tracer=self.tracer,
            # Every AUTH attempt of the daemon's life, in one trace that never ends.
            auth_trace=self.tracer.new("Authentication", "Incoming SMTP"),
        )
        services = Services(
            config=self.config,
            config_dir=self.config_dir,
            data_dir=self.data_dir,
            counters=self.counters,
            tracer=self.tracer,
            maillog=maillog,
            dovecot=self.dovecot,
            certificates=certs,
            domains=domains,
            domaininfo=domaininfo,
            queue=queue,
            delivery=delivery,
            reception=reception,
        )
        return services, planned

    def open_maillog(self) -> MailLog:
        dest = self.config.mail_log_path
        if dest not in SPECIAL_DESTINATIONS:
            dest = str(self.config_dir.root / dest)
        try:
            maillog = MailLog.open(dest)
        except (MailLogError, OSError) as e:
            raise FatalError(f"Error opening mail log: {e}") from None
        self.stack.callback(maillog.close)
        return maillog

    async def start_monitoring(self, address: str) -> None:
        """The monitoring HTTP server (docs/monitoring.md); not listening is fatal."""
        if not is_loopback_address(address):
            log.warning(
                "Monitoring address %s is not a loopback address: whoever can reach it can "
                "read the queue, the traces and the configuration, and stop the daemon",
                go_quote(address),
            )
        try:
            sock = bind_tcp(address)
        except ListenError as e:
            raise FatalError(f"Monitoring server failed: {e}") from None
        self.stack.callback(sock.close)
        server = MonitoringServer(
            Sources(
                config=self.config,
                counters=self.counters,
                catalogue=metrics.CATALOGUE,
                tracer=self.tracer,
                build=BuildInfo(__version__, source_date(), tuple(sys.argv)),
                flags=self.options.flags,
                # The queue page answers once the queue is loaded.
                queue=lambda: self.delivery,
                request_exit=self.exit_requested.set,
                os_hostname=socket.gethostname(),
            )
        )
        await server.start(sock)
        self.stack.push_async_callback(server.close)
        log.info("Monitoring HTTP server listening on %s", address)

    async def start_dovecot(self) -> DovecotAuth | None:
        """With dovecot_auth, the Dovecot fallback, probed once: a failure is only a warning.

        Dovecot may come up after us; until it answers, AUTH and RCPT for the
        users only it knows get temporary errors.
        """
        if not self.config.dovecot_auth:
            return None
        dovecot = DovecotAuth(self.config.dovecot_userdb_path, self.config.dovecot_client_path)
        log.info("Fallback authenticator: %s", dovecot)
        try:
            await dovecot.probe()
        except DovecotError as e:
            log.error("Warning: Dovecot auth is not responding: %s", e)
        return dovecot

    def load_certificates(self) -> Certificates | None:
        try:
            return load_certificates(self.config_dir.certs)
        except ChasquidError as e:
            raise FatalError(str(e)) from None

    def load_domains(self) -> Domains:
        log.info("Loading domains:")
        try:
            domains = load_domains(
                self.config_dir.root,
                self.config,
                user_fallback=user_fallback(self.dovecot),
                on_hook_result=hook_result_counter(self.counters),
            )
        except ChasquidError as e:
            raise FatalError(_domain_error_line(str(e))) from None
        for line in domains.summary_lines():
            log.info("%s", line)
        return domains

    def open_domaininfo(self) -> DomainInfoStore:
        try:
            return DomainInfoStore(self.data_dir.domaininfo)
        except ChasquidError as e:
            raise FatalError(f"Error opening domain info database: {e}") from None

    def open_sts_cache(self) -> StsCache:
        path = self.data_dir.sts_cache
        try:
            os.makedirs(path, mode=STS_CACHE_DIR_MODE, exist_ok=True)
        except OSError as e:
            raise FatalError(
                f"Failed to initialize STS cache: mkdir {path}: {os_reason(e)}"
            ) from None
        sts = StsCache(path, counters=self.counters)
        self.stack.spawn(sts.refresh_loop())
        return sts

    async def load_queue(
        self,
        maillog: MailLog,
        domains: Snapshot[Domains],
        domaininfo: DomainInfoStore,
        sts: StsCache,
    ) -> tuple[Queue, Delivery]:
        config = self.config
        queue = Queue(
            QueueStore(self.data_dir.queue),
            lambda: domains.current().resolver,
            max_items=config.max_queue_items,
            give_up=config.give_up_send_after,
            counters=self.counters,
            tracer=self.tracer,
        )
        self.stack.push_async_callback(queue.stop)
        remote = SMTPCourier(config.hostname, domaininfo, sts=sts, counters=self.counters)
        # The delivery loops start before the queue loads, so every item loaded
        # gets its loop.
        delivery = start_delivery(
            queue,
            couriers_for(config, self.config_dir.root, remote=remote),
            maillog,
            lambda: domains.current().is_local,
            retry_schedule=self.options.retry_schedule or DEFAULT_RETRY_SCHEDULE,
            counters=self.counters,
        )
        self.stack.push_async_callback(delivery.stop)
        try:
            await queue.load()
        except QueueError as e:
            raise FatalError(f"Error loading queue: {e}") from None
        self.delivery = delivery
        return queue, delivery

    def plan_listeners(self) -> list[Listener]:
        try:
            inherited = sdactivation.listen_fds_with_names()
        except sdactivation.SDActivationError as e:
            raise FatalError(f"Error getting systemd listeners: {e}") from None
        addresses = {m: getattr(self.config, m.config_key) for m in Mode}
        try:
            return plan_listeners(addresses, inherited)
        except ListenError as e:
            raise FatalError(str(e)) from None


class Stack(contextlib.AsyncExitStack):
    """What the daemon started, undone in reverse order; background tasks are cancelled."""

    def spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        """Run coro as a task that closing the stack cancels (and waits for)."""
        task = asyncio.ensure_future(coro)

        async def cancel() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        self.push_async_callback(cancel)
        return task


class Daemon:
    """One running daemon: its services and what serves them. Built by ``start()``."""

    def __init__(
        self,
        options: DaemonOptions,
        services: Services,
        stack: Stack,
        mainlog: MainLog | None,
        exit_requested: asyncio.Event,
    ) -> None:
        self.options = options
        self.services = services
        #: Set when someone asked the daemon to exit (POST /exit); stop() does it.
        self.exit_requested = exit_requested
        self._stack = stack
        self._mainlog = mainlog
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[None]] = set()
        self._stopping: asyncio.Task[None] | None = None
        #: What is being served, in start order (each with its socket).
        self.listeners: list[Listener] = []

    @classmethod
    async def start(
        cls,
        options: DaemonOptions,
        config: Config,
        *,
        mainlog: MainLog | None = None,
        counters: Counters | None = None,
        exit_requested: asyncio.Event | None = None,
    ) -> Daemon:
        """Build and start everything; FatalError (already cleaned up) when it cannot serve.

        mainlog is reopened on a full reload; tests may leave it out. The
        monitoring server's POST /exit sets exit_requested (the command waits
        on it beside its signals).
        """
        stack = Stack()
        exit_requested = exit_requested or asyncio.Event()
        try:
            builder = _Builder(options, config, counters or Counters(), stack, exit_requested)
            services, planned = await builder.build()
            daemon = cls(options, services, stack, mainlog, exit_requested)
            await daemon._start_localrpc()
            stack.spawn(daemon._periodic_reload())
            await daemon._listen(planned)
        except BaseException:
            await stack.aclose()
            raise
        return daemon

    async def _start_localrpc(self) -> None:
        """The local RPC server for chasquid-util; failing to start it is only logged."""
        s = self.services
        handlers = localrpc.standard_handlers(lambda: s.domains.current().resolver, s.domaininfo)
        handlers.update(admin.handlers(s.delivery))
        try:
            server = await localrpc.start_server(s.data_dir.localrpc_socket, handlers)
        except ChasquidError as e:
            log.error("Local RPC server not started: %s", e)
            return
        self._stack.callback(server.close)

    async def _listen(self, planned: list[Listener]) -> None:
        # Bind every configured address first, so a busy port is fatal before
        # any session is served.
        bound: list[Listener] = []
        for lst in planned:
            if lst.via_systemd:
                continue
            try:
                sock = bind_tcp(lst.address)
            except ListenError as e:
                raise FatalError(f"Error listening: {e}") from None
            self._stack.callback(sock.close)
            bound.append(Listener(lst.mode, lst.address, sock, via_systemd=False))
        reception = self.services.reception
        servers: list[asyncio.Server] = []

        async def stop_serving() -> None:
            # Stop accepting, then let transactions in progress finish.
            for server in servers:
                server.close()
            await reception.sessions.drain(self.options.shutdown_grace)

        self._stack.push_async_callback(stop_serving)
        for lst in bound + [p for p in planned if p.via_systemd]:
            assert lst.sock is not None  # bound above, or inherited
            servers.append(await start_server(lst.sock, lst.mode, reception))
            self.listeners.append(lst)
            how = ", via systemd" if lst.via_systemd else ""
            log.info("Server listening on %s (%s%s)", lst.address, lst.mode.display, how)
            self.services.maillog.listening(lst.address)

    # --- reload.

    async def _periodic_reload(self) -> None:
        while True:
            await asyncio.sleep(self.options.reload_every)
            await self.reload(full=False)

    def reload_in_background(self, full: bool) -> None:
        """Start a reload without waiting for it (from a signal handler)."""
        task = asyncio.ensure_future(self.reload(full))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self, full: bool) -> None:
        """Reload users, aliases and domains; with ``full``, also logs, domaininfo and certificates.

        A failure keeps what is in force and is logged with its file and
        line; the server keeps running.
        """
        async with self._reload_lock:
            try:
                if full:
                    self._reopen_logs()
                    self._reload_domaininfo()
                    await self._reload_certificates()
                await self._reload_domains()
            except Exception:
                # Not a load error (those are handled above) but a bug: it must not
                # end the periodic reload loop for the rest of the daemon's life.
                log.exception("Unexpected error while reloading, keeping what is in force")

    def _reopen_logs(self) -> None:
        if self._mainlog is not None:
            try:
                self._mainlog.reopen()
            except ChasquidError as e:
                log.error("Error reopening log: %s", e)
        try:
            self.services.maillog.reopen()
        except ChasquidError as e:
            log.error("Error reopening maillog: %s", e)

    def _reload_domaininfo(self) -> None:
        # On the loop: a reload in a thread could swap in a table that misses a
        # record a session created meanwhile, which the next check would then
        # rewrite at a lower level. The files are few and small.
        try:
            self.services.domaininfo.reload()
        except ChasquidError as e:
            log.error("Error reloading domain info: %s", e)

    async def _reload_certificates(self) -> None:
        try:
            certs = await asyncio.to_thread(load_certificates, self.services.config_dir.certs)
        except ChasquidError as e:
            log.error("Error reloading certificates, keeping the previous ones: %s", e)
            return
        if certs is None:
            log.error("Error reloading certificates: none found, keeping the previous ones")
            return
        # Every TLS handshake (implicit or STARTTLS) asks for the current ones.
        self.services.certificates.swap(certs)

    async def _reload_domains(self) -> None:
        s = self.services
        try:
            domains = await asyncio.to_thread(
                load_domains,
                s.config_dir.root,
                s.config,
                user_fallback=user_fallback(s.dovecot),
                on_hook_result=hook_result_counter(s.counters),
            )
        except ChasquidError as e:
            log.error("Error reloading domains, keeping the previous ones: %s", e)
            return
        s.domains.swap(domains)

    # --- stop.

    async def stop(self) -> None:
        """Stop listening, let transactions finish (bounded), stop the queue; once."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        # Attempts in flight go on during the sessions' drain, within one grace.
        self.services.delivery.begin_stop(self.options.shutdown_grace)
        for task in list(self._reloads):
            task.cancel()
        await asyncio.gather(*self._reloads, return_exceptions=True)
        await self._stack.aclose()
        log.info("chasquid exiting")
