"""kfwguard's matching pipeline alone, in-process: bytes → lines → records → filter → jail.

The same steps the daemon takes for a file source (``LineSplitter.feed_block``
over large chunks, a ``TextBlock`` with the source's position string, the
jail's intake ``JailFeed.take`` with the sessions the daemon gives a paired
filter), without the event loop, inotify or the kernel. Run as
``python -m bench.pipeline CORPUS [FILTER]`` in a fresh process (so one run's
memory does not weigh on the next); prints JSON.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kfwguard.addresses import IgnoreList
from kfwguard.config import JailConfig
from kfwguard.jails.jail import Jail
from kfwguard.matching import load_filter
from kfwguard.model import Record
from kfwguard.pipeline import JailFeed
from kfwguard.sources.formats import LineSplitter, TextBlock, TextDecoder

CHUNK = 256 * 1024  # what the file source reads at a time


def run(data: bytes, filter_name: str = "sshd", now: float | None = None) -> dict[str, Any]:
    """Push ``data`` through the pipeline; return timing and counts."""
    now = time.time() if now is None else now
    started = time.perf_counter()
    flt = load_filter(filter_name)
    # A findtime of ten years: the corpus has fixed dates, and stale lines
    # would skip the jail's bookkeeping that a live log pays for.
    jail = Jail(JailConfig(name="sshd", source="auth", filter=filter_name, maxretry=5,
                           findtime=10 * 365 * 86400.0, bantime=3600.0),
                IgnoreList(), max_entries=200_000, clock=lambda: now)
    loaded = time.perf_counter()
    skipped: dict[str, int] = {}
    split = LineSplitter(0, skipped)
    decoder = TextDecoder(skipped)
    prefix = '{"dev":1,"ino":2,"off":'

    def position(off: int) -> str:
        return prefix + str(off) + "}"

    feed = JailFeed.of(jail, flt)  # as Daemon builds it (C++ sessions for sshd)
    lines = matches = bans = 0
    view = memoryview(data)
    for i in range(0, len(data), CHUNK):
        chunk = bytes(view[i:i + CHUNK])
        found = split.feed_block(chunk)
        batch: Sequence[Record]
        if found is None:  # what the file source does for an unusual chunk
            batch = decoder.decode(split.feed(chunk), position)
        else:
            batch = TextBlock(found[0], found[1], position)
        lines += len(batch)
        requests, counts = feed.take(batch, now)
        matches += sum(counts.values())
        bans += len(requests)
    done = time.perf_counter()
    return {"lines": lines, "matches": matches, "bans": bans,
            "load_seconds": loaded - started, "seconds": done - loaded,
            "lines_per_second": lines / (done - loaded) if done > loaded else 0.0}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    data = Path(args[0]).read_bytes()
    print(json.dumps(run(data, args[1] if len(args) > 1 else "sshd")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
