"""``kfwguard test-filter FILTER LOGFILE [--json]``: run a filter over a log file.

Like fail2ban-regex: without --json a human summary; with --json, stdout
carries one JSON object per matching line and nothing else, so it can be
piped into jq or compared in tests.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, TextIO

from kfwguard.matching.engine import MAX_LINE, Filter
from kfwguard.matching.loader import load_filter
from kfwguard.matching.spec import FilterError
from kfwguard.matching.timeparse import format_rfc3339

CHUNK = 1 << 20


def _decode(data: bytes) -> str:
    if data.endswith(b"\r"):
        data = data[:-1]
    return data.decode("utf-8", errors="replace")


def iter_lines(
    stream: BinaryIO, max_line: int = MAX_LINE, chunk_size: int = CHUNK
) -> Iterator[str | None]:
    """Lines of ``stream`` decoded as UTF-8 (invalid bytes replaced); None for an over-long line.

    Reads big chunks and never holds more than ``max_line`` bytes of one
    line: once a line is too long, the rest of it is discarded unread into
    memory, so a 1 GiB line costs one pass and no quadratic joins.
    """
    pending: list[bytes] = []
    pending_len = 0
    skipping = False
    while chunk := stream.read(chunk_size):
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl == -1:
                if not skipping and start < len(chunk):
                    pending.append(chunk[start:])
                    pending_len += len(chunk) - start
                    if pending_len > max_line:
                        skipping, pending, pending_len = True, [], 0
                break
            piece = chunk[start:nl]
            start = nl + 1
            if skipping:
                skipping = False
                yield None
            elif pending:
                pending.append(piece)
                total = pending_len + len(piece)
                data = b"".join(pending)
                pending, pending_len = [], 0
                yield _decode(data) if total <= max_line else None
            else:
                yield _decode(piece) if len(piece) <= max_line else None
    if skipping:
        yield None
    elif pending:
        yield _decode(b"".join(pending))


def main(
    filter_arg: str,
    logfile: Path,
    as_json: bool,
    dirs: Sequence[Path] = (),
    out: TextIO = sys.stdout,
    *,
    err: TextIO | None = None,
    now: float | None = None,
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
            return _run(filt, stream, str(logfile), as_json, out, clock)
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


def _whole_lines(block: bytes, max_line: int) -> Iterator[bytes | None]:
    """``block`` (whole lines, the last ending in b"\\n") with each line over
    ``max_line`` bytes cut out and replaced by one None, in order.

    A line from ``pos`` is too long exactly when the ``max_line + 1`` bytes
    from ``pos`` hold no newline, so one ``rfind`` per window of that size
    checks a block: no per-line work.
    """
    limit = max_line + 1
    end = len(block)
    pos = seg = 0
    while end - pos > limit:
        nl = block.rfind(b"\n", pos, pos + limit)
        if nl >= 0:
            pos = nl + 1
            continue
        if pos > seg:
            yield block[seg:pos]
        yield None
        pos = seg = block.find(b"\n", pos + limit) + 1
    if seg == 0:
        yield block
    elif seg < end:
        yield block[seg:]


def iter_blocks(
    stream: BinaryIO, max_line: int = MAX_LINE, chunk_size: int = CHUNK
) -> Iterator[bytes | None]:
    """The lines of ``stream`` in order, as blocks of whole lines each ending in
    b"\\n" (one is added to a last line that lacks it), and None for each line
    over ``max_line`` bytes (dropped unread into memory, like ``iter_lines``).

    Each block holds ``block.count(b"\\n")`` lines of the file; a file that
    ends in a newline has no extra empty line after it.
    """
    pending = b""  # the start of a line, never more than max_line bytes
    skipping = False  # inside a line already known to be too long
    while chunk := stream.read(chunk_size):
        start = 0
        if skipping:
            nl = chunk.find(b"\n")
            if nl < 0:
                continue
            skipping = False
            yield None
            start = nl + 1
        last = chunk.rfind(b"\n", start)
        if last < 0:
            if len(pending) + len(chunk) - start > max_line:
                pending, skipping = b"", True
            else:
                pending += chunk[start:]
            continue
        block = pending + chunk[start : last + 1] if pending else chunk[start : last + 1]
        yield from _whole_lines(block, max_line)
        pending = chunk[last + 1 :]
        if len(pending) > max_line:
            pending, skipping = b"", True
    if skipping:
        yield None
    elif pending:
        yield pending + b"\n"


def _run(filt: Filter, stream: BinaryIO, name: str, as_json: bool, out: TextIO, now: float) -> int:
    statuses: Counter[str] = Counter()
    per_rule: dict[str, int] = dict.fromkeys(filt.rules, 0)
    hosts: set[int] = set()  # host_key: ipaddress objects hash in Python code
    lines = 0  # lines before the current block
    write = out.write
    dumps = json.dumps
    filter_name = filt.name

    started = time.perf_counter()
    for block in iter_blocks(stream, chunk_size=CHUNK):
        if block is None:
            lines += 1
            statuses["too-long"] += 1
            continue
        # Filter.scan_lines finds the few interesting lines of a block in one
        # pass; the others never become Python objects.
        hits = filt.scan_lines(block, now)
        seen, number = 0, lines
        for end, status, rule, host, key, t in hits:
            if host is None or rule is None:
                statuses[status] += 1
                continue
            per_rule[rule] += 1
            hosts.add(key)
            if as_json:
                number += block.count(b"\n", seen, end) + 1
                seen = end + 1
                write(dumps({
                    "line": number,
                    "host": str(host),
                    "time": format_rfc3339(t),
                    "filter": filter_name,
                    "rule": rule,
                }) + "\n")
        lines += block.count(b"\n")
    elapsed = time.perf_counter() - started
    statuses["match"] += sum(per_rule.values())
    if as_json:
        return 0
    rate = f"{lines / elapsed:,.0f} lines/s" if elapsed > 0 else "n/a"
    width = max((len(r) for r in filt.rules), default=0)
    report = [
        f"filter    {filt.name} ({filt.format}, {filt.path})",
        f"log       {name}",
        f"lines     {lines}",
        f"matched   {statuses['match']} from {len(hosts)} distinct hosts",
        f"ignored   {statuses['ignored']} (ignoreregex)",
        f"bad host  {statuses['bad-host']} (rule matched, text is not an IP address)",
        f"too long  {statuses['too-long']} (over {MAX_LINE} bytes, skipped)",
        "rules:",
        *(f"  {rule:<{width}}  {per_rule[rule]}" for rule in filt.rules),
        f"time      {elapsed:.3f} s ({rate})",
    ]
    out.write("\n".join(report) + "\n")
    return 0
