"""A small asyncio client for etcd v3 through its JSON gateway (aiohttp), with
the two bulk paths (listing, watch) over gRPC when the ``cluster`` extra is
installed (etcdgrpc.py).

Why the gateway for the rest: see the README's dependency table. In short,
aiohttp is already a dependency, mutual TLS is one ``ssl.SSLContext``, every
request carries its own deadline, and the few calls kfwguard needs (txn,
lease grant, probe) are plain JSON. The listing and the watch are where
etcd's JSON marshalling shows (a new node's 100k bans; every event of a burst
marshalled for every watcher), so they take gRPC when they can.

Failure model:

* Every request has a deadline; a transport error, a timeout or an etcd
  "unavailable" answer moves the client to the next endpoint
  (:class:`EtcdUnavailable`). ``call(..., retry=True)`` retries across endpoints
  with a capped backoff and never gives up: writes are never dropped, they
  wait (leader elections stall writes for seconds).
* A watch runs beside a liveness probe: a linearizable count on the same
  endpoint every ``ping_interval``. A member that stops answering (frozen,
  partitioned, without a leader) fails the probe within ``ping_timeout`` and
  the watch ends with :class:`EtcdUnavailable`; the caller resumes at its last
  revision + 1 on the next endpoint. (gRPC's keepalive without
  ``ping_timeout_ms`` would hang silently here.)
* A watch from a compacted revision ends with :class:`EtcdCompacted`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from kfwguard.cluster import etcdgrpc
from kfwguard.cluster.etcdtypes import (
    EtcdCompacted,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    LeaseNotFound,
    PageHandler,
    RawPair,
    TLSFiles,
    WatchEvent,
    b64,
    prefix_end,
    unb64,
)

if TYPE_CHECKING:
    import aiohttp

log = structlog.get_logger("kfwguard.cluster.etcdclient")

T = TypeVar("T")

# gRPC status codes etcd returns through the gateway.
# cancelled, deadline exceeded, exhausted, aborted, internal, unavailable
_UNAVAILABLE_CODES = {1, 4, 8, 10, 13, 14}
_NOT_FOUND = 5
_PERMISSION_DENIED = 7
_UNAUTHENTICATED = 16


def _kv(d: dict[str, Any]) -> KeyValue:
    return KeyValue(unb64(d.get("key")).decode(errors="replace"), unb64(d.get("value")),
                    int(d.get("mod_revision", 0)), int(d.get("lease", 0)))


class EtcdClient:
    def __init__(self, endpoints: Sequence[str], tls: TLSFiles | None = None, *,
                 timeout: float = 5.0, ping_interval: float = 1.0,
                 ping_timeout: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.tls = tls
        self.timeout = timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._current = 0
        self._session: aiohttp.ClientSession | None = None
        self.last_error: str | None = None
        self.switches = 0
        self.watching = False  # a watch stream is open and its endpoint answers
        # Listing and watching over gRPC (etcdgrpc.py) if the cluster extra is
        # installed; None: not looked at yet.
        self.use_grpc: bool | None = None
        self._grpc: Any = None

    # -- connection ------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext | bool:
        if self.tls is None:
            return False
        ctx = ssl.create_default_context(cafile=self.tls.ca)
        ctx.load_cert_chain(self.tls.cert, self.tls.key)
        return ctx

    def session(self) -> aiohttp.ClientSession:
        # aiohttp is imported when first used, not with this module: a new
        # node lists the shared bans over gRPC, and importing aiohttp (~0.5 s
        # of CPU here) before they are in its kernel would delay them.
        import aiohttp

        if self._session is None or self._session.closed:
            # Idle connections are kept for two minutes: a burst after a quiet
            # spell then needs no TLS handshake per transaction in flight.
            conn = aiohttp.TCPConnector(ssl=self._ssl(), limit=64, keepalive_timeout=120,
                                        enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=conn, json_serialize=lambda o: json.dumps(o, separators=(",", ":")),
                headers={"Grpc-Metadata-hasleader": "true"})
        return self._session

    async def close(self) -> None:
        if self._grpc is not None:
            await self._grpc.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._current]

    def _switch(self, failed: str, why: str) -> None:
        """Move on from ``failed`` (if it is still the current endpoint)."""
        self.last_error = f"{failed}: {why}"
        if self.endpoints[self._current] == failed and len(self.endpoints) > 1:
            self._current = (self._current + 1) % len(self.endpoints)
            self.switches += 1
            log.warning("etcd_endpoint_switched", failed=failed, to=self.endpoint,
                        why=why[:200])

    # -- requests --------------------------------------------------------------

    async def _post(self, endpoint: str, path: str, body: dict[str, Any],
                    timeout: float) -> dict[str, Any]:  # noqa: ASYNC109 - per-request deadline
        import aiohttp  # on first use (session())

        try:
            async with self.session().post(
                    endpoint + path, json=body,
                    timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise EtcdUnavailable(f"{type(exc).__name__}: {exc}") from exc
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            raise EtcdUnavailable(f"HTTP {status}: not JSON: {text[:200]!r}") from None
        if status == 200 and isinstance(data, dict) and "error" not in data:
            return data
        code = data.get("code") if isinstance(data, dict) else None
        msg = (data.get("message") or data.get("error")) if isinstance(data, dict) else text
        msg = f"HTTP {status}: {msg}"
        if code == _NOT_FOUND and "lease" in str(msg):
            raise LeaseNotFound(msg, code)
        if code in _UNAVAILABLE_CODES or (status >= 500 and code not in (
                _NOT_FOUND, _PERMISSION_DENIED, _UNAUTHENTICATED, 3, 9, 11)):
            raise EtcdUnavailable(msg, code)
        raise EtcdError(msg, code)

    async def call(self, path: str, body: dict[str, Any], *, retry: bool = False,
                   timeout: float | None = None) -> dict[str, Any]:  # noqa: ASYNC109
        """POST ``body`` to ``path`` on the current endpoint. With ``retry``, an
        unavailable answer is retried on the next endpoints until it succeeds."""
        deadline = timeout or self.timeout
        return await self._on_endpoints(
            lambda ep: self._post(ep, path, body, deadline), retry)

    async def _on_endpoints(self, attempt: Callable[[str], Awaitable[T]], retry: bool) -> T:
        """``attempt(endpoint)`` on the current endpoint; an unavailable one moves
        the client to the next, and with ``retry`` the attempt is made there after
        a capped backoff, until one succeeds."""
        delay = 0.05
        while True:
            ep = self.endpoint
            try:
                out = await attempt(ep)
                self.last_error = None
                return out
            except EtcdUnavailable as exc:
                self._switch(ep, str(exc))
                if not retry:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _grpc_client(self) -> Any:
        """The gRPC paths (etcdgrpc.GrpcClient), or None without the cluster extra."""
        if self.use_grpc is None:
            self.use_grpc = etcdgrpc.available()
            if self.use_grpc:
                self._grpc = etcdgrpc.GrpcClient(self.tls)
        return self._grpc if self.use_grpc else None

    # -- kv --------------------------------------------------------------------

    async def range_prefix(self, prefix: str, *, page: int = 5000, retry: bool = True,
                           on_page: PageHandler | None = None) -> tuple[int, list[KeyValue]]:
        """Every key under ``prefix`` at one revision, fetched in pages (a large
        listing does not have to fit one response). Returns (revision, kvs);
        with ``on_page``, each page goes to it as it comes (RawKV) instead.
        Over gRPC when the ``cluster`` extra is installed (etcdgrpc.py), else
        through the gateway in pages of ``page``."""
        g = self._grpc_client()
        if g is not None:
            start, end = prefix.encode(), prefix_end(prefix)

            async def listing(ep: str) -> tuple[int, list[KeyValue]]:
                out: tuple[int, list[KeyValue]] = await g.range_prefix(ep, start, end, 30.0,
                                                                       on_page)
                return out

            return await self._on_endpoints(listing, retry)
        return await self._range_gateway(prefix, page, retry, on_page)

    async def _range_gateway(self, prefix: str, page: int, retry: bool,
                             on_page: PageHandler | None) -> tuple[int, list[KeyValue]]:
        end = b64(prefix_end(prefix))

        async def fetch(start: bytes, revision: int) -> dict[str, Any]:
            body: dict[str, Any] = {"key": b64(start), "range_end": end, "limit": page}
            if revision:
                body["revision"] = revision
            return await self.call("/v3/kv/range", body, retry=retry, timeout=30.0)

        data = await fetch(prefix.encode(), 0)
        revision = int(data["header"]["revision"])
        out: list[KeyValue] = []
        first = True
        while True:
            raw = data.get("kvs", [])
            ahead: asyncio.Task[dict[str, Any]] | None = None
            if data.get("more") and raw:
                # etcd encodes the next page while this one is decoded here.
                ahead = asyncio.create_task(fetch(unb64(raw[-1]["key"]) + b"\x00", revision))
            try:
                if on_page is not None:
                    await on_page([RawPair(unb64(d.get("key")), unb64(d.get("value")))
                                   for d in raw], first)
                    first = False
                else:
                    out += [_kv(d) for d in raw]
            except BaseException:
                if ahead is not None:
                    ahead.cancel()
                raise
            if ahead is None:
                return revision, out
            data = await ahead

    async def put(self, key: str, value: bytes | str, lease: int = 0, *,
                  retry: bool = True) -> int:
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        data = await self.call("/v3/kv/put", body, retry=retry)
        return int(data["header"]["revision"])

    async def delete(self, key: str, *, prefix: bool = False, retry: bool = True) -> int:
        body: dict[str, Any] = {"key": b64(key)}
        if prefix:
            body["range_end"] = b64(prefix_end(key))
        data = await self.call("/v3/kv/deleterange", body, retry=retry)
        return int(data.get("deleted", 0))

    async def txns(self, chunks: Sequence[tuple[Sequence[tuple[str, bytes, int]],
                                                Sequence[str]]],
                   *, in_flight: int = 8, retry: bool = True) -> None:
        """One transaction per chunk of puts and deletes (as txn()), all at once
        over gRPC (etcdgrpc.GrpcClient.txns: one thread job, two event-loop
        turns), else up to ``in_flight`` at once through the gateway. On a
        failure the whole call is retried (writing a key again changes nothing)."""
        g = self._grpc_client()
        if g is not None:
            async def attempt(ep: str) -> None:
                await g.txns(ep, chunks, self.timeout)

            await self._on_endpoints(attempt, retry)
            return
        sem = asyncio.Semaphore(in_flight)

        async def one(chunk: tuple[Sequence[tuple[str, bytes, int]], Sequence[str]]) -> None:
            async with sem:
                await self.txn(*chunk, retry=retry)
        await asyncio.gather(*(one(c) for c in chunks))

    async def txn(self, puts: Sequence[tuple[str, bytes, int]], deletes: Sequence[str] = (),
                  *, retry: bool = True) -> int:
        """Puts (key, value, lease) and deletes in one transaction (one revision).
        Over gRPC when the ``cluster`` extra is installed: through the gateway,
        etcd converts every put from JSON and back, and the client spends
        several event-loop turns per request (a burst's detection holds the loop)."""
        g = self._grpc_client()
        if g is not None:
            async def attempt(ep: str) -> int:
                rev: int = await g.txns(ep, [(puts, deletes)], self.timeout)
                return rev

            return await self._on_endpoints(attempt, retry)
        ops: list[dict[str, Any]] = []
        for key, value, lease in puts:
            req: dict[str, Any] = {"key": b64(key), "value": b64(value)}
            if lease:
                req["lease"] = str(lease)
            ops.append({"request_put": req})
        for key in deletes:
            ops.append({"request_delete_range": {"key": b64(key)}})
        data = await self.call("/v3/kv/txn", {"success": ops}, retry=retry)
        return int(data["header"]["revision"])

    async def compact(self, revision: int) -> None:
        await self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True},
                        retry=True)

    # -- leases ----------------------------------------------------------------

    async def lease_grant(self, ttl: int, *, retry: bool = True) -> int:
        g = self._grpc_client()
        if g is not None:  # the first ban of a burst waits for it: one loop turn
            async def attempt(ep: str) -> int:
                lease: int = await g.lease_grant(ep, ttl, self.timeout)
                return lease

            return await self._on_endpoints(attempt, retry)
        data = await self.call("/v3/lease/grant", {"TTL": str(ttl)}, retry=retry)
        if data.get("error"):
            raise EtcdError(str(data["error"]))
        return int(data["ID"])

    async def lease_keepalive(self, lease: int) -> int:
        """Refresh ``lease`` once; returns its TTL (0 if it no longer exists)."""
        data = await self.call("/v3/lease/keepalive", {"ID": str(lease)}, retry=False)
        result = data.get("result", data)
        return int(result.get("TTL", 0))

    async def lease_revoke(self, lease: int) -> None:
        with contextlib.suppress(LeaseNotFound):
            await self.call("/v3/kv/lease/revoke", {"ID": str(lease)}, retry=False)

    # -- health ----------------------------------------------------------------

    async def ping(self, endpoint: str) -> None:
        """A linearizable read on ``endpoint``: answers only with a live quorum."""
        await self._post(endpoint, "/v3/kv/range",
                         {"key": b64("\x00kfwguard-ping"), "count_only": True},
                         self.ping_timeout)

    # -- watch -----------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[
            tuple[int, list[WatchEvent]]]:
        """Yield (revision, events) for every change under ``prefix`` from
        ``start_revision`` on, including progress notifications (no events).
        Ends with EtcdUnavailable when the endpoint fails its probe or the
        stream breaks, EtcdCompacted when the revision is gone."""
        g = self._grpc_client()
        if g is not None:
            async for batch in self._watch_grpc(g, prefix, start_revision):
                yield batch
            return
        import aiohttp  # on first use (session())

        ep = self.endpoint
        body = {"create_request": {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                   "start_revision": str(start_revision),
                                   "progress_notify": True}}
        failed: list[str] = []

        async def probe(resp: aiohttp.ClientResponse) -> None:
            while True:
                await asyncio.sleep(self.ping_interval)
                try:
                    await self.ping(ep)
                except EtcdError as exc:
                    failed.append(f"probe failed: {exc}")
                    resp.close()
                    return

        try:
            resp = await self.session().post(
                ep + "/v3/watch", json=body,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.ping_timeout,
                                              sock_read=None, connect=self.ping_timeout * 2))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._switch(ep, str(exc))
            raise EtcdUnavailable(f"watch: {type(exc).__name__}: {exc}") from exc
        prober = asyncio.create_task(probe(resp))
        buf = b""
        try:
            if resp.status != 200:
                raise EtcdUnavailable(f"watch: HTTP {resp.status}")
            self.watching = True
            while True:
                try:
                    chunk = await resp.content.readany()
                    chunk += resp.content.read_nowait()  # and whatever else is buffered
                except (aiohttp.ClientError, OSError, ValueError) as exc:
                    raise EtcdUnavailable(failed[0] if failed else f"watch broke: {exc}") from exc
                if not chunk:
                    raise EtcdUnavailable(failed[0] if failed else "watch stream ended")
                buf += chunk
                # Everything that arrived while the caller was busy goes out as
                # one batch: one store commit and one kernel transaction for
                # many revisions, not one each.
                *lines, buf = buf.split(b"\n")
                revision, events = 0, []
                for line in lines:
                    if line.strip():
                        item = self._watch_message(line)
                        if item is not None:
                            revision = max(revision, item[0])
                            events += item[1]
                if revision:
                    yield revision, events
        except EtcdUnavailable as exc:
            self._switch(ep, str(exc))
            raise
        finally:
            self.watching = False
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await prober
            resp.close()

    async def _watch_grpc(self, g: Any, prefix: str, start_revision: int) -> AsyncIterator[
            tuple[int, list[WatchEvent]]]:
        """watch() over gRPC, with the same probe beside it."""
        ep = self.endpoint
        stream = g.watch(ep, prefix.encode(), prefix_end(prefix), start_revision)

        async def probe() -> None:
            while True:
                await asyncio.sleep(self.ping_interval)
                try:
                    await self.ping(ep)
                except EtcdError as exc:
                    stream.fail(f"probe failed: {exc}")
                    return

        def created() -> None:
            self.watching = True

        prober = asyncio.create_task(probe())
        try:
            async for item in stream.batches(created):
                yield item
        except EtcdUnavailable as exc:
            self._switch(ep, str(exc))
            raise
        finally:
            self.watching = False
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await prober
            await stream.close()

    @staticmethod
    def _watch_message(line: bytes) -> tuple[int, list[WatchEvent]] | None:
        try:
            msg = json.loads(line)
        except ValueError:
            raise EtcdUnavailable(f"watch: not JSON: {line[:200]!r}") from None
        if "error" in msg:
            err = msg["error"]
            raise EtcdUnavailable(f"watch: {err.get('message') if isinstance(err, dict) else err}")
        res = msg.get("result", {})
        compacted = int(res.get("compact_revision", 0) or 0)
        if compacted:
            raise EtcdCompacted(compacted)
        if res.get("canceled"):
            raise EtcdUnavailable(f"watch canceled: {res.get('cancel_reason', '')}")
        if res.get("created") and not res.get("events"):
            return None
        events = [WatchEvent("delete" if e.get("type") == "DELETE" else "put", _kv(e["kv"]))
                  for e in res.get("events", [])]
        # Resume after the last event seen; a progress notification (no events)
        # says everything up to its header revision was sent.
        revision = (max(e.kv.mod_revision for e in events) if events
                    else int(res.get("header", {}).get("revision", 0)))
        return revision, events


def monotonic() -> float:
    return time.monotonic()
