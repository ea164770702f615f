"""The index of bans in force (kfwguard.bans.index) and what a start adopts
from the kernel (kfwguard.bans.restore): pure data, no nft, no root."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kfwguard.bans import ADOPTED_JAIL
from kfwguard.bans import restore as restoring
from kfwguard.bans.index import BanIndex
from kfwguard.firewall.cover import cover
from kfwguard.store import BanRow


def row(target: str, jail: str, expires: float, *, simulated: bool = False) -> BanRow:
    return BanRow(target, jail, "r", 0.0, expires, 1, simulated)


class TestBanIndex:
    def test_target_expiry_is_latest_over_jails(self) -> None:
        """A target banned by two jails expires with the later one; lifting that
        one leaves the other's expiry, lifting both forgets the target."""
        ix = BanIndex()
        ix.add(row("192.0.2.1", "sshd", 100.0))
        ix.add(row("192.0.2.1", "web", 300.0))
        assert (300.0, {"sshd", "web"}) == (ix.expiry("192.0.2.1"), ix.jails_of("192.0.2.1"))
        ix.remove(row("192.0.2.1", "web", 300.0))
        assert 100.0 == ix.expiry("192.0.2.1")
        ix.remove(row("192.0.2.1", "sshd", 100.0))
        assert (None, False, 0) == (ix.expiry("192.0.2.1"), ix.has_target("192.0.2.1"),
                                    ix.targets)

    def test_reban_shorter_lowers_expiry(self) -> None:
        """Re-banning in the same jail for less time lowers the target's expiry
        (the row is replaced, not kept beside the new one)."""
        ix = BanIndex()
        ix.add(row("192.0.2.1", "sshd", 500.0))
        ix.add(row("192.0.2.1", "sshd", 200.0))
        assert (200.0, 1) == (ix.expiry("192.0.2.1"), len(list(ix.rows())))

    def test_expiries_split_addresses_and_nets(self) -> None:
        """Addresses go to the kernel as themselves, CIDRs as their disjoint cover;
        what is expired at ``now`` is in neither."""
        ix = BanIndex()
        ix.add(row("192.0.2.1", "sshd", 50.0))
        ix.add(row("192.0.2.2", "sshd", 150.0))
        ix.add(row("198.51.100.0/24", "manual", 100.0))
        ix.add(row("198.51.100.0/25", "manual", 200.0))
        assert {"192.0.2.2": 150.0} == ix.address_expiries(now=60.0)
        assert {"198.51.100.0/25": 200.0, "198.51.100.128/25": 100.0} == ix.net_elements(60.0)
        assert {"198.51.100.0/25": 200.0} == ix.net_elements(120.0)

    def test_simulated_never_feed_the_kernel(self) -> None:
        """A simulated (observe mode) ban is listed as active but is in no
        expiry and no cover the kernel sync reads."""
        ix = BanIndex()
        ix.simulate(row("192.0.2.9", "sshd", 100.0, simulated=True))
        ix.simulate(row("198.51.100.0/24", "sshd", 100.0, simulated=True))
        assert {} == ix.address_expiries(0.0)
        assert {} == ix.net_elements(0.0)
        assert not ix.has_target("192.0.2.9")
        assert {"192.0.2.9", "198.51.100.0/24"} == {r.target for r in ix.active(0.0)}
        assert ix.unsimulate(("192.0.2.9", "sshd")) is not None
        assert ["198.51.100.0/24"] == [r.target for r in ix.active(0.0)]

    def test_rows_of_and_expired(self) -> None:
        """rows_of lists a target's bans still in force; expired lists the rest."""
        ix = BanIndex()
        ix.add(row("192.0.2.1", "sshd", 100.0))
        ix.add(row("192.0.2.1", "peer:b", 300.0))
        assert ["peer:b"] == [r.jail for r in ix.rows_of("192.0.2.1", now=150.0)]
        assert ["sshd"] == [r.jail for r in ix.expired(now=150.0)]

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(
        st.sampled_from(["add", "add_many", "remove", "expire", "look"]),
        st.sampled_from(["192.0.2.1", "192.0.2.2", "10.0.0.0/16", "2001:db8::1"]),
        st.sampled_from(["sshd", "peer:b"]),
        st.integers(0, 30).map(float)), max_size=60))
    def test_expired_is_every_row_due_whatever_came_before(
            self, ops: list[tuple[str, str, str, float]]) -> None:
        """expired(now) is exactly the rows with expires_at <= now after any
        sequence of adds (one by one or many at once), removals, expiries
        the caller removes and look-ups it does not act on, the clock going
        forward: it skips its scan only when no row can be due."""
        ix = BanIndex()
        now = 0.0
        for op, target, jail, x in ops:
            if op == "add":
                ix.add(row(target, jail, now + x))
            elif op == "add_many":
                ix.add_many([row(target, jail, now + x), row("198.51.100.7", jail, now + x + 1)])
            elif op == "remove":
                r = ix.get((target, jail))
                if r is not None:
                    ix.remove(r)
            else:
                now += x / 3
                got = sorted(ix.expired(now))
                assert got == sorted(r for r in ix.rows() if r.expires_at <= now)
                if op == "expire":
                    for r in got:
                        ix.remove(r)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(
        st.booleans(),
        st.sampled_from(["192.0.2.1", "192.0.2.2", "10.0.0.0/16", "10.0.1.0/24",
                         "10.0.1.128/25", "2001:db8::/64"]),
        st.sampled_from(["sshd", "web", "manual"]),
        st.integers(1, 9).map(float)), max_size=40),
        st.integers(0, 9).map(float))
    def test_index_matches_its_rows(self, ops: list[tuple[bool, str, str, float]],
                                    now: float) -> None:
        """After any sequence of bans and unbans, each target's expiry is the
        latest of its rows, and the kernel's CIDR elements are exactly the
        cover of the CIDR bans in force."""
        ix = BanIndex()
        model: dict[tuple[str, str], float] = {}
        for add, target, jail, expires in ops:
            if add:
                ix.add(row(target, jail, expires))
                model[(target, jail)] = expires
            elif (target, jail) in model:
                ix.remove(row(target, jail, model.pop((target, jail))))
        latest: dict[str, float] = {}
        for (target, _), x in model.items():
            latest[target] = max(x, latest.get(target, 0.0))
        assert latest == {t: ix.expiry(t) for t in latest}
        assert {t for t in latest} == {r.target for r in ix.rows()}
        assert {t: x for t, x in latest.items() if x > now and "/" not in t} \
            == ix.address_expiries(now)
        want = cover({t: x for t, x in latest.items() if "/" in t})
        assert {p: x for p, x in want.items() if x > now} == ix.net_elements(now)


class TestRestoreUnknown:
    def test_element_the_store_lacks_is_adopted(self) -> None:
        """A kernel ban the store does not know comes back for the time the
        kernel had left, its origin recorded as unknown (jail 'restored')."""
        got = restoring.adopt_missing({"192.0.2.7": 3600.0}, {}, now=1000.0)
        assert [("192.0.2.7", ADOPTED_JAIL, 4600.0)] == [
            (r.target, r.jail, r.expires_at) for r in got]

    def test_known_elements_are_not_adopted(self) -> None:
        """An element the store would put back with the same expiry (within the
        kernel's rounding) is the store's, not adopted again."""
        assert [] == restoring.adopt_missing({"192.0.2.7": 3600.5, "10.0.0.0/25": 60.0},
                                       {"192.0.2.7": 4600.0, "10.0.0.0/25": 1060.0},
                                       now=1000.0)

    def test_longer_in_the_kernel_is_adopted(self) -> None:
        """A re-ban the store missed (the kernel holds it longer than the store
        says) keeps the kernel's expiry."""
        got = restoring.adopt_missing({"192.0.2.7": 7200.0}, {"192.0.2.7": 4600.0}, now=1000.0)
        assert [8200.0] == [r.expires_at for r in got]

    def test_nearly_expired_sentinels_and_no_timeout(self) -> None:
        """Elements about to expire are let go, a sentinel or garbage is never a
        ban, and an element without a timeout is adopted for a day."""
        got = restoring.adopt_missing({"192.0.2.7": 1.0, "255.255.255.255": 60.0,
                                 "not an address": 60.0, "192.0.2.8": float("inf")},
                                {}, now=0.0)
        assert [("192.0.2.8", restoring.ADOPTED_NO_TIMEOUT)] == [
            (r.target, r.expires_at) for r in got]
