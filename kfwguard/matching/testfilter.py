"""``kfwguard test-filter FILTER LOGFILE [--json]``: run a filter over a log file.

Like fail2ban-regex: without --json a human summary; with --json, stdout
carries one JSON object per matching line and nothing else, so it can be
piped into jq or compared in tests. With --missed it also lists the lines no
rule matched that hold an address and a failure-like word: what the filter
leaves out of a new log. A paired filter's hits are settled per session as
the daemon settles them (one count per attempt).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Final, TextIO

import re2

from kfwguard.addresses import parse_host
from kfwguard.matching.engine import MAX_LINE, Filter, Hit
from kfwguard.matching.loader import load_filter
from kfwguard.matching.sessions import Sessions, block_sessions
from kfwguard.matching.spec import FilterError
from kfwguard.timestamps import format_rfc3339

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
    missed: bool = False,
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
            return _run(filt, stream, str(logfile), as_json, out, clock, missed)
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


def numbered(block: bytes, hits: list[Hit], first: int) -> list[Hit]:
    """``hits`` with each line end replaced by the line's number in the file
    (``first`` lines before the block); repeats of one line share it."""
    out: list[Hit] = []
    seen, number, last_end = 0, first, -1
    for hit in hits:
        end = hit[0]
        if end != last_end:
            number += block.count(b"\n", seen, end) + 1
            seen, last_end = end + 1, end
        out.append((number, *hit[1:]))
    return out


def _run(filt: Filter, stream: BinaryIO, name: str, as_json: bool, out: TextIO, now: float,
         missed: bool = False) -> int:
    statuses: Counter[str] = Counter()
    per_rule: dict[str, int] = dict.fromkeys(filt.rules, 0)
    hosts: set[int] = set()  # host_key: ipaddress objects hash in Python code
    lines = 0  # lines before the current block
    write = out.write
    dumps = json.dumps
    filter_name = filt.name
    # A paired filter (PAM + sshd lines of one attempt) counts as the daemon does.
    sessions = Sessions(filt.kinds) if filt.paired else None
    missed_lines: list[tuple[int, str]] = []

    def record(found: list[Hit]) -> None:
        for number, status, rule, host, key, t in found:
            if host is None or rule is None or status != "match":
                statuses[status] += 1
                continue
            per_rule[rule] += 1
            hosts.add(key)
            if as_json:
                write(dumps({
                    "line": number,
                    "host": str(host),
                    "time": format_rfc3339(t),
                    "filter": filter_name,
                    "rule": rule,
                }) + "\n")

    started = time.perf_counter()
    for block in iter_blocks(stream, chunk_size=CHUNK):
        if block is None:
            lines += 1
            statuses["too-long"] += 1
            continue
        # Filter.scan_lines finds the few interesting lines of a block in one
        # pass; the others never become Python objects.
        hits = filt.scan_lines(block, now)
        found = numbered(block, hits, lines)
        if missed:
            taken = {h[0] for h in found}
            for number, raw in enumerate(block.split(b"\n")[:-1], lines + 1):
                if number not in taken:
                    text = raw.decode("utf-8", "replace").removesuffix("\r")
                    if looks_missed(text):
                        missed_lines.append((number, text))
        if sessions is not None:
            found = sessions.settle(found, block_sessions(block, hits), now)
        record(found)
        lines += block.count(b"\n")
    if sessions is not None:
        record(sessions.flush())
    elapsed = time.perf_counter() - started
    statuses["match"] += sum(per_rule.values())
    if as_json:
        for number, text in missed_lines:
            write(dumps({"line": number, "missed": text}) + "\n")
        return 0
    rate = f"{lines / elapsed:,.0f} lines/s" if elapsed > 0 else "n/a"
    width = max((len(r) for r in filt.rules), default=0)
    report = [
        f"filter    {filt.name} ({filt.format}, {filt.path})"
        + (f" mode {filt.mode}" if filt.mode else ""),
        f"log       {name}",
        f"lines     {lines}",
        f"matched   {statuses['match']} from {len(hosts)} distinct hosts",
        f"ignored   {statuses['ignored']} (ignoreregex, or an address the rule leaves out)",
        f"bad host  {statuses['bad-host']} (rule matched, text is not an IP address)",
        f"too long  {statuses['too-long']} (over {MAX_LINE} bytes, skipped)",
        "rules:",
        *(f"  {rule:<{width}}  {per_rule[rule]}" for rule in filt.rules),
        f"time      {elapsed:.3f} s ({rate})",
    ]
    if missed:
        report.append(f"missed    {len(missed_lines)} lines no rule matched, with an address "
                      "and a failure-like word:")
        report += [f"  {number}: {text}" for number, text in missed_lines]
    out.write("\n".join(report) + "\n")
    return 0
