"""``kfwguard test-filter FILTER LOGFILE [--json]``: run a filter over a log file.

Like fail2ban-regex: without --json a human summary; with --json, stdout
carries one JSON object per matching line and nothing else, so it can be
piped into jq or compared in tests. With --missed it also lists the lines no
rule matched that hold an address and a failure-like word: what the filter
leaves out of a new log.

It runs the daemon's own path, so it cannot disagree with the daemon on an
edge line: the file is framed into batches as a text file source frames it
(``LineSplitter``, ``TextBlock``, the same chunk and batch sizes), and each
batch goes through the ``JailFeed`` the daemon would build on this machine
(the same scanner, C++ or per-record, the same session settlement for a
paired filter, a jail's failure windows) into a jail that only counts. The
summary says which scanner ran.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final, TextIO

import re2

from kfwguard.addresses import IgnoreList, parse_host
from kfwguard.config import JailConfig
from kfwguard.jails.jail import Jail
from kfwguard.matching.engine import Filter, Hit
from kfwguard.matching.loader import load_filter
from kfwguard.matching.spec import FilterError
from kfwguard.model import MAX_LINE, BanRequest, Record
from kfwguard.pipeline import JailFeed
from kfwguard.sources.base import MAX_BATCH
from kfwguard.sources.formats import LineSplitter, TextBlock, TextDecoder, text_blocks
from kfwguard.sources.tail import CHUNK
from kfwguard.timestamps import format_rfc3339

# A jail that only counts: no window ever fills, none forgets an address, no
# line is too old, IPv6 addresses count one by one.
_NEVER: Final = 1 << 40


def main(
    filter_arg: str,
    logfile: Path,
    as_json: bool,
    dirs: Sequence[Path] = (),
    out: TextIO = sys.stdout,
    *,
    err: TextIO | None = None,
    now: float | None = None,
    missed: bool = False,
    chunk_size: int = CHUNK,
) -> int:
    """Run the command; 0 on success, 1 when the filter or the log cannot be used."""
    err = err if err is not None else sys.stderr
    try:
        filt = load_filter(filter_arg, dirs)
    except FilterError as exc:
        print(f"kfwguard test-filter: {exc}", file=err)
        return 1
    clock = time.time() if now is None else now
    try:
        with open(logfile, "rb") as stream:
            return run(filt, stream, str(logfile), as_json, out, clock, missed, chunk_size)
    except BrokenPipeError:
        # The reader of our output left (`| head -1`): not an error of the log
        # file. Stop quietly; point stdout at /dev/null so the interpreter's
        # final flush does not complain either.
        if out is sys.stdout:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return 0
    except OSError as exc:
        print(f"kfwguard test-filter: {logfile}: {exc.strerror or exc}", file=err)
        return 1


def batches(stream: BinaryIO, skipped: dict[str, int], chunk_size: int = CHUNK,
            on_chunk: Callable[[bytes], None] | None = None) -> Iterator[Sequence[Record]]:
    """The batches a text file source hands the daemon for ``stream``'s bytes:
    TextBlocks where ``LineSplitter.feed_block`` takes a chunk, else records
    from ``feed``; each record's position is the offset after its line. Over-long
    lines are counted in ``skipped["too_long"]``. A last line without its
    newline is read as if it had one (as when a source leaves a rotated file)."""
    split = LineSplitter(0, skipped)
    decoder = TextDecoder(skipped)
    while data := stream.read(chunk_size):
        if on_chunk is not None:
            on_chunk(data)
        block = split.feed_block(data)
        if block is not None:
            yield from text_blocks(*block, str, MAX_BATCH)
        elif lines := split.feed(data):
            records = decoder.decode(lines, str)
            for i in range(0, len(records), MAX_BATCH):
                yield records[i : i + MAX_BATCH]
    last = split.take_unterminated()
    if last is not None and (records := decoder.decode([last], str)):
        yield records


class CountingJail(Jail):
    """A jail that counts every failure and never bans, and also counts what the
    daemon's jail passes over: hits without an address to count (ignoreregex,
    ``outside``, bad host, by status) and blocks the C++ pass counted whole
    (which reports no such hits)."""

    def __init__(self, filt: Filter) -> None:
        cfg = JailConfig(name="test-filter", source="file", filter=filt.name,
                         maxretry=_NEVER, findtime=float(_NEVER), ipv6_prefix=128)
        super().__init__(cfg, IgnoreList(), max_entries=_NEVER)
        self.passed: Counter[str] = Counter()
        self.cxx_blocks = 0

    def add_hits(self, hits: Iterable[Hit], now: float, filter: str,
                 ) -> tuple[list[BanRequest], dict[str | None, int]]:
        hits = list(hits)
        passed = self.passed
        for hit in hits:
            if hit[3] is None:
                passed[hit[1]] += 1
        return super().add_hits(hits, now, filter)

    def add_lines(self, *args: Any, **kwargs: Any,
                  ) -> tuple[list[BanRequest], dict[str | None, int]] | None:
        done = super().add_lines(*args, **kwargs)
        self.cxx_blocks += done is not None
        return done


# --missed: a line no rule matched that holds an address and one of these words
# is worth a look. RE2: the lines are hostile.
_FAILURE_WORDS: Final = re2.compile(
    r"(?i)fail|invalid|illegal|refused|denied|not allowed|reject|unauthori[sz]ed|forbidden"
    r"|bad |timeout|timed out|disconnect|penalty|too many|exceeded|did not receive|unable to"
    r"|error|attack|abuse|blocked|drop connection")
_ADDRESS_LIKE: Final = re2.compile(
    r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{1,4}")


def looks_missed(line: str) -> bool:
    """Whether a line no rule matched holds an address and a failure-like word."""
    if _FAILURE_WORDS.search(line) is None:
        return False
    return any(parse_host(m.group(0).strip("[]")) is not None
               for m in _ADDRESS_LIKE.finditer(line[:MAX_LINE]))




class _Numbers:
    """Line numbers of file offsets, from the chunks as they are read."""

    def __init__(self) -> None:
        self._data = b""  # the chunk being read
        self._base = 0  # its file offset
        self._before = 0  # newlines before it
        self._at = 0  # counted up to here, in _data
        self._count = 0  # newlines in _data[:_at]

    def chunk(self, data: bytes) -> None:
        self._before += self._data.count(b"\n")
        self._base += len(self._data)
        self._data, self._at, self._count = data, 0, 0

    @property
    def lines(self) -> int:
        """Lines read so far (a last one without its newline included)."""
        data = self._data
        return self._before + data.count(b"\n") + (bool(data) and not data.endswith(b"\n"))

    def number(self, offset: int) -> int:
        """The number (1-based) of the line whose newline is at file ``offset`` (or
        whose last byte is there, for a last line without one); cheap for
        ascending offsets in the chunk read last, where every line ends."""
        at = offset - self._base
        if at < self._at:
            self._at, self._count = 0, 0
        self._count += self._data.count(b"\n", self._at, at)
        self._at = at
        return self._before + self._count + 1


def run(filt: Filter, stream: BinaryIO, name: str, as_json: bool, out: TextIO, now: float,
        missed: bool = False, chunk_size: int = CHUNK) -> int:
    """test-filter over an open stream (``main`` without loading anything)."""
    jail = CountingJail(filt)
    feed = JailFeed.of(jail, filt)
    per_rule: dict[str, int] = dict.fromkeys(filt.rules, 0)
    skipped: dict[str, int] = {}
    write = out.write
    dumps = json.dumps
    filter_name = filt.name
    missed_lines: list[tuple[int, str]] = []
    numbers = _Numbers()
    # The summary alone: each batch through the feed's ``take``, the daemon's
    # own call. --json and --missed show lines: the hits the feed finds (its
    # scanner, its sessions), each with its line number, into the jail, as
    # ``take`` does where no C++ pass counts a block whole.
    detail = as_json or missed

    def tally(counts: dict[str | None, int]) -> None:
        for rule, n in counts.items():
            per_rule[rule or ""] = per_rule.get(rule or "", 0) + n

    def count(found: list[Hit]) -> None:
        if as_json:
            for number, status, rule, host, _key, t in found:
                if host is not None and rule is not None and status == "match":
                    write(dumps({
                        "line": number,
                        "host": str(host),
                        "time": format_rfc3339(t),
                        "filter": filter_name,
                        "rule": rule,
                    }) + "\n")
        tally(jail.add_hits(found, now, filter_name)[1])

    started = time.perf_counter()
    for batch in batches(stream, skipped, chunk_size, numbers.chunk):
        if not detail:
            tally(feed.take(batch, now)[1])
            continue
        taken: set[int] = set()

        def place(hits: list[Hit], by_offset: bool, batch: Sequence[Record] = batch,
                  taken: set[int] = taken) -> list[Hit]:
            start = batch.start if isinstance(batch, TextBlock) else 0
            out: list[Hit] = [
                (numbers.number(start + h[0] if by_offset
                                else int(batch[h[0]].position or 0) - 1), *h[1:])
                for h in hits]
            taken.update(h[0] for h in out)
            return out

        found = feed.found(batch, now, place)
        if missed:
            for record in batch:
                number = numbers.number(int(record.position or 0) - 1)
                if number not in taken and looks_missed(record.text):
                    missed_lines.append((number, record.text))
        count(found)
    if feed.sessions is not None:
        count(feed.sessions.flush())
    elapsed = time.perf_counter() - started
    lines = numbers.lines
    statuses = jail.passed
    statuses["match"] += sum(per_rule.values())
    statuses["too-long"] += skipped.get("too_long", 0)
    # Lines the C++ pass counted whole: it reports no ignored or bad-host hits.
    partial = " + not reported by the C++ pass (--missed shows all)" if jail.cxx_blocks else ""
    if as_json:
        for number, text in sorted(missed_lines):
            write(dumps({"line": number, "missed": text}) + "\n")
        return 0
    rate = f"{lines / elapsed:,.0f} lines/s" if elapsed > 0 else "n/a"
    width = max((len(r) for r in filt.rules), default=0)
    report = [
        f"filter    {filt.name} ({filt.format}, {filt.path})"
        + (f" mode {filt.mode}" if filt.mode else ""),
        f"scanner   {feed.scanner} (the daemon's on this machine)",
        f"log       {name}",
        f"lines     {lines}",
        f"matched   {statuses['match']} from {len(jail)} distinct hosts",
        f"ignored   {statuses['ignored']}{partial} "
        "(ignoreregex, or an address the rule leaves out)",
        f"bad host  {statuses['bad-host']}{partial} (rule matched, text is not an IP address)",
        f"too long  {statuses['too-long']} (over {MAX_LINE} bytes, skipped)",
        *([f"no origin {feed.sessions.unattributed} (a line without an address whose "
           "session named none: not counted)"]
          if feed.sessions is not None and "unaddressed" in filt.kinds.values() else []),
        "rules:",
        *(f"  {rule:<{width}}  {per_rule[rule]}" for rule in filt.rules),
        f"time      {elapsed:.3f} s ({rate})",
    ]
    if missed:
        report.append(f"missed    {len(missed_lines)} lines no rule matched, with an address "
                      "and a failure-like word:")
        report += [f"  {number}: {text}" for number, text in sorted(missed_lines)]
    out.write("\n".join(report) + "\n")
    return 0
