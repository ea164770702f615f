"""What three watchers of the ban prefix cost a burst: through etcd's JSON gateway
vs over gRPC (the `cluster` extra's stubs). Publishes 10,000 bans as one node
does (128-put transactions, 8 in flight) while three watchers follow the
prefix, twice per kind, and prints the time to publish and until every watcher
has every event. The watchers run in this same process (as asyncio tasks), so
their decoding competes with the publisher for one interpreter, as daemons
compete for the same cores in the cluster bench.

Run inside a namespace that reaches the members (as bench/etcd_client_choice.py):

    python -m bench.etcd_watch_cost CA CERT KEY ENDPOINT [ENDPOINT...]
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from kfwguard.cluster.etcd import EtcdFeed
from kfwguard.cluster.etcdclient import EtcdClient, TLSFiles, prefix_end
from kfwguard.cluster.feed import SharedBan

P = "/kfwguard/v1/"
info: dict[str, Any] = {}
tls: TLSFiles



async def gw_watcher(rev: int, n: int, done: list[float]) -> None:
    c = EtcdClient(info["endpoints"], tls)
    got = 0
    try:
        async for _, evs in c.watch(P, rev + 1):
            got += len(evs)
            if got >= n:
                done.append(time.perf_counter())
                return
    finally:
        await c.close()


async def grpc_watcher(rev: int, n: int, done: list[float]) -> None:
    from kfwguard.cluster.etcdgrpc import GrpcClient

    stream = GrpcClient(tls).watch(info["endpoints"][0], P.encode(), prefix_end(P), rev + 1)
    got = 0
    try:
        async for _, evs in stream.batches(lambda: None):
            got += len(evs)
            if got >= n:
                done.append(time.perf_counter())
                return
    finally:
        await stream.close()


async def run(kind: str, nw: int, n: int, tag: int) -> None:
    feed = EtcdFeed(EtcdClient(info["endpoints"], tls), "/kfwguard/v1")
    rev = await feed.client.put("/warm", b"x")
    done: list[float] = []
    watcher = gw_watcher if kind == "gw" else grpc_watcher
    ws = [asyncio.create_task(watcher(rev, n, done)) for _ in range(nw)]
    await asyncio.sleep(1.0)
    now = time.time()
    bans = [SharedBan("node-p", f"10.{tag}.{i // 250}.{i % 250 + 1}", "sshd", "bench", now,
                      now + 7200, now) for i in range(n)]
    t = time.perf_counter()
    await feed.publish("node-p", bans, [])
    tp = time.perf_counter() - t
    await asyncio.wait_for(asyncio.gather(*ws), 120)
    tw = max(done) - t
    await feed.client.delete("/kfwguard/v1/bans/node-p/", prefix=True)
    await feed.close()
    print(f"{kind} x{nw}: publish {tp:.2f}s, all watchers have all {tw:.2f}s", flush=True)


async def main() -> None:
    tag = 20
    for kind in ["gw", "grpc", "gw", "grpc"]:
        tag += 1
        await run(kind, 3, 10000, tag)


if __name__ == "__main__":
    ca, cert, key, *endpoints = sys.argv[1:]
    tls = TLSFiles(ca, cert, key)
    info["endpoints"] = endpoints
    asyncio.run(main())
