"""The in-namespace half of the kernel benchmarks: writes log lines, watches the ban sets.

Run by the harness as ``ip netns exec NS python -m bench.probe MODE ARGS`` in
the namespace of the daemon under test. Writing the line and seeing the
element happen in this one process, so both ends of every interval are read
from the same clock (``time.perf_counter``: CLOCK_MONOTONIC, which is also
comparable with the harness's own readings). Prints one JSON object.

Modes:
  latency  one line at a time; the element's arrival is seen from the
           kernel's notifications (exact, and one element costs nothing)
  append   append a prepared file (burst, flood), then wait for addresses
  wait     print "ready", then wait for addresses (restore: the harness
           starts the daemon after "ready" and keeps its own start time)
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from bench.nlsets import SetMonitor, SetQuery

# How often the presence of the last awaited address is polled: a 1-element
# GET costs ~60 µs, so 1 ms keeps the probe under ~6 % of one core.
POLL = 0.001


def syslog_stamp() -> str:
    return time.strftime("%b %e %H:%M:%S", time.localtime())


def packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def read_addresses(path: Path) -> list[str]:
    return [a for a in path.read_text().split() if a]


class Sets:
    """The v4 and v6 ban sets of one table, queried by packed address."""

    def __init__(self, table: str, set4: str, set6: str) -> None:
        self.query = SetQuery(table)
        self.set4, self.set6 = set4, set6

    def all_present(self, keys: list[bytes]) -> bool:
        v4 = [k for k in keys if len(k) == 4]
        v6 = [k for k in keys if len(k) == 16]
        return self.query.all_present(self.set4, v4) and self.query.all_present(self.set6, v6)

    def count(self, keys: list[bytes]) -> int:
        return (self.query.count_present(self.set4, [k for k in keys if len(k) == 4])
                + self.query.count_present(self.set6, [k for k in keys if len(k) == 16]))


def wait_all(sets: Sets, keys: list[bytes], deadline: float) -> dict[str, Any]:
    """Poll until every key is in the kernel, or the deadline.

    Cheap gate first (the last key written, then a sample), then a full check
    of every key. The time reported is when the gate passed, if the full
    check then confirms it; a daemon applies bans in the order it read them,
    so all earlier ones were in by then. If the full check disagrees, polling
    continues with full checks and their time is reported.
    """
    rng = random.Random(1)
    sample = [keys[-1], *rng.sample(keys, min(31, len(keys)))]
    polls = 0
    while True:
        now = time.perf_counter()
        if now > deadline:
            return {"done": None, "polls": polls, "present": sets.count(keys)}
        polls += 1
        if sets.all_present(keys[-1:]) and sets.all_present(sample):
            gate = time.perf_counter()
            if sets.all_present(keys):
                return {"done": gate, "polls": polls, "present": len(keys), "method": "gate"}
            break
        time.sleep(POLL)
    while True:
        t = time.perf_counter()
        if sets.all_present(keys):
            return {"done": t, "polls": polls, "present": len(keys), "method": "full"}
        if t > deadline:
            return {"done": None, "polls": polls, "present": sets.count(keys)}
        polls += 1
        time.sleep(0.05)


def cmd_latency(a: argparse.Namespace) -> dict[str, Any]:
    addrs = read_addresses(Path(a.addresses))
    mon = SetMonitor([a.table])
    fd = os.open(a.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    rng = random.Random(a.seed)
    out: list[float | None] = []
    try:
        for i, addr in enumerate(addrs):
            key = packed(addr)
            line = a.template.format(ts=syslog_stamp(), addr=addr,
                                     port=40000 + i % 20000).encode() + b"\n"
            start = time.perf_counter()
            os.write(fd, line)
            deadline = start + a.timeout
            while key not in mon.seen:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                mon.pump(left)
            seen = mon.seen.get(key)
            out.append(None if seen is None else seen - start)
            # Spread the samples so each is a lone event, not part of a batch.
            time.sleep(a.gap * (0.5 + rng.random()))
    finally:
        os.close(fd)
        mon.close()
    return {"latencies": out, "lost_notifications": mon.lost}


def cmd_append(a: argparse.Namespace) -> dict[str, Any]:
    keys = [packed(x) for x in read_addresses(Path(a.addresses))]
    sets = Sets(a.table, a.set4, a.set6)
    data = Path(a.data).read_bytes()
    fd = os.open(a.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    start = time.perf_counter()
    try:
        view = memoryview(data)
        for i in range(0, len(data), a.chunk):
            os.write(fd, view[i:i + a.chunk])
    finally:
        os.close(fd)
    written = time.perf_counter()
    res = wait_all(sets, keys, start + a.timeout)
    res.update(start=start, written=written, expected=len(keys))
    return res


def cmd_wait(a: argparse.Namespace) -> dict[str, Any]:
    keys = [packed(x) for x in read_addresses(Path(a.addresses))]
    sets = Sets(a.table, a.set4, a.set6)
    print("ready", flush=True)
    res = wait_all(sets, keys, time.perf_counter() + a.timeout)
    res.update(expected=len(keys))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.probe")
    sub = p.add_subparsers(dest="mode", required=True)
    for name in ("latency", "append", "wait"):
        s = sub.add_parser(name)
        s.add_argument("--table", required=True)
        s.add_argument("--addresses", required=True, help="file: addresses to wait for")
        s.add_argument("--timeout", type=float, default=10.0)
        if name != "latency":
            s.add_argument("--set4", required=True)
            s.add_argument("--set6", required=True)
        if name != "wait":
            s.add_argument("--log", required=True)
    lat = sub.choices["latency"]
    lat.add_argument("--template", required=True, help="line with {ts} {addr} {port}")
    lat.add_argument("--gap", type=float, default=0.03)
    lat.add_argument("--seed", type=int, default=6)
    app = sub.choices["append"]
    app.add_argument("--data", required=True, help="bytes to append")
    app.add_argument("--chunk", type=int, default=1 << 20)
    a = p.parse_args(argv)
    handler = {"latency": cmd_latency, "append": cmd_append, "wait": cmd_wait}[a.mode]
    print(json.dumps(handler(a)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
