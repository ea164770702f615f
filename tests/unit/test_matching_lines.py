"""Filter.scan_lines (a block of raw lines, on the C++ block scanner) gives what the
per-record path (the reference) gives."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfwguard.matching import Filter, load_filter, parse_filter
from kfwguard.matching.engine import Accel, split_block
from kfwguard.model import MAX_LINE
from tests.conftest import need

NOW = time.mktime((2026, 11, 26, 12, 0, 0, 0, 0, -1))
SAMPLES = Path(__file__).resolve().parents[2] / "filters" / "samples"

# Lines chosen to sit on the edges of the C++ scanner: other header forms,
# other programs, odd tags, CRLF, invalid UTF-8, no header at all.
EDGES = [
    "Nov 26 04:57:45 node-1 sshd[12]: Failed password for root from 203.0.113.9 port 22 ssh2",
    "Nov 26 04:57:45 node-1 sshd[1x]: Failed password for root from 203.0.113.10 port 22 ssh2",
    "Nov 26 04:57:45 node-1 sshd: Invalid user bob from 203.0.113.11 port 22",
    "Nov 26 04:57:45 node-1 logger: Failed password for root from 203.0.113.12 port 22 ssh2",
    "Nov 26 04:57:45.123456 node-1 sshd[3]: Invalid user x from 203.0.113.13 port 22",
    "2026-11-26T04:57:45+00:00 node-1 sshd[3]: Invalid user x from 203.0.113.14 port 22",
    "Invalid user x from 203.0.113.15 port 22",
    "Nov 2x 04:57:45 node-1 sshd[3]: Invalid user x from 203.0.113.16 port 22",
    "Nov 26 04:57:45 node-1 sshd[3]: Invalid user x from 999.0.113.16 port 22",
    "Nov 26 04:57:45 node-1 sshd[3]: Connection closed by 203.0.113.17 port 22",
    "Nov 26 04:57:45 node-1 sshd[3]: Invalid user x\tfrom 203.0.113.18",
    "",
]


@functools.cache
def sshd(accelerate: Accel) -> Filter:
    """The sshd filter, compiled once for all hypothesis examples."""
    return load_filter("sshd", accelerate=accelerate)


def per_record(flt: Filter, data: bytes) -> list[tuple[object, ...]]:
    return list(Filter.scan_lines(flt, data, NOW))


# Real lines from the shipped samples (comments and blanks left out), to mutate.
SAMPLE_LINES = [
    line for line in (SAMPLES / "sshd.log").read_text().splitlines()
    if line and not line.startswith("#")
]
# Characters on which regex engines disagree: PCRE's \s has the vertical tab,
# RE2's does not; Unicode line and space separators; NUL; a lone CR.
ODD_CHARS = "\x0b\x0c\x85\u2028\u00a0\t\r\x00 :[]"

# The block path: the C++ scanner (the per-record path is what it is compared with).
ENGINES = pytest.mark.parametrize("accelerate", [True], ids=["native"])


@pytest.fixture(autouse=True)
def built() -> None:
    need(load_filter("sshd").block_engine == "native",
         "the C++ scanner was not built (needs g++ and libre2-dev)")


@ENGINES
class TestScanLines:
    def test_samples_agree(self, accelerate: Accel) -> None:
        """On every shipped text sample, the C++ scanner and the per-record path agree."""
        for name in ("sshd", "kubelet"):
            flt = load_filter(name, accelerate=accelerate)
            data = (SAMPLES / f"{name}.log").read_bytes()
            assert per_record(flt, data) == flt.scan_lines(data, NOW)

    def test_samples_agree_in_every_mode(self, accelerate: Accel) -> None:
        """Every mode of every shipped text filter (sshd's helpers, ends and repeats
        included) gives the same hits on the block path as per record."""
        for name in ("sshd", "kubelet", "ingress-nginx"):
            for mode in load_filter(name).modes:
                flt = load_filter(f"{name}[mode={mode}]", accelerate=accelerate)
                data = (SAMPLES / f"{name}.log").read_bytes()
                assert per_record(flt, data) == flt.scan_lines(data, NOW), (name, mode)

    def test_header_forms_agree_and_count(self, accelerate: Accel) -> None:
        """The header forms the C++ scanner does not read (no host name, busybox,
        RFC 5424, an unpadded day, a Solaris id, rsyslog's repeat) make it hand the
        block to the per-record path: same hits, and every one of these lines counts."""
        flt = sshd(accelerate)
        tail = "Failed password for root from 203.0.113.{} port 22 ssh2"
        lines = [
            "Nov 26 04:57:45 node1 sshd[1]: " + tail.format(1),
            "Nov 26 04:57:45 sshd[2]: " + tail.format(2),
            "Nov 26 04:57:45 node1 auth.info sshd[3]: " + tail.format(3),
            "<38>1 2026-11-26T04:57:45Z node1 sshd 4 - - " + tail.format(4),
            "Nov 6 04:57:45 node1 sshd[5]: " + tail.format(5),
            "Nov 26 04:57:45 node1 sshd[6]: [ID 800047 auth.info] " + tail.format(6),
            "Nov 26 04:57:45 node1 sshd[7]: message repeated 2 times: [ " + tail.format(7) + "]",
        ]
        for line in lines:
            data = ("Nov 26 04:57:44 node1 sshd[9]: " + tail.format(9) + "\n" + line
                    + "\n").encode()
            hits = flt.scan_lines(data, NOW)
            assert per_record(flt, data) == hits, line
            assert 1 <= len([h for h in hits if h[1] == "match" and str(h[3]).endswith(
                line.split("203.0.113.")[1].split(" ")[0])]), line

    def test_edges_agree(self, accelerate: Accel) -> None:
        """Other headers, programs, tags and headerless lines are decided as per record."""
        flt = sshd(accelerate)
        data = ("\n".join(EDGES) + "\n").encode()
        hits = flt.scan_lines(data, NOW)
        assert per_record(flt, data) == hits
        assert {"match", "bad-host"} == {h[1] for h in hits}

    def test_crlf_and_invalid_utf8_agree(self, accelerate: Accel) -> None:
        """CRLF endings and invalid UTF-8 (decoded with U+FFFD per record) give the same hits."""
        flt = sshd(accelerate)
        line = (b"Nov 26 04:57:45 h sshd[1]: Failed password for r\xffoot "
                b"from 203.0.113.1 port 2 ssh2")
        for data in (line + b"\r\n", line + b"\n", line.replace(b"\xff", b"") + b"\r\n"):
            hits = flt.scan_lines(data, NOW)
            assert per_record(flt, data) == hits
            assert 1 == len(hits)

    def test_over_long_line_agrees(self, accelerate: Accel) -> None:
        """A line over MAX_LINE bytes is "too-long" on the block path too (never
        matched), and the lines around it are still decided."""
        flt = sshd(accelerate)
        long_line = ("Nov 26 04:57:45 h sshd[1]: Failed password for " + "x" * MAX_LINE
                     + " from 203.0.113.9 port 22 ssh2")
        for lines in ([long_line], [EDGES[0], long_line, EDGES[2]]):
            data = ("\n".join(lines) + "\n").encode()
            hits = flt.scan_lines(data, NOW)
            assert per_record(flt, data) == hits
            assert "too-long" in [h[1] for h in hits]

    def test_split_block(self, accelerate: Accel) -> None:
        """split_block makes a record per non-empty line, CR dropped, with its line end."""
        flt = sshd(accelerate)
        records, ends = split_block(b"a\n\nb\r\nc")
        assert ["a", "b", "c"] == [r.text for r in records]
        assert [1, 5, 7] == ends
        assert [] == flt.scan_lines(b"a\n\nb\r\nc", NOW)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.sampled_from(EDGES) | st.text(max_size=60), max_size=12))
    def test_random_blocks_agree(self, accelerate: Accel, lines: list[str]) -> None:
        """Any mix of edge lines and random text gives the per-record result."""
        flt = sshd(accelerate)
        data = "\n".join(lines).encode("utf-8", "surrogatepass")
        assert per_record(flt, data) == flt.scan_lines(data, NOW)


    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(SAMPLE_LINES), st.integers(0, 200),
                              st.text(alphabet=ODD_CHARS, min_size=1, max_size=3)),
                    min_size=1, max_size=8))
    def test_odd_characters_inside_real_lines_agree(
        self, accelerate: Accel, edits: list[tuple[str, int, str]]
    ) -> None:
        """Real sshd lines with whitespace-like characters put anywhere (inside a
        user name, between fields) give the per-record result: no line a rule
        matches can slip past the block scan, and none is matched that should not."""
        flt = sshd(accelerate)
        lines = [line[:at] + chars + line[at:] for line, at, chars in edits]
        data = "\n".join(lines).encode()
        assert per_record(flt, data) == flt.scan_lines(data, NOW)

    def test_vertical_tab_in_a_field_is_still_matched(self, accelerate: Accel) -> None:
        """RE2's \\S takes a vertical tab: a PAM failure with one in ruser is found
        by the block scan too (a PCRE-based scan missed it once)."""
        flt = sshd(accelerate)
        data = (b"Nov 26 04:57:45 h sshd[1]: pam_unix(sshd:auth): authentication failure; "
                b"logname= uid=0 euid=0 tty=ssh ruser=a\x0bb rhost=203.0.113.9  user=root\n")
        hits = flt.scan_lines(data, NOW)
        assert per_record(flt, data) == hits
        assert ["pam-auth-failure"] == [h[2] for h in hits]


# Rules on the edges of a block scan: a class that could run across lines,
# no final "$", a "$" before more pattern, another program.
ODD_RULES = """
format: text
prefix: [syslog]
programs: [app]
rules:
  - name: across
    regex: '^open [^x]*from <HOST>$'
  - name: open-ended
    regex: '^hello <HOST>'
  - name: inner-dollar
    regex: '^bye (?:<HOST>$|x)'
"""
ODD_LINES = [
    "Nov 26 04:57:45 h app[1]: open a",
    "Nov 26 04:57:45 h app[1]: b from 203.0.113.1",
    "Nov 26 04:57:45 h app[1]: open q from 203.0.113.2",
    "Nov 26 04:57:45 h app[1]: hello 203.0.113.3 and more",
    "Nov 26 04:57:45 h app[1]: hello 203.0.113.300",
    "Nov 26 04:57:45 h app[1]: hello [2001:db8::1]",
    "Nov 26 04:57:45 h other[1]: hello 203.0.113.4",
    "Nov 26 04:57:45 h app[1]: bye 203.0.113.5",
]


class TestTwoPaths:
    def test_each_path_is_really_used(self) -> None:
        """The filter says which path scans blocks, and it is the one asked for
        (a silent fallback would make the block tests compare a path with
        itself). The C++ scanner is built by the package install where g++ and
        libre2-dev are present, as in CI, and is what the daemon uses then."""
        assert "per-record" == load_filter("sshd", accelerate=False).block_engine
        assert "native" == load_filter("sshd").block_engine

    def test_rules_without_a_literal_head_take_the_cxx_scanner(self) -> None:
        """A rule that does not start with literal text (the RE2 candidate search
        needed one) is scanned in C++ too, with the per-record result."""
        flt = parse_filter(ODD_RULES.replace("'^hello <HOST>'", "'^(?:hello|hi) <HOST>'"),
                           "odd")
        assert "native" == flt.block_engine
        data = ("\n".join([*ODD_LINES, "Nov 26 04:57:45 h app[1]: hi 203.0.113.7"])
                + "\n").encode()
        hits = flt.scan_lines(data, NOW)
        assert per_record(flt, data) == hits
        assert "203.0.113.7" in [str(h[3]) for h in hits]

    def test_native_scanner_agrees_on_odd_rules(self) -> None:
        """On rules at the edges of a block scan the C++ scanner gives the
        per-record result, line by line (it runs RE2 itself)."""
        flt = parse_filter(ODD_RULES, "odd")
        assert "native" == flt.block_engine
        data = ("\n".join(ODD_LINES) + "\n").encode()
        hits = flt.scan_lines(data, NOW)
        assert per_record(flt, data) == hits
        assert ["across", "open-ended", "open-ended", "inner-dollar"] == [
            h[2] for h in hits if h[1] == "match"]


class TestHostCache:
    def test_two_generations_keep_the_working_set_and_stay_bounded(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The block path's host cache holds at most two generations of
        _HOST_CACHE_MAX texts; an address seen in the previous generation is
        not parsed again (a flood of new addresses cannot make every line of
        a recurring attacker re-parse), and results do not depend on the cache."""
        from kfwguard.addresses import parse_host as real
        from kfwguard.matching import textfilter

        monkeypatch.setattr(textfilter, "_HOST_CACHE_MAX", 4)
        parsed: list[str] = []

        def counting(text: str) -> object:
            parsed.append(text)
            return real(text)

        monkeypatch.setattr(textfilter, "parse_host", counting)
        flt = load_filter("sshd")

        def scan(*hosts: str) -> list[str]:
            data = "".join(
                f"Nov 26 04:57:45 h sshd[1]: Failed password for root from {h} port 2 ssh2\n"
                for h in hosts).encode()
            return [str(hit[3]) for hit in flt.scan_lines(data, NOW)]

        first = [f"203.0.113.{i}" for i in range(1, 7)]
        assert first == scan(*first)
        assert first == parsed
        parsed.clear()
        assert ["203.0.113.1", "203.0.113.6"] == scan("203.0.113.1", "203.0.113.6")
        assert [] == parsed  # from the old generation and the current one
        assert ["203.0.113.99"] == scan("203.0.113.99")
        assert ["203.0.113.99"] == parsed
        for i in range(100, 140):
            scan(f"198.51.100.{i}")
        assert len(flt._hosts) + len(flt._hosts_old) <= 8  # type: ignore[attr-defined]


class TestNativeScannerInput:
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400) | st.lists(
        st.sampled_from([*SAMPLE_LINES, "", "x", "Nov 26 04:57:45 h", "Nov 26 04:57:45 h sshd"]),
        max_size=6).map(lambda ls: "\n".join(ls).encode()))
    def test_any_bytes_give_hits_inside_the_block_or_a_clear_error(self, data: bytes) -> None:
        """The C++ scanner is called directly on arbitrary bytes (no header check,
        invalid UTF-8, NULs, short and unterminated lines): it never crashes,
        returns spans inside the block, or refuses with ValueError."""
        flt = load_filter("sshd")
        native = flt._native  # type: ignore[attr-defined]
        try:
            hits = native.scan(data)
        except ValueError:
            return
        for end, rule, start, stop in hits:
            assert 0 <= end <= len(data) and 0 <= rule < len(flt.rules)
            assert (start, stop) == (-1, -1) or 0 <= start <= stop <= end
