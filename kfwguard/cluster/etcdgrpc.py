"""Listing a prefix over etcd's gRPC API: the one call where the JSON gateway's
cost shows (README's dependency table: 110k bans in ~1.6 s instead of ~8 s).

It needs the ``cluster`` extra (grpcio, and the etcd protobufs that ``aetcd``
ships, used without its client); without it :class:`EtcdClient` lists through
the gateway like every other call. A listing opens its own channel and closes
it: it runs at start and after a compaction, not on a hot path.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from kfwguard.cluster.etcdclient import (
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    TLSFiles,
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


class GrpcLister:
    def __init__(self, tls: TLSFiles | None, *, page: int = PAGE) -> None:
        import grpc

        self.page = page
        self._grpc = grpc
        self._creds: Any = None
        if tls is not None:
            ca, key, cert = (Path(p).read_bytes() for p in (tls.ca, tls.key, tls.cert))
            self._creds = grpc.ssl_channel_credentials(ca, key, cert)

    async def range_prefix(self, endpoint: str, start: bytes, end: bytes,
                           timeout: float) -> tuple[int, list[KeyValue]]:  # noqa: ASYNC109
        """Every key in [start, end) at one revision, in pages; the next page
        is asked for while this one is decoded. Raises EtcdUnavailable when
        ``endpoint`` cannot serve it (the caller moves on), EtcdError else."""
        from aetcd.rpc import rpc_pb2_grpc

        grpc = self._grpc
        target = endpoint.split("://", 1)[-1]
        options = [("grpc.max_receive_message_length", MAX_MESSAGE)]
        channel = (grpc.aio.secure_channel(target, self._creds, options=options)
                   if endpoint.startswith("https://") and self._creds is not None
                   else grpc.aio.insecure_channel(target, options=options))
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
            msg = f"gRPC {exc.code().name}: {exc.details()}"
            if exc.code().name in _RETRY:
                raise EtcdUnavailable(msg) from None
            raise EtcdError(msg) from None
        finally:
            if ahead is not None and not ahead.done():
                ahead.cancel()
            await channel.close()

    async def _page(self, kv: Any, key: bytes, end: bytes, revision: int,
                    timeout: float) -> Any:  # noqa: ASYNC109
        from aetcd.rpc import rpc_pb2

        # hasleader: refuse to be served by a member cut off from its leader.
        return await kv.Range(rpc_pb2.RangeRequest(key=key, range_end=end, limit=self.page,
                                                   revision=revision),
                              timeout=timeout, metadata=(("hasleader", "true"),))
