"""Bytes a jail's failure tracker holds per remembered address, as the daemon keeps them.

Run as ``python -m bench.tracker N`` in a fresh process: it fills a Jail (with
the C++ windows where they were built, as the daemon does) with N distinct
addresses failing once each, and prints the growth of the process's RSS per
address as JSON. RSS, not tracemalloc: tracemalloc sees only Python's own
allocator, not the C++ windows'.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys

from bench import corpus
from bench.daemons import rss_mb
from kfwguard.addresses import IgnoreList, host_key
from kfwguard.config import JailConfig
from kfwguard.jails.jail import Jail

BATCH = 2000  # what the daemon hands a jail at most at once


def bytes_per_entry(n: int) -> dict[str, float | bool]:
    addrs = [ipaddress.ip_address(a) for a in corpus.distinct_addresses(n, seed=7)]
    hits = [(0, "match", "failed-auth", a, host_key(a), 1000.0) for a in addrs]
    # Per address (ipv6_prefix 128): the corpus holds IPv6 neighbours in one /64.
    jail = Jail(JailConfig(name="j", source="s", filter="sshd", maxretry=3, ipv6_prefix=128),
                IgnoreList(), max_entries=n * 2, clock=lambda: 1000.0)
    me = os.getpid()
    before = rss_mb(me)
    for i in range(0, n, BATCH):
        jail.add_hits(hits[i:i + BATCH], 1000.0, "sshd")
    after = rss_mb(me)
    assert len(jail) == n
    return {"bytes_per_entry": (after - before) * 2**20 / n, "native": jail.native}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print(json.dumps(bytes_per_entry(int(args[0]) if args else 200_000)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
