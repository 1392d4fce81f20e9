"""The monitoring HTTP server (aiohttp) in the daemon's event loop.

Plain HTTP without authentication, meant for a loopback address. Requests
are bounded so a slow or hostile client costs little and never holds up
mail: request line and headers of a few KiB, no request body worth the name,
a connection must complete each request within a few seconds,
and only so many are open at once (``Limits``). Pages that grow with the
queue or the number of tasks are sent in pieces, letting the loop serve
SMTP in between.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import jinja2
from aiohttp import web
from aiohttp.web_runner import BaseSite
from markupsafe import Markup

from chasquid.confdir.config import render as render_config
from chasquid.daemon.monitoring import exposition, queuepages, stacks, tracepages
from chasquid.daemon.monitoring.humane import day_clock, go_duration_rounded
from chasquid.daemon.monitoring.sources import Sources
from chasquid.logtext import escape

log = logging.getLogger("chasquid.monitoring")

#: Largest request body read (only POST /exit takes a body, and ignores it).
MAX_BODY = 1024
#: How long shutdown waits for requests in progress.
SHUTDOWN_GRACE = 2.0


@dataclass(frozen=True)
class Limits:
    """What one client may cost the server."""

    #: Longest request line and header line, and most header lines, accepted.
    max_line: int = 4096
    max_headers: int = 32
    #: Seconds a connection has to send a whole request (also how long an idle one is kept).
    request_deadline: float = 10.0
    #: Open connections at once; more are answered 503 and closed.
    max_connections: int = 32


DEFAULT_LIMITS = Limits()


NOT_FOUND = "404 page not found\n"
EXIT_METHOD = "Use POST method for exiting\n"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback_address(address: str) -> bool:
    """Whether a ``host:port`` monitoring address only listens on loopback."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # empty (every address) or a name


class PageState:
    """What the handlers share besides the sources: templates, the registry, the start time."""

    def __init__(self, sources: Sources, started: datetime) -> None:
        self.started = started
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("chasquid.daemon.monitoring", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            finalize=_finalize,
        )
        self.registry = exposition.metrics_registry(exposition.CountersCollector(sources))

    def render(self, template: str, status: int = 200, **context: Any) -> web.Response:
        """An HTML response from a template."""
        body = self.templates.get_template(template).render(**context)
        return web.Response(status=status, text=body, content_type="text/html", charset="utf-8")


_SOURCES = web.AppKey("sources", Sources)
_STATE = web.AppKey("state", PageState)


def _finalize(value: Any) -> Any:
    # Every value a template prints passes here before HTML escaping: text from
    # SMTP clients may hold undecodable bytes (lone surrogates), control or bidi
    # characters; they are shown escaped as in the logs.
    if isinstance(value, str) and not isinstance(value, Markup):
        return escape(value)
    return value


def _text(body: str, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=body.encode("utf-8", "backslashreplace"),
        content_type="text/plain",
        charset="utf-8",
    )


async def _stream(
    request: web.Request, pieces: Iterable[str], content_type: str
) -> web.StreamResponse:
    """Send a long text in pieces, yielding to the loop between them."""
    resp = web.StreamResponse(headers={"Content-Type": f"{content_type}; charset=utf-8"})
    await resp.prepare(request)
    batch: list[str] = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece)
        if size >= 64 * 1024:
            await resp.write("".join(batch).encode("utf-8", "backslashreplace"))
            batch, size = [], 0
            await asyncio.sleep(0)
    await resp.write("".join(batch).encode("utf-8", "backslashreplace"))
    await resp.write_eof()
    return resp


@web.middleware
async def _plain_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """404 and 405 with chasquid's plain-text bodies."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return _text(NOT_FOUND, 404)
    except web.HTTPMethodNotAllowed as e:
        resp = _text("405 method not allowed\n", 405)
        resp.headers["Allow"] = ", ".join(sorted(e.allowed_methods))
        return resp


def _sources(request: web.Request) -> Sources:
    return request.app[_SOURCES]


def _state(request: web.Request) -> PageState:
    return request.app[_STATE]


def _base_context(request: web.Request) -> dict[str, Any]:
    sources = _sources(request)
    return {"hostname": sources.config.hostname, "os_hostname": sources.os_hostname}


async def index(request: web.Request) -> web.Response:
    """``/``: who and what this daemon is, and the way to every other page."""
    sources, state = _sources(request), _state(request)
    queue = sources.queue()
    items = list(queue.items()) if queue is not None else None
    families = []
    for fam in sources.tracer.families():
        families.append(
            {
                "name": fam.name,
                "href": Markup("/debug/traces") + tracepages.href(fam=fam.name, b=0, all="true"),
                "errors_href": Markup("/debug/traces") + tracepages.href(fam=fam.name, b=-2),
                "finished": fam.histogram.count,
                "active": len(fam.active),
                "errors": len(fam.errors),
            }
        )
    uptime = time.time() - state.started.timestamp()
    return state.render(
        "index.html",
        **_base_context(request),
        version=sources.build.version,
        source_date=sources.build.source_date_text,
        python=sys.version.split()[0],
        started=day_clock(state.started),
        uptime=go_duration_rounded(uptime, 1),
        queue_length=len(items) if items is not None else None,
        queue_failing=queuepages.failing_count(items) if items is not None else 0,
        families=families,
    )


def wants_text(request: web.Request) -> bool:
    """``?format=text``/``html`` decides; otherwise HTML only for clients that accept it."""
    fmt = request.query.get("format")
    if fmt in ("text", "html"):
        return fmt == "text"
    return "text/html" not in request.headers.get("Accept", "")


async def queue(request: web.Request) -> web.StreamResponse:
    """``/debug/queue``: every item, as text for tools or as a page for people."""
    sources, state = _sources(request), _state(request)
    source = sources.queue()
    if source is None:
        return _text(NOT_FOUND, 404)
    now = queuepages.utc_now()
    if wants_text(request):
        items = queuepages.ordered(list(source.items()))
        return await _stream(request, queuepages.text_dump(items, now), "text/plain")
    context = queuepages.html_context(source, sources.tracer, now)
    return state.render("queue.html", **_base_context(request), **context)


async def traces(request: web.Request) -> web.Response:
    """``/debug/traces``: families, bucket views, latency histograms and single traces."""
    sources, state = _sources(request), _state(request)
    context = tracepages.traces_page(sources.tracer, request.query)
    status = context.pop("status")
    return state.render("traces.html", status=status, **_base_context(request), **context)


async def debug_vars(request: web.Request) -> web.Response:
    """``/debug/vars``: every exported variable as JSON."""
    sources = _sources(request)
    variables = exposition.variables(sources, exposition.memstats(len(asyncio.all_tasks())))
    return web.Response(
        body=exposition.render_vars(variables), content_type="application/json", charset="utf-8"
    )


async def metrics(request: web.Request) -> web.Response:
    """``/metrics``: OpenMetrics for Prometheus, the classic text format for other clients."""
    body, content_type = exposition.render_metrics(
        _state(request).registry, request.headers.get("Accept", "")
    )
    return web.Response(body=body, headers={"Content-Type": content_type})


async def flags(request: web.Request) -> web.Response:
    """``/debug/flags``: flags given on the command line, an empty line, then the others."""
    all_flags = _sources(request).flags
    given = sorted((f for f in all_flags if f.given), key=lambda f: f.name)
    others = sorted((f for f in all_flags if not f.given), key=lambda f: f.name)
    lines = (
        [f"-{f.name}={f.value}" for f in given] + [""] + [f"-{f.name}={f.value}" for f in others]
    )
    return _text("\n".join(lines) + "\n")


async def config(request: web.Request) -> web.Response:
    """``/debug/config``: the configuration in force, in print-config's canonical form."""
    return _text(render_config(_sources(request).config).removesuffix("\n"))


async def pprof_redirect(request: web.Request) -> web.Response:
    """``/debug/pprof`` lives at ``/debug/pprof/``."""
    raise web.HTTPMovedPermanently("/debug/pprof/")


async def pprof_index(request: web.Request) -> web.Response:
    """``/debug/pprof/``: the dumps available."""
    return _state(request).render("pprof.html", **_base_context(request))


async def cmdline(request: web.Request) -> web.Response:
    """``/debug/pprof/cmdline``: argv joined by NUL bytes."""
    return _text("\x00".join(_sources(request).build.argv))


async def goroutine(request: web.Request) -> web.StreamResponse:
    """``/debug/pprof/goroutine``: every task's and thread's stack, as text."""
    return await _stream(request, stacks.dump(asyncio.get_running_loop()), "text/plain")


def _trusted_host(host: str, sources: Sources) -> bool:
    """Whether a Host header names this machine directly (not a name an attacker controls).

    A page on a hostile site can re-point its own name at 127.0.0.1 (DNS
    rebinding), so an Origin equal to the Host header is not enough.
    """
    name = urlsplit("//" + host).hostname or ""
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    names = {"localhost", sources.os_hostname.lower(), sources.config.hostname.lower()}
    return name.lower() in names


def same_site(request: web.Request, sources: Sources) -> bool:
    """Whether a request comes from our own pages or a tool, not from another site."""
    host = request.headers.get("Host", "")
    if not _trusted_host(host, sources):
        return False
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    for header in ("Origin", "Referer"):
        value = request.headers.get(header)
        if value is None:
            continue
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
            return False
    return True


async def exit_handler(request: web.Request) -> web.StreamResponse:
    """``POST /exit``: answer, then shut the daemon down gracefully."""
    if request.method != "POST":
        resp = _text(EXIT_METHOD, 405)
        resp.headers["Allow"] = "POST"
        return resp
    sources = _sources(request)
    if not same_site(request, sources):
        log.warning(
            "Refused POST /exit from %s: Host %r, Origin %r, Referer %r",
            request.remote,
            request.headers.get("Host"),
            request.headers.get("Origin"),
            request.headers.get("Referer"),
        )
        return _text("403 refusing /exit: the request comes from another site\n", 403)
    log.info("Exit requested over HTTP by %s", request.remote)
    resp = _text("OK exiting")
    await resp.prepare(request)
    await resp.write_eof()
    sources.request_exit()
    return resp


def make_app(sources: Sources, started: datetime) -> web.Application:
    """The aiohttp application with every page."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_plain_errors])
    app[_SOURCES] = sources
    app[_STATE] = PageState(sources, started)
    r = app.router
    r.add_get("/", index)
    r.add_get("/debug/queue", queue)
    r.add_get("/debug/traces", traces)
    r.add_get("/debug/vars", debug_vars)
    r.add_get("/metrics", metrics)
    r.add_get("/debug/flags", flags)
    r.add_get("/debug/config", config)
    r.add_get("/debug/pprof", pprof_redirect)
    r.add_get("/debug/pprof/", pprof_index)
    r.add_get("/debug/pprof/cmdline", cmdline)
    r.add_get("/debug/pprof/goroutine", goroutine)
    r.add_route("*", "/exit", exit_handler)
    return app


class _Busy(asyncio.Protocol):
    """Answers a connection beyond the limit with 503 and closes it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 29\r\nConnection: close\r\n\r\ntoo many monitoring requests\n"
        )
        transport.close()


class _LimitedSite(BaseSite):
    """A site on an already-bound socket that serves at most ``max_connections`` at once."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, max_connections: int) -> None:
        super().__init__(runner, backlog=max_connections)
        self._sock = sock
        self._max_connections = max_connections

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.Protocol:
            if len(server.connections) >= self._max_connections:
                return _Busy()
            return server()

        self._server = await asyncio.get_running_loop().create_server(
            protocol, sock=self._sock, backlog=self._backlog
        )


class MonitoringServer:
    """The running server: ``start`` on a bound socket, ``close`` at shutdown."""

    def __init__(
        self, sources: Sources, started: datetime | None = None, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.sources = sources
        self.started = started or datetime.now().astimezone()
        self.limits = limits
        self._runner: web.AppRunner | None = None

    async def start(self, sock: socket.socket) -> None:
        """Serve on a listening socket the daemon bound."""
        runner = web.AppRunner(
            make_app(self.sources, self.started),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=SHUTDOWN_GRACE,
            keepalive_timeout=self.limits.request_deadline,
            max_line_size=self.limits.max_line,
            max_field_size=self.limits.max_line,
            max_headers=self.limits.max_headers,
        )
        await runner.setup()
        await _LimitedSite(runner, sock, self.limits.max_connections).start()
        self._runner = runner

    async def close(self) -> None:
        """Stop listening and end open connections (requests in progress get a moment)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
