"""A small HTTP/1.1 server on asyncio streams, for the daemon's own endpoints.

The control socket and the metrics endpoint answer a handful of fixed routes
with small bodies. aiohttp.web (with the aiohttp client, yarl, multidict and
the stdlib they pull in) cost the idle daemon about 10 MiB of RSS for that, so
the daemon serves them here and imports aiohttp only to send alerts.

Requests are parsed by h11 (the HTTP/1.1 state machine uvicorn uses), not by
code of ours: the root-only control socket must not rest on a hand-written
parser. h11 refuses what RFC 9112 says a server must refuse (a bad request
line or header, conflicting Content-Length, an HTTP/1.1 request without Host,
a bare CR) with the status it suggests; on top of it, a request carrying both
Content-Length and Transfer-Encoding (the request-smuggling shape) is refused
with 400 before any handler runs. h11 reads a bare LF as a line end, as the
RFC allows, so a header after one is seen, never hidden in a value.

One request per connection (``Connection: close``): no keep-alive state to
manage, and each client (the CLI, a Prometheus scrape) opens one anyway; bytes
after the first request are never read. The request head is bounded
(``MAX_HEAD``) and must arrive whole within ``HEAD_TIMEOUT`` (however slowly
it trickles in), the body by the server's ``max_body`` and ``READ_TIMEOUT``,
so a slow or hostile peer holds one connection for a bounded time only. The
body is read only when a handler asks for it, after any check on the peer.

Descriptors: a listener holds at most ``max_connections`` connections. When
full, the oldest connection that has not yet sent its request head is
dropped for the new one (a real client sends its head at once, an idle one
never does), or, if every connection is busy, the new one is closed at once.
So idle connections from any local user (the metrics port is open to all)
cannot take the daemon's descriptors, and a scrape still gets through.
``accept()`` errors from the event loop (a process out of descriptors) are
logged at most once per ``ACCEPT_LOG_EVERY`` seconds, with a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote

import h11
import structlog

log = structlog.get_logger("kfwguard.http")

MAX_HEAD = 16 * 1024
READ_CHUNK = 4096
READ_TIMEOUT = 30.0
# A client that connected must send its request head within this.
HEAD_TIMEOUT = 5.0
# Connections held at once per listener (the CLI and Prometheus need a few).
MAX_CONNECTIONS = 64
ACCEPT_LOG_EVERY = 60.0
JSON_TYPE = "application/json; charset=utf-8"


class HTTPError(Exception):
    """The request cannot be served; answered with ``status`` and a JSON error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def json_response(data: object, status: int = 200) -> Response:
    return Response(status, json.dumps(data).encode())


def text_response(text: str, status: int = 200) -> Response:
    return Response(status, text.encode(), "text/plain; charset=utf-8")


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status=status)


@dataclass(slots=True)
class Request:
    method: str
    path: str  # percent-decoded, without the query
    raw_path: str  # as sent, without the query
    query: dict[str, str]
    version: str  # "HTTP/1.0" or "HTTP/1.1"
    headers: dict[str, str]  # names in lower case
    transport: asyncio.BaseTransport
    match_info: dict[str, str] = field(default_factory=dict)
    _reader: asyncio.StreamReader | None = None
    _conn: h11.Connection | None = None
    _max_body: int = 0
    _body: bytes | None = None

    async def read(self) -> bytes:
        """The body, as h11 frames it (Content-Length or chunked). HTTPError 413
        past the server's limit: at once for a declared length, else when the
        decoded chunks pass it."""
        if self._body is not None:
            return self._body
        too_large = HTTPError(413, f"the body is limited to {self._max_body} bytes")
        # h11 has checked the value: digits only, one value.
        if int(self.headers.get("content-length", "0")) > self._max_body:
            raise too_large
        parts: list[bytes] = []
        size = 0
        if self._conn is not None and self._reader is not None:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    while not isinstance(event := await _receive(self._conn, self._reader),
                                         h11.EndOfMessage):
                        if isinstance(event, h11.Data):
                            size += len(event.data)
                            if size > self._max_body:
                                raise too_large
                            parts.append(bytes(event.data))
            except (asyncio.IncompleteReadError, TimeoutError):
                raise HTTPError(400, "incomplete body") from None
        self._body = b"".join(parts)
        return self._body

    async def json(self) -> Any:
        """The body parsed as JSON; ValueError if it is not JSON."""
        return json.loads(await self.read())


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    """``method`` on ``path``; a path ending in ``{name}`` matches any non-empty
    last segment (slashes included, once percent-decoded) as ``match_info[name]``."""

    method: str
    path: str
    handler: Handler


class Router:
    """Finds the handler of a request: 404 for an unknown path, 405 for a known
    path with another method. GET routes answer HEAD too."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    def _match(self, route: Route, request: Request) -> dict[str, str] | None:
        if route.path.endswith("}"):
            prefix, _, name = route.path.rpartition("{")
            if not request.raw_path.startswith(prefix):
                return None
            value = unquote(request.raw_path[len(prefix):])
            return {name[:-1]: value} if value else None
        return {} if request.path == route.path else None

    async def __call__(self, request: Request) -> Response:
        allowed: list[str] = []
        for route in self.routes:
            info = self._match(route, request)
            if info is None:
                continue
            method = "GET" if request.method == "HEAD" else request.method
            if method != route.method:
                allowed.append(route.method)
                continue
            request.match_info = info
            return await route.handler(request)
        if allowed:
            resp = error_response(405, f"method {request.method} not allowed")
            resp.headers["Allow"] = ", ".join(sorted(set(allowed)))
            return resp
        return error_response(404, f"no such resource: {request.path}")


class HTTPServer:
    """Serves ``handler`` on a listening socket until close()."""

    def __init__(self, handler: Handler, *, max_body: int = 64 * 1024,
                 max_connections: int = MAX_CONNECTIONS,
                 head_timeout: float = HEAD_TIMEOUT) -> None:
        self.handler = handler
        self.max_body = max_body
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        # Connections still waiting for their request head, oldest first.
        self._waiting: dict[asyncio.StreamWriter, None] = {}
        # Connections closed for others: idle ones dropped, new ones refused.
        self.dropped_idle = 0
        self.refused = 0

    async def start_unix(self, sock: socket.socket) -> None:
        _quiet_accept_errors(asyncio.get_running_loop())
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_HEAD)

    async def start_tcp(self, host: str, port: int) -> None:
        _quiet_accept_errors(asyncio.get_running_loop())
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._server.sockets) if self._server is not None else []

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._conns):
            task.cancel()
        for task in list(self._conns):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await server.wait_closed()

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        """Room for one more connection: drop the oldest idle one if full; False
        (the new one is closed) when every connection is busy."""
        if len(self._conns) < self.max_connections:
            return True
        if self._waiting:
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            oldest.transport.abort()  # its read ends at once; its task cleans up
            self.dropped_idle += 1
            return True
        self.refused += 1
        writer.transport.abort()
        return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._admit(writer):
            return
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        self._waiting[writer] = None
        try:
            version = "HTTP/1.1"
            head_only = False
            try:
                request = await self._read_head(reader, writer)
                self._waiting.pop(writer, None)
                version = request.version
                head_only = request.method == "HEAD"
                response = await self.handler(request)
            except HTTPError as exc:
                response = error_response(exc.status, exc.message)
            except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                return  # the peer left or stalled: nobody to answer
            except Exception as exc:  # one bad request must not take the server down
                log.exception("http_error")
                response = error_response(500, f"internal error: {type(exc).__name__}")
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(_encode(response, version, head_only))
                await writer.drain()
        finally:
            self._waiting.pop(writer, None)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
                await writer.wait_closed()
            if task is not None:
                self._conns.discard(task)

    async def _read_head(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> Request:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        # One deadline for the whole head: trickling bytes does not extend it.
        async with asyncio.timeout(self.head_timeout):
            event = await _receive(conn, reader, budget=MAX_HEAD)
        if not isinstance(event, h11.Request):  # a fresh connection's first event
            raise HTTPError(400, "malformed request")
        if event.http_version not in (b"1.0", b"1.1"):
            raise HTTPError(505, "only HTTP/1.0 and HTTP/1.1 are served")
        headers: dict[str, str] = {}
        for name, value in event.headers:  # h11 gives names in lower case
            key, text = name.decode("ascii"), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if "content-length" in headers and "transfer-encoding" in headers:
            raise HTTPError(400, "both Content-Length and Transfer-Encoding")
        target = event.target.decode("ascii")  # h11 allows visible ASCII only
        if not target.startswith("/"):
            raise HTTPError(400, "the request target must be a path")
        raw_path, _, query = target.partition("?")
        return Request(
            method=event.method.decode("ascii").upper(), path=unquote(raw_path),
            raw_path=raw_path, query=dict(parse_qsl(query)),
            version="HTTP/" + event.http_version.decode("ascii"), headers=headers,
            transport=writer.transport, _reader=reader, _conn=conn,
            _max_body=self.max_body)


async def _receive(conn: h11.Connection, reader: asyncio.StreamReader,
                   budget: int | None = None) -> h11.Event:
    """h11's next event, reading as it needs, at most ``budget`` bytes (431 past
    it). What h11 refuses is an HTTPError with the status h11 suggests (400, 501
    for a transfer coding other than chunked); IncompleteReadError when the peer
    left first."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise HTTPError(exc.error_status_hint, f"malformed request: {exc}") from None
        if isinstance(event, h11.Event):
            return event
        if event is not h11.NEED_DATA:  # PAUSED: after a whole request, never asked
            raise HTTPError(400, "one request per connection")
        if budget is not None and budget <= 0:
            raise HTTPError(431, "request head too large")
        data = await reader.read(READ_CHUNK if budget is None else min(READ_CHUNK, budget))
        if not data:
            raise asyncio.IncompleteReadError(b"", None)
        if budget is not None:
            budget -= len(data)
        conn.receive_data(data)


def _encode(response: Response, version: str, head_only: bool) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Unknown"
    head = [f"{version} {response.status} {reason}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Connection: close"]
    head += [f"{k}: {v}" for k, v in response.headers.items()]
    out = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
    return out if head_only else out + response.body


def _quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log the event loop's "socket.accept() out of system resource" at most once
    per ACCEPT_LOG_EVERY seconds (with how many were folded), other errors as
    before: out of descriptors, every listener reports it on every retry."""
    previous = loop.get_exception_handler()
    if getattr(previous, "quiet_accept", False):
        return
    state = {"last": -ACCEPT_LOG_EVERY, "folded": 0}

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            now = lp.time()
            if now - state["last"] < ACCEPT_LOG_EVERY:
                state["folded"] += 1
                return
            log.error("http_accept_failed", error=str(context.get("exception")),
                      folded=state["folded"], every=ACCEPT_LOG_EVERY)
            state["last"], state["folded"] = now, 0
            return
        if previous is not None:
            previous(lp, context)
        else:
            lp.default_exception_handler(context)

    handler.quiet_accept = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)
