"""Measure the two asyncio etcd clients kfwguard could use, on the same cluster.

Run inside a namespace that reaches the members (bench/cluster.py does),
with an interpreter that has ``aetcd`` installed for its half:

    python -m bench.etcd_client_choice CA CERT KEY ENDPOINT [ENDPOINT...]

Prints one JSON object: per client, sequential put latency (p50/p99),
throughput with 32 puts in flight, and put-to-watch-event latency (p50/p99)
at ~100 puts/s.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from kfwguard.cluster.etcdclient import EtcdClient
from kfwguard.cluster.etcdtypes import TLSFiles


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p * len(xs)))] * 1000, 2)


async def gateway(tls: TLSFiles, endpoints: list[str]) -> dict[str, Any]:
    c = EtcdClient(endpoints, tls)
    lat = []
    for i in range(500):
        t = time.perf_counter()
        await c.put(f"/bench/gw/seq/{i}", b"x" * 120)
        lat.append(time.perf_counter() - t)
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with sem:
            await c.put(f"/bench/gw/par/{i}", b"x" * 120)
    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(3000)))
    par = 3000 / (time.perf_counter() - t)
    # put -> watch event
    rev = await c.put("/bench/gw/w/start", b"")
    seen: dict[str, float] = {}

    async def watcher() -> None:
        async for _, events in c.watch("/bench/gw/w/", rev + 1):
            for e in events:
                seen[e.kv.key] = time.perf_counter()
            if len(seen) >= 300:
                return
    w = asyncio.create_task(watcher())
    await asyncio.sleep(0.3)
    sent: dict[str, float] = {}
    for i in range(300):
        k = f"/bench/gw/w/{i}"
        sent[k] = time.perf_counter()
        await c.put(k, b"x" * 120)
        await asyncio.sleep(0.01)
    await asyncio.wait_for(w, 30)
    wl = [seen[k] - sent[k] for k in sent]
    await c.delete("/bench/gw/", prefix=True)
    await c.close()
    return {"seq_put_p50_ms": pct(lat, .5), "seq_put_p99_ms": pct(lat, .99),
            "puts_per_s_32_inflight": round(par), "watch_p50_ms": pct(wl, .5),
            "watch_p99_ms": pct(wl, .99)}


async def grpc_aetcd(tls: TLSFiles, endpoint: str) -> dict[str, Any]:
    import aetcd  # type: ignore[import-not-found]
    import grpc  # type: ignore[import-not-found]
    from aetcd import rpc  # type: ignore[import-not-found]

    host, port = endpoint.removeprefix("https://").rsplit(":", 1)
    ca, key, cert = (Path(p).read_bytes() for p in (tls.ca, tls.key, tls.cert))  # noqa: ASYNC240
    creds = grpc.ssl_channel_credentials(ca, key, cert)

    class TLSClient(aetcd.Client):  # type: ignore[misc]
        # aetcd 1.0.0 has no TLS option: the same connect() with a secure channel.
        async def connect(self) -> None:
            if self._connected.is_set():
                return
            self.channel = grpc.aio.secure_channel(f"{host}:{port}", creds, options=[
                ("grpc.keepalive_time_ms", 1000), ("grpc.http2.ping_timeout_ms", 2000)])
            self.kvstub = rpc.KVStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            from aetcd import watcher
            self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=None,
                                            metadata=None)
            self._connected.set()

    c = TLSClient(host=host, port=int(port))
    await c.connect()
    lat = []
    for i in range(500):
        t = time.perf_counter()
        await c.put(f"/bench/ae/seq/{i}".encode(), b"x" * 120)
        lat.append(time.perf_counter() - t)
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with sem:
            await c.put(f"/bench/ae/par/{i}".encode(), b"x" * 120)
    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(3000)))
    par = 3000 / (time.perf_counter() - t)
    seen: dict[bytes, float] = {}
    it = await c.watch_prefix(b"/bench/ae/w/")

    async def watcher() -> None:
        async for ev in it:
            seen[ev.kv.key] = time.perf_counter()
            if len(seen) >= 300:
                return
    w = asyncio.create_task(watcher())
    await asyncio.sleep(0.3)
    sent: dict[bytes, float] = {}
    for i in range(300):
        k = f"/bench/ae/w/{i}".encode()
        sent[k] = time.perf_counter()
        await c.put(k, b"x" * 120)
        await asyncio.sleep(0.01)
    await asyncio.wait_for(w, 30)
    wl = [seen[k] - sent[k] for k in sent]
    await c.delete_prefix(b"/bench/ae/")
    await c.close()
    return {"seq_put_p50_ms": pct(lat, .5), "seq_put_p99_ms": pct(lat, .99),
            "puts_per_s_32_inflight": round(par), "watch_p50_ms": pct(wl, .5),
            "watch_p99_ms": pct(wl, .99)}


def main() -> None:
    ca, cert, key, *endpoints = sys.argv[1:]
    tls = TLSFiles(ca, cert, key)
    out: dict[str, Any] = {"json_gateway_aiohttp": asyncio.run(gateway(tls, endpoints))}
    try:
        out["aetcd_grpc"] = asyncio.run(grpc_aetcd(tls, endpoints[0]))
    except ImportError as exc:
        out["aetcd_grpc"] = f"not installed: {exc}"
    _ = ssl, statistics
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
