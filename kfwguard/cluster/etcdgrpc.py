"""The bulk paths of the etcd client over gRPC: listing a prefix, watching
it and publishing bans (transactions), where the JSON gateway's cost shows
(README's dependency table: listing 110k bans in ~1.5 s instead of ~8 s;
three gateway watchers slowed a 10,000 ban burst from ~2.8 s to ~5 s, etcd
marshalling every event to JSON for each; publishing 10,000 bans in
128-put transactions took 4.5 s through the gateway, 1.5-2.3 s over gRPC).

It needs the ``cluster`` extra (grpcio, and the etcd protobufs that ``aetcd``
ships, used without its client); without it :class:`EtcdClient` does both
through the gateway like every other call. Each listing and each watch opens
its own channel to the endpoint the client is on and closes it; transactions
share one channel per endpoint, kept open (a burst's transactions go out at
once, with no connection set-up). Failover, deadlines and the liveness probe
stay in :class:`EtcdClient`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from kfwguard.cluster.etcdtypes import (
    EtcdCompacted,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    LeaseNotFound,
    PageHandler,
    TLSFiles,
    WatchEvent,
)

# A page of this many keys is ~8 MB for kfwguard's ban values; gRPC's default
# receive limit (4 MiB) is raised to fit it. Few large pages: etcd walks the
# rest of the range for every page it serves.
PAGE = 20_000  # a new node applies each page while etcd serves the next
MAX_MESSAGE = 64 << 20
TXN_THREADS = 8  # txns() calls at once (the cluster service's senders)

# grpc status codes that mean "try another member" (as the gateway's _UNAVAILABLE_CODES)
_RETRY = {"CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL",
          "UNAVAILABLE", "UNKNOWN"}


def available() -> bool:
    """True if the gRPC listing can run (the ``cluster`` extra is installed)."""
    try:
        import grpc  # type: ignore[import-untyped]  # noqa: F401
        from aetcd.rpc import rpc_pb2  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return False
    return True


class GrpcClient:
    def __init__(self, tls: TLSFiles | None, *, page: int = PAGE) -> None:
        import grpc

        self.page = page
        self._grpc = grpc
        self._creds: Any = None
        if tls is not None:
            ca, key, cert = (Path(p).read_bytes() for p in (tls.ca, tls.key, tls.cert))
            self._creds = grpc.ssl_channel_credentials(ca, key, cert)
        # Transactions and lease grants: a blocking channel per endpoint, kept
        # open, used from a pool of threads (see txn).
        self._kept: dict[str, _Stubs] = {}
        self._pool: ThreadPoolExecutor | None = None

    async def txns(self, endpoint: str,
                   chunks: Sequence[tuple[Sequence[tuple[str, bytes, int]], Sequence[str]]],
                   timeout: float) -> int:  # noqa: ASYNC109
        """One transaction per chunk of puts (key, value, lease) and deletes, all
        at once, on ``endpoint``; returns the last revision. Raises
        LeaseNotFound, EtcdUnavailable (the caller moves on to another
        endpoint) or EtcdError; a failure leaves the others' writes in place
        (writing them again changes nothing).

        The requests are built and sent on a blocking channel in a worker
        thread (gRPC's core does the I/O; the wait holds no lock): an asyncio
        call needs about five event-loop turns, and while a burst is detected
        each turn waits for a block of log lines, so its transactions would
        wait for the whole burst; this way they take two turns, however many,
        and the network wait runs beside the detection."""
        return await self._blocking(endpoint, self._txns, chunks, timeout)

    def _txns(self, stubs: _Stubs,
              chunks: Sequence[tuple[Sequence[tuple[str, bytes, int]], Sequence[str]]],
              timeout: float) -> int:
        from aetcd.rpc import rpc_pb2

        op, put, delete = rpc_pb2.RequestOp, rpc_pb2.PutRequest, rpc_pb2.DeleteRangeRequest
        calls = []
        for puts, deletes in chunks:
            ops = [op(request_put=put(key=k.encode(), value=v, lease=lease))
                   for k, v, lease in puts]
            ops += [op(request_delete_range=delete(key=k.encode())) for k in deletes]
            calls.append(stubs.kv.Txn.future(rpc_pb2.TxnRequest(success=ops), timeout=timeout,
                                             metadata=(("hasleader", "true"),)))
        return max((int(c.result().header.revision) for c in calls), default=0)

    async def lease_grant(self, endpoint: str, ttl: int, timeout: float) -> int:  # noqa: ASYNC109
        """A new lease of ``ttl`` seconds, on the transactions' channel (the
        first ban of a burst waits for it)."""
        return await self._blocking(endpoint, self._lease_grant, ttl, timeout)

    def _lease_grant(self, stubs: _Stubs, ttl: int, timeout: float) -> int:
        from aetcd.rpc import rpc_pb2

        resp = stubs.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=ttl), timeout=timeout,
                                      metadata=(("hasleader", "true"),))
        if resp.error:
            raise EtcdError(f"lease grant: {resp.error}")
        return int(resp.ID)

    async def _blocking(self, endpoint: str, call: Callable[..., int], *args: Any) -> int:
        """``call(stubs, *args)`` in the pool, on the kept channel to ``endpoint``;
        gRPC errors become EtcdErrors (and an unavailable endpoint's channel is
        dropped: the next attempt there connects anew)."""
        grpc = self._grpc
        stubs = self._stubs(endpoint)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=TXN_THREADS,
                                            thread_name_prefix="kfwguard-etcd")
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, call, stubs, *args)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND and "lease" in str(exc.details()):
                raise LeaseNotFound(f"gRPC NOT_FOUND: {exc.details()}") from None
            err = _error(exc)
            if isinstance(err, EtcdUnavailable):
                self.drop(endpoint)
            raise err from None

    def _stubs(self, endpoint: str) -> _Stubs:
        from aetcd.rpc import rpc_pb2_grpc

        stubs = self._kept.get(endpoint)
        if stubs is None:
            grpc = self._grpc
            target = endpoint.split("://", 1)[-1]
            channel = (grpc.secure_channel(target, self._creds)
                       if endpoint.startswith("https://") and self._creds is not None
                       else grpc.insecure_channel(target))
            stubs = self._kept[endpoint] = _Stubs(channel, rpc_pb2_grpc.KVStub(channel),
                                                  rpc_pb2_grpc.LeaseStub(channel))
        return stubs

    def drop(self, endpoint: str) -> None:
        """Close the kept channel to ``endpoint`` (if any)."""
        stubs = self._kept.pop(endpoint, None)
        if stubs is not None:
            stubs.channel.close()

    async def close(self) -> None:
        for ep in list(self._kept):
            self.drop(ep)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def range_prefix(self, endpoint: str, start: bytes, end: bytes,
                           timeout: float,  # noqa: ASYNC109
                           on_page: PageHandler | None = None) -> tuple[int, list[KeyValue]]:
        """Every key in [start, end) at one revision, in pages; the next page
        is asked for while this one is decoded. With ``on_page``, each page
        goes to it as etcd's protobuf KeyValues (RawKV) and none is returned.
        Raises EtcdUnavailable when ``endpoint`` cannot serve it (the caller
        moves on), EtcdError else."""
        from aetcd.rpc import rpc_pb2_grpc

        grpc = self._grpc
        channel = self._channel(endpoint)
        kv = rpc_pb2_grpc.KVStub(channel)
        ahead: asyncio.Future[Any] | None = None
        try:
            resp = await self._page(kv, start, end, 0, timeout)
            revision = int(resp.header.revision)
            out: list[KeyValue] = []
            first = True
            while True:
                ahead = (asyncio.ensure_future(self._page(kv, resp.kvs[-1].key + b"\x00", end,
                                                          revision, timeout))
                         if resp.more and resp.kvs else None)
                if on_page is not None:
                    await on_page(resp.kvs, first)
                    first = False
                else:
                    out += [KeyValue(k.key.decode(errors="replace"), k.value, k.mod_revision,
                                     k.lease) for k in resp.kvs]
                if ahead is None:
                    return revision, out
                resp = await ahead
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        finally:
            if ahead is not None and not ahead.done():
                ahead.cancel()
            await channel.close()

    def _channel(self, endpoint: str) -> Any:
        grpc = self._grpc
        target = endpoint.split("://", 1)[-1]
        options = [("grpc.max_receive_message_length", MAX_MESSAGE)]
        return (grpc.aio.secure_channel(target, self._creds, options=options)
                if endpoint.startswith("https://") and self._creds is not None
                else grpc.aio.insecure_channel(target, options=options))

    def watch(self, endpoint: str, key: bytes, end: bytes, start_revision: int) -> WatchStream:
        """Open a watch of [key, end) from ``start_revision`` on ``endpoint``."""
        return WatchStream(self, endpoint, key, end, start_revision)

    async def _page(self, kv: Any, key: bytes, end: bytes, revision: int,
                    timeout: float) -> Any:  # noqa: ASYNC109
        from aetcd.rpc import rpc_pb2

        # hasleader: refuse to be served by a member cut off from its leader.
        return await kv.Range(rpc_pb2.RangeRequest(key=key, range_end=end, limit=self.page,
                                                   revision=revision),
                              timeout=timeout, metadata=(("hasleader", "true"),))


class _Stubs(NamedTuple):
    channel: Any
    kv: Any
    lease: Any


def _error(exc: Any) -> EtcdError:
    msg = f"gRPC {exc.code().name}: {exc.details()}"
    return EtcdUnavailable(msg) if exc.code().name in _RETRY else EtcdError(msg)


class WatchStream:
    """One watch stream. A reader task takes each response off the stream into a
    queue; ``batches()`` hands out everything that arrived while the caller was
    busy as one batch (one store commit and one kernel transaction for many
    revisions), and ends with EtcdUnavailable (stream broken or ended, or
    ``fail()`` called by the client's probe) or EtcdCompacted."""

    def __init__(self, client: GrpcClient, endpoint: str, key: bytes, end: bytes,
                 start_revision: int) -> None:
        from aetcd.rpc import kv_pb2, rpc_pb2, rpc_pb2_grpc

        self._grpc = client._grpc
        self._channel = client._channel(endpoint)
        # hasleader: etcd cancels the watch if the member loses its leader.
        self._call = rpc_pb2_grpc.WatchStub(self._channel).Watch(
            metadata=(("hasleader", "true"),))
        self._create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=key, range_end=end, start_revision=start_revision, progress_notify=True))
        self._delete = kv_pb2.Event.DELETE
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        grpc = self._grpc
        try:
            await self._call.write(self._create)
            while True:
                resp = await self._call.read()
                if resp is grpc.aio.EOF:
                    self._queue.put_nowait(EtcdUnavailable("watch stream ended"))
                    return
                self._queue.put_nowait(resp)
        except grpc.aio.AioRpcError as exc:
            self._queue.put_nowait(_error(exc))
        except grpc.aio.UsageError as exc:  # the call was closed under us
            self._queue.put_nowait(EtcdUnavailable(f"watch: {exc}"))

    def fail(self, why: str) -> None:
        self._queue.put_nowait(EtcdUnavailable(why))

    async def batches(self, on_created: Callable[[], None]) -> Any:
        """Yield (revision, events), progress notifications included (no events);
        ``on_created`` is called when etcd has taken the watch."""
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            revision, events = 0, list[WatchEvent]()
            for item in items:
                if isinstance(item, Exception):
                    if revision:
                        yield revision, events
                    raise item
                if item.compact_revision:
                    raise EtcdCompacted(int(item.compact_revision))
                if item.canceled:
                    raise EtcdUnavailable(f"watch canceled: {item.cancel_reason}")
                if item.created:
                    on_created()
                if not item.events:
                    if not item.created:  # a progress notification
                        revision = max(revision, int(item.header.revision))
                    continue
                evs = [WatchEvent("delete" if e.type == self._delete else "put",
                                  KeyValue(e.kv.key.decode(errors="replace"), e.kv.value,
                                           e.kv.mod_revision, e.kv.lease))
                       for e in item.events]
                # Resume after the last event seen.
                revision = max(revision, max(e.kv.mod_revision for e in evs))
                events += evs
            if revision:
                yield revision, events

    async def close(self) -> None:
        self._call.cancel()
        self._reader.cancel()
        try:
            await self._reader
        except (asyncio.CancelledError, Exception):
            pass
        await self._channel.close()
