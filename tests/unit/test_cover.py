"""cover(): overlapping CIDR bans as the disjoint elements an interval set holds."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from kfwguard.firewall.cover import cover

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
