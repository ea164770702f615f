"""A small HTTP/1.1 server on asyncio streams, for the daemon's own endpoints.

The control socket and the metrics endpoint answer a handful of fixed routes
with small bodies. aiohttp.web (with the aiohttp client, yarl, multidict and
the stdlib they pull in) cost the idle daemon about 10 MiB of RSS for that, so
the daemon serves them here and imports aiohttp only to send alerts.

One request per connection (``Connection: close``): no keep-alive state to
manage, and each client (the CLI, a Prometheus scrape) opens one anyway. The
request head is bounded (``MAX_HEAD``), the body by the server's
``max_body``, and reading either must finish within ``READ_TIMEOUT``, so a
slow or hostile peer holds one connection for a bounded time only. The body
is read only when a handler asks for it, after any check on the peer.
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

import structlog

log = structlog.get_logger("kfwguard.http")

MAX_HEAD = 16 * 1024
READ_TIMEOUT = 30.0
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
    _max_body: int = 0
    _body: bytes | None = None

    async def read(self) -> bytes:
        """The body (Content-Length bytes). HTTPError 413 past the server's limit."""
        if self._body is not None:
            return self._body
        if "transfer-encoding" in self.headers:
            raise HTTPError(501, "chunked request bodies are not supported")
        raw = self.headers.get("content-length", "0").strip()
        if not raw.isdigit():
            raise HTTPError(400, "invalid Content-Length")
        size = int(raw)
        if size > self._max_body:
            raise HTTPError(413, f"the body is limited to {self._max_body} bytes")
        body = b""
        if size and self._reader is not None:
            try:
                body = await asyncio.wait_for(self._reader.readexactly(size), READ_TIMEOUT)
            except (asyncio.IncompleteReadError, TimeoutError):
                raise HTTPError(400, "incomplete body") from None
        self._body = body
        return body

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

    def __init__(self, handler: Handler, *, max_body: int = 64 * 1024) -> None:
        self.handler = handler
        self.max_body = max_body
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()

    async def start_unix(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_HEAD)

    async def start_tcp(self, host: str, port: int) -> None:
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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            version = "HTTP/1.1"
            head_only = False
            try:
                request = await self._read_head(reader, writer)
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
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
                await writer.wait_closed()
            if task is not None:
                self._conns.discard(task)

    async def _read_head(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> Request:
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except asyncio.LimitOverrunError:
            raise HTTPError(431, "request head too large") from None
        lines = raw[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1") \
                or not parts[1].startswith("/") or not parts[0].isalpha():
            raise HTTPError(400, "malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HTTPError(400, "malformed header")
            headers[name.lower()] = value.strip()
        raw_path, _, query = target.partition("?")
        return Request(
            method=method.upper(), path=unquote(raw_path), raw_path=raw_path,
            query=dict(parse_qsl(query)), version=version, headers=headers,
            transport=writer.transport, _reader=reader, _max_body=self.max_body)


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
