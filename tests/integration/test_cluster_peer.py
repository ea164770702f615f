"""BanManager's seam for peers' bans, against a real kernel in a test namespace."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

from tests.integration.test_bans import run_in
from tests.netns import Lab

PEER = """
from kfwguard.bans import peer_jail
from kfwguard.store import BanRow
def prow(t, node="node-a", left=600.0):
    now = time.time()
    return BanRow(t, peer_jail(node), "peer", now, now + left, 1)
"""


class TestPeerBans:
    def test_peer_ban_enforced_silently_and_not_an_offence(self, lab: Lab,
                                                           tmp_path: Path) -> None:
        """A peer's ban reaches the kernel with its remaining time, tells no
        listener (no re-publish, no alert), and a later local ban of the same
        address is a first offence for the jail's bantime increment."""
        r = run_in(lab, PEER + dedent(f"""
            from kfwguard.config import JailConfig, BantimeIncrement
            async def main():
                jail = JailConfig(name="sshd", source="s", filter="sshd", bantime=100,
                                  bantime_increment=BantimeIncrement(factor=4))
                m = manager({str(tmp_path)!r}, jails={{"sshd": jail}}); m.restore()
                heard = []
                m.on_ban.append(heard.extend); m.on_unban.append(heard.extend)
                row = prow("203.0.113.7", left=500)
                taken = await m.apply_peer([row])
                again = await m.apply_peer([row])  # the same value seen twice (a relist)
                left = m.table.list()["203.0.113.7"]
                local = m.request([req("203.0.113.7", jail="sshd", d=100)])
                gone = m.withdraw_peer([("203.0.113.7", "peer:node-a")])
                await m.flush()
                return dict(taken=len(taken), again=len(again), left=left,
                            heard=[r.jail for r in heard], offence=local[0].offence,
                            gone=len(gone), kept="203.0.113.7" in m.table.list())
            print(json.dumps(asyncio.run(main())))
        """))
        assert (1, 0) == (r["taken"], r["again"])
        assert 400 < r["left"] <= 500  # type: ignore[operator]
        assert ["sshd"] == r["heard"]  # only the local ban was announced
        assert 1 == r["offence"]
        assert (1, True) == (r["gone"], r["kept"])  # the local ban stays

    def test_peer_ban_of_protected_address_refused(self, lab: Lab, tmp_path: Path) -> None:
        """A peer's ban of an ignored address, or one wider than /8, is refused."""
        r = run_in(lab, PEER + dedent(f"""
            async def main():
                m = manager({str(tmp_path)!r}, ignore=IgnoreList(["10.9.0.0/16"])); m.restore()
                taken = await m.apply_peer([prow("10.9.1.1"), prow("10.9.0.0/24"),
                                            prow("0.0.0.0/1"), prow("198.51.100.1")])
                return dict(taken=[r.target for r in taken], kernel=sorted(m.table.list()),
                            refused=m.stats.refused)
            print(json.dumps(asyncio.run(main())))
        """))
        assert (["198.51.100.1"], ["198.51.100.1"], 3) == (r["taken"], r["kernel"], r["refused"])

    def test_peer_ban_of_meaningless_or_cluster_protected_address_refused(
            self, lab: Lab, tmp_path: Path) -> None:
        """A peer's ban of a multicast or broadcast address (the ban sets'
        sentinel among them), of an IPv4-mapped form of an ignored address, or
        of an address the cluster service protects is refused; the table stays
        intact and only the plain ban is in the kernel."""
        r = run_in(lab, PEER + dedent(f"""
            async def main():
                m = manager({str(tmp_path)!r}, ignore=IgnoreList(["10.9.0.0/16"])); m.restore()
                rows = [prow(t) for t in ("224.0.0.5", "255.255.255.255", "::ffff:10.9.1.1",
                                          "172.31.0.9", "ff02::1", "198.51.100.7")]
                taken = await m.apply_peer(rows, protected=IgnoreList(["172.31.0.0/16"]))
                return dict(taken=[r.target for r in taken], kernel=sorted(m.table.list()),
                            refused=m.stats.refused_peer, intact=m.table.is_intact())
            print(json.dumps(asyncio.run(main())))
        """))
        assert ["198.51.100.7"] == r["taken"]
        assert (["198.51.100.7"], 5, True) == (r["kernel"], r["refused"], r["intact"])

    def test_overlapping_peer_cidrs_reach_the_kernel_as_one_cover(self, lab: Lab,
                                                                   tmp_path: Path) -> None:
        """Peers' overlapping CIDRs (a /24 inside another node's /23, beside a
        local /25 inside both) go through the disjoint cover as local ones do:
        nft takes the batch, the kernel blocks the whole /23, and withdrawing
        the /23 leaves the /24 in force."""
        r = run_in(lab, PEER + dedent(f"""
            import ipaddress
            from kfwguard.model import BanRequest
            async def main():
                m = manager({str(tmp_path)!r}); m.restore()
                m.request([BanRequest(ipaddress.ip_network("198.51.100.0/25"), "sshd", 600, "r")])
                await m.flush()
                taken = await m.apply_peer([prow("198.51.100.0/24", node="node-a"),
                                            prow("198.51.100.0/23", node="node-b")])
                whole = sorted(m.table.list())
                m.withdraw_peer([("198.51.100.0/23", peer_jail("node-b"))])
                await m.flush()
                return dict(taken=len(taken), whole=whole, after=sorted(m.table.list()),
                            pending=m.kernel.backlog() if hasattr(m.kernel, "backlog") else 0)
            print(json.dumps(asyncio.run(main())))
        """))
        assert 2 == r["taken"]
        assert ["198.51.100.0/23"] == r["whole"]
        assert ["198.51.100.0/24"] == r["after"]

    def test_peer_ban_restored_with_origin(self, lab: Lab, tmp_path: Path) -> None:
        """A peer's ban is stored with its origin and comes back after a restart."""
        r = run_in(lab, PEER + dedent(f"""
            async def main():
                m = manager({str(tmp_path)!r}); m.restore()
                await m.apply_peer([prow("198.51.100.9", node="node-z")])
                m.table.replace([])
                m2 = manager({str(tmp_path)!r}); m2.restore()
                return dict(jails=[r.jail for r in m2.active()], kernel=sorted(m2.table.list()))
            print(json.dumps(asyncio.run(main())))
        """))
        assert (["peer:node-z"], ["198.51.100.9"]) == (r["jails"], r["kernel"])

    def test_peer_bans_reach_the_kernel_before_the_store(self, lab: Lab,
                                                          tmp_path: Path) -> None:
        """A batch of peers' bans goes to the kernel in one transaction before
        any of it is committed to the state DB (etcd holds the durable copy),
        and is in the state DB once apply_peer returns."""
        r = run_in(lab, PEER + dedent(f"""
            async def main():
                m = manager({str(tmp_path)!r}, set_size=5000); m.restore()
                calls = []
                add = m.table.add
                def spy(new, refresh):
                    calls.append((len(new) + len(refresh), len(m.store.active_bans())))
                    return add(new, refresh)
                m.table.add = spy
                rows = [prow(f"198.51.{{i // 250}}.{{i % 250 + 1}}") for i in range(2000)]
                marks = []
                taken = await m.apply_peer(rows, applied=lambda: marks.append(
                    len(m.store.active_bans())))
                return dict(taken=len(taken), calls=calls, at_applied=marks,
                            stored=len(m.store.active_bans()), kernel=len(m.table.list()))
            print(json.dumps(asyncio.run(main())))
        """))
        assert [[2000, 0]] == r["calls"]  # one batch, nothing stored yet
        assert [0] == r["at_applied"]
        assert (2000, 2000, 2000) == (r["taken"], r["stored"], r["kernel"])


class TestListedKernelFirst:
    """A listing's single addresses go to the kernel ahead of the index
    (take_listed), which takes them after (index_listed): what happens in
    between must not leave the kernel different from what the index says."""

    def test_listed_in_kernel_before_index_then_index_and_kernel_agree(
            self, lab: Lab, tmp_path: Path) -> None:
        """take_listed puts a part's addresses in the kernel (one flush) while
        the index does not hold them yet; a CIDR of the part is indexed at
        once (its elements come from the cover). After index_listed every
        listed ban is in the index with the kernel element the index says,
        and a peer's protected address is refused on that way too."""
        r = run_in(lab, PEER + dedent(f"""
            async def main():
                m = manager({str(tmp_path)!r}, set_size=5000,
                            ignore=IgnoreList(["198.51.9.0/24"])); m.restore()
                rows = [prow(f"198.51.{{i // 250}}.{{i % 250 + 1}}") for i in range(2000)]
                rows += [prow("203.0.113.0/24"), prow("198.51.9.9")]
                taken = m.take_listed(rows)
                await m.flush()
                kernel = m.table.list()
                before = dict(kernel=len(kernel), indexed=m.index.targets,
                              net="203.0.113.0/24" in kernel)
                await m.index_listed(taken)
                await m.flush()
                kernel = m.table.list()
                now = time.time()
                off = [r.target for r in taken if abs(kernel.get(r.target, 0)
                       - (m.index.expiry(r.target) - now)) > 5]
                return dict(before=before, taken=len(taken), indexed=m.index.targets,
                            off=off, refused=m.stats.refused_peer,
                            pending=m.kernel.pending)
            print(json.dumps(asyncio.run(main())))
        """))
        assert r["before"] == {"kernel": 2001, "indexed": 1, "net": True}
        assert (2001, 2001, 1) == (r["taken"], r["indexed"], r["refused"])
        assert [] == r["off"] and 0 == r["pending"]

    def test_local_ban_and_table_loss_between_kernel_and_index(
            self, lab: Lab, tmp_path: Path) -> None:
        """Between take_listed and index_listed: a local ban of a listed
        address with a shorter time (the kernel takes its timeout on Linux
        >= 6.10), a longer local ban of another, and the table deleted and
        rebuilt from the index (which has no listed address yet); and a
        longer local ban before it, which the listed one does not cut short
        in the kernel even for that while. Afterwards
        each listed address is in the kernel again with the latest expiry
        of its bans."""
        r = run_in(lab, PEER + dedent(f"""
            async def main():
                m = manager({str(tmp_path)!r}); m.restore()
                m.request([req("198.51.100.3", d=9000)])
                await m.flush()
                rows = [prow(f"198.51.100.{{i}}", left=3000) for i in range(1, 11)]
                taken = m.take_listed(rows)
                await m.flush()
                kept = m.table.list()["198.51.100.3"]
                m.request([req("198.51.100.1", d=60), req("198.51.100.2", d=9000)])
                await m.flush()
                m.table.nft.run("delete table inet kfwtest")
                await m.rebuild()
                lost = sorted(set(r.target for r in rows) - set(m.table.list()))
                await m.index_listed(taken)
                await m.flush()
                kernel = m.table.list()
                return dict(lost=len(lost), kept=kept,
                            left={{k: kernel.get(k) for k in ("198.51.100.1", "198.51.100.2",
                                                              "198.51.100.10")}})
            print(json.dumps(asyncio.run(main())))
        """))
        assert 8900 < r["kept"] <= 9000  # type: ignore[operator]  # not cut to the peer's
        assert r["lost"] == 7  # the rebuild had only the three local bans
        left = r["left"]
        assert isinstance(left, dict)
        assert 2900 < left["198.51.100.1"] <= 3000  # the peer's, not the 60 s local one
        assert 8900 < left["198.51.100.2"] <= 9000  # the local ban outlasts the peer's
        assert 2900 < left["198.51.100.10"] <= 3000  # back after the rebuild


class TestListingService:
    def test_listing_enforced_as_read_and_ended_with_the_service(self, lab: Lab,
                                                                 tmp_path: Path) -> None:
        """The cluster service enforces a listing's first page while the rest
        is still being read (a feed that hands one page, then waits), and a
        service stopped then leaves no listing running against its feed."""
        r = run_in(lab, PEER + dedent(f"""
            from kfwguard.cluster.feed import SharedBan, Snapshot
            from kfwguard.cluster.service import ClusterService, Listing
            from kfwguard.config import Config
            class Feed:
                def __init__(self):
                    self.more = asyncio.Event()
                    self.cancelled = False
                async def snapshot(self, on_bans=None):
                    snap = Snapshot()
                    now = time.time()
                    page = [SharedBan("node-x", f"198.51.100.{{i}}", "sshd", "r", now,
                                      now + 600, now) for i in range(1, 6)]
                    snap.bans += page
                    on_bans(snap, page)
                    try:
                        await self.more.wait()  # the rest of the listing never comes
                    except asyncio.CancelledError:
                        self.cancelled = True
                        raise
                    return snap
                async def close(self):
                    pass
            async def main():
                m = manager({str(tmp_path)!r}); m.restore()
                cfg = Config.model_validate({{"cluster": {{
                    "endpoints": ["https://192.0.2.250:2379"], "node_name": "node-t"}}}})
                feed = Feed()
                svc = ClusterService(cfg, m, feed)
                listing = Listing(feed)
                # Only the listing is under test: the other loops idle until stop().
                svc._heartbeat = svc._publisher = lambda: asyncio.Event().wait()
                await svc.start(Path({str(tmp_path)!r}), listing)
                deadline = time.monotonic() + 60  # the first page's 5 bans in the kernel
                while len(m.table.list()) < 5 and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                in_kernel = sorted(m.table.list())
                await svc.stop()
                await asyncio.sleep(0)
                return dict(in_kernel=in_kernel, done=listing.task.done(),
                            cancelled=feed.cancelled)
            print(json.dumps(asyncio.run(main())))
        """))
        assert r["in_kernel"] == [f"198.51.100.{i}" for i in range(1, 6)]
        assert r["done"] is True and r["cancelled"] is True
