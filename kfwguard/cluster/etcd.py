"""The etcd v3 backend of the decision feed.

Layout under ``prefix`` (docs/cluster.md):

* ``bans/<node>/<address-or-cidr>``: a node's shared bans, JSON values, each
  on the lease of its expiry minute (one lease per minute, not per ban: etcd
  revokes at most ~1,000 leases/s); a node writes only its own subtree, which
  etcd RBAC can enforce.
* ``allow/<address-or-cidr>``: the cluster-wide allowlist (written by admins).
* ``unban/<address-or-cidr>``: ``unban --cluster`` requests, on a 10-minute lease.
* ``nodes/<node>``: heartbeats on a lease of three heartbeat intervals.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import structlog

from kfwguard.bans.model import paused_gc
from kfwguard.cluster.etcdclient import EtcdClient
from kfwguard.cluster.etcdtypes import (
    EtcdCompacted,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    LeaseNotFound,
    RawKV,
    WatchEvent,
)
from kfwguard.cluster.feed import (
    AllowGone,
    AllowPut,
    BanGone,
    BanPut,
    BansHandler,
    Change,
    FeedResync,
    NodeBeat,
    NodeGone,
    SharedBan,
    Snapshot,
    UnbanAsked,
)

log = structlog.get_logger("kfwguard.cluster.etcd")

BUCKET = 60.0  # seconds of expiry per shared lease
UNBAN_TTL = 600
TXN_OPS = 128  # etcd's default --max-txn-ops
TXN_IN_FLIGHT = 8
LISTING_SLICE = 10_000  # listed keys decoded between two turns of the event loop


class EtcdFeed:
    def __init__(self, client: EtcdClient, prefix: str, *, heartbeat: float = 5.0,
                 clock: Any = time.time) -> None:
        self.client = client
        self.prefix = prefix.rstrip("/")
        self.heartbeat_interval = heartbeat
        self._clock = clock
        self._leases: dict[int, int] = {}  # expiry bucket -> lease id
        self._granting: dict[int, asyncio.Future[int]] = {}  # bucket -> grant in flight
        self._beat_lease = 0
        self.revision = 0
        self.skipped = 0

    # -- keys ------------------------------------------------------------------

    def ban_key(self, node: str, target: str) -> str:
        return f"{self.prefix}/bans/{node}/{target}"

    def _parse(self, kv: KeyValue, kind: str) -> Change | SharedBan | None:
        rest = kv.key[len(self.prefix) + 1:] if kv.key.startswith(self.prefix + "/") else ""
        section, _, tail = rest.partition("/")
        try:
            if section == "bans":
                node, _, target = tail.partition("/")
                if not node or not target:
                    raise ValueError("no node or target")
                if kind == "delete":
                    return BanGone(node, target)
                return SharedBan.decode(node, target, kv.value)
            if section == "allow" and tail:
                return AllowGone(tail) if kind == "delete" else AllowPut(tail)
            if section == "unban" and tail:
                if kind == "delete":
                    return None
                d = json.loads(kv.value)
                return UnbanAsked(tail, str(d.get("by", "")), float(d["at"]))
            if section == "nodes" and tail:
                if kind == "delete":
                    return NodeGone(tail)
                info = json.loads(kv.value)
                if not isinstance(info, dict):
                    raise ValueError("heartbeat is not an object")
                return NodeBeat(tail, info)
        except (ValueError, KeyError, TypeError) as exc:
            self.skipped += 1
            log.warning("cluster_entry_skipped", key=kv.key[:300], error=str(exc)[:200])
            return None
        return None

    # -- publishing ------------------------------------------------------------

    async def _lease_for(self, expires_at: float) -> int:
        bucket = math.ceil(expires_at / BUCKET)
        lease = self._leases.get(bucket)
        if lease is not None:
            return lease
        # One grant per bucket: the senders of a burst all need the same new
        # lease at once, and wait for the first one's grant.
        waiting = self._granting.get(bucket)
        if waiting is not None:
            return await asyncio.shield(waiting)
        waiting = self._granting[bucket] = asyncio.get_running_loop().create_future()
        waiting.add_done_callback(lambda f: f.cancelled() or f.exception())  # seen
        try:
            ttl = max(5, math.ceil(bucket * BUCKET - self._clock()) + 5)
            lease = await self.client.lease_grant(ttl)
        except BaseException as exc:
            waiting.set_exception(exc if isinstance(exc, Exception)
                                  else EtcdUnavailable("lease grant interrupted"))
            raise
        finally:
            del self._granting[bucket]
        waiting.set_result(lease)
        self._leases[bucket] = lease
        now_bucket = math.floor(self._clock() / BUCKET)
        for b in [b for b in self._leases if b < now_bucket]:
            del self._leases[b]
        return lease

    async def publish(self, node: str, puts: Sequence[SharedBan], deletes: Sequence[str],
                      *, encoded: Sequence[bytes] = ()) -> None:
        """Write ``puts`` and delete ``deletes`` (targets) under ``node``'s
        subtree, in transactions of at most TXN_OPS operations, up to
        TXN_IN_FLIGHT of them at once (each costs etcd a raft round and an
        fsync: one after the other, a burst would wait for them in turn);
        waits out outages. A target is at most once in a call, so the order
        between transactions is free. ``encoded``: the puts' values, if the
        caller has them (else encoded here). Over gRPC the transactions go
        out in one await, without a task each: during a burst every hand-over
        between tasks waits for an event-loop turn."""
        dels = [self.ban_key(node, t) for t in deletes]
        values = encoded if len(encoded) == len(puts) else [b.encode() for b in puts]
        while True:
            try:
                ops = [(self.ban_key(node, b.target), v, await self._lease_for(b.expires_at))
                       for b, v in zip(puts, values, strict=True)]
                n = len(ops)
                chunks = [(ops[i:i + TXN_OPS], dels[max(0, i - n):max(0, i + TXN_OPS - n)])
                          for i in range(0, n + len(dels), TXN_OPS)]
                if chunks:
                    await self.client.txns(chunks, in_flight=TXN_IN_FLIGHT, retry=True)
                return
            except LeaseNotFound:
                # Expired or revoked meanwhile (a long outage): new leases.
                self._leases.clear()

    async def ask_unban(self, target: str, by: str, at: float) -> None:
        lease = await self.client.lease_grant(UNBAN_TTL)
        await self.client.put(f"{self.prefix}/unban/{target}",
                              json.dumps({"by": by, "at": at}), lease)

    async def heartbeat(self, node: str, info: dict[str, Any]) -> None:
        value = json.dumps(info, separators=(",", ":"))
        key = f"{self.prefix}/nodes/{node}"
        for _ in range(2):
            if not self._beat_lease:
                self._beat_lease = await self.client.lease_grant(
                    max(3, math.ceil(3 * self.heartbeat_interval)), retry=False)
            try:
                await self.client.put(key, value, self._beat_lease, retry=False)
                await self.client.lease_keepalive(self._beat_lease)
                return
            except LeaseNotFound:
                self._beat_lease = 0

    # -- reading ---------------------------------------------------------------

    async def snapshot(self, on_bans: BansHandler | None = None) -> Snapshot:
        """The whole prefix at one revision. With ``on_bans``, each page's bans
        are handed to it as soon as they are decoded, with the snapshot so far:
        keys come in order, so the allowlist (``allow/`` < ``bans/``) is whole
        by the first ban; the unban requests and heartbeats come after."""
        snap = Snapshot()
        skipped_before = self.skipped  # self.skipped counts every listing's and the watch's

        async def page(kvs: Sequence[RawKV], first: bool) -> None:
            nonlocal snap, skipped_before
            if first:  # a listing started again on another endpoint
                snap = Snapshot()
                skipped_before = self.skipped
            start = len(snap.bans)
            with paused_gc():  # a page's 20k bans made (see paused_gc)
                await self._take(kvs, snap)
            if on_bans is not None and len(snap.bans) > start:
                on_bans(snap, snap.bans[start:])

        revision, _ = await self.client.range_prefix(self.prefix + "/", on_page=page)
        snap.position = revision
        snap.skipped = self.skipped - skipped_before
        self.revision = revision
        return snap

    async def _take(self, kvs: Sequence[RawKV], snap: Snapshot) -> None:
        """Decode a listing's page into ``snap``."""
        bans_at = (self.prefix + "/bans/").encode()
        n = len(bans_at)
        decode, bans = SharedBan.decode, snap.bans
        for i, kv in enumerate(kvs):
            if i % LISTING_SLICE == LISTING_SLICE - 1:
                # A new node's listing is decoded while its daemon starts
                # (ClusterHooks.prepare): its local bans must not wait for all of it.
                await asyncio.sleep(0)
            key = kv.key
            if key.startswith(bans_at):
                # Nearly all of a listing: a ban, decoded here without _parse's
                # dispatch; a bad one goes through _parse to be counted and logged.
                node, _, target = key[n:].decode(errors="replace").partition("/")
                if node and target:
                    try:
                        bans.append(decode(node, target, kv.value))
                        continue
                    except (ValueError, KeyError, TypeError):
                        pass
            item = self._parse(KeyValue(key.decode(errors="replace"), kv.value, 0), "put")
            if isinstance(item, SharedBan):
                snap.bans.append(item)
            elif isinstance(item, AllowPut):
                snap.allow.append(item.cidr)
            elif isinstance(item, UnbanAsked):
                snap.unbans.append(item)
            elif isinstance(item, NodeBeat):
                snap.nodes[item.node] = item.info

    async def changes(self, after: Snapshot, *, own: str = "") -> AsyncIterator[list[Change]]:
        """Every change after ``after``, across reconnects to any endpoint, but
        the puts and deletes of node ``own``'s bans (its own writes coming back:
        a burst's thousands, not decoded for nothing)."""
        self.revision = after.position
        mine = self.ban_key(own, "") if own else None
        delay = 0.1
        while True:
            try:
                async for revision, events in self.client.watch(self.prefix + "/",
                                                                self.revision + 1):
                    delay = 0.1
                    out = self._changes(events, mine)
                    self.revision = max(self.revision, revision)
                    if out:
                        yield out
            except EtcdCompacted as exc:
                log.warning("cluster_history_compacted", revision=self.revision,
                            compacted=exc.compact_revision, note="relisting")
                raise FeedResync(str(exc)) from exc
            except EtcdUnavailable as exc:
                log.warning("cluster_watch_lost", error=str(exc)[:300],
                            resume_at=self.revision + 1, next=self.client.endpoint)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _changes(self, events: list[WatchEvent], mine: str | None = None) -> list[Change]:
        out: list[Change] = []
        for e in events:
            if mine is not None and e.kv.key.startswith(mine):
                continue
            item = self._parse(e.kv, e.kind)
            if isinstance(item, SharedBan):
                out.append(BanPut(item))
            elif item is not None:
                out.append(item)
        return out

    # -- state -----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.client.watching

    @property
    def last_error(self) -> str | None:
        return self.client.last_error

    @property
    def endpoint(self) -> str | None:
        return self.client.endpoint

    async def close(self) -> None:
        if self._beat_lease:
            try:
                await asyncio.wait_for(self.client.lease_revoke(self._beat_lease), 2.0)
            except (EtcdError, TimeoutError):
                pass
        await self.client.close()
