"""Process wiring of the daemon: start-up order, listeners, signals, reload and shutdown.

spec/30 §1.7-1.9 and §2.3-2.7, spec/20 §12-13, spec/README.md decisions 2 and 3.
This is the only module that installs signal handlers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
import sys
import warnings
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from chasquid import __version__
from chasquid.daemon import sdactivation
from chasquid.daemon.listeners import Listener, ListenError, bind_tcp, plan_listeners
from chasquid.daemon.mainlog import MainLog
from chasquid.durations import format_duration
from chasquid.errors import ChasquidError, os_reason
from chasquid.goquote import go_list, go_quote
from chasquid.monitoring.sources import Flag
from chasquid.smtpsrv.server import Mode
from chasquid.telemetry.metrics import ALIAS_HOOK_RESULTS, Counters
from chasquid.telemetry.trace import Tracer

if TYPE_CHECKING:
    from chasquid.confdir.aliases import UserFallback
    from chasquid.confdir.config import Config
    from chasquid.confdir.domaininfo import DomainInfoStore
    from chasquid.confdir.domains import Domains
    from chasquid.confdir.layout import ConfigDir, DataDir
    from chasquid.monitoring.server import MonitoringServer
    from chasquid.monitoring.sources import Sources
    from chasquid.queue.delivery import Delivery
    from chasquid.queue.queue import Queue
    from chasquid.smtpsrv.certs import Certificates
    from chasquid.smtpsrv.dovecot import DovecotAuth
    from chasquid.smtpsrv.server import ReceptionContext
    from chasquid.telemetry.maillog import MailLog

log = logging.getLogger("chasquid.daemon")

#: How long SIGTERM waits for transactions in progress (decision 3).
SHUTDOWN_GRACE = 30.0


class FatalError(ChasquidError):
    """Start-up cannot go on; the message is the fatal log line."""


@dataclass(frozen=True)
class DaemonOptions:
    """What the command line gives the daemon besides logging."""

    config_dir: str = "/etc/chasquid"
    config_overrides: str = ""
    reload_every: float = 30.0
    max_received_headers: int = 50
    #: Retry delays of the delivery loop (``--testing__retry_schedule``); () = spec/20 §4.7.
    retry_schedule: tuple[float, ...] = ()
    #: Every flag with its value, for the monitoring server's /debug/flags.
    flags: tuple[Flag, ...] = ()


#: Worker threads of the default executor (programs, fsyncs, scrypt, SPF).
PROGRAM_THREADS = 64


def _use_pidfd_child_watcher() -> None:
    """Wait for MDA, pipe and hook processes with pidfds, as Python 3.12+ does by default.

    Python 3.11's default watcher starts a thread per child process; with one MDA
    process per local recipient that cost about a third of the CPU of each spawn.
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # kernels before 5.3, or seccomp filters
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_child_watcher(asyncio.PidfdChildWatcher())


def raise_fd_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit: each connection costs a descriptor.

    The usual soft limit of 1024 would refuse a burst of a thousand
    connections (plus queue files, hooks and listeners).
    """
    import resource

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as e:
        log.info("Could not raise the open files limit: %s", e)


def run(options: DaemonOptions, mainlog: MainLog) -> int:
    """Run the daemon until SIGTERM/SIGINT; the process exit status (0, or 1 when fatal)."""
    _use_pidfd_child_watcher()
    raise_fd_limit()
    try:
        return asyncio.run(Daemon(options, mainlog).main())
    except ChasquidError as e:
        # FatalError carries the spec's line; any other library error that
        # reaches here still ends the daemon with one fatal line, not a traceback.
        log.critical("%s", e)
        return 1
    finally:
        logging.shutdown()


def log_config(config: Config) -> None:
    """The ``Configuration:`` block of spec/30 §1.8."""
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
    """Per-domain load errors are indented under ``Loading domains:`` (spec/30 §1.9)."""
    for kind in ("users file error", "aliases file error", "DKIM loading error"):
        if f": {kind}: " in message:
            return "  " + message
    return message


def load_certificates_logged(certs_dir: Path) -> Certificates | None:
    """Load every pair under certs/, logging as spec/30 §1.7 says; None if none was found.

    Raises CertError (a ChasquidError) with the fatal line for an unreadable
    or empty directory, or a pair that fails to load.
    """
    from chasquid.smtpsrv.certs import CertError, Certificates, load_certificate

    try:
        entries = sorted(os.listdir(certs_dir))
    except OSError as e:
        raise CertError(
            f'Error reading "certs/" directory: open {certs_dir}/: {os_reason(e)}'
        ) from None
    if not entries:
        raise CertError('No entries found in "certs/"')
    loaded = []
    for name in entries:
        path = certs_dir / name
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                continue
        except OSError:
            continue
        log.info("  %s", name)
        fullchain, privkey = path / "fullchain.pem", path / "privkey.pem"
        missing = None
        for f in (fullchain, privkey):
            try:
                os.stat(f)
            except OSError as e:
                missing = f"stat {f}: {os_reason(e)}"
                break
        if missing is not None:
            log.info("    skipping: %s", missing)
            continue
        try:
            loaded.append(load_certificate(name, fullchain, privkey))
        except CertError as e:
            raise CertError(f"    {e}") from None
    return Certificates(tuple(loaded)) if loaded else None


class Daemon:
    """One running daemon: the loaded state and the tasks serving it."""

    def __init__(self, options: DaemonOptions, mainlog: MainLog) -> None:
        self.options = options
        self.mainlog = mainlog
        self.config: Config | None = None
        self.config_dir: ConfigDir | None = None
        self.data_dir: DataDir | None = None
        self.maillog: MailLog | None = None
        self.certificates: Certificates | None = None
        self.dovecot: DovecotAuth | None = None
        self.ctx: ReceptionContext | None = None
        self.domains: Domains | None = None
        self.domaininfo: DomainInfoStore | None = None
        self.queue: Queue | None = None
        self.delivery: Delivery | None = None
        self.localrpc: asyncio.Server | None = None
        self.servers: list[asyncio.Server] = []
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        # One registry for every counter of spec/20 §10 and spec/10 §16, so the
        # monitoring server can expose them all from one place.
        self.counters = Counters()
        # Traces of connections, queue items and deliveries, for the monitoring pages.
        self.tracer = Tracer()
        # Every AUTH attempt of the daemon's life, in one trace that never ends.
        self.auth_trace = self.tracer.new("Authentication", "Incoming SMTP")
        self.monitoring: MonitoringServer | None = None

    # --- accessors the sessions read; swapping the attribute is the atomic reload.

    def current_domains(self) -> Domains:
        """The Domains snapshot in force."""
        assert self.domains is not None
        return self.domains

    def current_certificates(self) -> Certificates:
        """The certificates in force."""
        assert self.certificates is not None
        return self.certificates

    # --- start-up, spec/30 §2.3.

    async def main(self) -> int:
        """Start up in the specified order, serve until asked to stop, shut down gracefully."""
        log.info("chasquid starting (version %s)", __version__)
        # MDAs, pipes and hooks each hold a worker thread while they run
        # (chasquid.programs.process); with Python's default of cpu+4 workers a few slow
        # programs would delay the queue's fsyncs and scrypt checks behind them.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=PROGRAM_THREADS, thread_name_prefix="chasquid-worker")
        )
        config = self._load_config()
        self.config = config
        log_config(config)

        try:
            os.chdir(self.options.config_dir)
        except OSError as e:
            raise FatalError(
                f"Error changing to config dir {go_quote(self.options.config_dir)}: "
                f"chdir {self.options.config_dir}: {os_reason(e)}"
            ) from None

        from chasquid.confdir.layout import ConfigDir, data_dir_for

        # From here on every relative path is relative to the config dir.
        self.config_dir = ConfigDir(Path("."))
        self.data_dir = data_dir_for(config, ".")
        self.maillog = self._open_maillog(config)
        if config.monitoring_address:
            # Early, so the pages already answer while domains and the queue load.
            await self._start_monitoring(config.monitoring_address)
        self.dovecot = await self._start_dovecot(config)

        self.certificates = self._load_certificates()
        self.domains = self._load_domains()
        self.domaininfo = self._open_domaininfo()
        self._init_sts_cache()
        self.queue = await self._load_queue()

        inherited = self._inherited_sockets()
        addresses = {m: getattr(config, m.config_key) for m in Mode}
        try:
            planned = plan_listeners(addresses, inherited)
        except ListenError as e:
            raise FatalError(str(e)) from None

        self._install_signal_handlers()

        if not self.certificates_loaded():
            log.error("No SSL/TLS certificates found")
            log.error("Ideally there should be a certificate for each MX you act as")
            raise FatalError("At least one valid certificate is needed")

        await self._start_localrpc()
        self._spawn(self._periodic_reload())
        await self._start_listeners(planned)

        await self._stop.wait()
        await self._shutdown()
        return 0

    def _load_config(self) -> Config:
        from chasquid.confdir.config import ConfigError, load

        try:
            return load(self.options.config_dir, self.options.config_overrides)
        except ConfigError as e:
            raise FatalError(f"Error loading config: {e}") from None

    def _open_maillog(self, config: Config) -> MailLog:
        from chasquid.telemetry.maillog import MailLog, MailLogError

        try:
            return MailLog.open(config.mail_log_path)
        except (MailLogError, OSError) as e:
            raise FatalError(f"Error opening mail log: {e}") from None

    async def _start_monitoring(self, address: str) -> None:
        """The monitoring HTTP server (docs/monitoring.md); not listening is fatal."""
        from chasquid.monitoring.server import MonitoringServer, is_loopback_address

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
        server = MonitoringServer(self._monitoring_sources())
        await server.start(sock)
        self.monitoring = server
        log.info("Monitoring HTTP server listening on %s", address)

    def _monitoring_sources(self) -> Sources:
        from chasquid.monitoring.sources import BuildInfo, Sources
        from chasquid.telemetry import metrics
        from chasquid.version import source_date

        assert self.config is not None
        return Sources(
            config=self.config,
            counters=self.counters,
            catalogue=metrics.CATALOGUE,
            tracer=self.tracer,
            build=BuildInfo(__version__, source_date(), tuple(sys.argv)),
            flags=self.options.flags,
            # The queue page answers once the queue is loaded (spec/30 §7.1).
            queue=lambda: self.delivery if self.queue is not None else None,
            request_exit=self.request_exit,
            os_hostname=socket.gethostname(),
        )

    async def _start_dovecot(self, config: Config) -> DovecotAuth | None:
        """With dovecot_auth, the Dovecot fallback, probed once: a failure is only a warning.

        Dovecot may come up after us; until it answers, AUTH and RCPT for the
        users only it knows get temporary errors.
        """
        if not config.dovecot_auth:
            return None
        from chasquid.smtpsrv.dovecot import DovecotAuth, DovecotError

        dovecot = DovecotAuth(config.dovecot_userdb_path, config.dovecot_client_path)
        log.info("Fallback authenticator: %s", dovecot)
        try:
            await dovecot.probe()
        except DovecotError as e:
            log.error("Warning: Dovecot auth is not responding: %s", e)
        return dovecot

    def _load_certificates(self) -> Certificates | None:
        assert self.config_dir is not None
        log.info("Loading certificates:")
        try:
            return load_certificates_logged(self.config_dir.certs)
        except ChasquidError as e:
            raise FatalError(str(e)) from None

    def certificates_loaded(self) -> bool:
        """Whether at least one certificate pair is in force."""
        return self.certificates is not None

    def _load_domains(self) -> Domains:
        from chasquid.confdir.domains import load_domains

        assert self.config_dir is not None and self.config is not None
        log.info("Loading domains:")
        try:
            domains = load_domains(
                self.config_dir.root,
                self.config,
                user_fallback=self._user_fallback(),
                on_hook_result=self._count_hook_result,
            )
        except ChasquidError as e:
            raise FatalError(_domain_error_line(str(e))) from None
        for line in domains.summary_lines():
            log.info("%s", line)
        return domains

    def _user_fallback(self) -> UserFallback | None:
        """Who says whether a user the domains' databases do not know exists (Dovecot)."""
        return self.dovecot.exists if self.dovecot is not None else None

    def _count_hook_result(self, outcome: str) -> None:
        self.counters.inc(ALIAS_HOOK_RESULTS, f"resolve:{outcome}")

    def _open_domaininfo(self) -> DomainInfoStore:
        from chasquid.confdir.domaininfo import DomainInfoStore

        assert self.data_dir is not None
        try:
            return DomainInfoStore(self.data_dir.domaininfo)
        except ChasquidError as e:
            raise FatalError(f"Error opening domain info database: {e}") from None

    def _init_sts_cache(self) -> None:
        from chasquid.confdir.layout import STS_CACHE_DIR_MODE

        assert self.data_dir is not None
        path = self.data_dir.sts_cache
        try:
            os.makedirs(path, mode=STS_CACHE_DIR_MODE, exist_ok=True)
        except OSError as e:
            raise FatalError(
                f"Failed to initialize STS cache: mkdir {path}: {os_reason(e)}"
            ) from None

    async def _load_queue(self) -> Queue:
        from chasquid.queue.queue import Queue, QueueError
        from chasquid.queue.store import QueueStore

        assert self.data_dir is not None and self.config is not None
        config = self.config
        queue = Queue(
            QueueStore(self.data_dir.queue),
            lambda: self.current_domains().resolver,
            max_items=config.max_queue_items,
            give_up=config.give_up_send_after,
            counters=self.counters,
            tracer=self.tracer,
        )
        self.delivery = self._start_delivery(queue)
        try:
            await queue.load()
        except QueueError as e:
            raise FatalError(f"Error loading queue: {e}") from None
        return queue

    def _start_delivery(self, queue: Queue) -> Delivery:
        """Delivery loops for every item (queue/delivery.py), remote mail over SMTP."""
        from chasquid.courier.smtp import SMTPCourier
        from chasquid.courier.sts import StsCache
        from chasquid.queue.delivery import DEFAULT_RETRY_SCHEDULE, couriers_for, start_delivery

        assert self.config is not None and self.maillog is not None
        assert self.data_dir is not None and self.domaininfo is not None
        sts = StsCache(self.data_dir.sts_cache, counters=self.counters)
        self._spawn(sts.refresh_loop())
        remote = SMTPCourier(self.config.hostname, self.domaininfo, sts=sts, counters=self.counters)
        return start_delivery(
            queue,
            couriers_for(self.config, Path.cwd(), remote=remote),
            self.maillog,
            lambda: self.current_domains().is_local,
            retry_schedule=self.options.retry_schedule or DEFAULT_RETRY_SCHEDULE,
            counters=self.counters,
        )

    async def _start_localrpc(self) -> None:
        """The local RPC server for chasquid-util (spec/30 §2.5); failure is only logged."""
        from chasquid.localrpc import server as localrpc
        from chasquid.queue import admin

        assert self.data_dir is not None and self.domaininfo is not None
        assert self.delivery is not None
        handlers = localrpc.standard_handlers(
            lambda: self.current_domains().resolver, self.domaininfo
        )
        handlers.update(admin.handlers(self.delivery))
        try:
            self.localrpc = await localrpc.start_server(self.data_dir.localrpc_socket, handlers)
        except ChasquidError as e:
            log.error("Local RPC server not started: %s", e)

    def _inherited_sockets(self) -> dict[str, list[socket.socket]]:
        try:
            return sdactivation.listen_fds_with_names()
        except sdactivation.SDActivationError as e:
            raise FatalError(f"Error getting systemd listeners: {e}") from None

    def _reception_context(self) -> ReceptionContext:
        from chasquid.smtpsrv.auth import Authenticator
        from chasquid.smtpsrv.server import ReceptionContext

        assert self.config is not None and self.config_dir is not None
        assert self.certificates is not None and self.domaininfo is not None
        assert self.queue is not None and self.maillog is not None
        self.ctx = ReceptionContext(
            config=self.config,
            config_dir=self.config_dir,
            certs=self.current_certificates,
            domains=self.current_domains,
            domaininfo=self.domaininfo,
            queue=self.queue,
            maillog=self.maillog,
            counters=self.counters,
            authenticator=Authenticator(fallback=self.dovecot),
            max_received_headers=self.options.max_received_headers,
            tracer=self.tracer,
            auth_trace=self.auth_trace,
        )
        return self.ctx

    async def _start_listeners(self, planned: list[Listener]) -> None:
        from chasquid.smtpsrv.server import start_server

        assert self.maillog is not None
        ctx = self._reception_context()
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
            bound.append(Listener(lst.mode, lst.address, sock, via_systemd=False))
        for lst in bound + [p for p in planned if p.via_systemd]:
            assert lst.sock is not None
            server = await start_server(lst.sock, lst.mode, ctx)
            self.servers.append(server)
            if lst.via_systemd:
                log.info("Server listening on %s (%s, via systemd)", lst.address, lst.mode.display)
            else:
                log.info("Server listening on %s (%s)", lst.address, lst.mode.display)
            self.maillog.listening(lst.address)

    # --- signals, reload, shutdown.

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        loop.add_signal_handler(signal.SIGTERM, self._on_exit_signal, "terminated")
        loop.add_signal_handler(signal.SIGINT, self._on_exit_signal, "interrupt")

    def _on_sighup(self) -> None:
        log.info("Received SIGHUP, reloading")
        self._spawn(self.reload(full=True))

    def request_exit(self) -> None:
        """Shut down gracefully, as SIGTERM does (the monitoring server's POST /exit)."""
        self._stop.set()

    def _on_exit_signal(self, name: str) -> None:
        if self._stop.is_set():
            return
        log.info("Got signal to exit: %s", name)
        self._stop.set()

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _periodic_reload(self) -> None:
        while True:
            await asyncio.sleep(self.options.reload_every)
            await self.reload(full=False)

    async def reload(self, full: bool) -> None:
        """Reload users and aliases; with ``full`` (SIGHUP) also logs, domaininfo and certificates.

        Decision 2: a failure keeps what is in force and is logged with its
        file and line; the server keeps running.
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
        try:
            self.mainlog.reopen()
        except ChasquidError as e:
            log.error("Error reopening log: %s", e)
        if self.maillog is not None:
            try:
                self.maillog.reopen()
            except ChasquidError as e:
                log.error("Error reopening maillog: %s", e)

    def _reload_domaininfo(self) -> None:
        if self.domaininfo is None:
            return
        # On the loop: a reload in a thread could swap in a table that misses a
        # record a session created meanwhile, which the next check would then
        # rewrite at a lower level. The files are few and small.
        try:
            self.domaininfo.reload()
        except ChasquidError as e:
            log.error("Error reloading domain info: %s", e)

    async def _reload_certificates(self) -> None:
        assert self.config_dir is not None
        try:
            certs = await asyncio.to_thread(load_certificates_logged, self.config_dir.certs)
        except ChasquidError as e:
            log.error("Error reloading certificates, keeping the previous ones: %s", e)
            return
        if certs is None:
            log.error("Error reloading certificates: none found, keeping the previous ones")
            return
        # Every TLS handshake (implicit or STARTTLS) asks current_certificates().
        self.certificates = certs

    async def _reload_domains(self) -> None:
        from chasquid.confdir.domains import load_domains

        assert self.config_dir is not None and self.config is not None
        try:
            domains = await asyncio.to_thread(
                load_domains,
                self.config_dir.root,
                self.config,
                user_fallback=self._user_fallback(),
                on_hook_result=self._count_hook_result,
            )
        except ChasquidError as e:
            log.error("Error reloading domains, keeping the previous ones: %s", e)
            return
        self.domains = domains

    async def _shutdown(self) -> None:
        """Decision 3: stop listening, let transactions finish (bounded), stop the queue."""
        for server in self.servers:
            server.close()
        await drain_sessions(self.ctx, SHUTDOWN_GRACE)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.localrpc is not None:
            self.localrpc.close()
        if self.delivery is not None:
            await self.delivery.stop()
        if self.queue is not None:
            await self.queue.stop()
        if self.maillog is not None:
            self.maillog.close()
        if self.monitoring is not None:
            await self.monitoring.close()
        log.info("chasquid exiting")


async def drain_sessions(ctx: ReceptionContext | None, grace: float) -> None:
    """Close idle sessions now; let those in a transaction finish it, for up to ``grace`` s."""
    if ctx is not None:
        await ctx.sessions.drain(grace)
