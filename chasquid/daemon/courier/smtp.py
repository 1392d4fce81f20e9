"""Remote delivery over SMTP.

One call delivers a message to the recipients of one destination domain in
one SMTP transaction (one MAIL, several RCPT), trying the domain's MX hosts
(or an alias's `via` servers) in order. STARTTLS is used whenever offered;
the resulting security level is checked against the domain's recorded one
(domaininfo) and against its MTA-STS policy.

The peer is not trusted: every read is bounded in size and time, and any
misbehaviour fails that host's attempt temporarily instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dns.asyncresolver

from chasquid.confdir.domaininfo import DomainInfoStore, SecLevel
from chasquid.daemon.courier.base import DeliveryError, Results
from chasquid.daemon.courier.mx import lookup_mx, resolve_host, strip_root
from chasquid.daemon.courier.sts import StsCache
from chasquid.daemon.telemetry import metrics
from chasquid.daemon.telemetry.metrics import Counters
from chasquid.daemon.telemetry.trace import current as current_trace
from chasquid.dnsconfig import make_async_resolver
from chasquid.errors import ChasquidError
from chasquid.msgbody import Body
from chasquid.normalize import NormalizationError, domain_to_ascii, split_addr
from chasquid.remoteports import smtp_port
from chasquid.smtpwire import encoded_chunks
from chasquid.stspolicy import Policy
from chasquid.tlsprofile import client_context

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 2 * 1024 * 1024
MAX_LINE_BYTES = 8 * 1024

_LEVEL_LABEL = {
    SecLevel.PLAIN: "plain",
    SecLevel.TLS_INSECURE: "tls:insecure",
    SecLevel.TLS_SECURE: "tls:secure",
}

SSLContextFactory = Callable[[], ssl.SSLContext]


@dataclass(frozen=True)
class Timeouts:
    """Time limits in seconds: dial, each reply, TLS handshake, and a whole session."""

    dial: float = 60.0
    reply: float = 300.0
    handshake: float = 60.0
    session: float = 600.0


@dataclass(frozen=True)
class Reply:
    """One (possibly multi-line) reply."""

    code: int
    lines: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.code} " + "\n".join(self.lines)

    @property
    def permanent(self) -> bool:
        """Whether the reply is a permanent (5xx) failure."""
        return 500 <= self.code <= 599


class PeerError(ChasquidError):
    """The peer broke the protocol, the connection failed or a time limit passed."""


class _TLSFailed(ChasquidError):
    """STARTTLS was refused or its handshake failed: retry the host in plain text."""


class _Unverified(ChasquidError):
    """The certificate did not verify: reconnect and accept it as TLS_INSECURE."""


@dataclass
class _Session:
    """One connection to one host: reading bounded replies, sending commands."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    timeouts: Timeouts
    budget: int = MAX_REPLY_BYTES
    extensions: dict[str, str] = field(default_factory=dict)

    async def read_reply(self) -> Reply:
        try:
            async with asyncio.timeout(self.timeouts.reply):
                return await self._read_reply()
        except TimeoutError as e:
            raise PeerError(f"timed out after {self.timeouts.reply}s waiting for a reply") from e

    async def _read_reply(self) -> Reply:
        lines: list[str] = []
        code = 0
        while True:
            try:
                raw = await self.reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as e:
                raise PeerError("reply line too long") from e
            except asyncio.IncompleteReadError as e:
                raise PeerError("connection closed by the server") from e
            except (OSError, ssl.SSLError) as e:
                raise PeerError(f"reading reply: {e}") from e
            self.budget -= len(raw)
            if self.budget < 0:
                raise PeerError(f"replies exceeded {MAX_REPLY_BYTES} bytes")
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                raise PeerError(f"malformed reply line {line[:100]!r}")
            if lines and int(line[:3]) != code:
                raise PeerError(f"reply code changed within a reply: {line[:100]!r}")
            code = int(line[:3])
            lines.append(line[4:])
            if line[3:4] != "-":
                return Reply(code, tuple(lines))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        try:
            async with asyncio.timeout(self.timeouts.reply):
                await self.writer.drain()
        except TimeoutError as e:
            raise PeerError(f"timed out after {self.timeouts.reply}s writing") from e
        except (OSError, ssl.SSLError) as e:
            raise PeerError(f"writing: {e}") from e

    async def send_body(self, body: Body) -> None:
        """The DATA payload, read from disk and written a chunk at a time.

        A message that cannot be read to its end is a PeerError: the caller
        drops the connection, so the server never takes a cut message for a
        whole one.
        """
        try:
            async for chunk in encoded_chunks(body, stuff=True):
                await self.send(chunk)
        except OSError as e:
            raise PeerError(f"reading the message: {e}") from e

    async def command(self, line: str) -> Reply:
        await self.send(line.encode("utf-8") + b"\r\n")
        return await self.read_reply()

    async def hello(self, hostname: str) -> None:
        """EHLO, falling back to HELO; records the extensions."""
        reply = await self.command(f"EHLO {hostname}")
        if reply.code == 250:
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, params = line.strip().partition(" ")
                if keyword:
                    self.extensions[keyword.upper()] = params.strip()
            return
        reply = await self.command(f"HELO {hostname}")
        if reply.code != 250:
            raise PeerError(str(reply))
        self.extensions = {}

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """Upgrade the connection; a handshake failure is raised as is."""
        try:
            async with asyncio.timeout(self.timeouts.handshake):
                await self.writer.start_tls(
                    context,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=self.timeouts.handshake,
                )
        except TimeoutError as e:
            raise PeerError("TLS handshake timed out") from e

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    async def quit(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(min(self.timeouts.reply, 5.0)):
                await self.command("QUIT")
        self.close()


def wire_address(addr: str, smtputf8: bool) -> tuple[str, bool]:
    """The address as written in MAIL/RCPT and whether it needs SMTPUTF8.

    Raises a permanent DeliveryError (599) when it cannot be sent to this peer.
    """
    if addr in ("", "<>"):
        return "", False
    if "\r" in addr or "\n" in addr:
        # An address from an alias file or a hook's output must not add commands
        # of its own to the session.
        raise DeliveryError.permanent_error("MAIL+RCPT 501 address contains a line break")
    if addr.isascii():
        return addr, False
    if smtputf8:
        return addr, True
    user, domain = split_addr(addr)
    if not user.isascii():
        raise DeliveryError.permanent_error(
            "MAIL+RCPT 599 local part is not ASCII but server does not support SMTPUTF8"
        )
    try:
        return f"{user}@{domain_to_ascii(domain)}", False
    except NormalizationError as e:
        raise DeliveryError.permanent_error(
            "MAIL+RCPT 599 non-ASCII domain is not IDNA safe"
        ) from e


def _note(text: str) -> None:
    """A detail for the trace of the delivery attempt in progress, if there is one."""
    trace = current_trace()
    if trace is not None:
        trace.debug(text)


def _verifying_context(factory: SSLContextFactory) -> ssl.SSLContext:
    context = factory()
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _accept_any_context(factory: SSLContextFactory) -> ssl.SSLContext:
    context = factory()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _describe(e: BaseException) -> str:
    if isinstance(e, PeerError | DeliveryError | ChasquidError):
        return str(e)
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}" if isinstance(e, OSError | ssl.SSLError) else text


class SMTPCourier:
    """Delivers remote mail over SMTP; usable as the delivery loop's remote courier."""

    def __init__(
        self,
        hostname: str,
        domaininfo: DomainInfoStore,
        *,
        sts: StsCache | None = None,
        counters: Counters | None = None,
        resolver_factory: Callable[[], dns.asyncresolver.Resolver] = make_async_resolver,
        ssl_context: SSLContextFactory = client_context,
        port: int | None = None,
        timeouts: Timeouts = Timeouts(),
        max_hosts: int = 5,
    ) -> None:
        """hostname is said in EHLO; port None means 25 or CHASQUID_TEST_SMTP_PORT."""
        self.hostname = hostname
        self.domaininfo = domaininfo
        self.sts = sts
        self.counters = counters or Counters()
        self._resolver_factory = resolver_factory
        self._ssl_context = ssl_context
        self._port = port
        self.timeouts = timeouts
        self.max_hosts = max_hosts

    async def deliver(self, sender: str, rcpt: str, body: Body) -> None:
        """Deliver to one recipient via its domain's MX; raise DeliveryError on failure."""
        error = (await self.deliver_many(sender, [rcpt], body))[rcpt]
        if error is not None:
            raise error

    async def deliver_many(
        self, sender: str, rcpts: Sequence[str], body: Body, *, via: Sequence[str] = ()
    ) -> Results:
        """Deliver to every rcpt, one transaction per domain; the result of each (None = sent).

        With via, those servers are tried in order instead of the MX hosts
        (no MTA-STS); security levels are tracked by the recipient's domain.
        """
        groups: dict[str, list[str]] = {}
        for rcpt in dict.fromkeys(rcpts):
            groups.setdefault(split_addr(rcpt)[1], []).append(rcpt)
        results: Results = {}
        for domain, group in groups.items():
            results.update(await self._deliver_domain(sender, domain, group, body, tuple(via)))
        return results

    async def _deliver_domain(
        self, sender: str, domain: str, rcpts: list[str], body: Body, via: tuple[str, ...]
    ) -> Results:
        policy: Policy | None = None
        if via:
            hosts = list(via)
            what = "servers"
        else:
            what = "MXs"
            try:
                hosts = await lookup_mx(domain, self._resolver_factory(), limit=self.max_hosts)
            except DeliveryError as e:
                return dict.fromkeys(rcpts, e)
            if self.sts is not None:
                policy = await self.sts.get(domain)
                if policy is not None:
                    self.counters.inc(metrics.SMTP_OUT_STS_MODES, policy.mode)
                    _note(f"MTA-STS policy of {domain}: {policy.mode}")
        _note(f"{what} of {domain}: {', '.join(hosts)}")

        results: Results = {}
        pending = list(rcpts)
        last: DeliveryError | None = None
        for host in hosts:
            if policy is not None and not policy.mx_is_valid(host):
                log.info("%s: skipping MX %s, not allowed by the MTA-STS policy", domain, host)
                _note(f"{host}: skipped, not allowed by the MTA-STS policy")
                continue
            attempt = await self._attempt_host(host, domain, sender, pending, body, policy)
            still: list[str] = []
            for rcpt in pending:
                err = attempt[rcpt]
                if err is None or err.permanent:
                    results[rcpt] = err
                else:
                    last = err
                    still.append(rcpt)
            pending = still
            if not pending:
                break
        for rcpt in pending:
            last_text = last.message if last is not None else "<nil>"
            results[rcpt] = DeliveryError.temporary(
                f"all {what} returned transient failures (last: {last_text})"
            )
        return results

    async def _attempt_host(
        self,
        host: str,
        domain: str,
        sender: str,
        rcpts: list[str],
        body: Body,
        policy: Policy | None,
    ) -> Results:
        """One host's attempt for rcpts; every failure is turned into per-rcpt results."""
        try:
            async with asyncio.timeout(self.timeouts.session):
                return await self._session(host, domain, sender, rcpts, body, policy)
        except DeliveryError as e:
            _note(f"{host}: {e.message}")
            return dict.fromkeys(rcpts, e)
        except TimeoutError:
            err = DeliveryError.temporary(f"session with {host} exceeded {self.timeouts.session}s")
            _note(f"{host}: {err.message}")
            return dict.fromkeys(rcpts, err)

    async def _connect(self, host: str, addresses: list[str]) -> _Session:
        """Dial, read the greeting and say hello."""
        port = self._port if self._port is not None else smtp_port()
        errors: list[str] = []
        for address in addresses:
            try:
                async with asyncio.timeout(self.timeouts.dial):
                    reader, writer = await asyncio.open_connection(
                        address, port, limit=MAX_LINE_BYTES
                    )
                break
            except TimeoutError:
                errors.append(f"{address}:{port}: timed out after {self.timeouts.dial}s")
            except OSError as e:
                errors.append(f"{address}:{port}: {e.strerror or e}")
        else:
            raise DeliveryError.temporary(f"Could not dial: {host}: {'; '.join(errors)}")
        session = _Session(reader, writer, self.timeouts)
        try:
            greeting = await session.read_reply()
            if greeting.code != 220:
                raise PeerError(str(greeting))
        except PeerError as e:
            session.close()
            raise DeliveryError.temporary(f"Error creating client: {e}") from e
        try:
            await session.hello(self.hostname)
        except PeerError as e:
            session.close()
            raise DeliveryError.temporary(f"Error saying hello: {e}") from e
        return session

    async def _starttls(self, session: _Session, name: str, verify: bool) -> None:
        try:
            reply = await session.command("STARTTLS")
        except PeerError as e:
            raise _TLSFailed(str(e)) from e
        if reply.code != 220:
            raise _TLSFailed(f"STARTTLS refused: {reply}")
        factory = _verifying_context if verify else _accept_any_context
        try:
            await session.start_tls(factory(self._ssl_context), name)
        except ssl.SSLCertVerificationError as e:
            raise _Unverified(str(e)) from e
        except (ssl.SSLError, OSError, PeerError, ConnectionError) as e:
            raise _TLSFailed(_describe(e)) from e

    async def _secure_session(
        self, host: str, domain: str, addresses: list[str], policy: Policy | None
    ) -> tuple[_Session, SecLevel]:
        """A hello'd session over the best TLS the host gives, and its level."""
        name = strip_root(host)
        session = await self._connect(host, addresses)
        if "STARTTLS" not in session.extensions:
            return session, SecLevel.PLAIN
        try:
            try:
                await self._starttls(session, name, verify=True)
                level = SecLevel.TLS_SECURE
            except _Unverified as e:
                # Python cannot accept a certificate and still learn whether it
                # verified, so an unverifiable one costs a second connection.
                log.info("%s: certificate not verified (%s), retrying as insecure", host, e)
                session.close()
                session = await self._connect(host, addresses)
                if "STARTTLS" not in session.extensions:
                    raise _TLSFailed("STARTTLS no longer offered on reconnection") from e
                await self._starttls(session, name, verify=False)
                level = SecLevel.TLS_INSECURE
            await session.hello(self.hostname)
            return session, level
        except (_TLSFailed, _Unverified, PeerError) as e:
            session.close()
            self.counters.inc(metrics.SMTP_OUT_TLS, "tls:failed")
            failure = e
        # Falling back to plain text is pointless when it would be refused anyway.
        info = self.domaininfo.get(domain)
        if info is not None and info.outgoing > SecLevel.PLAIN:
            self.counters.inc(metrics.SMTP_OUT_SECURITY_CHECKS, "fail")
            raise DeliveryError.temporary(
                f"Security level check failed (level:PLAIN): STARTTLS failed: {failure}"
            )
        if policy is not None and policy.mode == "enforce":
            self.counters.inc(metrics.SMTP_OUT_STS_SECURITY, "fail")
            raise DeliveryError.temporary(
                f"invalid security level (PLAIN) for STS policy: STARTTLS failed: {failure}"
            )
        log.info("%s: TLS failed (%s), retrying without TLS", host, failure)
        _note(f"{host}: TLS failed ({failure}), retrying without TLS")
        session = await self._connect(host, addresses)
        return session, SecLevel.PLAIN

    async def _session(
        self,
        host: str,
        domain: str,
        sender: str,
        rcpts: list[str],
        body: Body,
        policy: Policy | None,
    ) -> Results:
        addresses = await resolve_host(host, self._resolver_factory())
        session, level = await self._secure_session(host, domain, addresses, policy)
        try:
            self.counters.inc(metrics.SMTP_OUT_TLS, _LEVEL_LABEL[level])
            _note(f"{host}: connected, {_LEVEL_LABEL[level]}")
            # Called on the loop: the store is not thread-safe, and its writes are tiny.
            ok = self.domaininfo.outgoing_ok(domain, level)
            self.counters.inc(metrics.SMTP_OUT_SECURITY_CHECKS, "pass" if ok else "fail")
            if not ok:
                raise DeliveryError.temporary(f"Security level check failed (level:{level.name})")
            if policy is not None and policy.mode == "enforce":
                secure = level == SecLevel.TLS_SECURE
                self.counters.inc(metrics.SMTP_OUT_STS_SECURITY, "pass" if secure else "fail")
                if not secure:
                    raise DeliveryError.temporary(
                        f"invalid security level ({level.name}) for STS policy"
                    )
            results = await self._transaction(session, host, sender, rcpts, body)
            await session.quit()
            return results
        except PeerError as e:
            raise DeliveryError.temporary(f"{host}: {e}") from e
        finally:
            session.close()

    async def _transaction(
        self, session: _Session, host: str, sender: str, rcpts: list[str], body: Body
    ) -> Results:
        """MAIL, RCPT per recipient, DATA: each recipient's result on this host."""
        smtputf8 = "SMTPUTF8" in session.extensions
        results: Results = {}
        wire_sender, needs_utf8 = wire_address(sender, smtputf8)
        wire_rcpts: dict[str, str] = {}
        for rcpt in rcpts:
            try:
                wire, utf8 = wire_address(rcpt, smtputf8)
            except DeliveryError as e:
                results[rcpt] = e
                continue
            wire_rcpts[rcpt] = wire
            needs_utf8 = needs_utf8 or utf8
        if not wire_rcpts:
            return results

        size_limit = session.extensions.get("SIZE", "")
        if size_limit.isdigit() and 0 < int(size_limit) < body.size:
            err = DeliveryError.permanent_error(
                f"MAIL+RCPT 552 message of {body.size} bytes exceeds the "
                f"{size_limit}-byte limit of {host}"
            )
            return results | dict.fromkeys(wire_rcpts, err)

        params = ""
        if "8BITMIME" in session.extensions:
            params += " BODY=8BITMIME"
        if needs_utf8:
            params += " SMTPUTF8"
        reply = await session.command(f"MAIL FROM:<{wire_sender}>{params}")
        if reply.code != 250:
            err = DeliveryError(f"MAIL+RCPT {reply}", permanent=reply.permanent)
            return results | dict.fromkeys(wire_rcpts, err)

        accepted: list[str] = []
        for rcpt, wire in wire_rcpts.items():
            reply = await session.command(f"RCPT TO:<{wire}>")
            if 250 <= reply.code <= 259:
                accepted.append(rcpt)
            else:
                results[rcpt] = DeliveryError(f"MAIL+RCPT {reply}", permanent=reply.permanent)
        if not accepted:
            return results

        reply = await session.command("DATA")
        if reply.code != 354:
            err = DeliveryError(f"DATA {reply}", permanent=reply.permanent)
            return results | dict.fromkeys(accepted, err)
        try:
            await session.send_body(body)
        except PeerError as e:
            return results | dict.fromkeys(accepted, DeliveryError.temporary(f"DATA writing: {e}"))
        reply = await session.read_reply()
        if reply.code != 250:
            err = DeliveryError(f"DATA closing {reply}", permanent=reply.permanent)
            return results | dict.fromkeys(accepted, err)
        return results | dict.fromkeys(accepted, None)
