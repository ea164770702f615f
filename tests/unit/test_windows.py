"""The C++ failure windows and Jail.add_lines (one C++ pass from a block of lines
to the windows) decide exactly what the Python path decides: PyWindows for the
windows, Filter.scan_lines + Jail.add_hits for a block."""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kfwguard.addresses import IgnoreList, IPAddress, IPNetwork, host_key, key_host, parse_host
from kfwguard.config import JailConfig
from kfwguard.jails.jail import Jail
from kfwguard.jails.windows import NativeWindows, PyWindows, resolve
from kfwguard.matching import Filter, load_filter, parse_filter, shipped_dir
from kfwguard.model import BanRequest
from tests.conftest import need

if TYPE_CHECKING:
    from kfwguard.matching import _native

NOW = time.mktime((2026, 11, 26, 12, 0, 0, 0, 0, -1))
SAMPLES = Path(__file__).resolve().parents[2] / "filters" / "samples"
# The sample's lines in the plain syslog-file form (the others, and rsyslog's
# repeats and Solaris ids, take the per-record path).
SAMPLE_LINES = [
    line for line in (SAMPLES / "sshd.log").read_text().splitlines()
    if line[:3] in ("Nov", "Dec", "Jan") and line[15:16] == " "
    and line[16:].split(" ", 1)[0][-1:] != ":"
    and "message repeated " not in line and "]: [ID " not in line
]
V6 = 1 << 128


@functools.cache
def sshd() -> Filter:
    """The shipped sshd filter with every rule a plain failure, compiled once for
    all examples: the C++ pass counts only such filters (the shipped one settles
    its PAM and session lines in Python, matching/sessions.py). Rules for lines
    without an address cannot be plain failures and are left out."""
    data = yaml.safe_load((shipped_dir() / "sshd.yaml").read_text())
    data["rules"] = [r for r in data["rules"] if r.get("kind") != "unaddressed"]
    for rule in data["rules"]:
        rule.pop("kind", None)
    return parse_filter(yaml.safe_dump(data), "sshd")


@pytest.fixture(autouse=True)
def built() -> None:
    need(NativeWindows is not None,
         "the C++ extension was not built (needs g++ and libre2-dev)")


def native_windows(max_entries: int, findtime: float, maxretry: int,
                   ignore: list[tuple[int, int]] | None = None) -> _native.Windows:
    assert NativeWindows is not None
    return NativeWindows(max_entries, findtime, maxretry, resolve, ignore or [])


def cfg(**kw: object) -> JailConfig:
    base: dict[str, object] = {"name": "sshd", "source": "auth", "filter": "sshd",
                               "maxretry": 3, "findtime": 600, "bantime": 3600}
    base.update(kw)
    return JailConfig.model_validate(base)


# Keys on the edges of both families: 0, the top IPv4, IPv6 halves, the top IPv6.
KEYS = st.sampled_from([0, 1, 0xFFFFFFFF, 2**64, V6, V6 | 1, V6 | 2**64 | 5,
                        V6 | (2**128 - 1), host_key(ipaddress.ip_address("203.0.113.9"))])


class TestWindowsTwins:
    @settings(max_examples=300, deadline=None)
    @given(
        max_entries=st.integers(1, 4), findtime=st.sampled_from([0.0, 5.0, 60.0]),
        maxretry=st.integers(1, 4),
        ops=st.lists(st.tuples(st.sampled_from(["add", "add", "add", "keep", "drop"]), KEYS,
                               st.floats(0, 100, allow_nan=False), st.integers(0, 3)),
                     max_size=40),
    )
    def test_same_calls_same_state(self, max_entries: int, findtime: float, maxretry: int,
                                   ops: list[tuple[str, int, float, int]]) -> None:
        """Any sequence of add/keep on the C++ and the Python windows gives the same
        answers, the same windows in the same least-recently-failed order, and
        the same eviction count: the block path and the per-hit path share one
        bookkeeping."""
        py = PyWindows(max_entries, findtime, maxretry)
        cc = native_windows(max_entries, findtime, maxretry)
        for op, key, t, n in ops:
            if op == "add":
                assert py.add(key, t) == cc.add(key, t)
            elif py.count(key):
                times = None if op == "drop" else [t + i for i in range(n)]
                py.keep(key, times)
                cc.keep(key, times)
            assert (py.by_age(), py.evicted, len(py)) == (cc.by_age(), cc.evicted, len(cc))
            assert [py.count(k) for k in py.by_age()] == [cc.count(k) for k in cc.by_age()]

    def test_bad_arguments_are_clear_errors(self) -> None:
        """Keys outside host_key's range, unknown windows and bad limits raise,
        and leave the windows as they were."""
        w = native_windows(10, 60.0, 3)
        for bad in (-1, 1 << 129, 3 << 128):
            with pytest.raises(ValueError):
                w.add(bad, 1.0)
        with pytest.raises(TypeError):
            w.add("1.2.3.4", 1.0)  # type: ignore[arg-type]
        with pytest.raises(KeyError):
            w.keep(5, [1.0])
        with pytest.raises(ValueError):
            native_windows(0, 60.0, 3)
        assert 0 == len(w)

    def test_keys_come_back_as_host_keys(self) -> None:
        """Keys round-trip through C++ unchanged, and key_host gives back the address."""
        w = native_windows(10, 60.0, 9)
        addrs = ["0.0.0.0", "255.255.255.255", "::", "2001:db8::1", "ffff:" * 7 + "ffff"]
        for a in addrs:
            w.add(host_key(ipaddress.ip_address(a)), 1.0)
        assert addrs == [str(key_host(k)) for k in w.by_age()]


def run_both(flt: Filter, data: bytes, *, ignore: IgnoreList | None = None,
             since: Callable[[IPAddress | IPNetwork, str], float | None] = lambda a, j: None,
             ipv6_prefix: int = 64,
             **kw: object) -> tuple[Jail, Jail, tuple[object, ...]]:
    """The block through add_lines (C++) and through scan_lines + add_hits (Python);
    asserts they agree and returns both jails and the result."""
    ignore = ignore or IgnoreList()
    cc = Jail(cfg(**kw), ignore, clock=lambda: NOW, banned_since=since,
              ipv6_prefix=ipv6_prefix)
    py = Jail(cfg(**kw), ignore, clock=lambda: NOW, banned_since=since, native=False,
              ipv6_prefix=ipv6_prefix)
    assert cc.native and not py.native
    done = cc.add_lines(flt, data, NOW)
    assert done is not None, "the C++ pass did not take the block"
    expected = py.add_hits(flt.scan_lines(data, NOW), NOW, flt.name)

    def seen(result: tuple[list[BanRequest], dict[str | None, int]]) -> tuple[object, ...]:
        requests, counts = result
        return [(r.target, r.reason, r.duration, r.decided_at) for r in requests], counts

    assert seen(expected) == seen(done)
    assert py.stats == cc.stats
    assert py._windows.by_age() == cc._windows.by_age()
    assert [py._windows.count(k) for k in py._windows.by_age()] == [
        cc._windows.count(k) for k in cc._windows.by_age()]
    return cc, py, seen(done)


class TestAddLines:
    def test_sample_log_agrees(self) -> None:
        """The shipped sshd sample (three times over), at maxretry 1 and 3, bans and
        counts the same."""
        flt = sshd()
        data = ("\n".join(SAMPLE_LINES) + "\n").encode() * 3
        for maxretry in (1, 3):
            _, _, (requests, counts) = run_both(flt, data, maxretry=maxretry,
                                                findtime=10 * 365 * 86400)
            assert requests and counts

    @settings(max_examples=150, deadline=None)
    @given(
        lines=st.lists(st.sampled_from(SAMPLE_LINES), min_size=1, max_size=30),
        hosts=st.lists(st.sampled_from([
            "203.0.113.9", "203.0.113.10", "10.1.2.3", "2001:db8::1", "2001:DB8:0::1",
            "::ffff:203.0.113.9", "[2001:db8::1]", "fe80::1%eth0", "01.2.3.4",
            "1.2.3", "::", "999.1.1.1", "1:2:3:4:5:6:7:8:9",
            # Rotation inside one /64, across /64s of one /48, beside an ignored one.
            "2001:db8::2", "2001:db8::ffff:9", "2001:db8:0:1::1", "2001:db8:0:1:8000::1",
            "2001:db8:1:2::3", "2001:db8:1:2::4"]), min_size=1, max_size=30),
        maxretry=st.integers(1, 4), findtime=st.sampled_from([60, 10 * 365 * 86400]),
        ignored=st.sampled_from(["", "10.0.0.0/8", "203.0.113.10", "2001:db8::/32",
                                 "2001:db8:1:2::4", "2001:db8:0:1::/96"]),
        banned=st.sampled_from([None, 0.0, NOW - 300, NOW + 10]),
        prefix=st.sampled_from([128, 64, 48, 65, 127]),
    )
    def test_random_blocks_agree(self, lines: list[str], hosts: list[str], maxretry: int,
                                 findtime: int, ignored: str, banned: float | None,
                                 prefix: int) -> None:
        """Sample lines with their address swapped for odd forms (mapped, bracketed,
        zoned, leading zeros, broken, IPv6 rotating inside a prefix), under ignore
        lists, bans in force, short windows (stale lines) and any ipv6_prefix:
        the C++ pass and the Python path give the same bans, counts, stats and
        windows."""
        out = []
        for i, line in enumerate(lines):
            addr = str(parse_host(line.split(" from ")[-1].split(" ")[0]) or "")
            out.append(line.replace(addr, hosts[i % len(hosts)]) if addr else line)
        data = ("\n".join(out) + "\n").encode()
        run_both(sshd(), data, maxretry=maxretry, findtime=findtime,
                 ignore=IgnoreList([ignored] if ignored else []),
                 since=lambda a, j: banned, ipv6_prefix=prefix)

    @pytest.mark.parametrize("native", [True, False])
    def test_ipv6_rotation_inside_a_prefix_is_one_offender(self, native: bool) -> None:
        """Five addresses of one /64 failing once each are one offender: maxretry
        (3) failures in all ban the /64 itself; with ipv6_prefix 128 none is banned."""
        lines = "".join(
            f"Nov 26 11:59:0{i} h sshd[1]: Failed password for root from 2001:db8:7:7::{i:x}"
            f" port 22 ssh2\n" for i in range(1, 6)).encode()
        _, _, (requests, _) = run_both(sshd(), lines, maxretry=3, findtime=600)
        assert [ipaddress.ip_network("2001:db8:7:7::/64")] == [r[0] for r in requests]
        _, _, (requests, _) = run_both(sshd(), lines, maxretry=3, findtime=600,
                                       ipv6_prefix=128)
        assert [] == requests
        # The per-hit path (Jail.add) on either windows agrees.
        jail = Jail(cfg(maxretry=3), IgnoreList(), clock=lambda: NOW, native=native)
        got = [jail.add_failure(a, host_key(a), NOW, NOW, "sshd", "r")
               for a in (ipaddress.IPv6Address(f"2001:db8:7:7::{i}") for i in range(1, 3))]
        assert [None, None] == got
        assert 2 == jail.failures_of(ipaddress.IPv6Address("2001:db8:7:7::99"))
        a = ipaddress.IPv6Address("2001:db8:7:7:ffff::3")
        last = jail.add_failure(a, host_key(a), NOW, NOW, "sshd", "r")
        assert last is not None
        assert ipaddress.ip_network("2001:db8:7:7::/64") == last.target

    def test_prefix_reaching_an_ignored_address_counts_per_address(self) -> None:
        """A /64 holding an ignored (protected) address is never banned whole: its
        other addresses count, and are banned, one by one."""
        lines = "".join(
            f"Nov 26 11:59:0{i} h sshd[1]: Failed password for root from 2001:db8:7:7::{n}"
            f" port 22 ssh2\n" for i, n in enumerate((1, 2, 1, 3, 1))).encode()
        _, _, (requests, _) = run_both(sshd(), lines, maxretry=3, findtime=600,
                                       ignore=IgnoreList(["2001:db8:7:7::99"]))
        assert [ipaddress.ip_address("2001:db8:7:7::1")] == [r[0] for r in requests]

    @pytest.mark.parametrize(("now", "stamp"), [
        ("2026-12-31 23:59:50", "Jan  1 00:00:05"),  # next year, 15 s ahead
        ("2027-01-01 00:00:10", "Dec 31 23:59:59"),  # last year, 11 s ago
    ])
    def test_year_turn_agrees(self, now: str, stamp: str) -> None:
        """Around New Year the C++ pass (stamps through timeparse) and the Python
        path read the same year: a January line read on Dec 31 counts, it is not
        a year stale."""
        t = time.mktime(time.strptime(now, "%Y-%m-%d %H:%M:%S"))
        data = "".join(f"{stamp} h sshd[1]: Failed password for root from 203.0.113.{i}"
                        f" port 22 ssh2\n" for i in (1, 1, 1)).encode()
        cc = Jail(cfg(maxretry=3), IgnoreList(), clock=lambda: t)
        py = Jail(cfg(maxretry=3), IgnoreList(), clock=lambda: t, native=False)
        done = cc.add_lines(sshd(), data, t)
        if done is None:  # a line the C++ pass leaves to the per-record path
            done = cc.add_hits(sshd().scan_lines(data, t), t, "sshd")
        expected = py.add_hits(sshd().scan_lines(data, t), t, "sshd")
        assert [r.target for r in expected[0]] == [r.target for r in done[0]]
        assert (py.stats.stale, len(expected[0])) == (cc.stats.stale, len(done[0]))
        assert 0 == cc.stats.stale and 1 == len(done[0])

    def test_jail_setting_overrides_global(self) -> None:
        """A jail's own ipv6_prefix wins over the global one."""
        jail = Jail(cfg(ipv6_prefix=56), IgnoreList(), ipv6_prefix=64)
        assert 56 == jail.ipv6_prefix
        assert 64 == Jail(cfg(), IgnoreList(), ipv6_prefix=64).ipv6_prefix

    @settings(max_examples=300, deadline=None)
    @given(text=st.one_of(
        st.text(alphabet="0123456789abcdefABCDEF.:[]%", max_size=70),
        st.text(max_size=20).filter(lambda s: " " not in s and "\n" not in s),
    ))
    def test_any_host_text_is_read_as_parse_host_reads_it(self, text: str) -> None:
        """A rule that takes any word as the host hands C++ texts of every shape,
        non-ASCII too; it reads exactly the address parse_host reads, or none."""
        flt = parse_filter(ANY_HOST, "any")
        line = f"Nov 26 04:57:45 h app[1]: from {text} x\n"
        run_both(flt, line.encode() * 2, maxretry=2)

    def test_ignoreregex_is_applied_in_the_cxx_pass(self) -> None:
        """Lines the filter's ignoreregex finds are no failures on either path."""
        flt = parse_filter(ANY_HOST + "ignoreregex: ['keep me']\n", "any")
        data = (b"Nov 26 04:57:45 h app[1]: from 203.0.113.1 x\n"
                b"Nov 26 04:57:45 h app[1]: from 203.0.113.1 keep me\n") * 3
        _, _, (requests, counts) = run_both(flt, data, maxretry=3, findtime=86400)
        assert {"any": 3} == counts and len(requests) == 1

    def test_blocks_the_cxx_pass_cannot_take_count_nothing(self) -> None:
        """CRLF lines, a JSON filter and Python windows: add_lines answers None and
        leaves the windows empty, so the caller's add_hits counts each line once."""
        flt = sshd()
        line = SAMPLE_LINES[0].encode()
        jail = Jail(cfg(), IgnoreList(), clock=lambda: NOW)
        assert jail.add_lines(flt, line + b"\r\n", NOW) is None
        assert jail.add_lines(load_filter("kube-apiserver-audit"), b"{}\n", NOW) is None
        assert Jail(cfg(), IgnoreList(), native=False).add_lines(flt, line + b"\n", NOW) is None
        assert 0 == len(jail) and 0 == jail.stats.matches

    def test_a_raising_callback_stops_the_pass(self) -> None:
        """An exception from Python inside the pass (here the jail's ban table)
        propagates instead of being swallowed."""
        def broken(a: object, j: str) -> float | None:
            raise RuntimeError("ban table broken")

        jail = Jail(cfg(maxretry=1, findtime=86400), IgnoreList(), clock=lambda: NOW,
                    banned_since=broken)
        with pytest.raises(RuntimeError, match="ban table broken"):
            jail.add_lines(sshd(), ("\n".join(SAMPLE_LINES) + "\n").encode(), NOW)


ANY_HOST = """
format: text
prefix: [syslog]
programs: [app]
rules:
  - name: any
    regex: '^from (?P<host>\\S+) '
"""
