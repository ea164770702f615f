"""kfwguard.operator.http, the small HTTP/1.1 server behind the control socket and
/metrics: routing, the HTTP version echoed, bounded heads and bodies, and one
request per connection."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import structlog

from kfwguard.operator.http import (
    MAX_HEAD,
    HTTPServer,
    Request,
    Response,
    Route,
    Router,
    json_response,
)


async def echo(request: Request) -> Response:
    return json_response({"method": request.method, "path": request.path,
                          "match": request.match_info, "query": request.query,
                          "body": await request.json() if request.method == "POST" else None})


async def boom(request: Request) -> Response:
    raise RuntimeError("bug")


@pytest.fixture
async def port() -> AsyncIterator[int]:
    router = Router([Route("GET", "/items", echo), Route("POST", "/items", echo),
                     Route("DELETE", "/items/{name}", echo), Route("GET", "/boom", boom)])
    server = HTTPServer(router, max_body=100)
    await server.start_tcp("127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        await server.close()


async def exchange(port: int, raw: bytes) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await reader.read()  # the server closes after one response
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return status, headers, body


class TestHTTPServer:
    async def test_routes_decode_path_and_query(self, port: int) -> None:
        """A {name} route takes the percent-decoded rest of the path, slashes included."""
        status, headers, body = await exchange(
            port, b"DELETE /items/10.0.0.0%2F8?jail=a%20b HTTP/1.1\r\nHost: x\r\n\r\n")
        assert "HTTP/1.1 200 OK" == status
        assert "close" == headers["connection"]
        assert headers["content-type"].startswith("application/json")
        assert (b'{"method": "DELETE", "path": "/items/10.0.0.0/8", "match": '
                b'{"name": "10.0.0.0/8"}, "query": {"jail": "a b"}, "body": null}') == body

    async def test_json_body(self, port: int) -> None:
        """A POST body of Content-Length bytes is read when the handler asks for it."""
        status, _, body = await exchange(
            port, b'POST /items HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n{"a": 1}')
        assert "HTTP/1.1 200 OK" == status
        assert b'"body": {"a": 1}' in body

    async def test_http10_answered_in_kind(self, port: int) -> None:
        """An HTTP/1.0 request gets an HTTP/1.0 status line."""
        status, _, _ = await exchange(port, b"GET /items HTTP/1.0\r\n\r\n")
        assert "HTTP/1.0 200 OK" == status

    async def test_head_has_no_body(self, port: int) -> None:
        """HEAD on a GET route: the headers of the GET, no body."""
        status, headers, body = await exchange(port, b"HEAD /items HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ("HTTP/1.1 200 OK", b"") == (status, body)
        assert int(headers["content-length"]) > 0

    async def test_unknown_path_and_method(self, port: int) -> None:
        """404 for an unknown path, 405 naming the allowed methods for a known one."""
        status, _, body = await exchange(port, b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        assert "HTTP/1.1 404 Not Found" == status
        assert b'"error"' in body
        status, headers, _ = await exchange(port, b"PUT /items HTTP/1.1\r\nHost: x\r\n\r\n")
        assert "HTTP/1.1 405 Method Not Allowed" == status
        assert "GET, POST" == headers["allow"]

    async def test_body_over_limit_refused(self, port: int) -> None:
        """A body larger than max_body is refused (413) without being read."""
        status, _, _ = await exchange(
            port, b"POST /items HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n" + b"x" * 101)
        assert "HTTP/1.1 413 Request Entity Too Large" == status

    async def test_malformed_and_oversized_heads(self, port: int) -> None:
        """A broken request line is a 400; a head past MAX_HEAD a 431."""
        status, _, _ = await exchange(port, b"GET\r\n\r\n")
        assert "HTTP/1.1 400 Bad Request" == status
        status, _, _ = await exchange(
            port, b"GET /items HTTP/1.1\r\nHost: x\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n")
        assert "HTTP/1.1 431 Request Header Fields Too Large" == status

    async def test_handler_error_is_500(self, port: int) -> None:
        """A handler that raises costs its request only (500), not the server."""
        status, _, body = await exchange(port, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
        assert "HTTP/1.1 500 Internal Server Error" == status
        assert b"RuntimeError" in body
        status, _, _ = await exchange(port, b"GET /items HTTP/1.1\r\nHost: x\r\n\r\n")
        assert "HTTP/1.1 200 OK" == status

    async def test_peer_leaving_early(self, port: int) -> None:
        """A client that closes mid-head gets nothing and the server keeps serving."""
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /ite")
        s.close()
        status, _, _ = await exchange(port, b"GET /items HTTP/1.1\r\nHost: x\r\n\r\n")
        assert "HTTP/1.1 200 OK" == status


H = b"Host: x\r\n"
# Request shapes a hostile or broken client sends, each with the status it gets:
# never a 500 (a crash in our code), never a 200.
HOSTILE = {
    # Request smuggling: two framings for one body.
    "content-length and chunked": (
        b"POST /items HTTP/1.1\r\n" + H
        + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    "content-length and chunked, GET": (
        b"GET /items HTTP/1.1\r\n" + H
        + b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", 400),
    "conflicting content-lengths": (
        b"GET /items HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
        400),
    "content-length list": (
        b"GET /items HTTP/1.1\r\n" + H + b"Content-Length: 1, 2\r\n\r\n", 400),
    # A bare LF ends a line, so the Transfer-Encoding after it is seen, not hidden
    # in X's value: both framings again.
    "chunked after a bare LF": (
        b"GET /items HTTP/1.1\r\n" + H
        + b"X: a\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", 400),
    "bare CR": (b"GET /items HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", 400),
    "NUL in a header": (b"GET /items HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", 400),
    "space before the colon": (
        b"GET /items HTTP/1.1\r\n" + H + b"Content-Length : 0\r\n\r\n", 400),
    "signed content-length": (
        b"GET /items HTTP/1.1\r\n" + H + b"Content-Length: +0\r\n\r\n", 400),
    "5000-digit content-length": (
        b"POST /items HTTP/1.1\r\n" + H + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n",
        400),
    "HTTP/1.1 without Host": (b"GET /items HTTP/1.1\r\n\r\n", 400),
    "two Hosts": (b"GET /items HTTP/1.1\r\n" + H + H + b"\r\n", 400),
    "absolute-form target": (b"GET http://x/items HTTP/1.1\r\n" + H + b"\r\n", 400),
    "TLS client hello": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(64)
                         + b"\r\n\r\n", 400),
    "unknown transfer coding": (
        b"POST /items HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501),
    "HTTP/2.0 request line": (b"GET /items HTTP/2.0\r\n" + H + b"\r\n", 505),
    "chunked body past max_body": (
        b"POST /items HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"32\r\n" + b"1" * 50 + b"\r\n33\r\n" + b"2" * 51 + b"\r\n0\r\n\r\n", 413),
    "chunk size past max_body": (
        b"POST /items HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"ffffffffffffffff\r\n" + b"x" * 200, 413),
}


class TestHostileRequests:
    """Requests are parsed by h11; what it or the server refuses gets a clear
    status and the connection is closed (issue 14, item 6)."""

    @pytest.mark.parametrize("shape", sorted(HOSTILE))
    async def test_refused_with_status(self, port: int, shape: str) -> None:
        """Each hostile shape is answered with its 4xx/5xx (never 200, never 500),
        and the server then serves the next client."""
        raw, expected = HOSTILE[shape]
        with structlog.testing.capture_logs() as logs:
            status, headers, body = await exchange(port, raw)
        assert (expected, "close") == (int(status.split()[1]), headers["connection"])
        assert b'"error"' in body
        assert [] == [e for e in logs if e["log_level"] == "error"]
        status, _, _ = await exchange(port, b"GET /items HTTP/1.1\r\nHost: x\r\n\r\n")
        assert "HTTP/1.1 200 OK" == status

    async def test_lenient_shapes_the_rfc_allows(self, port: int) -> None:
        """Bare LF line ends and a repeated identical Content-Length (both allowed
        by RFC 9112) are read as the client meant them."""
        status, _, body = await exchange(port, b"GET /items?a=1 HTTP/1.1\nHost: x\n\n")
        assert "HTTP/1.1 200 OK" == status
        assert b'"query": {"a": "1"}' in body
        status, _, body = await exchange(
            port, b"POST /items HTTP/1.1\r\n" + H
            + b"Content-Length: 8\r\nContent-Length: 8\r\n\r\n" + b'{"a": 1}')
        assert ("HTTP/1.1 200 OK", True) == (status, b'"body": {"a": 1}' in body)

    async def test_chunked_body(self, port: int) -> None:
        """A chunked body within max_body is decoded for the handler."""
        status, _, body = await exchange(
            port, b"POST /items HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
            + b"3\r\n{\"a\r\n5\r\n\": 1}\r\n0\r\n\r\n")
        assert ("HTTP/1.1 200 OK", True) == (status, b'"body": {"a": 1}' in body)

    async def test_head_of_exactly_max_head_is_served(self, port: int) -> None:
        """MAX_HEAD bounds the head to the byte: a head of MAX_HEAD bytes is
        served, one byte more is a 431."""
        start = b"GET /items HTTP/1.1\r\n" + H + b"X: "
        filler = b"a" * (MAX_HEAD - len(start) - 4)
        status, _, _ = await exchange(port, start + filler + b"\r\n\r\n")
        assert "HTTP/1.1 200 OK" == status
        status, _, _ = await exchange(port, start + filler + b"a\r\n\r\n")
        assert "HTTP/1.1 431 Request Header Fields Too Large" == status

    async def test_slowloris_head(self) -> None:
        """A head trickled in a byte at a time is cut off at head_timeout from
        the connection's start: bytes that keep arriving do not extend it."""
        server = HTTPServer(Router([Route("GET", "/items", echo)]), head_timeout=0.5)
        await server.start_tcp("127.0.0.1", 0)
        port = int(server.sockets[0].getsockname()[1])
        sent, closed, answer = 0, False, b"x"
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            head = b"GET /items HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 10_000
            async with asyncio.timeout(60):
                while not closed and sent < len(head):
                    try:
                        w.write(head[sent:sent + 1])
                        await w.drain()
                        sent += 1
                        # The attacker's pace; the read ends when the server closes.
                        answer = await asyncio.wait_for(r.read(), 0.02)
                        closed = True
                    except TimeoutError:
                        pass
                    except ConnectionError:  # a byte sent after the close: reset
                        closed, answer = True, b""
            w.close()
            # Cut off, without an answer, before the head was complete.
            assert (True, b"", True) == (closed, answer, sent < len(head))
            async with asyncio.timeout(10):
                while server._conns:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        finally:
            await server.close()


async def slow(request: Request) -> Response:
    await asyncio.sleep(3600)  # a handler that never finishes: a busy connection
    return json_response({})


class TestConnectionLimits:
    """A listener holds a bounded number of connections (issue 11, item 8)."""

    @staticmethod
    async def server(**kw: float) -> HTTPServer:
        router = Router([Route("GET", "/items", echo), Route("GET", "/slow", slow)])
        server = HTTPServer(router, max_connections=4, **kw)  # type: ignore[arg-type]
        await server.start_tcp("127.0.0.1", 0)
        return server

    async def test_idle_connections_make_room(self) -> None:
        """With the listener full of connections that sent nothing, a new client is
        served: the oldest idle connection is closed for it."""
        server = await self.server()
        port = int(server.sockets[0].getsockname()[1])
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        try:
            for _ in range(3):
                status, _, _ = await exchange(port, b"GET /items HTTP/1.1\r\nHost: x\r\n\r\n")
                assert "HTTP/1.1 200 OK" == status
            # One idle connection made room; the served ones then left theirs free.
            assert 1 == server.dropped_idle
            # The oldest idle connection was the one closed.
            assert b"" == await asyncio.wait_for(idle[0][0].read(), 10)
        finally:
            for _, w in idle:
                w.close()
            await server.close()

    async def test_busy_listener_refuses_new(self) -> None:
        """When every connection is busy in a handler, a new one is closed at once
        (no descriptor held for it) and counted."""
        server = await self.server()
        port = int(server.sockets[0].getsockname()[1])
        busy = []
        try:
            for _ in range(4):
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                await w.drain()
                busy.append((r, w))
            async with asyncio.timeout(10):
                while len(server._conns) < 4 or server._waiting:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            r, w = await asyncio.open_connection("127.0.0.1", port)
            assert b"" == await asyncio.wait_for(r.read(), 10)
            w.close()
            assert 1 == server.refused
            assert 4 == len(server._conns)
        finally:
            for _, w in busy:
                w.close()
            await server.close()

    async def test_head_timeout(self) -> None:
        """A connection that never sends its head is closed after head_timeout."""
        server = await self.server(head_timeout=0.2)
        port = int(server.sockets[0].getsockname()[1])
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            assert b"" == await asyncio.wait_for(r.read(), 10)
            w.close()
            assert not server._conns
        finally:
            await server.close()

    async def test_accept_errors_logged_once_per_interval(self) -> None:
        """The loop's "out of system resource" accept errors (what a process out
        of descriptors reports on every retry) make one log line per interval."""
        import errno

        import structlog

        server = await self.server()
        loop = asyncio.get_running_loop()
        try:
            with structlog.testing.capture_logs() as logs:
                for _ in range(500):
                    loop.call_exception_handler({
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(errno.EMFILE, "Too many open files")})
            assert 1 == len([e for e in logs if e["event"] == "http_accept_failed"])
        finally:
            await server.close()
