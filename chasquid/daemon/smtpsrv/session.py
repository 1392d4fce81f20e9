"""One SMTP session: chasquid's dialogue, on aiosmtpd's protocol engine.

The session runs its own command loop (aiosmtpd's rules differ from
chasquid's; chasquid.daemon.smtpsrv.aiosmtpd_adapter is the seam) and dispatches each
command to its ``smtp_<VERB>`` method, which returns the reply (or None when
it already replied). What the connection established is in ``self.state``, the
mail transaction in ``self.txn``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass

from chasquid.confdir.aliases import AliasError
from chasquid.confdir.domaininfo import SecLevel
from chasquid.daemon.queue.queue import QueueError
from chasquid.daemon.smtpsrv import auth, dkimstep, headers, posthook, senderpolicy
from chasquid.daemon.smtpsrv import spf as spfcheck
from chasquid.daemon.smtpsrv.address import AddressError, first_token, has_control, parse_address
from chasquid.daemon.smtpsrv.aiosmtpd_adapter import ProtocolAdapter
from chasquid.daemon.smtpsrv.certs import SNI_ATTR
from chasquid.daemon.smtpsrv.dataread import BadLineEnding, DataReadError, read_data
from chasquid.daemon.smtpsrv.proxyproto import ProxyError, parse_proxy_line
from chasquid.daemon.smtpsrv.registry import client_key
from chasquid.daemon.smtpsrv.server import HANDSHAKE_TIMEOUT, Mode, ReceptionContext
from chasquid.daemon.smtpsrv.spool import Spool
from chasquid.daemon.smtpsrv.state import Envelope, Session
from chasquid.daemon.telemetry import metrics
from chasquid.daemon.telemetry.maillog import format_client
from chasquid.goquote import go_quote
from chasquid.mailauth import authres
from chasquid.msgbody import Body
from chasquid.normalize import (
    NormalizationError,
    normalize_domain,
    normalize_user,
    valid_hostname,
)

log = logging.getLogger("chasquid.smtpsrv")

COMMAND_TIMEOUT = 60.0
MAX_LINE = 1000
MAX_ERRORS = 3
MAX_RCPTS = 101
MAX_ADDR_LEN = 256
HTTP_VERBS = frozenset({"GET", "POST", "CONNECT"})


@dataclass(frozen=True)
class Reply:
    """An SMTP reply; a text with LFs becomes a multi-line reply."""

    code: int
    text: str


class SMTPSession(ProtocolAdapter):
    """The SMTP dialogue of one connection."""

    def __init__(self, mode: Mode, ctx: ReceptionContext) -> None:
        super().__init__(hostname=ctx.hostname, software=ctx.software, timeout=COMMAND_TIMEOUT)
        self.mode = mode
        self.ctx = ctx
        self.started = time.monotonic()
        # Titled with the peer once connected; finished when the session ends.
        self.trace = ctx.tracer.new("SMTP.Conn", "")
        self.state = Session()
        self.txn = Envelope()

    # ---- connection plumbing -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Record when the connection started and who the peer is."""
        self.started = time.monotonic()
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio only sets TCP_NODELAY when the listening socket was made with
            # proto=IPPROTO_TCP; sockets bound with proto 0 (ours, systemd's) would
            # let Nagle hold back pipelined replies for a delayed ACK (~40 ms each).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if peer:
            self.state.tcp_peer = format_client(peer)
            self.state.client = peer
            self.state.client_ip = str(peer[0])
        self.trace.title = self.state.tcp_peer
        self.trace.debug(f"Connected, mode: {self.mode.display}")
        super().connection_made(transport)
        self.ctx.sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        """The connection is gone: leave the registry (the handler task is cancelled)."""
        self.ctx.sessions.discard(self)
        if error is not None and self.closing:
            log.debug("SMTP.Conn %s: connection lost while closing: %s", self.state.tcp_peer, error)
        elif error is not None:
            self._log_error(f"exiting with error: {error}")
        super().connection_lost(error)

    @property
    def in_transaction(self) -> bool:
        """Between an accepted MAIL and the reply to DATA (graceful shutdown waits)."""
        return self.txn.mail_from is not None

    def close(self) -> None:
        """Close the connection (used by graceful shutdown)."""
        self.close_connection()

    def _log_error(self, text: str) -> None:
        """``SMTP.Conn <ip>:<port>: error: <text>`` at WARNING: the line fail2ban's filter matches.

        Changing its shape breaks the filter in etc/fail2ban and its tests.
        """
        # fail2ban bans the address at the start of the line: behind a PROXY
        # it must be the real client, with the proxy's address kept alongside.
        who = self.state.tcp_peer
        client = format_client(self.state.client) if self.state.client else ""
        if client and client != self.state.tcp_peer:
            who = f"{client} (via {self.state.tcp_peer})"
        log.warning("SMTP.Conn %s: error: %s", who, go_quote(text)[1:-1])
        self.trace.error(text, mirror=False)

    async def _send(self, code: int, text: str, *, may_defer: bool = False) -> None:
        lines = text.split("\n")
        out = [f"{code}-{line}" for line in lines[:-1]] + [f"{code} {lines[-1]}"]
        self.ctx.counters.inc(metrics.SMTP_IN_RESPONSE_CODES, str(code))
        self.trace.debug(f"<- {code}  {text}")
        await self._write("\r\n".join(out), may_defer=may_defer)

    async def _write(self, reply: str, *, may_defer: bool = False) -> None:
        """Send one reply; only those the client need not see before going on may wait
        (never the greeting, 354, 334 or STARTTLS's 220)."""
        await self.write_reply(
            reply.encode("utf-8", "surrogateescape") + b"\r\n", may_defer=may_defer
        )

    @property
    def hostname_now(self) -> str:
        """The session host name."""
        return str(self.hostname)

    def _record_tls(self, transport: asyncio.BaseTransport) -> None:
        obj = transport.get_extra_info("ssl_object")
        if obj is None:
            return
        cipher = obj.cipher()
        self.state.tls = headers.TLSInfo(
            version=obj.version() or "", cipher=cipher[0] if cipher else ""
        )
        self.trace.debug(f"TLS: {self.state.tls.version} {self.state.tls.cipher}")
        sni = getattr(obj, SNI_ATTR, "")
        if sni and valid_hostname(sni):
            self.hostname = sni

    # ---- command loop ----------------------------------------------------------

    async def _read_line(self) -> bytes:
        """One line without its terminator; raises on overlong lines and EOF."""
        try:
            line: bytes = await self.reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as e:
            await self.reader.read(e.consumed)
            while True:
                try:
                    await self.reader.readuntil(b"\n")
                    break
                except asyncio.LimitOverrunError as e2:
                    await self.reader.read(e2.consumed)
            raise _LineTooLong() from None
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > MAX_LINE:
            raise _LineTooLong()
        return line

    async def serve_connection(self) -> None:
        """The dialogue; whatever ends it, the connection is closed and released."""
        try:
            await self._serve()
        except asyncio.CancelledError:
            raise
        except (ConnectionError, OSError) as e:
            log.info("SMTP.Conn %s: connection error: %s", self.state.tcp_peer, e)
            self.trace.error(f"connection error: {e}", mirror=False)
        except Exception as e:
            log.exception("SMTP.Conn %s: unexpected error", self.state.tcp_peer)
            self.trace.error(f"unexpected error: {type(e).__name__}: {e}", mirror=False)
        finally:
            self.trace.finish()
            self.close_connection()
            self.ctx.sessions.discard(self)
            if self.state.client_key is not None:
                self.ctx.sessions.release(self.state.client_key)

    def on_deadline(self) -> None:
        """The I/O deadline passed: log it, try a last 554 and close."""
        self._log_error("exiting with error: connection timed out")
        if self.transport is None:
            return
        self.last_words(b"554 error reading command: connection timed out\r\n")
        self.close_connection()

    async def _start_tls(self) -> str | None:
        """Switch to TLS with the certificates in force; None on success, else the error."""
        error = await self.start_tls(self.ctx.certs().server_context(), HANDSHAKE_TIMEOUT)
        if error is None and self.transport is not None:
            self._record_tls(self.transport)
        return error

    def _over_connection_limit(self) -> str | None:
        """The key whose limit this connection exceeds (counted from now on), if any.

        The client is the real one behind a PROXY line, so it is known only here.
        """
        config = self.ctx.config
        if len(self.ctx.sessions) > config.max_connections:
            return "max_connections"
        self.state.client_key = client_key(self.state.client_ip or self.state.tcp_peer)
        if self.ctx.sessions.claim(self.state.client_key) > config.max_connections_per_ip:
            return "max_connections_per_ip"
        return None

    async def _serve(self) -> None:
        self.set_deadline(HANDSHAKE_TIMEOUT)
        assert self.transport is not None
        if self.mode.implicit_tls:
            error = await self._start_tls()
            if error is not None:
                self._log_error(f"error completing TLS handshake: {error}")
                return
        if self.ctx.config.haproxy_incoming:
            try:
                header = parse_proxy_line(await self.reader.readuntil(b"\n"))
            except (ProxyError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
                self._log_error(f"error in haproxy handshake: {e}")
                return
            self.state.client = (header.src_ip, header.src_port)
            self.state.client_ip = header.src_ip
            self.trace.debug(f"PROXY: the client is {format_client(self.state.client)}")
        if refused_by := self._over_connection_limit():
            self.ctx.counters.inc(metrics.SMTP_IN_CONNECTIONS_REFUSED, refused_by)
            # Also the main log's line: SMTP.Conn <peer>: refused: over <limit>.
            self.trace.log(f"refused: over {refused_by}")
            await self._write("421 4.7.0 Too many connections, try again later")
            return
        self.trace.debug(f"<- 220 {self.hostname_now} ESMTP {self.ctx.software}")
        await self._write(f"220 {self.hostname_now} ESMTP {self.ctx.software}")

        while self.transport is not None:
            if time.monotonic() - self.started > self.ctx.lifetime:
                self._log_error("connection deadline exceeded")
                return
            self.set_deadline(COMMAND_TIMEOUT)
            try:
                line = await self._read_line()
            except _LineTooLong:
                await self._write("554 error reading command: line too long")
                return
            except asyncio.IncompleteReadError:
                # The client may only have half-closed: a last reply can still arrive.
                self.last_words(b"554 error reading command: unexpected EOF\r\n")
                return
            except (ConnectionError, OSError) as e:
                self._log_error(f"exiting with error: {e}")
                self.last_words(f"554 error reading command: {e}\r\n".encode())
                return
            verb_b, _, params_b = line.partition(b" ")
            verb = verb_b.decode("ascii", "replace").upper()
            params = params_b.decode("utf-8", "surrogateescape")
            # AUTH's parameters may hold the password itself (AUTH PLAIN <base64>).
            self.trace.debug(f"-> {verb} <redacted>" if verb == "AUTH" else f"-> {verb} {params}")
            if verb in HTTP_VERBS:
                self.ctx.counters.inc(metrics.SMTP_IN_WRONG_PROTOCOL, verb)
                self._log_error("http command, closing connection")
                await self._send(502, "5.7.0 This is an SMTP server, not a web server")
                return
            if verb == "QUIT":
                self.closing = True
                await self._send(221, "2.0.0 Goodbye")
                return
            method = self.command_method(verb) if verb.isalpha() else None
            if method is None:
                label = f'unknown<"{go_quote(verb[:6])[1:-1]}">'
                self.ctx.counters.inc(metrics.SMTP_IN_COMMANDS, label)
                if not await self._reply(label, Reply(500, "5.5.1 Unknown command")):
                    return
                continue
            reply = await method(params)
            self.ctx.counters.inc(metrics.SMTP_IN_COMMANDS, verb)
            if reply is _CLOSE:
                return
            if reply is not None and not await self._reply(verb, reply):
                return

    async def _reply(self, verb: str, reply: Reply) -> bool:
        """Send a reply, accounting errors; False when the session must end."""
        if reply.code >= 400:
            self.state.errors += 1
            self._log_error(f"{verb} failed: {reply.code}  {reply.text}")
            if self.state.errors >= MAX_ERRORS:
                self._log_error("too many errors, breaking connection")
                await self._send(421, "4.5.0 Too many errors, bye")
                return False
        await self._send(reply.code, reply.text, may_defer=True)
        return True

    # ---- simple commands --------------------------------------------------------

    def _hello(self, verb: str, params: str) -> Reply | None:
        """Take the HELO/EHLO name; the refusal when there is none or it is unsafe."""
        words = params.split()
        if not words:
            return Reply(501, f"Invalid {verb}: a name is required")
        if has_control(params):
            # The name goes into Received:, the hook's environment and the logs.
            # (Bytes that are not UTF-8 are kept: Received: quotes them.)
            return Reply(501, f"Invalid {verb}: control characters are not allowed")
        self.state.helo_domain = words[0]
        return None

    async def smtp_HELO(self, params: str) -> Reply:
        """HELO: note the client's name, answer with ours (no extensions)."""
        return self._hello("HELO", params) or Reply(250, self.hostname_now)

    async def smtp_EHLO(self, params: str) -> Reply:
        """EHLO: note the client's name and list the extensions (AUTH only under TLS)."""
        if refused := self._hello("EHLO", params):
            return refused
        self.state.esmtp = True
        lines = [
            f"{self.hostname_now} at your service",
            "8BITMIME",
            "PIPELINING",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            f"SIZE {self.ctx.max_data_size}",
            "AUTH PLAIN LOGIN" if self.state.tls else "STARTTLS",
            "HELP",
        ]
        return Reply(250, "\n".join(lines))

    async def smtp_HELP(self, params: str) -> Reply:
        """HELP: a pointer to RFC 5321."""
        return Reply(214, "2.0.0 See RFC 5321 for the commands this server speaks")

    async def smtp_NOOP(self, params: str) -> Reply:
        """NOOP: nothing but a 250."""
        return Reply(250, "2.0.0 OK")

    async def smtp_RSET(self, params: str) -> Reply:
        """RSET: forget the mail transaction."""
        self.txn = Envelope()
        return Reply(250, "2.0.0 Transaction reset")

    async def smtp_VRFY(self, params: str) -> Reply:
        """VRFY is deliberately not implemented."""
        return Reply(502, "5.5.1 VRFY is not supported")

    async def smtp_EXPN(self, params: str) -> Reply:
        """EXPN is deliberately not implemented."""
        return Reply(502, "5.5.1 EXPN is not supported")

    # ---- STARTTLS -----------------------------------------------------------------

    async def smtp_STARTTLS(self, params: str) -> Reply | object | None:
        """STARTTLS: pipelined plaintext is discarded before the handshake."""
        if self.state.tls is not None:
            return Reply(503, "5.5.1 Already done")
        await self._send(220, "2.0.0 Ready to start TLS")
        # Plaintext pipelined after STARTTLS must never be read as commands.
        self.discard_input()
        error = await self._start_tls()
        if error is not None:
            # The 554 5.5.0 reply cannot be sent (the client speaks TLS by
            # now); the log line carries it, with the client address.
            self.state.errors += 1
            self._log_error(f"STARTTLS failed: 554  5.5.0 Error in TLS handshake: {error}")
            return _CLOSE
        self.txn = Envelope()
        return None

    # ---- AUTH ---------------------------------------------------------------------------

    async def _auth_read(self, challenge: str) -> str:
        await self._send(334, challenge)
        line = await self._read_line()
        return line.decode("utf-8", "surrogateescape")

    async def smtp_AUTH(self, params: str) -> Reply:
        """AUTH PLAIN / LOGIN, only under TLS."""
        if self.state.tls is None:
            return Reply(503, "5.7.10 AUTH requires TLS: use STARTTLS first")
        if self.state.authenticated:
            return Reply(503, "5.5.1 Already done")
        mech, sp, initial = params.partition(" ")
        mech = mech.upper()
        if mech not in auth.MECHANISMS:
            return Reply(534, "5.7.9 Unsupported authentication mechanism (try PLAIN)")
        try:
            if mech == "PLAIN":
                response = initial if sp else await self._auth_read("")
                identity, password = auth.decode_plain(response)
            else:
                response = initial if sp else await self._auth_read("VXNlcm5hbWU6")
                identity = auth.decode_login_field(response, "user name")
                password = auth.decode_login_field(
                    await self._auth_read("UGFzc3dvcmQ6"), "password"
                )
            user, domain = auth.split_identity(identity)
        except auth.AuthDecodeError as e:
            return Reply(501, f"5.5.2 Error decoding AUTH response: {e}")
        except (_LineTooLong, asyncio.IncompleteReadError, ConnectionError) as e:
            return Reply(554, f"5.4.0 Error reading AUTH response: {e or type(e).__name__}")
        who = f"{user}@{domain}"
        try:
            ok = await self.ctx.authenticator.authenticate(
                self.ctx.domains().users, user, domain, password
            )
        except auth.AuthBackendError as e:
            log.info("SMTP.Conn %s: auth backend error: %s", self.state.tcp_peer, e)
            self.trace.error(f"auth backend error: {e}", mirror=False)
            self._auth_event(who, "backend error")
            self.ctx.maillog.auth(self.state.client, who, False)
            return Reply(454, "4.7.0 Temporary authentication failure")
        self._auth_event(who, "successful" if ok else "failed")
        self.ctx.maillog.auth(self.state.client, who, ok)
        if not ok:
            return Reply(535, "5.7.8 Incorrect user or password")
        self.state.authenticated = True
        self.state.auth_user, self.state.auth_domain = user, domain
        return Reply(235, "2.7.0 Authentication successful")

    def _auth_event(self, who: str, outcome: str) -> None:
        """One AUTH attempt, in this connection's trace and the daemon's Authentication trace."""
        self.trace.debug(f"AUTH as {who}: {outcome}")
        if self.ctx.auth_trace is not None:
            self.ctx.auth_trace.debug(
                f"{format_client(self.state.client)} AUTH as {who}: {outcome}"
            )

    # ---- MAIL / RCPT ----------------------------------------------------------------

    async def smtp_MAIL(self, params: str) -> Reply:
        """MAIL FROM: each check in turn; the first that fails gives the reply."""
        if params[:5].lower() != "from:":
            return Reply(500, "5.5.2 Unknown command format")
        if self.mode.is_submission and not self.state.authenticated:
            return Reply(550, "5.7.9 Mail to submission port must be authenticated")
        token = first_token(params[5:])
        if token is None:
            return Reply(500, "5.5.4 Malformed command: missing address")
        self.txn = Envelope()
        if token == "<>":
            self.txn.mail_from = ""
            return Reply(250, "2.1.5 Sender OK")
        try:
            addr = parse_address(token)
        except AddressError as e:
            return Reply(501, f"5.1.7 Sender address malformed: {e}")
        if "@" not in addr:
            return Reply(501, "5.1.8 Sender address must contain a domain")
        if len(addr.encode("utf-8", "surrogateescape")) > MAX_ADDR_LEN:
            return Reply(501, "5.1.7 Sender address too long")
        local, _, raw_domain = addr.rpartition("@")
        spf_result: spfcheck.SPFResult | None = None
        if not self.state.authenticated and self.state.client_ip:
            spf_result = await spfcheck.check(self.state.client_ip, addr, raw_domain)
            self.ctx.counters.inc(metrics.SMTP_IN_SPF_RESULTS, spf_result.result)
            self.trace.debug(f"SPF {spf_result.result}: {spf_result.reason}")
            if spf_result.result == "fail":
                self.ctx.maillog.rejected(
                    self.state.client, addr, [], f"failed SPF: {spf_result.reason}"
                )
                return Reply(550, f"5.7.23 SPF check failed: {spf_result.reason}")
        if spf_result is None or spf_result.result != "pass":
            self.ctx.counters.inc(metrics.SMTP_IN_SECURITY_CHECKS, "skip")
        else:
            level = SecLevel.TLS_CLIENT if self.state.tls else SecLevel.PLAIN
            # On the loop, not in a thread: DomainInfoStore is not thread-safe,
            # and the call only writes (one small fsync) when a domain's level
            # rises, which is rare; the courier calls it on the loop as well.
            ok = self.ctx.domaininfo.incoming_ok(raw_domain, level)
            self.ctx.counters.inc(metrics.SMTP_IN_SECURITY_CHECKS, "pass" if ok else "fail")
            if not ok:
                self.ctx.maillog.rejected(
                    self.state.client, addr, [], "security level check failed"
                )
                return Reply(550, "5.7.3 Security level check failed")
        try:
            domain = normalize_domain(raw_domain)
        except NormalizationError as e:
            self.ctx.maillog.rejected(self.state.client, addr, [], f"malformed address: {e}")
            return Reply(501, "5.1.8 Malformed sender domain (IDNA conversion failed)")
        if self.state.authenticated and (refused := await self._check_sender(f"{local}@{domain}")):
            return refused
        self.txn.mail_from = f"{local}@{domain}"
        self.txn.spf = spf_result
        return Reply(250, "2.1.5 Sender OK")

    async def _check_sender(self, sender: str) -> Reply | None:
        """The refusal of an authenticated user's sender under auth_sender_policy, if any."""
        policy = self.ctx.config.auth_sender_policy
        who = self.state.auth_identity
        try:
            allowed = await senderpolicy.may_send_as(
                policy,
                sender,
                self.state.auth_user,
                self.state.auth_domain,
                self.ctx.domains().resolver,
            )
        except senderpolicy.SenderPolicyError as e:
            self.ctx.maillog.rejected(self.state.client, sender, [], str(e))
            return Reply(451, "4.4.3 Temporary error checking the sender address")
        if allowed:
            return None
        self.ctx.maillog.rejected(
            self.state.client, sender, [], f"{who} may not send as this address ({policy} policy)"
        )
        return Reply(553, f"5.7.1 {who} may not send as this address")

    async def smtp_RCPT(self, params: str) -> Reply:
        """RCPT TO: each check in turn; the first that fails gives the reply."""
        if params[:3].lower() != "to:":
            return Reply(500, "5.5.2 Unknown command format")
        if self.txn.mail_from is None:
            return Reply(503, "5.5.1 Sender not yet given")
        token = first_token(params[3:])
        if token is None:
            return Reply(500, "5.5.4 Malformed command: missing address")
        if len(self.txn.rcpts) >= MAX_RCPTS:
            return Reply(452, "4.5.3 Too many recipients")
        try:
            addr = parse_address(token)
        except AddressError as e:
            return Reply(501, f"5.1.3 Malformed destination address: {e}")
        local, _, raw_domain = addr.rpartition("@")
        try:
            domain = normalize_domain(raw_domain)
        except NormalizationError:
            return Reply(501, "5.1.2 Malformed destination domain (IDNA conversion failed)")
        converted = f"{local}@{domain}"
        if len(converted.encode("utf-8", "surrogateescape")) > MAX_ADDR_LEN:
            return Reply(501, "5.1.3 Destination address too long")
        sender = self.txn.mail_from or "<>"
        domains = self.ctx.domains()
        if domain not in domains.local:
            if not self.state.authenticated:
                self.ctx.maillog.rejected(
                    self.state.client, sender, [converted], "relay not allowed"
                )
                return Reply(503, "5.7.1 Relay not allowed")
            self.txn.rcpts.append(converted)
            return Reply(250, "2.1.5 Recipient OK")
        try:
            stored = f"{normalize_user(local)}@{domain}"
        except NormalizationError as e:
            self.ctx.maillog.rejected(self.state.client, sender, [addr], f"invalid address: {e}")
            return Reply(550, "5.1.3 Destination address is invalid")
        try:
            exists = await domains.resolver.exists(stored)
        except AliasError as e:
            self.ctx.maillog.rejected(
                self.state.client, sender, [stored], f"error checking if user exists: {e}"
            )
            return Reply(451, "4.4.3 Temporary error checking address")
        if not exists:
            self.ctx.maillog.rejected(
                self.state.client, sender, [stored], "local user does not exist"
            )
            return Reply(550, "5.1.1 Destination address is unknown (user does not exist)")
        self.txn.rcpts.append(stored)
        return Reply(250, "2.1.5 Recipient OK")

    # ---- DATA -----------------------------------------------------------------------------

    async def smtp_DATA(self, params: str) -> Reply | object:
        """DATA: read, check, add headers, run the hook, queue."""
        if not self.state.helo_domain:
            return Reply(503, "5.5.1 Say HELO or EHLO first")
        if self.txn.mail_from is None:
            return Reply(503, "5.5.1 Sender not yet given")
        if not self.txn.rcpts:
            return Reply(503, "5.5.1 Need an address to send to")
        await self._send(354, "Start mail input; end with <CRLF>.<CRLF>")
        self.ctx.counters.inc(metrics.SMTP_IN_TLS, "tls" if self.state.tls else "plain")

        def before_read() -> None:
            # RFC 5321's server timeout between reads, within the connection's lifetime.
            left = self.ctx.lifetime - (time.monotonic() - self.started)
            self.set_deadline(max(min(self.ctx.data_idle_timeout, left), 1.0))

        incoming = _Incoming(Spool(self.ctx.queue.store.directory))
        try:
            result = await read_data(
                self.reader, self.ctx.max_data_size, incoming.write, before_read=before_read
            )
        except BadLineEnding as e:
            incoming.spool.discard()
            self._log_error(f"DATA closed the connection: {e}")
            await self._send(521, "5.5.2 Error reading DATA: invalid line ending")
            return _CLOSE
        except DataReadError as e:
            incoming.spool.discard()
            return Reply(554, f"5.4.0 Error reading DATA: {e}")
        except BaseException:
            incoming.spool.discard()
            raise
        finally:
            self.set_deadline(COMMAND_TIMEOUT)
        if result.too_big:
            incoming.spool.discard()
            return Reply(552, "5.3.4 Message too big")
        # The client vanishing now cancels this handler; the message must still
        # be queued (or rejected) as a whole, never half-done, so processing runs
        # as its own task that only a finished queue write ends.
        work = asyncio.ensure_future(self._process(incoming))
        self.ctx.sessions.keep(work)
        reply = await asyncio.shield(work)
        if reply.code == 250:
            # Only now, with the reply about to be written in this same step:
            # graceful shutdown closes a session as soon as it leaves its
            # transaction, and must not do so before the client hears 250.
            self.txn = Envelope()
        return reply

    def _reject(self, reason: str) -> None:
        self.ctx.maillog.rejected(
            self.state.client, self.txn.mail_from or "<>", self.txn.rcpts, reason
        )

    async def _process(self, incoming: _Incoming) -> Reply:
        """Check, sign or verify, add headers, run the hook, queue; the spool is gone after."""
        try:
            return await self._check_and_queue(incoming)
        finally:
            incoming.spool.discard()

    async def _check_and_queue(self, incoming: _Incoming) -> Reply:
        try:
            received = incoming.finish()
        except headers.HeaderError as e:
            text = f"5.6.0 Error parsing message: {e}"
            self._reject(text)
            return Reply(554, text)
        except OSError as e:
            return Reply(451, f"4.3.0 Failed to queue message: spooling it: {e.strerror or e}")
        if received > self.ctx.max_received_headers:
            self.ctx.counters.inc(metrics.SMTP_IN_LOOPS)
            text = f"5.4.6 Loop detected ({self.ctx.max_received_headers} hops)"
            self._reject(text)
            return Reply(554, text)

        sender = self.txn.mail_from or ""
        data = incoming.spool.body()
        # The header section is small and read whole; the body is only ever
        # read piece by piece (hashed for DKIM, copied into the queue).
        if data.in_memory():
            section = data.read(incoming.header_end)
        else:
            section = await asyncio.to_thread(data.read, incoming.header_end)
        body = data.slice(incoming.body_start)
        signatures = b""
        dkim_lines: list[str] = []
        if self.state.authenticated:
            keys = self.ctx.domains().dkim.for_domain(sender.rpartition("@")[2])
            try:
                signatures = await dkimstep.sign(section, body, keys, self.ctx.counters)
            except dkimstep.SigningFailed:
                return Reply(451, "4.3.0 DKIM signing failed")
            if signatures:
                self.trace.debug(f"DKIM: signed with {len(keys)} key(s)")
        else:
            dkim_lines = await dkimstep.verify(section, body, self.ctx.counters)
            self.trace.debug("DKIM: " + ("; ".join(dkim_lines) or "no signature"))
        # Filters downstream trust our authserv-id: a message must not bring one.
        kept = authres.remove_forged_fields(section, (self.hostname_now, self.ctx.hostname))
        if kept is not section:
            data = data.slice(incoming.header_end).prepend(kept)
        added = [
            headers.format_header(
                "Received",
                headers.received(
                    helo_domain=self.state.helo_domain,
                    client_ip=self.state.client_ip or None,
                    hostname=self.hostname_now,
                    esmtp=self.state.esmtp,
                    tls=self.state.tls,
                    authenticated=self.state.authenticated,
                    mode_name=self.mode.display,
                    sender=sender,
                ),
            )
        ]
        if not self.state.authenticated:
            spf = (self.txn.spf.result, self.txn.spf.reason) if self.txn.spf is not None else None
            if spf is not None:
                added.append(headers.format_header("Received-SPF", headers.received_spf(*spf)))
            results = authres.value(self.hostname_now, spf, dkim_lines)
            if results is not None:
                added.append(headers.format_header(authres.NAME, results))
        added.reverse()
        message = data.prepend(b"".join(added) + signatures)

        outcome = await self._run_hook(message)
        self.ctx.counters.inc(metrics.SMTP_IN_HOOK_RESULTS, f"post-data:{outcome.result}")
        if outcome.result != "skip":
            self.trace.debug(f"post-data hook: {outcome.result}")
        if outcome.reply_code:
            self._reject(outcome.reply_text)
            return Reply(outcome.reply_code, outcome.reply_text)
        message = message.prepend(outcome.headers)

        try:
            item_id = await self.ctx.queue.put(
                sender, list(self.txn.rcpts), message, origin=self.trace
            )
        except QueueError as e:
            return Reply(451, f"4.3.0 Failed to queue message: {e}")
        self.ctx.maillog.queued(self.state.client, sender or "<>", self.txn.rcpts, item_id)
        return Reply(250, f"2.0.0 Queued as {item_id}")

    async def _run_hook(self, message: Body) -> posthook.HookOutcome:
        path = self.ctx.config_dir.post_data_hook
        try:
            # A plain stat on every message (the hook may appear at any time);
            # Path.exists costs several times more per call.
            os.stat(str(path))
        except OSError:
            return posthook.HookOutcome()
        sender = self.txn.mail_from or ""
        sender_domain = sender.rpartition("@")[2]
        env = posthook.hook_env(
            config_dir=self.ctx.config_dir.root,
            remote_addr=format_client(self.state.client),
            ehlo_domain=self.state.helo_domain,
            mail_from=sender,
            rcpt_to=self.txn.rcpts,
            auth_as=self.state.auth_identity if self.state.authenticated else "",
            on_tls=self.state.tls is not None,
            from_local_domain=not sender_domain or sender_domain in self.ctx.domains().local,
            spf_pass=self.txn.spf is not None and self.txn.spf.result == "pass",
        )
        return await posthook.run_post_data(path, message, env, self.ctx.config_dir.root)


class _Incoming:
    """A message being received: its header section checked and its bytes spooled as they come.

    A bad header section is only reported at the end of DATA (the client is
    still sending); from then on nothing more is kept. So is a spool that
    cannot be written (a full disk): the reply is then a temporary failure.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._scanner = headers.HeaderScanner()
        self._error: headers.HeaderError | OSError | None = None

    async def write(self, data: bytes) -> None:
        if self._error is not None:
            return
        try:
            self._scanner.feed(data)
            await self.spool.write(data)
        except (headers.HeaderError, OSError) as e:
            self._error = e
            self.spool.discard()

    def finish(self) -> int:
        """The number of Received fields; raises what went wrong while reading."""
        if self._error is not None:
            raise self._error
        return self._scanner.finish()

    @property
    def header_end(self) -> int:
        """Where the message's header section ends (after ``finish``)."""
        return self._scanner.header_end

    @property
    def body_start(self) -> int:
        """Where the message's body starts (after ``finish``)."""
        return self._scanner.body_start


class _LineTooLong(Exception):
    """A command or AUTH line longer than 1000 octets."""

    def __str__(self) -> str:
        return "line too long"


# Returned by a handler that has already replied and wants the session closed.
_CLOSE = object()
