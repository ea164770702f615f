"""cover(): overlapping CIDR bans as the disjoint elements an interval set holds."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from kfwguard.firewall.cover import CoverIndex, cover

# Nested and disjoint CIDRs inside 10.0.0.0/16 and 2001:db8::/56.
V4 = st.builds(lambda a, p: str(ipaddress.ip_network(f"10.0.{a}.0/{p}", strict=False)),
               st.integers(0, 255), st.integers(16, 32))
V6 = st.builds(lambda a, p: str(ipaddress.ip_network(f"2001:db8:0:{a:x}::/{p}",
                                                     strict=False)),
               st.integers(0, 255), st.integers(56, 128))
BANS = st.dictionaries(st.one_of(V4, V6), st.integers(1, 5).map(float), max_size=12)


def expiry_at(bans: dict[str, float], addr: ipaddress.IPv4Address | ipaddress.IPv6Address
              ) -> float | None:
    found = [x for t, x in bans.items() if addr in ipaddress.ip_network(t)]
    return max(found) if found else None


class TestCover:
    def test_nested_longer_inside(self) -> None:
        """A /25 banned longer than its /24 is cut out; the rest keeps the /24's time."""
        assert {"192.0.2.0/25": 2.0, "192.0.2.128/25": 1.0} == cover(
            {"192.0.2.0/24": 1.0, "192.0.2.0/25": 2.0})

    def test_nested_shorter_inside(self) -> None:
        """A /25 banned shorter than its /24 adds nothing."""
        assert {"192.0.2.0/24": 3.0} == cover({"192.0.2.0/24": 3.0, "192.0.2.0/25": 2.0})

    @settings(max_examples=150, deadline=None)
    @given(BANS, st.lists(st.integers(0, 2**16 - 1), min_size=1, max_size=20))
    def test_every_address_gets_its_latest_expiry(self, bans: dict[str, float],
                                                   probes: list[int]) -> None:
        """The elements never overlap, and each address lies in an element with
        the latest expiry of the bans covering it, or in none if none covers it."""
        elements = cover(bans)
        nets = [ipaddress.ip_network(e) for e in elements]
        for i, a in enumerate(nets):
            for b in nets[i + 1:]:
                assert not a.overlaps(b)  # type: ignore[arg-type]
        edges = [ipaddress.ip_network(t)[0] for t in bans]
        edges += [ipaddress.ip_network(t)[-1] for t in bans]
        v4 = [ipaddress.ip_address(0x0A000000 + p) for p in probes]
        v6 = [ipaddress.ip_address((0x20010DB8 << 96) + (p << 64) + p) for p in probes]
        for addr in (*edges, *v4, *v6):
            holding = [x for e, x in elements.items() if addr in ipaddress.ip_network(e)]
            want = expiry_at(bans, addr)
            assert ([] if want is None else [want]) == holding, str(addr)


# A change to the set: (CIDR, expiry) to ban or re-ban, (CIDR, None) to lift.
CHANGES = st.lists(st.tuples(st.one_of(V4, V6, st.sampled_from(
    ["10.0.0.0/8", "2001:db8::/32", "10.0.0.0/16", "2001:db8::/48"])),
    st.one_of(st.none(), st.integers(1, 5).map(float))), max_size=40)


class TestCoverIndex:
    @settings(max_examples=300, deadline=None)
    @given(CHANGES)
    def test_matches_cover_after_every_change(self, changes: list[tuple[str, float | None]]
                                              ) -> None:
        """After every ban, re-ban and lift (nested, disjoint and wider CIDRs that
        re-cut the blocks), the index gives exactly cover() of the bans held, and
        its pieces in force at t are exactly cover() of the bans in force at t."""
        index = CoverIndex()
        bans: dict[str, float] = {}
        for text, expiry in changes:
            if expiry is None:
                bans.pop(text, None)
                index.discard(text)
            else:
                bans[text] = expiry
                index.set(text, expiry)
            assert cover(bans) == index.elements()
            assert len(bans) == len(index)
            # The pieces still in force at t are the cover of the bans in force at t.
            for t in (1.0, 3.0):
                assert cover({k: x for k, x in bans.items() if x > t}) == \
                    index.elements(after=t)

    def test_disjoint_bans_are_their_own_cover(self) -> None:
        """Disjoint /64s (the common case) each stay one element, as banned."""
        index = CoverIndex()
        nets = {str(ipaddress.ip_network(f"2001:db8:0:{i:x}::/64")): float(i + 1)
                for i in range(50)}
        for text, expiry in nets.items():
            index.set(text, expiry)
        assert nets == index.elements()
        index.discard("2001:db8:0:7::/64")
        del nets["2001:db8:0:7::/64"]
        assert nets == index.elements()
