"""BanManager under the conditions of issue 11: long bans, refused elements,
damaged state, full disks, overlapping CIDRs, clock steps, a cheap health
check, and the admin failsafe before the ban drop.

Each test runs in a private network namespace of its own (tests/conftest.py's
``private_netns``) against the real kernel's nftables, or in kfwtest-*
namespaces where real packets are sent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from kfwguard.addresses import IgnoreList
from kfwguard.bans import BanManager, BanRefused
from kfwguard.config import BaselineConfig
from kfwguard.durations import MAX_BAN
from kfwguard.firewall.bantable import BanTable, Element
from kfwguard.firewall.nft import Nft
from kfwguard.model import BanRequest
from kfwguard.store import BanRow, Store
from tests.integration.daemon_harness import DaemonRun, base_config, sshd_fail, wait_until
from tests.integration.test_faults import tmpfs
from tests.netns import Lab, can_connect

WEEK = 7 * 86400.0
DAY = 86400.0 - 3600  # short enough for the old `<N>ms` timeouts: tests of other things

private = pytest.mark.usefixtures("private_netns")


def req(target: str, jail: str = "sshd", d: float = 3600.0) -> BanRequest:
    t = ipaddress.ip_network(target) if "/" in target else ipaddress.ip_address(target)
    return BanRequest(target=t, jail=jail, duration=d, reason="test")


def manager(state: Path, *, set_size: int = 1000, **kw: object) -> BanManager:
    return BanManager(BanTable(Nft(), "kfwtest", set_size), Store.in_dir(state),
                      **kw)  # type: ignore[arg-type]


async def settle(m: BanManager, cond: Callable[[], bool], within: float = 30.0) -> bool:
    """Poll ``cond`` (flushing ``m``) until it holds or ``within`` seconds pass."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while loop.time() < end:
        await m.flush()
        if cond():
            return True
        await asyncio.sleep(0.05)
    return cond()


class FakeWall:
    """A wall clock the test can step (a real clock step would move the host's
    time under every other process: not possible safely in a test)."""

    def __init__(self) -> None:
        import time
        self.offset = 0.0
        self._time = time.time

    def __call__(self) -> float:
        return self._time() + self.offset


@private
class TestLongBans:
    async def test_week_month_and_max_bans_reach_the_kernel(self, tmp_path: Path) -> None:
        """Bans of 1 w, 4 w and the longest allowed (365 d) are in the kernel with
        their full time, after a restart's restore and after a table rebuild."""
        m = manager(tmp_path)
        m.restore()
        lengths = {"203.0.113.1": WEEK, "203.0.113.2": 4 * WEEK, "203.0.113.3": MAX_BAN,
                   "2001:db8::3": MAX_BAN, "198.51.100.0/24": 4 * WEEK}
        rows = m.request([req(t, d=d) for t, d in lengths.items()])
        await m.flush()
        assert all(m.in_kernel(r.target) for r in rows)
        for target, d in lengths.items():
            assert d - 60 < m.table.list()[target] <= d
        m.table.nft.run("delete table inet kfwtest")
        await m.rebuild()
        assert {t: True for t in lengths} == {t: m.table.list()[t] > d - 60
                                               for t, d in lengths.items()}
        m.table.nft.run("delete table inet kfwtest")  # as after a reboot
        m2 = manager(tmp_path)
        assert 5 == m2.restore()
        assert all(m2.table.list()[t] > d - 60 for t, d in lengths.items())

    async def test_refused_elements_isolated_at_restore_and_retried_each(
        self, tmp_path: Path
    ) -> None:
        """A restore the kernel refuses in one piece (a full set, a row an older
        version stored with a 99999999w ban) puts in what fits instead of
        failing the start, and a refused element's retry does not hold up a
        later ban that fits."""
        import time
        now = time.time()
        s = Store.in_dir(tmp_path)
        s.save_bans([BanRow(f"198.51.100.{i}", "sshd", "r", now, now + 3600, 1)
                     for i in range(1, 41)]
                    + [BanRow("203.0.113.99", "sshd", "r", now, now + 99999999 * WEEK, 1)])
        s.close()
        m = manager(tmp_path, set_size=16)  # the sentinel + 15 bans
        assert 41 == m.restore()
        assert 15 == len(m.table.list())
        assert m.stats.kernel_errors >= 1 and m.pending == 26
        # Room for one: the operator lifts one ban and bans someone new.
        in_kernel = sorted(m.table.list())
        m.unban(ipaddress.ip_address(in_kernel[0]))
        m.request([req("203.0.113.50", d=WEEK)])
        await m.flush()
        assert m.in_kernel("203.0.113.50")
        assert "203.0.113.50" in m.table.list()


@private
class TestDamagedState:
    async def _with_kernel_bans(self, state: Path, n: int) -> None:
        m = manager(state, set_size=10_000)
        m.restore()
        m.request([req(str(ipaddress.ip_address(0x0A000000 + i)), d=DAY) for i in range(n)])
        await m.flush()
        assert n == len(m.table.list())
        assert m.store is not None
        m.store.close()

    async def test_bad_page_keeps_kernel_bans(self, tmp_path: Path) -> None:
        """A state DB that opens but has a damaged page: restore keeps the kernel's
        3,000 bans (adopted, with their remaining time) instead of emptying it."""
        await self._with_kernel_bans(tmp_path, 3000)
        db = tmp_path / "state.db"
        con = sqlite3.connect(db)
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        pages = [p for (p,) in con.execute(
            "SELECT pageno FROM dbstat WHERE name='bans' AND pagetype='leaf'")]
        con.close()
        with db.open("r+b") as f:  # a bad page in the middle of the bans
            f.seek((pages[len(pages) // 2] - 1) * page_size)
            f.write(os.urandom(page_size))
        m = manager(tmp_path, set_size=10_000)
        assert 3000 == m.restore()
        live = m.table.list()
        assert 3000 == len(live)
        assert min(live.values()) > DAY - 600
        assert 3000 == len(m.active())

    async def test_zero_length_db_keeps_kernel_bans(self, tmp_path: Path) -> None:
        """A zero-length state DB (an empty store while the kernel holds bans):
        the kernel's bans are adopted, and stored again."""
        await self._with_kernel_bans(tmp_path, 3000)
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"state.db{suffix}").unlink(missing_ok=True)
        (tmp_path / "state.db").write_bytes(b"")
        m = manager(tmp_path, set_size=10_000)
        assert 3000 == m.restore()
        assert 3000 == len(m.table.list())
        assert m.store is not None
        assert 3000 == len(m.store.active_bans())


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    with tmpfs(state, "1m"):
        yield state


def fill(path: Path) -> Path:
    """Fill the filesystem holding ``path`` to the last byte."""
    filler = path / "filler"
    with filler.open("wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
                    f.flush()
            except OSError:
                pass
    return filler


@private
class TestFullDisk:
    async def test_full_then_freed_then_restart(self, small_fs: Path) -> None:
        """Bans and unbans made while the state disk is full are written once it has
        room again, so a restart neither loses those bans nor brings back the
        lifted ones."""
        m = manager(small_fs, set_size=10_000)
        m.restore()
        m.request([req("203.0.113.9"), req("203.0.113.10")])
        await m.flush()
        filler = fill(small_fs)
        # Enough rows that SQLite needs new pages, which the full disk refuses.
        m.request([req(str(ipaddress.ip_address(0x0A000000 + i))) for i in range(2000)])
        m.unban(ipaddress.ip_address("203.0.113.9"))
        await m.flush()
        assert not m.persisting and m.unsaved > 0
        filler.unlink()
        assert m.sync_store()
        assert m.persisting and 0 == m.unsaved
        assert m.store is not None
        m.store.close()
        m.table.nft.run("delete table inet kfwtest")  # a reboot
        m2 = manager(small_fs, set_size=10_000)
        assert 2001 == m2.restore()
        live = m2.table.list()
        assert ("203.0.113.9" in live, "203.0.113.10" in live, "10.0.7.207" in live) == (
            False, True, True)

    async def test_watcher_writes_the_journal(self, small_fs: Path) -> None:
        """The table watcher writes what the full disk held back as soon as there
        is room, with no new ban to carry it."""
        m = manager(small_fs, set_size=10_000)
        m.check_interval = 0.05
        m.restore()
        filler = fill(small_fs)
        m.request([req(str(ipaddress.ip_address(0x0A000000 + i))) for i in range(2000)])
        assert not m.persisting
        watcher = asyncio.create_task(m.watch_table())
        try:
            filler.unlink()
            assert await settle(m, lambda: m.persisting and not m.unsaved)
        finally:
            watcher.cancel()
        assert m.store is not None
        assert 2000 == len(m.store.active_bans())


@private
class TestOverlappingCidrs:
    async def test_nested_cidrs_live_together(self, tmp_path: Path) -> None:
        """A /24 then a /25 inside it with a longer ban: both stored and listed; the
        kernel holds the /25 for its time and the rest of the /24 for its own;
        lifting the /25 gives the whole /24 back; a rebuild and a restart work."""
        m = manager(tmp_path)
        m.restore()
        m.request([req("192.0.2.0/24", d=3600)])
        m.request([req("192.0.2.0/25", d=DAY)])
        await m.flush()
        assert m.in_kernel("192.0.2.0/25") and m.in_kernel("192.0.2.0/24")
        assert {"192.0.2.0/24", "192.0.2.0/25"} == {r.target for r in m.active()}
        live = m.table.list()
        assert ["192.0.2.0/25", "192.0.2.128/25"] == sorted(live)
        assert live["192.0.2.0/25"] > DAY - 60 and live["192.0.2.128/25"] <= 3600
        m.request([req("192.0.2.64/26", d=60)])  # shorter, inside both: adds nothing
        await m.flush()
        assert ["192.0.2.0/25", "192.0.2.128/25"] == sorted(m.table.list())
        m.unban(ipaddress.ip_network("192.0.2.0/25"))
        await m.flush()
        assert ["192.0.2.0/24"] == sorted(m.table.list())
        m.table.nft.run("delete table inet kfwtest")
        await m.rebuild()
        assert ["192.0.2.0/24"] == sorted(m.table.list())
        m2 = manager(tmp_path)
        assert 2 == m2.restore()
        assert ["192.0.2.0/24"] == sorted(m2.table.list())

    @pytest.mark.parametrize("target", [
        "255.255.255.0/24", "ff0f::/16", "0.0.0.0", "::", "224.0.0.1", "239.1.2.3",
        "0.0.0.0/8", "::ffff:0:0/96", "ff02::1",
    ])
    async def test_meaningless_targets_refused(self, tmp_path: Path, target: str) -> None:
        """Targets covering a sentinel, unspecified, multicast, 'this network' or
        all of IPv4 (as mapped IPv6) are refused and never reach the kernel."""
        m = manager(tmp_path)
        m.restore()
        t = ipaddress.ip_network(target) if "/" in target else ipaddress.ip_address(target)
        with pytest.raises(BanRefused):
            m.check_target(t)
        assert [] == m.request([req(target)])
        assert m.table.is_intact()
        assert {} == m.table.list()

    async def test_mapped_v6_of_protected_refused(self, tmp_path: Path) -> None:
        """::ffff:<node> is the node's IPv4 address: refused like it."""
        m = manager(tmp_path, ignore=IgnoreList(["10.1.2.3"]))
        m.restore()
        for target in ("::ffff:10.1.2.3", "::ffff:10.1.2.3/128", "::ffff:10.1.2.0/120"):
            assert [] == m.request([req(target)]), target
        assert [] == m.active()


@private
class TestOneDecisionPerBatch:
    async def test_duplicates_in_a_batch_are_one_ban(self, tmp_path: Path) -> None:
        """An address asked for three times in one batch is one ban: one row, one
        ban event, bans_total 1 (a second jail still has its own)."""
        m = manager(tmp_path)
        m.restore()
        events: list[int] = []
        m.on_ban.append(lambda rows: events.append(len(rows)))
        rows = m.request([req("203.0.113.4"), req("203.0.113.4"), req("203.0.113.4"),
                          req("203.0.113.4", jail="kubelet")])
        assert ([("203.0.113.4", "sshd"), ("203.0.113.4", "kubelet")], [2], 2) == (
            [(r.target, r.jail) for r in rows], events, m.stats.bans)
        assert {"sshd": 1, "kubelet": 1} == m.stats.per_jail


class TestOneDecisionPerBatchDaemon:
    def test_daemon_one_ban_event_per_address(self, lab: Lab, tmp_path: Path) -> None:
        """Nine failures of one address in one write (maxretry 3) make one ban event
        and bans_total 1 in the daemon's status, not three."""
        node = lab.host("node")
        log = tmp_path / "auth.log"
        log.write_text("")
        d = DaemonRun(node, tmp_path, base_config(tmp_path, log, maxretry=3))
        d.start()
        try:
            with log.open("a") as f:
                f.write(sshd_fail("203.0.113.88") * 9)
            assert wait_until(lambda: "203.0.113.88" in d.elements("ban_v4"), timeout=20)
            out = node.run(sys.executable, "-m", "kfwguard", "status", "--json",
                           "-c", str(d.config_path))
            status = json.loads(out.stdout)
            assert (1, 1) == (status["jails"]["sshd"]["bans_total"], status["bans"]["total"])
            assert 1 == len([e for e in d.events()
                             if e.get("event") == "ban" and e.get("target") == "203.0.113.88"])
        finally:
            d.stop()


@private
class TestClockSteps:
    async def test_backward_step_does_not_outlive_the_kernel(self, tmp_path: Path) -> None:
        """After the wall clock steps back an hour, a ban ends for the daemon when
        the kernel drops it, so new failures are counted again (the wall clock
        is injected: stepping the real one would move the whole host)."""
        wall = FakeWall()
        m = manager(tmp_path, clock=wall)
        m.restore()
        m.request([req("203.0.113.5", d=2)])
        await m.flush()
        wall.offset = -3600.0
        host = ipaddress.ip_address("203.0.113.5")
        assert await settle(m, lambda: "203.0.113.5" not in m.table.list())
        assert await settle(m, lambda: m.banned_since(host, "sshd") is None, within=2)
        assert [] == m.active()

    async def test_forward_step_keeps_unban_working(self, tmp_path: Path) -> None:
        """After the wall clock steps forward two hours, an hour's ban is still in
        force for the daemon as it is in the kernel, and `unban` removes it."""
        wall = FakeWall()
        m = manager(tmp_path, clock=wall)
        m.restore()
        m.request([req("203.0.113.6", d=3600)])
        await m.flush()
        wall.offset = 7200.0
        m.expire()
        assert "203.0.113.6" in m.table.list()
        assert 1 == len(m.unban(ipaddress.ip_address("203.0.113.6")))
        await m.flush()
        assert "203.0.113.6" not in m.table.list()


class RecordingNft(Nft):
    """The real libnftables, remembering every script any context of this class
    was given (the table check runs in a fresh context of its own)."""

    scripts: ClassVar[list[str]] = []

    def run(self, script: str, **kw: bool) -> str:
        self.scripts.append(script)
        return super().run(script, **kw)


@private
class TestHealthCheck:
    def test_check_never_lists_the_sets(self) -> None:
        """The table check asks nothing whose cost grows with the bans (no list
        command: nft would fetch every element), yet sees a flushed set, a
        deleted rule, chain or set."""
        nft = RecordingNft()
        t = BanTable(nft, "kfwtest")
        t.replace([])
        t.rule_handles()
        nft.scripts.clear()
        assert t.is_intact()
        assert [] == [s for s in nft.scripts if "list" in s]
        handles = t.rule_handles()
        breakages = ["flush set inet kfwtest ban_net_v6",
                     f"delete rule inet kfwtest prerouting handle {handles[-1]}",
                     f"delete rule inet kfwtest prerouting handle {handles[0]}",
                     "flush chain inet kfwtest prerouting",
                     "delete table inet kfwtest"]
        for breakage in breakages:
            t.replace([])
            assert t.is_intact()
            nft.run(breakage)
            assert not t.is_intact(), breakage

    def test_repeated_checks_of_an_intact_table_pass(self) -> None:
        """An intact table passes every check, not only the first: nft 1.0.6's
        context cache once kept a dry-run's deletions, so the second check saw
        the sentinels gone and the daemon rebuilt its table on every check."""
        t = BanTable(Nft(), "kfwtest", 1_000_000)
        t.replace([])
        assert [True] * 5 == [t.is_intact() for _ in range(5)]
        t.add([Element(ipaddress.ip_address("203.0.113.7"), 3600.0)])
        assert [True] * 3 == [t.is_intact() for _ in range(3)]


class TestAdminFailsafe:
    def test_admin_passes_with_its_address_in_the_ban_set(self, lab: Lab) -> None:
        """An admin address that got into the ban set by any path still reaches
        the node (the ban chain accepts admin_cidrs before its drops); a
        non-admin address in the set is dropped."""
        node, admin, other = lab.host("node"), lab.host("admin"), lab.host("other")
        lab.link(node, admin, "10.77.1", "fd00:77:1")
        lab.link(node, other, "10.77.2", "fd00:77:2")
        code = (
            "from kfwguard.firewall.bantable import BanTable, Element\n"
            "from kfwguard.firewall.nft import Nft\n"
            "import ipaddress\n"
            "t = BanTable(Nft(), 'kfwguard', admin=[ipaddress.ip_network('10.77.1.0/24'),"
            " ipaddress.ip_network('fd00:77:1::/64')])\n"
            "t.replace([Element(a, 3600.0) for a in ('10.77.1.2', 'fd00:77:1::2',"
            " '10.77.2.2', 'fd00:77:2::2')])\n"
        )
        node.python(code)
        server = node.popen(["python3", "-c",
                             "import socket\n"
                             "s=socket.socket(socket.AF_INET6)\n"
                             "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
                             "s.bind(('::', 2222)); s.listen(8)\n"
                             "while True: s.accept()[0].close()\n"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert wait_until(lambda: can_connect(admin, "10.77.1.1", 2222))
            assert can_connect(admin, "fd00:77:1::1", 2222)
            assert not can_connect(other, "10.77.2.1", 2222)
            assert not can_connect(other, "fd00:77:2::1", 2222)
        finally:
            server.kill()
            server.wait()

    @pytest.mark.usefixtures("private_netns")
    async def test_admin_never_banned_cluster_only_with_force(self, tmp_path: Path) -> None:
        """A ban overlapping admin_cidrs is refused, forced or not; one overlapping
        the cluster, pod or service CIDRs only with force."""
        m = manager(tmp_path)
        m.set_networks(BaselineConfig.model_validate({
            "admin_cidrs": ["198.51.100.0/26"], "pod_cidrs": ["10.244.0.0/16"],
            "service_cidrs": ["10.96.0.0/12"]}))
        m.restore()
        for target in ("198.51.100.7", "198.51.100.0/24", "::ffff:198.51.100.7"):
            assert [] == m.request([req(target)], force=True), target
        assert [] == m.request([req("10.244.3.4"), req("10.96.0.0/16")])
        assert 2 == len(m.request([req("10.244.3.4"), req("10.96.0.0/16")], force=True))
        await m.flush()
        assert ["10.244.3.4", "10.96.0.0/16"] == sorted(m.table.list())
        # A reload with other admin networks updates the kernel's accept set.
        m.set_networks(BaselineConfig.model_validate({"admin_cidrs": ["203.0.113.0/28"]}))
        listed = m.table.nft.json("list set inet kfwtest admin_v4")
        elems = [e for i in listed if "set" in i for e in i["set"].get("elem", [])]
        assert [{"prefix": {"addr": "203.0.113.0", "len": 28}}] == elems
        assert [] == m.request([req("203.0.113.3")], force=True)

    def test_daemon_never_bans_admin_from_a_jail(self, lab: Lab, tmp_path: Path) -> None:
        """admin_cidrs join every jail's ignore list: the daemon's sshd jail counts
        an admin address's failures as ignored and bans the other offender."""
        node = lab.host("node")
        log = tmp_path / "auth.log"
        log.write_text("")
        cfg = base_config(tmp_path, log, maxretry=1)
        cfg["baseline"] = {"admin_cidrs": ["198.51.100.0/28"]}
        d = DaemonRun(node, tmp_path, cfg)
        d.start()
        try:
            with log.open("a") as f:
                f.write(sshd_fail("198.51.100.7") * 5 + sshd_fail("203.0.113.77"))
            assert wait_until(lambda: "203.0.113.77" in d.elements("ban_v4"), timeout=20)
            assert "198.51.100.7" not in d.elements("ban_v4")
            assert [] == [e for e in d.events()
                          if e.get("event") == "ban" and e.get("target") == "198.51.100.7"]
            assert any(e.get("event") == "ban" and e.get("target") == "203.0.113.77"
                       for e in d.events())
        finally:
            d.stop()
