"""The one place that uses aiosmtpd's internals (and those of asyncio's StreamReader).

aiosmtpd's ``SMTP`` class is the protocol engine: the asyncio protocol, the
stream reader and writer, the idle timer and the collection of ``smtp_<VERB>``
methods. Its command loop is replaced, because nearly every rule of it differs
from chasquid's (the 1000-octet line limit and closing on longer lines,
verbatim parameters, three errors then 421, HTTP verbs, the connection
lifetime, the PROXY line); reception's session (chasquid.daemon.smtpsrv.session)
subclasses ``ProtocolAdapter`` and uses only the methods below.

The attributes reached here are not aiosmtpd's public API. pyproject.toml pins
the aiosmtpd releases this was tested with, and
tests/smtpsrv/test_aiosmtpd_adapter.py fails, naming the attribute, when a new
release moves one: change this module, and only this one, to follow.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.smtp import SMTP

#: The reader's buffer limit. Command lines are bounded separately (1000 octets)
#: and DATA is read in large chunks, which a small limit would throttle.
READ_LIMIT = 256 * 1024

#: A command method: the parameters after the verb, to the reply (or None).
CommandMethod = Callable[[str], Awaitable[Any]]


class _NoHandler:
    """aiosmtpd wants a handler object; every decision is made by the session."""


class ProtocolAdapter(SMTP):
    """aiosmtpd's protocol with chasquid's own command loop, reply buffering and TLS switch.

    Subclasses implement ``serve_connection()`` (the whole dialogue) and may
    override ``on_deadline()`` (the idle timer fired).
    """

    line_length_limit = READ_LIMIT

    def __init__(self, *, hostname: str, software: str, timeout: float) -> None:
        super().__init__(
            _NoHandler(),
            hostname=hostname,
            ident=software,
            data_size_limit=None,
            enable_SMTPUTF8=True,
            timeout=timeout,
        )
        self._replies: list[bytes] = []
        self._handshaking = False
        #: Set once the session is over (QUIT answered, or closing): a peer that
        #: then resets the connection is normal traffic, not an error.
        self.closing = False

    # ---- what subclasses provide ---------------------------------------------

    async def serve_connection(self) -> None:
        """The dialogue of one connection; the connection is closed when it returns."""
        raise NotImplementedError

    def on_deadline(self) -> None:
        """The idle timer fired: close the connection."""
        self.close_connection()

    # ---- aiosmtpd's hooks, routed to the above --------------------------------

    async def _handle_client(self) -> None:
        await self.serve_connection()

    def _timeout_cb(self) -> None:
        self.on_deadline()

    def eof_received(self) -> bool | None:
        """Let pending work (queueing) finish; the reader sees EOF.

        aiosmtpd's own eof_received cancels the command loop at once.
        """
        return asyncio.StreamReaderProtocol.eof_received(self)

    # ---- what the session uses ---------------------------------------------------

    @property
    def reader(self) -> asyncio.StreamReader:
        """The connection's input (after TLS, the decrypted input)."""
        reader: asyncio.StreamReader = self._reader
        return reader

    def set_deadline(self, seconds: float) -> None:
        """Restart the idle timer: on_deadline() runs unless I/O restarts it first."""
        self._reset_timeout(seconds)

    def command_method(self, verb: str) -> CommandMethod | None:
        """The ``smtp_<VERB>`` method of verb (upper case), if the session has one."""
        method: CommandMethod | None = self._smtp_methods.get(verb)
        return method

    def input_waiting(self) -> bool:
        """Whether a whole line from the client is already buffered (it is pipelining)."""
        return b"\n" in self._reader._buffer  # type: ignore[attr-defined]

    def discard_input(self) -> None:
        """Forget what the client sent and was not read yet (plaintext pipelined after
        STARTTLS must never be read as commands)."""
        self._reader._buffer.clear()  # type: ignore[attr-defined]

    async def write_reply(self, reply: bytes, *, may_defer: bool = False) -> None:
        """Send a reply (CRLF included); with may_defer, hold it while the client's next
        command is already here, so a pipelining client gets its replies in one segment."""
        self._replies.append(reply)
        if may_defer and self.input_waiting():
            return
        self._writer.write(b"".join(self._replies))
        self._replies.clear()
        await self._writer.drain()

    def last_words(self, reply: bytes) -> None:
        """A reply to send only as the connection closes (unless a TLS handshake owns it)."""
        if not self._handshaking:
            self._replies.append(reply)

    def close_connection(self) -> None:
        """Send what is held back, then close."""
        self.closing = True
        if self.transport is not None:
            if self._replies:
                self.transport.write(b"".join(self._replies))  # type: ignore[attr-defined]
                self._replies.clear()
            self.transport.close()

    async def start_tls(self, context: ssl.SSLContext, timeout: float) -> str | None:
        """Switch the connection to TLS; None on success, else the error text.

        asyncio closes the connection when the handshake fails, so no reply
        can follow: by then the client speaks TLS and plaintext would be noise.
        """
        self._handshaking = True
        try:
            await self._writer.start_tls(context, ssl_handshake_timeout=timeout)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError, EOFError) as e:
            return str(e) or type(e).__name__
        finally:
            self._handshaking = False
        # The writer moved to the TLS transport; aiosmtpd and the reader must too.
        self.transport = self._writer.transport
        self._reader._transport = self.transport  # type: ignore[attr-defined]
        return None
