"""Cluster mode: share this node's bans and enforce the other nodes' bans.

Local first: a local ban is in the kernel before anything here runs; this
service only records the intent in the durable outbox and sends it when the
feed can take it. Peers' bans go through ``BanManager.apply_peer`` (stored with
their origin, refused for this node's protected addresses, never published
again, never an offence of a local jail).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from kfwguard.addresses import IgnoreList
from kfwguard.bans import BanManager, GcHold, is_peer_jail, paused_gc, peer_jail
from kfwguard.cluster.etcdtypes import EtcdError
from kfwguard.cluster.feed import (
    AllowGone,
    AllowPut,
    BanGone,
    BanPut,
    Change,
    DecisionFeed,
    FeedResync,
    NodeBeat,
    NodeGone,
    SharedBan,
    Snapshot,
    UnbanAsked,
)
from kfwguard.cluster.outbox import Outbox, OutboxError, Pending
from kfwguard.config import ClusterConfig, Config
from kfwguard.firewall.bantable import Target
from kfwguard.store import BanRow

log = structlog.get_logger("kfwguard.cluster")

# A peer's ban is enforced here for at most this long from now, whatever its
# expiry says (a broken or hostile node cannot ban for years).
MAX_PEER_BAN = 30 * 86400.0

# A node's baseline must differ for this many heartbeat intervals before the
# alert fires (a rolling restart or a reload passes through short differences),
# and a firing alert is raised again after BASELINE_ALERT_REFRESH seconds
# (Alertmanager ends it by itself at alerts.alertmanager.CLUSTER_ALERT_SECONDS).
BASELINE_ALERT_HOLD = 3
BASELINE_ALERT_REFRESH = 12 * 3600.0

# Outbox intents per publish() call (etcd: up to 8 transactions of 128, its
# default --max-txn-ops, sent at once), and calls in flight at once. A burst's
# detection holds the event loop for a block of lines per turn and each call
# costs two turns: large calls keep the publishing up with the detection.
PUBLISH_CHUNK = 1024
PUBLISH_IN_FLIGHT = 4
ROWS_SLICE = 20_000  # peers' bans made into rows between two turns of the event loop
LISTED_SLICE = 5_000  # a listing's bans checked and queued for the kernel at a time
LISTING_GC_WAIT = 1.0  # seconds a listing's next part is awaited with cyclic GC off

_new = tuple.__new__

PROPAGATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Listing:
    """A snapshot of the feed, and the seconds it took, asked for ahead of the
    service's start (ClusterHooks.prepare). Its bans come out part by part
    in ``parts`` as the feed reads them, ended by None, for the service to
    enforce while the rest is read."""

    def __init__(self, feed: DecisionFeed) -> None:
        self.asked = time.perf_counter()
        self.parts: asyncio.Queue[tuple[Snapshot, list[SharedBan]] | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._list(feed), name="cluster:listing")

    async def _list(self, feed: DecisionFeed) -> tuple[Snapshot, float]:
        t0 = time.perf_counter()
        try:
            snap = await feed.snapshot(
                on_bans=lambda head, bans: self.parts.put_nowait((head, bans)))
        finally:
            self.parts.put_nowait(None)
        return snap, time.perf_counter() - t0

    def cancel(self) -> None:
        self.task.cancel()


def node_name(cfg: ClusterConfig) -> str:
    """The config's name, else $NODE_NAME (the DaemonSet sets it from
    spec.nodeName), else the hostname."""
    name = cfg.node_name or os.environ.get("NODE_NAME", "") or socket.gethostname()
    if not name or "/" in name:
        raise ValueError(f"cluster node name {name!r} is empty or has a '/'")
    return name


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _networks(cidrs: Sequence[str]) -> dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """An allowlist as listed (CIDR text -> network), its unreadable entries left out."""
    return {c: n for c in cidrs if (n := _network(c)) is not None}


class ClusterService:
    def __init__(self, cfg: Config, bans: BanManager, feed: DecisionFeed, *,
                 clock: Any = time.time) -> None:
        assert cfg.cluster is not None
        self.cfg = cfg
        self.ccfg = cfg.cluster
        self.node = node_name(cfg.cluster)
        self.bans = bans
        self.feed = feed
        self._clock = clock
        self.outbox: Outbox | None = None
        self.share = set(cfg.cluster.share_jails)
        # Never enforce a peer's ban of these (on top of the BanManager's own
        # ignore lists: this node's addresses, loopback, ignoreip).
        b = cfg.baseline
        self.protected = IgnoreList([*b.admin_cidrs, *b.cluster_cidrs, *b.control_plane_cidrs,
                                     *b.pod_cidrs, *b.service_cidrs])
        for ep in cfg.cluster.endpoints:
            host = ep.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
            if (net := _network(host)) is not None:
                self.protected.add(net)
        self.allow: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        # The publisher's state: the last outbox seq it took, the targets in
        # flight (-> seq), newer intents waiting for those, and intents they
        # unblocked, to be sent next.
        self._cursor = 0
        self._inflight: dict[str, int] = {}
        self._blocked: dict[str, Pending] = {}
        self._ready: collections.deque[Pending] = collections.deque()
        self._tasks: list[asyncio.Task[None]] = []
        self.stats = {"published": 0, "received": 0, "refused": 0, "withdrawn": 0,
                      "resyncs": 0, "skipped": 0, "publish_errors": 0, "crashes": 0}
        self.last_propagation: float | None = None
        self.propagation: list[float] = []  # recent samples, for status
        self.on_propagation: list[Any] = []
        self.synced = asyncio.Event()
        self.list_seconds = 0.0
        self.enforce_seconds = 0.0  # from asking for the last listing to all of it in the kernel
        # Extra heartbeat fields (baseline fingerprints, drift), set by the hooks.
        self.beat_info: Any = lambda: {}
        self.ban_nodes: set[str] = set()  # nodes that have shared bans
        # The baseline alert (_check_baselines): called with (node, firing, why).
        self.on_baseline_alert: list[Callable[[str, bool, str], None]] = []
        self._differs: dict[str, float] = {}  # node -> since when its baseline differs
        self._alerted: dict[str, float] = {}  # node -> when its alert was last raised
        self.seen_nodes: set[str] = set()  # every node that had a heartbeat
        self._listing: Listing | None = None

    # -- lifecycle -------------------------------------------------------------

    def open_outbox(self, state_dir: Path) -> None:
        try:
            self.outbox = Outbox(state_dir / "cluster.db")
        except OutboxError as exc:
            log.error("cluster_outbox_unavailable", error=str(exc),
                      note="shared bans are sent from memory only")
            self.outbox = Outbox(Path(":memory:"))

    async def start(self, state_dir: Path, listing: Listing | None = None) -> None:
        """Start sharing; ``listing``, asked for earlier, is the first snapshot."""
        self._listing = listing
        self.open_outbox(state_dir)
        self.bans.on_ban.append(self._local_ban)
        self.bans.on_unban.append(self._local_unban)
        self._tasks = [
            asyncio.create_task(self._supervised(self._publisher), name="cluster:publish"),
            asyncio.create_task(self._supervised(self._follow), name="cluster:follow"),
            asyncio.create_task(self._supervised(self._heartbeat), name="cluster:heartbeat"),
        ]
        log.info("cluster_started", node=self.node, prefix=self.ccfg.prefix,
                 endpoints=self.ccfg.endpoints, pending=len(self.outbox or ()))

    async def _supervised(self, loop: Any) -> None:
        """Run one of the service's loops forever: a bug or an unexpected error
        costs a logged restart, never the node's sharing for good."""
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats["crashes"] += 1
                log.exception("cluster_task_restarting", task=loop.__name__)
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._listing is not None:
            self._listing.cancel()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        with contextlib.suppress(Exception):
            await self.feed.close()
        if self.outbox is not None:
            self.outbox.close()

    # -- local decisions -> outbox ---------------------------------------------

    def _shared(self, row: BanRow) -> bool:
        # Observe mode's simulated bans stay on this node: peers would enforce them.
        return (not row.simulated and not is_peer_jail(row.jail)
                and (not self.share or row.jail in self.share))

    def _intent(self, target: str) -> bytes | None:
        """What this node publishes for ``target`` now: its longest local shared
        ban, or None (delete the key)."""
        rows = [r for r in self.bans.rows_of(target) if self._shared(r)]
        if not rows:
            return None
        r = max(rows, key=lambda r: r.expires_at)
        return SharedBan(self.node, target, r.jail, r.reason, r.banned_at, r.expires_at,
                         r.banned_at).encode()

    def _queue(self, targets: Sequence[str]) -> None:
        items = [(t, self._intent(t)) for t in dict.fromkeys(targets)]
        if not items:
            return
        if self.outbox is None:
            self.open_outbox(self.cfg.state_dir)
        assert self.outbox is not None
        self.outbox.queue(items)
        self._wake.set()

    def _local_ban(self, rows: Sequence[BanRow]) -> None:
        self._queue([r.target for r in rows if self._shared(r)])

    def _local_unban(self, rows: Sequence[BanRow]) -> None:
        now = self._clock()
        # Expired bans leave with their lease; only lifted ones need a delete.
        self._queue([r.target for r in rows if self._shared(r) and r.expires_at > now])

    async def _publisher(self) -> None:
        """Send the outbox as it fills: PUBLISH_IN_FLIGHT senders, each taking up
        to PUBLISH_CHUNK intents, publishing them and going on with the next
        ones at once. A burst is published while it is still being detected
        (each hand-over between tasks would cost an event-loop turn, and a
        burst's detection holds the loop for a while each turn), and a slow
        transaction holds up only its own intents. An intent for a target
        whose previous one is still in flight waits for it (two transactions
        in flight land in any order)."""
        self._inflight.clear()
        self._blocked.clear()
        self._ready.clear()
        self._cursor = 0
        senders = [asyncio.create_task(self._sender(), name="cluster:send")
                   for _ in range(PUBLISH_IN_FLIGHT)]
        try:
            await asyncio.gather(*senders)
        finally:
            for t in senders:
                t.cancel()
            await asyncio.gather(*senders, return_exceptions=True)

    async def _sender(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                self._wake.clear()
                await self._wake.wait()
                continue
            for p in batch:
                self._inflight[p.target] = p.seq
            await self._send(batch)

    def _take(self) -> list[Pending]:
        """The next intents to send: those a finished send unblocked, then the
        outbox's newer ones; one per target (the newest), none in flight."""
        if self.outbox is None:
            return []
        out: dict[str, Pending] = {}
        while self._ready and len(out) < PUBLISH_CHUNK:
            p = self._ready.popleft()
            if p.target in self._inflight:
                self._blocked[p.target] = p
            elif (old := out.get(p.target)) is None or old.seq < p.seq:
                out[p.target] = p
        if len(out) < PUBLISH_CHUNK:
            for p in self.outbox.due(PUBLISH_CHUNK - len(out), after=self._cursor):
                self._cursor = max(self._cursor, p.seq)
                if p.target in self._inflight:
                    old = self._blocked.get(p.target)
                    if old is None or old.seq < p.seq:
                        self._blocked[p.target] = p
                    continue
                old = out.get(p.target)
                if old is None or old.seq < p.seq:
                    out[p.target] = p
        return list(out.values())

    async def _send(self, batch: list[Pending]) -> None:
        """Publish ``batch`` until the feed takes it (errors are retried after a
        growing delay: never dropped), then forget it in the outbox."""
        try:
            puts: list[SharedBan] = []
            values: list[bytes] = []
            deletes: list[str] = []
            for p in batch:
                if p.value is None:
                    deletes.append(p.target)
                    continue
                try:
                    b = SharedBan.decode(self.node, p.target, p.value)
                except (ValueError, KeyError):
                    continue
                puts.append(b)
                values.append(p.value)
            delay = 0.5
            while True:
                now = self._clock()
                keep = [i for i, b in enumerate(puts) if b.expires_at > now]
                try:
                    await self.feed.publish(self.node, [puts[i] for i in keep], deletes,
                                            encoded=[values[i] for i in keep])
                    break
                except (EtcdError, OSError) as exc:
                    self.stats["publish_errors"] += 1
                    log.error("cluster_publish_failed", error=str(exc)[:300], retry_in=delay)
                except Exception:  # a bug: the intents are kept and tried again
                    self.stats["crashes"] += 1
                    log.exception("cluster_publish_crashed", retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            assert self.outbox is not None
            self.outbox.done(batch)
            self.stats["published"] += len(batch)
        finally:
            for p in batch:
                if self._inflight.get(p.target) == p.seq:
                    del self._inflight[p.target]
                    if (waiting := self._blocked.pop(p.target, None)) is not None:
                        self._ready.append(waiting)
                        self._wake.set()

    # -- peers' decisions -> kernel ---------------------------------------------

    def _set_allow(self, allow: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        """Take a new allowlist; the BanManager asks the guard only while it has
        entries (a guard costs every ban an address object)."""
        self.allow = allow
        guards = self.bans.guards
        if allow and self._allowed not in guards:
            guards.append(self._allowed)
        elif not allow and self._allowed in guards:
            guards.remove(self._allowed)

    def _allowed(self, target: Target) -> str | None:
        for cidr, net in self.allow.items():
            if (target.version == net.version
                    and (target.overlaps(net) if isinstance(
                        target, ipaddress.IPv4Network | ipaddress.IPv6Network)
                         else target in net)):
                return f"{target} is on the cluster allowlist ({cidr})"
        return None

    async def _peer_rows(self, bans: Sequence[SharedBan]) -> list[BanRow]:
        """Rows for the peers' bans (apply_peer refuses an address not in
        canonical form, and this node's protected addresses); a CIDR not in
        canonical form is skipped here. A listing's are made in slices, the
        event loop turning between them (the local pipeline runs beside)."""
        rows: list[BanRow] = []
        for i in range(0, len(bans), ROWS_SLICE):
            if i:
                await asyncio.sleep(0)
            rows += self._peer_rows_of(bans[i:i + ROWS_SLICE])
        return rows

    def _peer_rows_of(self, bans: Sequence[SharedBan]) -> list[BanRow]:
        rows = []
        limit = self._clock() + MAX_PEER_BAN
        jails: dict[str, str] = {}
        me = self.node
        with paused_gc():
            for b in bans:
                node, target = b.node, b.target
                if node == me:
                    continue
                if "/" in target and str(_network(target)) != target:
                    self.stats["skipped"] += 1
                    log.warning("peer_ban_invalid", origin=node, target=target[:100])
                    continue
                jail = jails.get(node)
                if jail is None:
                    jail = jails[node] = peer_jail(node)
                # Offence 0: no offence of this node (and no count to store).
                # tuple.__new__: a new node makes 100k (the NamedTuple's __new__
                # is a Python call).
                exp = b.expires_at
                rows.append(_new(BanRow, (target, jail, f"{node}/{b.jail}: {b.reason}",
                                          b.banned_at, exp if exp < limit else limit, 0,
                                          False)))
        return rows

    async def _apply(self, bans: Sequence[SharedBan]) -> list[BanRow]:
        """Enforce peers' bans from the watch: propagation samples, stored once
        in the kernel."""
        rows = await self._peer_rows(bans)
        marks: list[float] = []
        refused = self.bans.stats.refused_peer
        taken = await self.bans.apply_peer(rows, applied=lambda: marks.append(time.time()),
                                           protected=self.protected)
        self.stats["refused"] += self.bans.stats.refused_peer - refused
        if not taken:
            return []
        done = marks[0] if marks else time.time()
        self.stats["received"] += len(taken)
        decided = {b.target: b.decided_at for b in bans}
        for r in taken:
            d = decided.get(r.target)
            if d is not None and d > 0:
                delay = max(0.0, done - d)
                self.last_propagation = delay
                self.propagation.append(delay)
                for cb in self.on_propagation:
                    cb(delay)
        del self.propagation[:-1000]
        return taken

    async def _follow(self) -> None:
        while True:
            listing, self._listing = self._listing, None
            listing = listing or Listing(self.feed)
            try:
                taken: list[BanRow] = []
                with GcHold() as gc_off:
                    while (part := await self._next_part(listing, gc_off)) is not None:
                        taken += await self._apply_listed(*part)
                    await self.bans.flush()  # every listed ban is in the kernel
                    self.enforce_seconds = time.perf_counter() - listing.asked
                    await self.bans.index_listed(taken)
                await self.bans.flush()
                await self.bans.store_peer(taken)
                snap, self.list_seconds = await listing.task
            except (EtcdError, OSError) as exc:
                log.error("cluster_list_failed", error=str(exc)[:300])
                await asyncio.sleep(1.0)
                continue
            finally:
                # Stopped (or failed) while the listing is still read: it ends too.
                if not listing.task.done():
                    listing.cancel()
            await self._reconcile(snap)
            self.synced.set()
            try:
                async for changes in self.feed.changes(snap, own=self.node):
                    await self._on_changes(changes)
            except FeedResync:
                self.stats["resyncs"] += 1
                continue

    @staticmethod
    async def _next_part(listing: Listing, gc_off: GcHold
                         ) -> tuple[Snapshot, list[SharedBan]] | None:
        """The listing's next part, with cyclic GC paused (``gc_off``) from
        the first part until the caller leaves ``gc_off``: a listing makes
        100k+ objects that live on, and a collection each time the pause
        ended between two parts walked everything made so far (0.3 s of a
        new node's start). Not across a long wait: when the next part is
        LISTING_GC_WAIT late (etcd slow or out, a listing waits out an
        outage), collection resumes until it comes."""
        parts = listing.parts
        if parts.empty():
            try:
                part = await asyncio.wait_for(parts.get(), LISTING_GC_WAIT)
            except TimeoutError:
                gc_off.release()
                part = await parts.get()
        else:
            part = parts.get_nowait()
        if part is not None:
            gc_off.hold()
        return part

    async def _apply_listed(self, head: Snapshot, bans: list[SharedBan]) -> list[BanRow]:
        """Put a part of a listing's bans in the kernel's queue as soon as it
        is read (the allowlist comes before them, whole); returns the rows
        taken, for the index and the store once the kernel has them all. Not
        propagation samples: they may have been decided hours ago."""
        if set(head.allow) != set(self.allow):
            self._set_allow(_networks(head.allow))
        if self.allow:
            bans = [b for b in bans if not self._allowed_text(b.target)]
        refused = self.bans.stats.refused_peer
        taken: list[BanRow] = []
        for i in range(0, len(bans), LISTED_SLICE):
            if i:
                # The flush task plans this slice and hands it to its thread,
                # which sends it while the next slice is checked here: the
                # kernel has a page one slice after it is read, not one page.
                await asyncio.sleep(0)
            taken += self.bans.take_listed(self._peer_rows_of(bans[i:i + LISTED_SLICE]),
                                           self.protected)
        self.stats["refused"] += self.bans.stats.refused_peer - refused
        self.stats["received"] += len(taken)
        return taken

    async def _reconcile(self, snap: Snapshot) -> None:
        """Make this node match a full listing whose bans are already enforced
        (_apply_listed): lift peers' bans that are gone, take in the unban
        requests, and republish own bans the store lost."""
        self._set_allow(_networks(snap.allow))
        self.nodes = dict(snap.nodes)
        self.seen_nodes |= set(self.nodes)
        self.ban_nodes = {b.node for b in snap.bans}
        now = self._clock()
        held = [(r.target, r.jail) for r in self.bans.active() if is_peer_jail(r.jail)]
        listed = {(peer_jail(b.node), b.target) for b in snap.bans if b.node != self.node}
        gone = [k for k in held if (k[1], k[0]) not in listed]
        self.bans.withdraw_peer(gone)
        self.stats["withdrawn"] += len(gone)
        for u in snap.unbans:
            self._unban_asked(u)
        # Own subtree: what the store holds must be what this node enforces.
        mine = {b.target for b in snap.bans if b.node == self.node and b.expires_at > now}
        pending = self.outbox.targets() if self.outbox is not None else set()
        local = {r.target for r in self.bans.active() if self._shared(r)}
        fix = [t for t in (local ^ mine) if t not in pending]
        if fix:
            log.info("cluster_own_bans_reconciled", count=len(fix))
            self._queue(fix)
        self._check_baselines()
        log.info("cluster_synced", revision=snap.position,
                 list_seconds=round(self.list_seconds, 3),
                 enforced_seconds=round(self.enforce_seconds, 3), bans=len(snap.bans),
                 peers_bans=len(listed), withdrawn=len(gone), allow=len(self.allow),
                 nodes=sorted(self.nodes), skipped=snap.skipped)

    def _allowed_text(self, target: str) -> bool:
        if not self.allow:
            return False
        net = _network(target)
        return net is not None and self._allowed(
            net if "/" in target else net.network_address) is not None

    async def _on_changes(self, changes: Sequence[Change]) -> None:
        puts: dict[tuple[str, str], SharedBan] = {}  # in order, the newest per key
        beats = False
        for c in changes:
            if isinstance(c, BanPut):
                self.ban_nodes.add(c.ban.node)
                if c.ban.node != self.node and not self._allowed_text(c.ban.target):
                    puts.pop((c.ban.node, c.ban.target), None)
                    puts[(c.ban.node, c.ban.target)] = c.ban
            elif isinstance(c, BanGone):
                if c.node != self.node:
                    puts.pop((c.node, c.target), None)
                    self.stats["withdrawn"] += len(
                        self.bans.withdraw_peer([(c.target, peer_jail(c.node))]))
            elif isinstance(c, AllowPut):
                net = _network(c.cidr)
                if net is not None:
                    self._set_allow({**self.allow, c.cidr: net})
                    self._lift_allowed(net)
            elif isinstance(c, AllowGone):
                self._set_allow({k: v for k, v in self.allow.items() if k != c.cidr})
            elif isinstance(c, UnbanAsked):
                self._unban_asked(c)
            elif isinstance(c, NodeBeat):
                self.nodes[c.node] = c.info
                self.seen_nodes.add(c.node)
                beats = True
            elif isinstance(c, NodeGone):
                self.nodes.pop(c.node, None)
                beats = True
        if puts:
            await self._apply(list(puts.values()))
        if beats:
            self._check_baselines()

    def _lift_allowed(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        for r in self.bans.active():
            t = _network(r.target)
            if t is not None and t.version == net.version and t.overlaps(net):
                if is_peer_jail(r.jail):
                    self.bans.withdraw_peer([(r.target, r.jail)])
                else:
                    self.bans.unban(ipaddress.ip_network(r.target) if "/" in r.target
                                    else ipaddress.ip_address(r.target), r.jail)

    def _unban_asked(self, u: UnbanAsked) -> None:
        rows = [r for r in self.bans.rows_of(u.target) if r.banned_at <= u.at + 1.0]
        if not rows:
            return
        log.info("cluster_unban", target=u.target, by=u.by, rows=len(rows))
        net = _network(u.target)
        if net is None:
            return
        target: Target = net if "/" in u.target else net.network_address
        self.bans.withdraw_peer([(r.target, r.jail) for r in rows if is_peer_jail(r.jail)])
        for r in rows:
            if not is_peer_jail(r.jail):
                self.bans.unban(target, r.jail)

    # -- heartbeat ---------------------------------------------------------------

    async def _heartbeat(self) -> None:
        from kfwguard import __version__

        # The first beat waits for the first sync (two intervals at most): it
        # loads the gateway client and lists the baseline table, CPU a new
        # node needs for putting the shared bans into its kernel first.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.synced.wait(), 2 * self.ccfg.heartbeat)
        while True:
            info: dict[str, Any] = {
                "node": self.node, "version": __version__, "at": self._clock(),
                "bans": len(self.bans.active()),
                "last_error": self.feed.last_error,
                "propagation_seconds": self.last_propagation,
            }
            try:
                info.update(await asyncio.to_thread(self.beat_info))
            except Exception as exc:  # a status probe must not stop the heartbeat
                info["last_error"] = f"status: {exc}"
            try:
                await asyncio.wait_for(self.feed.heartbeat(self.node, info),
                                       self.ccfg.heartbeat * 2)
            except (EtcdError, OSError, TimeoutError) as exc:
                log.warning("cluster_heartbeat_failed", error=str(exc)[:200])
            await asyncio.sleep(self.ccfg.heartbeat)

    def members(self) -> list[dict[str, Any]]:
        """Every node known, with its state: ``missing`` (heartbeat gone),
        ``baseline_differs`` (its rendered baseline is not the majority's),
        ``drifted`` (its live baseline is not what it applied), else ``up``."""
        rendered = [i.get("baseline_rendered") for i in self.nodes.values()
                    if i.get("baseline_rendered")]
        majority = max(set(rendered), key=rendered.count) if rendered else None
        out = []
        for name in sorted(self.seen_nodes | self.ban_nodes | set(self.nodes)):
            info = self.nodes.get(name)
            m: dict[str, Any] = {"node": name, **(info or {})}
            if info is None:
                m["state"] = "missing"
            elif majority is not None and info.get("baseline_rendered") not in (None, majority):
                m["state"] = "baseline_differs"
            elif info.get("baseline_live") != info.get("baseline_applied"):
                m["state"] = "drifted"
            else:
                m["state"] = "up"
            out.append(m)
        return out

    def _check_baselines(self) -> None:
        """Raise the baseline alert for a node whose baseline is not the cluster's
        (state ``baseline_differs`` or ``drifted``) for BASELINE_ALERT_HOLD
        heartbeats, and resolve it when it agrees again. Only one node
        announces it: the first by name among those with a heartbeat, so an
        operator hears it once, not from every node."""
        now = self._clock()
        hold = BASELINE_ALERT_HOLD * self.ccfg.heartbeat
        reporter = min({*self.nodes, self.node}) == self.node
        for m in self.members():
            name, state = m["node"], m["state"]
            if state in ("baseline_differs", "drifted"):
                since = self._differs.setdefault(name, now)
                fired = self._alerted.get(name)
                if reporter and now - since >= hold and (
                        fired is None or now - fired >= BASELINE_ALERT_REFRESH):
                    self._alerted[name] = now
                    why = ("its baseline policy differs from the majority's"
                           if state == "baseline_differs"
                           else "its live baseline table differs from the policy it applied")
                    log.warning("cluster_baseline_differs", node=name, state=state, why=why)
                    for cb in self.on_baseline_alert:
                        cb(name, True, why)
            else:
                self._differs.pop(name, None)
                if self._alerted.pop(name, None) is not None:
                    why = ("its heartbeat is gone" if state == "missing"
                           else "its baseline agrees with the cluster again")
                    log.info("cluster_baseline_agrees", node=name, state=state)
                    for cb in self.on_baseline_alert:
                        cb(name, False, why)

    def node_states(self) -> dict[str, int]:
        """How many nodes are in each state (for the metric)."""
        out = {"up": 0, "missing": 0, "baseline_differs": 0, "drifted": 0}
        for m in self.members():
            out[m["state"]] += 1
        return out

    # -- operator --------------------------------------------------------------

    async def unban_everywhere(self, target: str) -> None:
        """``kfwguard unban --cluster``: lift it here now, and ask every node."""
        now = self._clock()
        self._unban_asked(UnbanAsked(target, self.node, now))
        await self.feed.ask_unban(target, self.node, now)

    def status(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "connected": self.feed.connected,
            "endpoint": self.feed.endpoint,
            "last_error": self.feed.last_error,
            "outbox": len(self.outbox) if self.outbox is not None else None,
            "allow": sorted(self.allow),
            "nodes": self.members(),
            "last_propagation_seconds": self.last_propagation,
            **self.stats,
        }
