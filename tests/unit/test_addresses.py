"""Address parsing: only exact addresses pass, mapped IPv6 folds to IPv4."""

from __future__ import annotations

import ipaddress

import pytest

from kfwguard.addresses import IgnoreList, parse_host, parse_target, split_host_port


class TestParseHost:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [("1.2.3.4", "1.2.3.4"), ("::ffff:1.2.3.4", "1.2.3.4"), ("[2001:db8::1]", "2001:db8::1"),
         ("2001:DB8:0::1", "2001:db8::1")],
    )
    def test_normalises(self, text: str, expected: str) -> None:
        """Addresses are normalised so one host has one identity."""
        assert expected == str(parse_host(text))

    @pytest.mark.parametrize("text", ["", "1.2.3", "1.2.3.4.5", "300.1.1.1", "fe80::1%eth0",
                                      "host", "1.2.3.4 ", "x" * 100])
    def test_rejects_non_addresses(self, text: str) -> None:
        """Text that is not exactly one address yields None."""
        assert parse_host(text) is None


class TestParseTarget:
    def test_cidr_and_single(self) -> None:
        """Targets may be addresses or CIDRs; a /32 is an address."""
        assert ipaddress.ip_network("10.0.0.0/8") == parse_target("10.1.2.3/8")
        assert ipaddress.ip_address("10.0.0.1") == parse_target("10.0.0.1/32")

    def test_invalid(self) -> None:
        """Garbage is refused with ValueError."""
        with pytest.raises(ValueError):
            parse_target("not-an-ip")


class TestSplitHostPort:
    @pytest.mark.parametrize(
        ("text", "host"),
        [("1.2.3.4:80", "1.2.3.4"), ("[2001:db8::1]:443", "2001:db8::1"),
         ("2001:db8::1", "2001:db8::1")],
    )
    def test_forms(self, text: str, host: str) -> None:
        """IP:PORT and [IPv6]:PORT give the host part."""
        assert host == split_host_port(text)


class TestIgnoreList:
    def test_membership(self) -> None:
        """Addresses inside listed networks are ignored; others are not."""
        ig = IgnoreList(["192.0.2.0/24", "2001:db8::/32", "10.0.0.1"])
        assert ipaddress.ip_address("192.0.2.7") in ig
        assert ipaddress.ip_address("2001:db8::5") in ig
        assert ipaddress.ip_address("10.0.0.1") in ig
        assert ipaddress.ip_address("10.0.0.2") not in ig

    def test_overlap(self) -> None:
        """A CIDR that would cover an ignored address overlaps the list."""
        ig = IgnoreList(["10.0.0.1"])
        assert ig.overlaps(ipaddress.ip_network("10.0.0.0/24"))
        assert not ig.overlaps(ipaddress.ip_network("10.0.1.0/24"))


class TestParseHostFastPath:
    def test_agrees_with_ipaddress(self) -> None:
        """inet_pton's answers equal ipaddress's on valid, mangled and hostile text."""
        cases = ["1.2.3.4", "01.2.3.4", "1.2.3", "256.1.1.1", " 1.2.3.4", "1.2.3.4 ", "::",
                 "::1", "::ffff:1.2.3.4", "::ffff:01.2.3.4", "1::2::3", "1:2:3:4:5:6:7:8",
                 "1:2:3:4:5:6:7::", "::1.2.3.4", "12345::", "0x1.2.3.4", "1.2.3.٣", "[::1]",
                 "::FFFF:10.0.0.1", "1:2:3:4:5:6:1.2.3.4"]
        for text in cases:
            inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
            try:
                expected: object = ipaddress.ip_address(inner)
            except ValueError:
                expected = None
            if isinstance(expected, ipaddress.IPv6Address) and expected.ipv4_mapped:
                expected = expected.ipv4_mapped
            assert expected == parse_host(text), text

    def test_plain_key_takes_only_canonical_text(self) -> None:
        """plain_key (a peer's 100k targets) gives host_key of exactly the
        canonical texts of single addresses and None for everything else:
        leading zeros, short forms, blanks, other digits, upper case, CIDRs."""
        from kfwguard.addresses import host_key
        from kfwguard.bans.model import plain_key

        cases = ["1.2.3.4", "01.2.3.4", "1.2.3.04", "1.2.3", "256.1.1.1", " 1.2.3.4",
                 "1.2.3.4 ", "1.2.3.4\x00", "0x1.2.3.4", "1.2.3.٣", "0.0.0.0", "1.2.3.4/32",
                 "::", "::1", "::FFFF:1.2.3.4", "2001:DB8::1", "2001:db8::1",
                 "2001:db8:0:0:0:0:0:1", "1:2:3:4:5:6:7:8", "", "a.b.c.d"]
        for text in cases:
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                addr = None
            expected = host_key(addr) if addr is not None and str(addr) == text else None
            assert expected == plain_key(text), text

    def test_ignore_ranges(self) -> None:
        """Network ranges and exact addresses of both families are found by key."""
        ig = IgnoreList(["10.0.0.0/8", "2001:db8::/32", "192.0.2.7", "::1"])
        assert ipaddress.ip_address("10.255.0.1") in ig
        assert ipaddress.ip_address("2001:db8::5") in ig
        assert ipaddress.ip_address("192.0.2.7") in ig
        assert ipaddress.ip_address("::1") in ig
        assert ipaddress.ip_address("0.0.0.1") not in ig  # same int as ::1, other family
        assert ipaddress.ip_address("11.0.0.1") not in ig

    def test_extended_keeps_both(self) -> None:
        """A jail's own ignoreip extends the global list without changing it."""
        base = IgnoreList(["192.0.2.0/24", "10.0.0.1"])
        jail = base.extended([ipaddress.ip_network("198.51.100.0/24")])
        for a in ("192.0.2.9", "10.0.0.1", "198.51.100.7"):
            assert ipaddress.ip_address(a) in jail
        assert ipaddress.ip_address("198.51.100.7") not in base
