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
from pathlib import Path
from typing import Any

from kfwguard.cluster.etcdtypes import (
    EtcdCompacted,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    LeaseNotFound,
    TLSFiles,
    WatchEvent,
)

# A page of this many keys is ~8 MB for kfwguard's ban values; gRPC's default
# receive limit (4 MiB) is raised to fit it. Few large pages: etcd walks the
# rest of the range for every page it serves.
PAGE = 50_000
MAX_MESSAGE = 64 << 20

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
        self._kv: dict[str, tuple[Any, Any]] = {}  # endpoint -> (channel, KV stub)

    async def txn(self, endpoint: str, puts: Sequence[tuple[str, bytes, int]],
                  deletes: Sequence[str], timeout: float) -> int:  # noqa: ASYNC109
        """Puts (key, value, lease) and deletes in one transaction on ``endpoint``;
        returns its revision. Raises LeaseNotFound, EtcdUnavailable (the caller
        moves on to another endpoint) or EtcdError."""
        from aetcd.rpc import rpc_pb2

        grpc = self._grpc
        kv = self._stub(endpoint)[1]
        op, put, delete = rpc_pb2.RequestOp, rpc_pb2.PutRequest, rpc_pb2.DeleteRangeRequest
        ops = [op(request_put=put(key=k.encode(), value=v, lease=lease)) for k, v, lease in puts]
        ops += [op(request_delete_range=delete(key=k.encode())) for k in deletes]
        try:
            resp = await kv.Txn(rpc_pb2.TxnRequest(success=ops), timeout=timeout,
                                metadata=(("hasleader", "true"),))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND and "lease" in str(exc.details()):
                raise LeaseNotFound(f"gRPC NOT_FOUND: {exc.details()}") from None
            err = _error(exc)
            if isinstance(err, EtcdUnavailable):
                await self.drop(endpoint)  # the next attempt there connects anew
            raise err from None
        return int(resp.header.revision)

    def _stub(self, endpoint: str) -> tuple[Any, Any]:
        """The kept channel to ``endpoint`` and its KV stub."""
        from aetcd.rpc import rpc_pb2_grpc

        if endpoint not in self._kv:
            channel = self._channel(endpoint)
            self._kv[endpoint] = (channel, rpc_pb2_grpc.KVStub(channel))
        return self._kv[endpoint]

    async def lease_grant(self, endpoint: str, ttl: int, timeout: float) -> int:  # noqa: ASYNC109
        """A new lease of ``ttl`` seconds on ``endpoint`` (the transactions' channel)."""
        from aetcd.rpc import rpc_pb2, rpc_pb2_grpc

        grpc = self._grpc
        stub = rpc_pb2_grpc.LeaseStub(self._stub(endpoint)[0])
        try:
            resp = await stub.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=ttl), timeout=timeout,
                                         metadata=(("hasleader", "true"),))
        except grpc.aio.AioRpcError as exc:
            err = _error(exc)
            if isinstance(err, EtcdUnavailable):
                await self.drop(endpoint)
            raise err from None
        if resp.error:
            raise EtcdError(f"lease grant: {resp.error}")
        return int(resp.ID)

    async def drop(self, endpoint: str) -> None:
        """Close the kept transaction channel to ``endpoint`` (if any)."""
        entry = self._kv.pop(endpoint, None)
        if entry is not None:
            await entry[0].close()

    async def close(self) -> None:
        for ep in list(self._kv):
            await self.drop(ep)

    async def range_prefix(self, endpoint: str, start: bytes, end: bytes,
                           timeout: float) -> tuple[int, list[KeyValue]]:  # noqa: ASYNC109
        """Every key in [start, end) at one revision, in pages; the next page
        is asked for while this one is decoded. Raises EtcdUnavailable when
        ``endpoint`` cannot serve it (the caller moves on), EtcdError else."""
        from aetcd.rpc import rpc_pb2_grpc

        grpc = self._grpc
        channel = self._channel(endpoint)
        kv = rpc_pb2_grpc.KVStub(channel)
        ahead: asyncio.Future[Any] | None = None
        try:
            resp = await self._page(kv, start, end, 0, timeout)
            revision = int(resp.header.revision)
            out: list[KeyValue] = []
            while True:
                ahead = (asyncio.ensure_future(self._page(kv, resp.kvs[-1].key + b"\x00", end,
                                                          revision, timeout))
                         if resp.more and resp.kvs else None)
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
