"""The cost, on the event loop, of the disjoint cover of the CIDR bans per flush.

Before: every flush that touched a CIDR ban ran ``cover()`` over all of them.
After: ``CoverIndex`` recomputes only the /L blocks a change dirtied. Run:

    .venv/bin/python -m bench.cover [--bans 100000]

Prints the time of one full ``cover()`` (the old per-flush cost), of building
the index once (a restore; paid ban by ban as they come), and of one flush
after one new ban (the new per-flush cost: the dirty block, then a filtered
copy of the elements for the flush thread, O(n) but plain dict work), for
/64 offenders alone and with a /16 ban over some of them (the blocks are
then /16s). Median of 5 runs each.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import statistics
import time
from collections.abc import Callable

from kfwguard.firewall.cover import CoverIndex, cover


def offenders(n: int, seed: int = 1) -> dict[str, float]:
    """n distinct /64s spread over 2000::/3, each with its own expiry."""
    rnd = random.Random(seed)
    out: dict[str, float] = {}
    while len(out) < n:
        value = (0x2000 << 112) | (rnd.getrandbits(61) << 64)
        out[str(ipaddress.IPv6Network((value, 64)))] = 1e9 + rnd.random() * 86400
    return out


def median_seconds(fn: Callable[[], object], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(bans: dict[str, float], label: str) -> None:
    full = median_seconds(lambda: cover(bans))
    index = CoverIndex()

    def build() -> None:
        idx = CoverIndex()
        for text, expiry in bans.items():
            idx.set(text, expiry)
        idx.elements()

    built = median_seconds(build)
    for text, expiry in bans.items():
        index.set(text, expiry)
    assert index.elements() == cover(bans)
    extra = iter(offenders(50, seed=99).items())

    def one_flush() -> None:
        text, expiry = next(extra)
        index.set(text, expiry)
        index.elements(after=0.0)  # as BanManager._net_elements asks for it

    flush = median_seconds(one_flush)
    print(f"{label}: cover() of all {len(bans):,}: {full * 1000:.0f} ms; "
          f"CoverIndex built once: {built * 1000:.0f} ms; "
          f"a flush after one new ban: {flush * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bans", type=int, default=100_000)
    args = parser.parse_args()
    bans = offenders(args.bans)
    measure(bans, "/64 offenders")
    wide = dict(bans)
    wide["2000::/16"] = 2e9  # a manual /16 over the /64s that fall inside it
    measure(wide, "/64 offenders + one /16")


if __name__ == "__main__":
    main()
