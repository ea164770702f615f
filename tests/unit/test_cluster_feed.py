"""The cluster feed's pure parts: values from peers, key layout, the outbox."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kfwguard.cluster.etcd import EtcdFeed
from kfwguard.cluster.etcdclient import EtcdClient
from kfwguard.cluster.etcdtypes import KeyValue, RawPair, prefix_end
from kfwguard.cluster.feed import (
    AllowPut,
    BanGone,
    NodeGone,
    SharedBan,
    UnbanAsked,
)
from kfwguard.cluster.outbox import Outbox

PREFIX = "/kfwguard/v1"

# Any JSON value a peer could put where a ban value's field goes.
_ANY_JSON = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**12),
                      st.floats(allow_nan=False), st.text(max_size=300),
                      st.sampled_from(["12.5", "1e3", "7", "nan"]),
                      st.lists(st.integers(), max_size=2))


def feed() -> EtcdFeed:
    # No connection is made: only the key parsing is used.
    return EtcdFeed(EtcdClient(["https://127.0.0.1:1"]), PREFIX)


def kv(key: str, value: bytes | str = b"") -> KeyValue:
    return KeyValue(key, value.encode() if isinstance(value, str) else value, 7)


class TestSharedBan:
    def test_round_trip(self) -> None:
        """A ban encodes and decodes to itself."""
        b = SharedBan("node-a", "10.0.0.0/24", "sshd", "why", 100.0, 200.0, 99.5)
        assert b == SharedBan.decode("node-a", "10.0.0.0/24", b.encode())

    @pytest.mark.parametrize("raw", [
        b"", b"not json", b"[]", b"{}", b'{"expires_at": "x", "banned_at": 1}',
        b'{"expires_at": NaN, "banned_at": 1}', b'{"expires_at": Infinity, "banned_at": 1}',
        b'{"expires_at": 1e300, "banned_at": 1}', b'{"expires_at": -5, "banned_at": 1}',
        b"\xff\xfe\x00garbage",
    ])
    def test_hostile_values_refused(self, raw: bytes) -> None:
        """Malformed, infinite, NaN or absurd times raise ValueError (a counted skip)."""
        with pytest.raises((ValueError, KeyError, TypeError)):
            SharedBan.decode("n", "10.0.0.1", raw)

    def test_fast_decoder_in_use(self) -> None:
        """With the cluster extra installed, values are decoded by msgspec (a
        broken import would silently cost a new node ~1 s per 100k bans)."""
        from kfwguard.cluster import feed as feed_module

        assert feed_module._FAST is not None

    @settings(max_examples=300, deadline=None)
    @given(st.fixed_dictionaries({}, optional={
        k: st.one_of(good, _ANY_JSON) for k, good in {
            "jail": st.text(max_size=100), "reason": st.text(max_size=300),
            "banned_at": st.floats(0, 2e9),
            "expires_at": st.floats(0, 2e9) | st.integers(0, 2 * 10**9),
            "decided_at": st.floats(0, 2e9), "x": st.none()}.items()}),
        st.sampled_from(["", " ", "\n"]))
    @example({"jail": "j" * 99, "reason": "r" * 250, "banned_at": 1, "expires_at": 2.5}, "")
    @example({"banned_at": 1.0, "expires_at": 2.0, "decided_at": None}, "")
    @example({"banned_at": "1", "expires_at": 2.0, "jail": 5}, " ")
    @example({"banned_at": True, "expires_at": 2.0, "decided_at": 3e11}, "")
    def test_fast_path_agrees_with_the_stdlib(self, doc: dict[str, object], pad: str) -> None:
        """The msgspec path gives exactly what the stdlib path gives, or refuses
        the same values (whatever a peer writes: wrong types, nulls, strings for
        times, out-of-range times, blanks around)."""
        raw = (pad + json.dumps(doc) + pad).encode()

        def outcome(f: object) -> object:
            try:
                return f("n", "10.0.0.1", raw)  # type: ignore[operator]
            except (ValueError, KeyError, TypeError):
                return "refused"
        assert outcome(SharedBan.decode_lenient) == outcome(SharedBan.decode)

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=80),
           st.text(st.characters(blacklist_categories=()), max_size=250),
           st.floats(0, 1e11 - 1),
           st.floats(0, 1e11 - 1), st.floats(0, 1e11 - 1))
    @example("sshd\u2028", "x\"\\\x00\ud7ff\U0001f600", 0.0, 1e11 - 1, 1857130589.347476)
    @example("sshd", "user \udcff\udc80 from a hostile line", 1.0, 2.0, 1.0)
    def test_encoded_value_reads_back_on_every_path(self, jail: str, reason: str,
                                                    at: float, exp: float,
                                                    decided: float) -> None:
        """What a node publishes (msgspec's encoder with the cluster extra) reads
        back as the same ban through both decoders, and as the same JSON values
        as the stdlib's compact encoding (what nodes without msgspec write); a
        lone surrogate (an undecodable byte of a hostile line) is published too."""
        b = SharedBan("n", "10.0.0.1", jail[:64], reason, at, exp, decided)
        raw = b.encode()
        want = b._replace(reason=reason[:200])
        assert want == SharedBan.decode("n", "10.0.0.1", raw)
        assert want == SharedBan.decode_lenient("n", "10.0.0.1", raw)
        stdlib = json.dumps({"jail": b.jail, "reason": reason[:200], "banned_at": at,
                             "expires_at": exp, "decided_at": decided},
                            separators=(",", ":"))
        assert json.loads(stdlib) == json.loads(raw)

    def test_fast_encoder_in_use(self) -> None:
        """With the cluster extra installed, values are encoded by msgspec."""
        from kfwguard.cluster import feed as feed_module

        assert feed_module._FAST_ENCODE is not None

    def test_long_reason_cut(self) -> None:
        """A peer's reason and jail are cut to bounded lengths."""
        raw = json.dumps({"jail": "j" * 500, "reason": "r" * 5000, "banned_at": 1,
                          "expires_at": 2}).encode()
        b = SharedBan.decode("n", "10.0.0.1", raw)
        assert (64, 200) == (len(b.jail), len(b.reason))


class TestKeys:
    def test_ban_keys_carry_node_and_cidr(self) -> None:
        """bans/<node>/<cidr> splits at the first slash after the node."""
        f = feed()
        b = SharedBan("node-a", "10.1.0.0/16", "sshd", "", 1.0, 2.0, 1.0)
        parsed = f._parse(kv(f.ban_key("node-a", "10.1.0.0/16"), b.encode()), "put")
        assert b == parsed
        assert BanGone("node-a", "10.1.0.0/16") == f._parse(
            kv(f.ban_key("node-a", "10.1.0.0/16")), "delete")

    def test_other_sections(self) -> None:
        """allow/, unban/ and nodes/ keys become their changes."""
        f = feed()
        assert AllowPut("10.2.0.0/24") == f._parse(kv(f"{PREFIX}/allow/10.2.0.0/24"), "put")
        assert UnbanAsked("10.3.0.1", "node-b", 5.0) == f._parse(
            kv(f"{PREFIX}/unban/10.3.0.1", '{"by": "node-b", "at": 5}'), "put")
        assert NodeGone("node-c") == f._parse(kv(f"{PREFIX}/nodes/node-c"), "delete")

    @pytest.mark.parametrize("key,value", [
        (f"{PREFIX}/bans/node-a", b"{}"), (f"{PREFIX}/bans//10.0.0.1", b"{}"),
        (f"{PREFIX}/bans/node-a/10.0.0.1", b"garbage"),
        (f"{PREFIX}/nodes/node-a", b"[1,2]"), (f"{PREFIX}/unban/10.0.0.1", b"{}"),
    ])
    def test_malformed_entries_skipped_and_counted(self, key: str, value: bytes) -> None:
        """A malformed key or value is skipped and counted, never raised."""
        f = feed()
        assert f._parse(kv(key, value), "put") is None
        assert f.skipped == 1

    def test_prefix_end(self) -> None:
        """The range end of a prefix is the prefix with its last byte raised."""
        assert b"/kfwguard/v10" == prefix_end("/kfwguard/v1/")
        assert b"\x00" == prefix_end("")  # everything


class TestOutbox:
    def test_newest_intent_wins_and_survives_reopen(self, tmp_path: Path) -> None:
        """A ban then an unban of one target leaves one delete, kept across a restart."""
        o = Outbox(tmp_path / "cluster.db")
        o.queue([("10.0.0.1", b"ban"), ("10.0.0.2", b"ban")])
        o.queue([("10.0.0.1", None)])
        o.close()
        o = Outbox(tmp_path / "cluster.db")
        assert {("10.0.0.1", None), ("10.0.0.2", b"ban")} == {
            (p.target, p.value) for p in o.due()}

    def test_done_keeps_a_newer_intent(self, tmp_path: Path) -> None:
        """An intent replaced while its older version was being sent stays queued."""
        o = Outbox(tmp_path / "cluster.db")
        o.queue([("10.0.0.1", b"v1")])
        sent = o.due()
        o.queue([("10.0.0.1", b"v2")])
        o.done(sent)
        assert [b"v2"] == [p.value for p in o.due()]
        o.done(o.due())
        assert 0 == len(o)


class TestClusterConfig:
    ISSUE = """
cluster:
  backend: etcd
  endpoints: ["https://10.0.0.11:2379", "https://10.0.0.12:2379", "https://10.0.0.13:2379"]
  tls: {ca: /etc/kfwguard/etcd/ca.crt, cert: /etc/kfwguard/etcd/node.crt, \
key: /etc/kfwguard/etcd/node.key}
  node_name: ""
  prefix: /kfwguard/v1
  share_jails: []
  heartbeat: 5s
"""

    def test_the_documented_section_parses(self) -> None:
        """The cluster: section exactly as the contract writes it is accepted."""
        from kfwguard.config import parse_config

        c = parse_config(self.ISSUE).cluster
        assert c is not None
        assert (3, "/kfwguard/v1", 5.0) == (len(c.endpoints), c.prefix, c.heartbeat)

    @pytest.mark.parametrize("bad,why", [
        ("endpoints: []", "at least 1"),
        ("endpoints: ['10.0.0.1:2379']", "http"),
        ("heartbeat: 0s", "heartbeat"),
        ("node_name: 'a/b'", "node_name"),
        ("prefix: 'relative'", "prefix"),
        ("backend: consul", "backend"),
        ("tls: {ca: /x}", "cert"),
    ])
    def test_bad_values_named(self, bad: str, why: str) -> None:
        """A bad cluster value is refused with an error naming it."""
        from kfwguard.config import ConfigError, parse_config

        base = {"endpoints": "endpoints: ['https://10.0.0.1:2379']"}
        key = bad.split(":")[0]
        lines = [bad] + [v for k, v in base.items() if k != key]
        text = "cluster:\n" + "".join(f"  {ln}\n" for ln in lines)
        with pytest.raises(ConfigError, match=why):
            parse_config(text)

    def test_node_name_from_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without node_name, $NODE_NAME (the DaemonSet's spec.nodeName) names the node."""
        from kfwguard.cluster.service import node_name
        from kfwguard.config import parse_config

        monkeypatch.setenv("NODE_NAME", "worker-7")
        c = parse_config("cluster: {endpoints: ['https://10.0.0.1:2379']}").cluster
        assert c is not None
        assert "worker-7" == node_name(c)


class TestOutboxReadOn:
    def test_due_reads_on_from_a_seq(self, tmp_path: Path) -> None:
        """due(after=) gives, oldest first, only intents queued or replaced after a
        seq: a target queued again comes back with its new intent."""
        o = Outbox(tmp_path / "cluster.db")
        o.queue([("10.0.0.1", b"a"), ("10.0.0.2", b"b")])
        first = o.due(10, after=0)
        assert ["10.0.0.1", "10.0.0.2"] == [p.target for p in first]
        o.queue([("10.0.0.3", b"c"), ("10.0.0.1", None)])
        later = o.due(10, after=first[-1].seq)
        assert [("10.0.0.3", b"c"), ("10.0.0.1", None)] == [(p.target, p.value) for p in later]
        assert [] == o.due(10, after=later[-1].seq)
        assert 1 == len(o.due(1, after=0))


class TestOwnChanges:
    def test_own_bans_left_out_of_changes(self) -> None:
        """The watch's events for this node's own bans (its writes coming back)
        are dropped before decoding; other nodes' bans and deletes pass."""
        from kfwguard.cluster.etcdtypes import WatchEvent
        from kfwguard.cluster.feed import BanPut

        f = feed()
        ban = SharedBan("x", "10.0.0.1", "sshd", "r", 1.0, 2.0, 1.0).encode()
        events = [WatchEvent("put", kv(f"{PREFIX}/bans/node-a/10.0.0.1", ban)),
                  WatchEvent("put", kv(f"{PREFIX}/bans/node-a/10.0.0.1", b"not json")),
                  WatchEvent("delete", kv(f"{PREFIX}/bans/node-a/10.0.0.2")),
                  WatchEvent("put", kv(f"{PREFIX}/bans/node-ab/10.0.0.3", ban)),
                  WatchEvent("delete", kv(f"{PREFIX}/bans/node-b/10.0.0.4"))]
        out = f._changes(events, f.ban_key("node-a", ""))
        assert [BanPut, BanGone] == [type(c) for c in out]
        assert 0 == f.skipped


class _CountingClient:
    """Counts lease grants and holds each until the test releases it (no etcd:
    only the feed's lease cache is under test)."""

    def __init__(self) -> None:
        self.grants = 0
        self.release = asyncio.Event()

    async def lease_grant(self, ttl: int, *, retry: bool = True) -> int:
        self.grants += 1
        await self.release.wait()
        return 1000 + self.grants


class TestLeases:
    async def test_one_grant_per_expiry_minute_however_many_ask(self) -> None:
        """Senders that need the same new expiry-minute lease at once share one
        grant (etcd revokes leases one by one: a lease each would cost it)."""
        from tests.conftest import eventually

        client = _CountingClient()
        f = EtcdFeed(client, PREFIX)  # type: ignore[arg-type]
        asking = asyncio.gather(*(f._lease_for(7201.0 + i) for i in range(8)))
        # The eight asked in one loop turn; the first grant is held until all did.
        await eventually(lambda: client.grants >= 1)
        client.release.set()
        assert [1001] * 8 == await asking
        assert 1 == client.grants


class _HeldFeed:
    """A DecisionFeed whose first publish() is held until the test releases it:
    a real etcd cannot be made to hold one transaction at a chosen moment."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []
        self.release = asyncio.Event()

    async def publish(self, node: str, puts: Sequence[SharedBan], deletes: Sequence[str],
                      *, encoded: Sequence[bytes] = ()) -> None:
        self.calls.append(([b.target for b in puts], list(deletes)))
        if len(self.calls) == 1:
            await self.release.wait()


class TestPublisher:
    async def test_sends_go_on_while_one_is_in_flight_and_keep_order(
            self, tmp_path: Path) -> None:
        """While one publish is in flight, intents for other targets are published
        at once; a newer intent for the target in flight waits for it and lands
        after it; the outbox is empty once all returned."""
        from kfwguard.bans import BanManager
        from kfwguard.cluster.service import ClusterService
        from kfwguard.config import parse_config
        from kfwguard.firewall.bantable import BanTable
        from kfwguard.firewall.nft import Nft
        from tests.conftest import eventually

        cfg = parse_config(f"state_dir: {tmp_path}\n"
                           "cluster: {endpoints: ['https://10.0.0.1:2379'], node_name: n}")
        held = _HeldFeed()
        # The table is never touched: the publisher reads only the outbox.
        svc = ClusterService(cfg, BanManager(BanTable(Nft(), "kfwtest-unused"), None),
                             held)  # type: ignore[arg-type]
        svc.open_outbox(tmp_path)
        assert svc.outbox is not None
        ban = SharedBan("n", "10.0.0.1", "sshd", "r", 1.0, 4e9, 1.0).encode()
        task = asyncio.create_task(svc._publisher())
        try:
            svc.outbox.queue([("10.0.0.1", ban)])
            svc._wake.set()
            await eventually(lambda: len(held.calls) == 1)
            svc.outbox.queue([("10.0.0.2", ban), ("10.0.0.1", None)])
            svc._wake.set()
            await eventually(lambda: len(held.calls) == 2)
            assert (["10.0.0.2"], []) == held.calls[1]
            # The newer intent for 10.0.0.1 was taken with 10.0.0.2's and held back
            # behind the publish in flight, not sent beside it.
            await eventually(lambda: "10.0.0.1" in svc._blocked)
            assert 2 == len(held.calls)
            held.release.set()
            await eventually(lambda: len(held.calls) == 3 and len(svc.outbox or ()) == 0)
            assert [(["10.0.0.1"], []), (["10.0.0.2"], []), ([], ["10.0.0.1"])] == held.calls
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class _PagedClient:
    """Serves listings page by page, as EtcdClient.range_prefix does (no etcd:
    only the feed's handling of pages is under test). Each listing is a list
    of pages; a second listing stands for one retried on another endpoint."""

    def __init__(self, listings: list[list[list[KeyValue]]]) -> None:
        self.listings = listings

    async def range_prefix(self, prefix: str, *, on_page: object = None,
                           **_: object) -> tuple[int, list[KeyValue]]:
        assert callable(on_page)
        out: list[KeyValue] = []  # with on_page, the pages go there only
        for pages in self.listings:
            for i, page in enumerate(pages):
                await on_page([RawPair(k.key.encode(), k.value) for k in page], i == 0)
        return 42, out


class TestListingByPages:
    async def test_bans_handed_on_page_by_page_allowlist_first(self) -> None:
        """A listing's bans reach on_bans as each page is decoded, with the
        snapshot so far: its allowlist (keys in order: ``allow/`` before
        ``bans/``) is whole by the first ban. A listing started again (another
        endpoint) starts a fresh snapshot: the result holds the last
        attempt's entries only, once each, and counts only its malformed ones."""
        ban = SharedBan("x", "10.0.0.1", "sshd", "r", 1.0, 2.0, 1.0).encode()
        first = [[kv(f"{PREFIX}/allow/192.0.2.0/24"),
                  kv(f"{PREFIX}/bans/node-a/10.0.0.1", ban)],
                 [kv(f"{PREFIX}/bans/node-a/10.0.0.9", ban),
                  kv(f"{PREFIX}/bans/node-a/10.0.0.8", b"not json")]]
        again = [[kv(f"{PREFIX}/allow/192.0.2.0/24"),
                  kv(f"{PREFIX}/bans/node-a/10.0.0.1", ban),
                  kv(f"{PREFIX}/bans/node-a/10.0.0.8", b"not json")],
                 [kv(f"{PREFIX}/bans/node-b/10.0.0.2", ban),
                  kv(f"{PREFIX}/unban/10.0.0.1", json.dumps({"by": "n", "at": 5.0}))]]
        f = EtcdFeed(_PagedClient([first, again]), PREFIX)  # type: ignore[arg-type]
        seen: list[tuple[list[str], list[str]]] = []
        snap = await f.snapshot(on_bans=lambda head, bans: seen.append(
            (list(head.allow), [b.target for b in bans])))
        assert seen == [(["192.0.2.0/24"], ["10.0.0.1"]), (["192.0.2.0/24"], ["10.0.0.9"]),
                        (["192.0.2.0/24"], ["10.0.0.1"]), (["192.0.2.0/24"], ["10.0.0.2"])]
        assert [(b.node, b.target) for b in snap.bans] == [("node-a", "10.0.0.1"),
                                                           ("node-b", "10.0.0.2")]
        assert snap.allow == ["192.0.2.0/24"] and snap.position == 42
        assert snap.skipped == 1  # the bad value once: the retried listing's, not both
        assert [u.target for u in snap.unbans] == ["10.0.0.1"]


class TestListingGcPause:
    async def test_gc_off_from_first_part_to_the_end_but_not_across_a_late_part(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A new node applies a listing with cyclic GC off from its first part
        until the caller's block ends (one collection after, not one per part),
        but a part that comes LISTING_GC_WAIT late (etcd slow or out) is
        awaited with collection on again; the block's end turns it back on."""
        import gc

        from kfwguard.bans import GcHold
        from kfwguard.cluster import service

        # Long enough that the check right after the late part is awaited
        # cannot race it on a busy machine; the test then waits it out once.
        monkeypatch.setattr(service, "LISTING_GC_WAIT", 1.0)
        assert gc.isenabled()

        class _Listing:
            parts: asyncio.Queue[tuple[object, list[object]] | None] = asyncio.Queue()

        released = asyncio.Event()

        class _Hold(GcHold):
            def release(self) -> None:
                super().release()
                released.set()

        listing = _Listing()
        listing.parts.put_nowait(("head", ["a"]))
        listing.parts.put_nowait(("head", ["b"]))
        next_part = service.ClusterService._next_part
        with _Hold() as gc_off:
            assert await next_part(listing, gc_off) == ("head", ["a"])  # type: ignore[arg-type]
            assert not gc.isenabled()
            assert await next_part(listing, gc_off) == ("head", ["b"])  # type: ignore[arg-type]
            assert not gc.isenabled()
            late = asyncio.create_task(next_part(listing, gc_off))  # type: ignore[arg-type]
            await asyncio.sleep(0)  # one turn: the task is waiting for the part
            assert not gc.isenabled() and not late.done()  # within the wait: still off
            async with asyncio.timeout(30):
                await released.wait()
            assert gc.isenabled()  # the part is late: collection is back on
            listing.parts.put_nowait(("head", ["c"]))
            assert await late == ("head", ["c"])
            assert not gc.isenabled()  # off again while the part is applied
            listing.parts.put_nowait(None)
            assert await next_part(listing, gc_off) is None  # type: ignore[arg-type]
        assert gc.isenabled()

    def test_gc_hold_nests_and_restores(self) -> None:
        """GcHold's hold and release may repeat; collection stays off while a
        paused_gc block is still open, and is on again when the last ends."""
        import gc

        from kfwguard.bans import GcHold, paused_gc

        hold = GcHold()
        hold.hold()
        hold.hold()
        assert hold.held and not gc.isenabled()
        with paused_gc():
            hold.release()
            hold.release()
            assert not hold.held and not gc.isenabled()
        assert gc.isenabled()
