"""Prototype: restore N bans from state.db to the kernel without parsing a single address.

``BanManager.restore`` today turns each stored target into an ``ipaddress``
object (``parse_stored_target``) only for ``BanTable`` to turn it back into
text for the nft script, computes each expiry twice through a generator, and
builds a ``BanRow`` dataclass per row before the kernel sees anything. The
stored text was validated when it was stored, so the kernel path needs none
of that: one grouped query, one script, one transaction.

Run inside a scratch namespace (root):
``ip netns exec NS python -m bench.proto_restore N``; prints JSON timings for
the current path and the prototype on the same state.db.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from bench.corpus import distinct_addresses
from kfwguard.addresses import IgnoreList
from kfwguard.bans import BanManager
from kfwguard.firewall.bantable import BanTable
from kfwguard.firewall.nft import Nft
from kfwguard.store import BanRow, Store


def fast_restore(store: Store, table: BanTable, now: float) -> int:
    """All bans in force → the kernel, in one transaction, straight from SQL text."""
    rows = store._db.execute(
        "SELECT target, MAX(expires_at) FROM bans WHERE expires_at > ? GROUP BY target",
        (now,)).fetchall()
    by_set: dict[str, list[str]] = {"ban_v4": [], "ban_v6": [], "ban_net_v4": [],
                                    "ban_net_v6": []}
    for target, expires in rows:
        # Stored targets are canonical text (validated when stored): the set
        # follows from ':' and '/' alone.
        name = ("ban_net_" if "/" in target else "ban_") + ("v6" if ":" in target else "v4")
        by_set[name].append(f"{target} timeout {max(1000, int((expires - now) * 1000))}ms")
    t = table.table
    script = (f"add table inet {t}\ndelete table inet {t}\n" + table._definition()
              + "".join(f"add element inet {t} {s} {{ {', '.join(v)} }}\n"
                        for s, v in by_set.items() if v))
    table.nft.run(script)
    return len(rows)


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    work = Path(tempfile.mkdtemp(prefix="kfwbench-proto-"))
    now = time.time()
    store = Store.in_dir(work)
    store.save_bans([BanRow(a, "sshd", "proto", now, now + 7200, 1)
                     for a in distinct_addresses(n, seed=3)])
    table = BanTable(Nft(), "kfwproto")
    t0 = time.perf_counter()
    BanManager(table, store, jails={}, ignore=IgnoreList()).restore()
    current = time.perf_counter() - t0
    t0 = time.perf_counter()
    count = fast_restore(store, table, time.time())
    proto = time.perf_counter() - t0
    in_kernel = table.count()
    table.nft.run(f"delete table inet {table.table}")
    store.close()
    print(json.dumps({"bans": n, "current_s": current, "prototype_s": proto,
                      "restored": count, "in_kernel": in_kernel}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
