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
from kfwguard.matching.testfilter import iter_blocks, iter_lines, main
from kfwguard.timestamps import parse_rfc3339

NOW = parse_rfc3339("2026-11-26T12:00:00Z") or 0.0

LOG = (
    "Nov 26 04:57:45 node1 sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2\n"
    "Nov 26 04:57:46 node1 sshd[1]: Accepted password for root from 10.0.0.1 port 22 ssh2\n"
    "Invalid user bob from 2001:db8::1 port 22\n"
)


def run(tmp_path: Path, body: bytes, as_json: bool, filt: str = "sshd") -> tuple[int, str, str]:
    log = tmp_path / "test.log"
    log.write_bytes(body)
    out, err = io.StringIO(), io.StringIO()
    code = main(filt, log, as_json, [], out, err=err, now=NOW)
    return code, out.getvalue(), err.getvalue()


class TestIterLines:
    def chunks(self, data: bytes, max_line: int = 10, chunk_size: int = 4) -> list[str | None]:
        return list(iter_lines(io.BytesIO(data), max_line=max_line, chunk_size=chunk_size))

    def test_lines_across_chunks(self) -> None:
        """Lines split over chunk boundaries come out whole; CRLF loses its CR."""
        assert ["abc", "defghij", "k"] == self.chunks(b"abc\ndefghij\r\nk")

    def test_too_long_line_is_none(self) -> None:
        """A line over the cap is yielded as None, once, and the next line is intact."""
        assert ["a", None, "b", None] == self.chunks(b"a\n" + b"x" * 25 + b"\nb\n" + b"y" * 11)

    def test_line_exactly_at_cap(self) -> None:
        """A line of exactly the cap is kept."""
        assert ["x" * 10] == self.chunks(b"x" * 10 + b"\n")

    def test_invalid_utf8_replaced(self) -> None:
        """Invalid UTF-8 is replaced, not an error."""
        assert ["a\ufffdb"] == self.chunks(b"a\xffb\n", chunk_size=1024)

    def test_megabyte_line_in_big_chunks(self) -> None:
        """A 1 MiB line with default sizes is one None, then the rest of the file."""
        data = b"x" * (1 << 20) + b"\nok\n"
        assert [None, "ok"] == list(iter_lines(io.BytesIO(data)))


class TestIterBlocks:
    def blocks(self, data: bytes, max_line: int = 10, chunk_size: int = 4) -> list[bytes | None]:
        return list(iter_blocks(io.BytesIO(data), max_line=max_line, chunk_size=chunk_size))

    def test_blocks_are_whole_lines(self) -> None:
        """Every block is whole lines ending in a newline; one is added to a last line without."""
        assert b"abc\ndefghij\r\nk\n" == b"".join(
            b for b in self.blocks(b"abc\ndefghij\r\nk") if b is not None)

    def test_trailing_newline_adds_no_line(self) -> None:
        """A file ending in a newline has exactly as many lines as newlines."""
        blocks = self.blocks(b"a\nb\nc\n", chunk_size=1024)
        assert 3 == sum(b.count(b"\n") for b in blocks if b is not None)

    def test_too_long_lines_cut_out_in_place(self) -> None:
        """Over-long lines become None where they were, within and across chunks."""
        data = b"a\n" + b"x" * 25 + b"\nb\n" + b"y" * 11 + b"\nc\n" + b"z" * 30
        assert [b"a\n", None, b"b\n", None, b"c\n", None] == self.blocks(data, chunk_size=1024)
        assert [b"a\n", None, b"b\n", None, b"c\n", None] == [
            b for b in self.blocks(data, chunk_size=3) if b != b""]

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from([b"", b"a", b"bc\r", b"x" * 9, b"y" * 10, b"z" * 11,
                                     b"\xff", b"w" * 40]), max_size=12),
           st.booleans(), st.integers(1, 30))
    def test_same_lines_as_iter_lines(self, lines: list[bytes], final_nl: bool,
                                      chunk_size: int) -> None:
        """Blocks split into lines give exactly what iter_lines gives, in the same order."""
        data = b"\n".join(lines) + (b"\n" if final_nl and lines else b"")
        flat: list[str | None] = []
        for b in self.blocks(data, chunk_size=chunk_size):
            if b is None:
                flat.append(None)
                continue
            flat.extend(x.removesuffix(b"\r").decode("utf-8", "replace")
                        for x in b[:-1].split(b"\n"))
        assert iter_lines_exact(data, chunk_size) == flat


def iter_lines_exact(data: bytes, chunk_size: int) -> list[str | None]:
    """iter_lines' lines for ``data`` (max_line 10)."""
    return list(iter_lines(io.BytesIO(data), max_line=10, chunk_size=chunk_size))


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
        """ignoreregex hits and non-address hosts are counted apart from matches."""
        filt = tmp_path / "app.yaml"
        filt.write_text(
            "format: text\nprefix: [syslog]\nrules:\n  - name: fail\n"
            "    regex: '^login failed from (?P<host>\\S+)$'\n"
            "ignoreregex: 'from 192\\.0\\.2\\.99$'\n")
        body = "".join(f"Nov 26 04:57:45 n app: login failed from {h}\n"
                       for h in ("192.0.2.1", "nope", "192.0.2.99"))
        _, out, _ = run(tmp_path, body.encode(), as_json=False, filt=str(filt))
        for expected in ("lines     3\n", "matched   1 from 1 distinct hosts", "ignored   1 ",
                         "bad host  1 ", "too long  0 "):
            assert expected in out

    def test_summary(self, tmp_path: Path) -> None:
        """The human summary counts lines, matches, skips and per-rule hits."""
        body = (LOG + "y" * 70000 + "\n").encode()
        code, out, _ = run(tmp_path, body, as_json=False)
        assert 0 == code
        for expected in ("lines     4", "matched   2 from 2 distinct hosts", "too long  1",
                         "lines/s"):
            assert expected in out
        assert re.search(r"\n  failed-auth +1\n", out)

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
