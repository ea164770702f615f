"""``kfwguard test-filter``: reading log files and its two output forms."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfwguard.matching import testfilter
from kfwguard.matching.testfilter import batches, main
from kfwguard.model import MAX_LINE
from kfwguard.sources.formats import TextDecoder
from kfwguard.timestamps import parse_rfc3339

NOW = parse_rfc3339("2026-11-26T12:00:00Z") or 0.0

LOG = (
    "Nov 26 04:57:45 node1 sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2\n"
    "Nov 26 04:57:46 node1 sshd[1]: Accepted password for root from 10.0.0.1 port 22 ssh2\n"
    "Invalid user bob from 2001:db8::1 port 22\n"
)


def run(tmp_path: Path, body: bytes, as_json: bool, filt: str = "sshd",
        missed: bool = False) -> tuple[int, str, str]:
    log = tmp_path / "test.log"
    log.write_bytes(body)
    out, err = io.StringIO(), io.StringIO()
    code = main(filt, log, as_json, [], out, err=err, now=NOW, missed=missed)
    return code, out.getvalue(), err.getvalue()


class TestBatches:
    def blocks(self, data: bytes, chunk_size: int = 4) -> tuple[list[str], dict[str, int]]:
        skipped: dict[str, int] = {}
        lines = [r.text for batch in batches(io.BytesIO(data), skipped, chunk_size)
                 for r in batch]
        return lines, skipped

    def test_lines_across_chunks(self) -> None:
        """Lines split over chunk boundaries come out whole; CRLF loses its CR; a last
        line without its newline is read too."""
        assert (["abc", "defghij", "k"], {}) == self.blocks(b"abc\ndefghij\r\nk")

    def test_too_long_line_is_counted(self) -> None:
        """A line over MAX_LINE is skipped and counted as the file source counts it,
        and the next line is intact."""
        data = b"a\n" + b"x" * (MAX_LINE + 1) + b"\nb\n"
        assert (["a", "b"], {"too_long": 1}) == self.blocks(data, chunk_size=1 << 16)

    def test_invalid_utf8_replaced(self) -> None:
        """Invalid UTF-8 is replaced, not an error."""
        assert (["a\ufffdb"], {}) == self.blocks(b"a\xffb\n", chunk_size=1024)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.sampled_from([b"", b"a", b"bc\r", b"x" * 9, b"\xff", b"w" * 40]),
                    max_size=12), st.booleans(), st.integers(1, 30))
    def test_same_records_as_the_file_source(self, lines: list[bytes], final_nl: bool,
                                             chunk_size: int) -> None:
        """The batches hold exactly the records a text file source makes of the
        file (TextDecoder over every complete line), in order."""
        data = b"\n".join(lines) + (b"\n" if final_nl and lines else b"")
        expected = [r.text for r in TextDecoder({}).decode(
            [(line, 0) for line in (data[:-1] if data.endswith(b"\n") else data).split(b"\n")],
            str)] if data else []
        assert expected == self.blocks(data, chunk_size)[0]


class TestDaemonPath:
    def test_says_which_scanner_ran(self, tmp_path: Path) -> None:
        """The summary names the scanner, the one the daemon's feed uses here."""
        code, out, _ = run(tmp_path, LOG.encode(), as_json=False)
        from kfwguard.matching import load_filter

        assert 0 == code
        assert f"scanner   {load_filter('sshd').block_engine}" in out

    def test_agrees_with_the_daemon_feed_on_edge_lines(self, tmp_path: Path) -> None:
        """On edge lines (other headers, CRLF, invalid UTF-8, no newline at the end)
        test-filter counts per rule exactly what the daemon's JailFeed takes from
        the same file framed by the file source."""
        from kfwguard.matching import load_filter
        from kfwguard.pipeline import JailFeed

        body = (LOG + "Nov  6 04:57:45 h sshd[2]: Invalid user a from 192.0.2.7 port 1\r\n"
                "Nov 26 04:57:45 h sshd[3]: Invalid user \udcff from 192.0.2.8 port 1\n"
                "<38>1 2026-11-26T04:57:45Z h sshd 4 - - Invalid user b from 192.0.2.9 port 1"
                ).encode("utf-8", "surrogateescape")
        flt = load_filter("sshd")
        feed = JailFeed(testfilter.CountingJail(flt), flt, None)
        want: dict[str, int] = {}
        for batch in batches(io.BytesIO(body), {}):
            for rule, n in feed.take(batch, NOW)[1].items():
                want[rule or ""] = want.get(rule or "", 0) + n
        _, out, _ = run(tmp_path, body, as_json=False)
        got = {m.group(1): int(m.group(2)) for m in re.finditer(r"^  (\S+)\s+(\d+)$", out, re.M)}
        assert want == {k: v for k, v in got.items() if v}
        assert 5 == sum(want.values())


class TestTestFilterJson:
    def test_shape(self, tmp_path: Path) -> None:
        """--json prints one object per match with line, host, time, filter, rule."""
        code, out, err = run(tmp_path, LOG.encode(), as_json=True)
        rows = [json.loads(line) for line in out.splitlines()]
        assert (0, "") == (code, err)
        assert [
            {"line": 1, "host": "192.0.2.1", "filter": "sshd", "rule": "failed-auth"},
            {"line": 3, "host": "2001:db8::1", "filter": "sshd", "rule": "invalid-user"},
        ] == [{k: v for k, v in r.items() if k != "time"} for r in rows]

    def test_time_is_rfc3339(self, tmp_path: Path) -> None:
        """The time field is RFC 3339 in UTC; without a stamp it is now."""
        _, out, _ = run(tmp_path, LOG.encode(), as_json=True)
        times = [json.loads(line)["time"] for line in out.splitlines()]
        assert "2026-11-26T12:00:00.000000Z" == times[1]
        assert parse_rfc3339(times[0]) is not None

    def test_stdout_is_only_json(self, tmp_path: Path) -> None:
        """With --json nothing but JSON lines reaches stdout, even for hostile input."""
        body = (LOG + "x" * 70000 + "\n\x00\xff garbage\n").encode("utf-8", "surrogateescape")
        _, out, _ = run(tmp_path, body + b"\xff\xfe\n", as_json=True)
        assert all(isinstance(json.loads(line), dict) for line in out.splitlines())

    def test_json_filter(self, tmp_path: Path) -> None:
        """JSON filters read one event per line."""
        line = (
            '{"level":"warn","ts":"2026-11-26T04:57:45.123Z","msg":"rejected connection on '
            'client endpoint","remote-addr":"[2001:db8::9]:2379"}\n'
        )
        _, out, _ = run(tmp_path, line.encode(), as_json=True, filt="etcd")
        assert [{
            "line": 1, "host": "2001:db8::9", "time": "2026-11-26T04:57:45.123000Z",
            "filter": "etcd", "rule": "rejected-client",
        }] == [json.loads(x) for x in out.splitlines()]


    def test_line_numbers_across_blocks(self, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
        """Line numbers stay 1-based and exact across reads, empty and over-long lines."""
        monkeypatch.setattr(testfilter, "CHUNK", 100)
        fail = LOG.splitlines()[0] + "\n"
        noise = "Nov 26 04:57:46 node1 cron[2]: ok\n"
        body = fail + noise * 3 + "\n" + "y" * 70000 + "\n" + fail + noise + fail
        _, out, _ = run(tmp_path, body.encode(), as_json=True)
        assert [1, 7, 9] == [json.loads(x)["line"] for x in out.splitlines()]


class TestTestFilterSummary:
    def test_line_count_exact(self, tmp_path: Path) -> None:
        """A file ending in a newline counts no extra empty line after it."""
        body = ("Nov 26 04:57:46 node1 cron[2]: ok\n" * 1000).encode()
        _, out, _ = run(tmp_path, body, as_json=False)
        assert "lines     1000\n" in out
        _, out, _ = run(tmp_path, body + b"tail", as_json=False)
        assert "lines     1001\n" in out

    def test_ignored_and_bad_host_counted(self, tmp_path: Path) -> None:
        """ignoreregex hits and non-address hosts are counted apart from matches
        where the lines are shown (--missed: the feed's hits, line by line); the
        summary alone says when the C++ pass counted lines it does not report."""
        filt = tmp_path / "app.yaml"
        filt.write_text(
            "format: text\nprefix: [syslog]\nrules:\n  - name: fail\n"
            "    regex: '^login failed from (?P<host>\\S+)$'\n"
            "ignoreregex: 'from 192\\.0\\.2\\.99$'\n")
        body = "".join(f"Nov 26 04:57:45 n app: login failed from {h}\n"
                       for h in ("192.0.2.1", "nope", "192.0.2.99"))
        _, out, _ = run(tmp_path, body.encode(), as_json=False, filt=str(filt), missed=True)
        for expected in ("lines     3\n", "matched   1 from 1 distinct hosts", "ignored   1 ",
                         "bad host  1 ", "too long  0 "):
            assert expected in out
        _, out, _ = run(tmp_path, body.encode(), as_json=False, filt=str(filt))
        assert "matched   1 from 1 distinct hosts" in out
        if "scanner   native" in out:  # the daemon's C++ pass counted the block
            assert "ignored   0 + not reported by the C++ pass" in out
        else:
            assert "ignored   1 " in out

    def test_summary(self, tmp_path: Path) -> None:
        """The human summary counts lines, matches, skips and per-rule hits."""
        body = (LOG + "y" * 70000 + "\n").encode()
        code, out, _ = run(tmp_path, body, as_json=False)
        assert 0 == code
        for expected in ("lines     4", "matched   2 from 2 distinct hosts", "too long  1",
                         "lines/s"):
            assert expected in out
        assert re.search(r"\n  failed-auth +1\n", out)

    def test_lines_without_an_address_are_counted_or_skipped_by_their_session(
            self, tmp_path: Path) -> None:
        """A line without an address counts under its session's 'Connection from', and
        without one it is a skip the summary counts ('no origin')."""
        body = (b"Nov 26 04:57:45 n sshd[7]: Connection from 192.0.2.7 port 1\n"
                b"Nov 26 04:57:46 n sshd[7]: Disconnecting: Too many authentication failures "
                b"[preauth]\n"
                b"Nov 26 04:57:46 n sshd[8]: Disconnecting: Too many authentication failures "
                b"[preauth]\n")
        _, out, _ = run(tmp_path, body, as_json=False)
        for expected in ("matched   1 from 1 distinct hosts", "no origin 1 "):
            assert expected in out, out
        assert re.search(r"\n  too-many-unaddressed +1\n", out), out
        _, out, _ = run(tmp_path, body, as_json=True)
        assert [(2, "192.0.2.7")] == [(r["line"], r["host"])
                                      for r in map(json.loads, out.splitlines())]

    def test_unknown_filter(self, tmp_path: Path) -> None:
        """An unknown filter is exit 1 with the reason on stderr, nothing on stdout."""
        code, out, err = run(tmp_path, b"", as_json=True, filt="nope")
        assert (1, "") == (code, out)
        assert "no filter of that name" in err

    def test_missing_log(self, tmp_path: Path) -> None:
        """A missing log file is exit 1 with the reason on stderr."""
        out, err = io.StringIO(), io.StringIO()
        code = main("sshd", tmp_path / "missing.log", False, [], out, err=err, now=NOW)
        assert (1, "") == (code, out.getvalue())
        assert "missing.log" in err.getvalue()


@pytest.mark.parametrize("as_json", [True, False])
def test_empty_log(tmp_path: Path, as_json: bool) -> None:
    """An empty log is fine in both modes."""
    assert 0 == run(tmp_path, b"", as_json)[0]


class TestMissed:
    BODY = (
        b"Nov 26 04:57:45 node1 sshd[1]: Failed password for root from 203.0.113.1 port 1 ssh2\n"
        b"Nov 26 04:57:46 node1 sshd[2]: error: kex_exchange_identification: read: Connection "
        b"reset by peer\n"
        b"Nov 26 04:57:47 node1 sshd[3]: fatal: Frobnicate failure for 203.0.113.2 port 9\n"
        b"Nov 26 04:57:48 node1 sshd[4]: Server listening on 0.0.0.0 port 22.\n"
        b"Nov 26 04:57:49 node1 sshd[5]: Accepted password for root from 10.0.0.1 port 5 ssh2\n"
    )

    def test_missed_lists_unmatched_failures_with_an_address(self, tmp_path: Path) -> None:
        """--missed prints the lines no rule matched that hold an address and a
        failure-like word, and only those: not the matched, not the success line,
        not address-less errors, not ordinary lines with an address."""
        log = tmp_path / "test.log"
        log.write_bytes(self.BODY)
        out = io.StringIO()
        assert 0 == main("sshd", log, False, [], out, now=NOW, missed=True)
        text = out.getvalue()
        assert "missed    1 lines" in text
        assert "  3: Nov 26 04:57:47 node1 sshd[3]: fatal: Frobnicate failure for " in text
        assert "Server listening" not in text and "kex_exchange" not in text

    def test_missed_in_json(self, tmp_path: Path) -> None:
        """With --json, missed lines come as objects after the matches."""
        log = tmp_path / "test.log"
        log.write_bytes(self.BODY)
        out = io.StringIO()
        main("sshd", log, True, [], out, now=NOW, missed=True)
        rows = [json.loads(x) for x in out.getvalue().splitlines()]
        assert [1] == [r["line"] for r in rows if "rule" in r]
        assert [3] == [r["line"] for r in rows if "missed" in r]

    def test_pam_and_failed_count_once(self, tmp_path: Path) -> None:
        """test-filter counts a PAM line and sshd's line of one attempt once, as the
        daemon does."""
        pam = ("Nov 26 04:57:45 node1 sshd[7]: pam_unix(sshd:auth): authentication failure; "
               "logname= uid=0 euid=0 tty=ssh ruser= rhost=203.0.113.9  user=root\n")
        failed = ("Nov 26 04:57:47 node1 sshd[7]: Failed password for root from 203.0.113.9 "
                  "port 1 ssh2\n")
        _, out, _ = run(tmp_path, (pam + failed).encode(), as_json=True)
        assert [2] == [json.loads(x)["line"] for x in out.splitlines()]
