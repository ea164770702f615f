"""Jails: windows by log time, maxretry, ignore lists, bounded memory, ban growth."""

from __future__ import annotations

import ipaddress

import pytest

from kfwguard.addresses import IgnoreList
from kfwguard.config import BantimeIncrement, JailConfig
from kfwguard.jails import jail as jail_module
from kfwguard.jails.jail import Jail
from kfwguard.jails.policy import ban_duration
from kfwguard.model import Match
from tests.conftest import need

NOW = 1_800_000_000.0


@pytest.fixture(autouse=True, params=["native", "python"])
def windows(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every jail test runs on both failure windows: C++ (the daemon's, where
    built) and Python."""
    if request.param == "python":
        monkeypatch.setattr(jail_module, "NativeWindows", None)
    else:
        need(jail_module.NativeWindows is not None, "the C++ extension was not built")


def cfg(**kw: object) -> JailConfig:
    base: dict[str, object] = {"name": "sshd", "source": "auth", "filter": "sshd",
                               "maxretry": 3, "findtime": 600, "bantime": 3600}
    base.update(kw)
    return JailConfig.model_validate(base)


def m(host: str, t: float) -> Match:
    return Match(host=ipaddress.ip_address(host), time=t, filter="sshd", rule="r")


class TestJail:
    def test_bans_at_maxretry(self) -> None:
        """The maxretry-th failure within findtime yields one ban request."""
        j = Jail(cfg(), IgnoreList(), clock=lambda: NOW)
        assert j.add(m("203.0.113.1", NOW - 30)) is None
        assert j.add(m("203.0.113.1", NOW - 20)) is None
        req = j.add(m("203.0.113.1", NOW - 10))
        assert req is not None
        assert ("203.0.113.1", "sshd", 3600.0) == (str(req.target), req.jail, req.duration)
        assert 0 == j.failures_of(ipaddress.ip_address("203.0.113.1"))

    def test_window_by_log_time(self) -> None:
        """Failures further apart than findtime (by their log time) do not add up."""
        j = Jail(cfg(findtime=60), IgnoreList(), clock=lambda: NOW)
        assert j.add(m("203.0.113.1", NOW - 55)) is None
        assert j.add(m("203.0.113.1", NOW - 50)) is None
        assert j.add(m("203.0.113.1", NOW + 10)) is None  # 65 s after the first
        assert 2 == j.failures_of(ipaddress.ip_address("203.0.113.1"))

    def test_old_lines_never_ban(self) -> None:
        """Lines older than findtime (a replayed log) are counted as stale and never ban."""
        j = Jail(cfg(), IgnoreList(), clock=lambda: NOW)
        for i in range(10):
            assert j.add(m("203.0.113.1", NOW - 3600 - i)) is None
        assert 10 == j.stats.stale

    def test_ignored_never_ban(self) -> None:
        """Addresses on the ignore list never accumulate failures."""
        j = Jail(cfg(maxretry=1), IgnoreList(["203.0.113.0/24"]), clock=lambda: NOW)
        assert j.add(m("203.0.113.9", NOW)) is None
        assert 1 == j.stats.ignored

    def test_lines_before_ban_skipped(self) -> None:
        """Failures logged before the address's current ban started are not counted again."""
        banned_at = NOW - 5
        j = Jail(cfg(maxretry=1), IgnoreList(), clock=lambda: NOW,
                 banned_since=lambda a, jail: banned_at)
        assert j.add(m("203.0.113.1", NOW - 10)) is None
        assert 1 == j.stats.already_banned
        assert j.add(m("203.0.113.1", NOW - 1)) is not None

    def test_memory_bounded(self) -> None:
        """With max_entries reached, the least recently failing address is evicted."""
        j = Jail(cfg(maxretry=2), IgnoreList(), max_entries=100, clock=lambda: NOW)
        for i in range(1000):
            j.add(m(f"10.{i >> 8}.{i & 255}.1", NOW))
        assert 100 == len(j)
        assert 900 == j.stats.evicted
        # a recent address still bans on its next failure
        assert j.add(m("10.3.231.1", NOW)) is not None

    def test_future_times_clamped(self) -> None:
        """A log time far in the future counts as now (a forged or mis-dated line)."""
        j = Jail(cfg(maxretry=2, findtime=60), IgnoreList(), clock=lambda: NOW)
        j.add(m("203.0.113.1", NOW + 10**7))
        assert j.add(m("203.0.113.1", NOW)) is not None


class TestBanDuration:
    def test_grows_and_caps(self) -> None:
        """bantime_increment multiplies the ban per offence, capped at max."""
        c = cfg(bantime_increment=BantimeIncrement(factor=2, max=10000))
        assert [3600.0, 7200.0, 10000.0] == [ban_duration(c, n) for n in (1, 2, 3)]

    def test_without_increment(self) -> None:
        """Without bantime_increment every ban lasts bantime."""
        assert 3600.0 == ban_duration(cfg(), 7)


class TestAddFailure:
    def test_ban_table_asked_only_at_maxretry(self) -> None:
        """banned_since is consulted once, when an address reaches maxretry."""
        asked: list[str] = []

        def since(a: object, jail: str) -> float | None:
            asked.append(str(a))
            return None

        j = Jail(cfg(maxretry=3), IgnoreList(), clock=lambda: NOW, banned_since=since)
        assert j.add(m("203.0.113.1", NOW)) is None
        assert j.add(m("203.0.113.1", NOW)) is None
        assert j.add(m("203.0.113.1", NOW)) is not None
        assert ["203.0.113.1"] == asked


class TestAddHits:
    def test_batch_counts_rules_and_bans_like_single_adds(self) -> None:
        """add_hits over a filter's hits decides exactly what one add per failure
        decides, skips hits without a host (bad-host, ignored by the filter),
        counts failures per rule, and honours the ignore list by key."""
        from kfwguard.addresses import host_key

        def hit(addr: str, t: float, rule: str = "r") -> tuple[int, str, str, object, int, float]:
            a = ipaddress.ip_address(addr)
            return (0, "match", rule, a, host_key(a), t)

        hits = [
            hit("203.0.113.1", NOW - 30), (0, "bad-host", "r", None, 0, 0.0),
            hit("203.0.113.1", NOW - 20, "s"), hit("10.0.0.7", NOW - 20),
            hit("10.0.0.7", NOW - 10), hit("10.0.0.7", NOW - 5),
            hit("203.0.113.1", NOW - 10), hit("203.0.113.2", NOW - 9000),
        ]
        batch = Jail(cfg(), IgnoreList(["10.0.0.0/8"]), clock=lambda: NOW)
        requests, counts = batch.add_hits(hits, NOW, "sshd")  # type: ignore[arg-type]
        assert [ipaddress.ip_address("203.0.113.1")] == [r.target for r in requests]
        assert {"r": 6, "s": 1} == counts
        assert (7, 3, 1, 1) == (batch.stats.matches, batch.stats.ignored,
                                batch.stats.stale, batch.stats.bans)

        single = Jail(cfg(), IgnoreList(["10.0.0.0/8"]), clock=lambda: NOW)
        one_by_one = [single.add(m(str(h[3]), h[5])) for h in hits if h[3] is not None]
        assert [r.target for r in one_by_one if r is not None] == [r.target for r in requests]
