"""The ban table: ``table inet <name>`` with timeout sets and one drop chain.

Layout (README.md, What it does): sets ``ban_v4``/``ban_v6`` for single addresses and
``ban_net_v4``/``ban_net_v6`` (interval) for CIDR bans, all ``flags timeout``,
dropped by a chain on ``prerouting`` at ``raw - 10``: before conntrack,
kube-proxy's DNAT and Calico's raw chain, so a ban covers host ports,
NodePorts, forwarded pod traffic and connections that were already open.

Every method sends one nft transaction, however many elements it carries.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kfwguard.addresses import IPAddress, IPNetwork
from kfwguard.firewall.nft import Nft, NftError

Target = IPAddress | IPNetwork

SETS = ("ban_v4", "ban_v6", "ban_net_v4", "ban_net_v6")

# One permanent element per set that no real packet can carry as its source
# (limited broadcast, multicast). A flushed or recreated set loses it, which
# lets us check the table's health with four tiny look-ups instead of
# listing every ban.
SENTINELS = {
    "ban_v4": "255.255.255.255",
    "ban_v6": "ff0f::6b66:7767",
    "ban_net_v4": "255.255.255.255",
    "ban_net_v6": "ff0f::6b66:7767",
}


def set_for(target: Target | str) -> str:
    if isinstance(target, str):
        # Normalised text (as BanManager keeps it): cheaper than parsing again.
        if "/" in target:
            return "ban_net_v6" if ":" in target else "ban_net_v4"
        return "ban_v6" if ":" in target else "ban_v4"
    if isinstance(target, ipaddress.IPv4Address):
        return "ban_v4"
    if isinstance(target, ipaddress.IPv6Address):
        return "ban_v6"
    return "ban_net_v4" if target.version == 4 else "ban_net_v6"


def _ms(seconds: float) -> int:
    # The kernel rounds timeouts to jiffies; below one second is not a useful ban.
    return max(1000, int(seconds * 1000))


@dataclass(frozen=True, slots=True)
class Element:
    target: Target | str  # str: normalised address or CIDR text
    timeout: float  # seconds from now


class BanTable:
    """Creates, fills and inspects the ban table. Raises NftError on kernel refusal."""

    def __init__(self, nft: Nft, table: str = "kfwguard", set_size: int = 1_000_000) -> None:
        self.nft = nft
        self.table = table
        self.set_size = set_size

    # -- scripts -------------------------------------------------------------

    def _definition(self) -> str:
        t = self.table
        size = self.set_size
        return (
            f"add table inet {t}\n"
            f"add set inet {t} ban_v4 {{ type ipv4_addr; flags timeout; size {size}; }}\n"
            f"add set inet {t} ban_v6 {{ type ipv6_addr; flags timeout; size {size}; }}\n"
            f"add set inet {t} ban_net_v4 {{ type ipv4_addr; flags interval, timeout; "
            f"size {size}; }}\n"
            f"add set inet {t} ban_net_v6 {{ type ipv6_addr; flags interval, timeout; "
            f"size {size}; }}\n"
            f"add chain inet {t} prerouting {{ type filter hook prerouting priority raw - 10; "
            f"policy accept; }}\n"
            f"add rule inet {t} prerouting ip saddr @ban_v4 counter drop\n"
            f"add rule inet {t} prerouting ip saddr @ban_net_v4 counter drop\n"
            f"add rule inet {t} prerouting ip6 saddr @ban_v6 counter drop\n"
            f"add rule inet {t} prerouting ip6 saddr @ban_net_v6 counter drop\n"
            + "".join(f"add element inet {t} {s} {{ {v} }}\n" for s, v in SENTINELS.items())
        )

    def replace_expiring(self, items: Sequence[tuple[str, float]], now: float) -> None:
        """Like replace(), from (normalised target text, absolute expiry) pairs:
        the restore path, where building objects per ban would cost seconds."""
        groups: dict[str, list[str]] = {s: [] for s in SETS}
        for target, expiry in items:
            ms = int((expiry - now) * 1000)
            if ms >= 1000:
                groups[set_for(target)].append(f"{target} timeout {ms}ms")
        t = self.table
        script = [f"add table inet {t}\ndelete table inet {t}\n", self._definition()]
        for name, elems in groups.items():
            if elems:
                script.append(f"add element inet {t} {name} {{ {', '.join(elems)} }}\n")
        self.nft.run("".join(script))

    def _elements(self, verb: str, items: Iterable[Element]) -> str:
        by_set: dict[str, list[str]] = {}
        for e in items:
            by_set.setdefault(set_for(e.target), []).append(
                f"{e.target} timeout {_ms(e.timeout)}ms" if verb == "add" else str(e.target))
        return "".join(
            f"{verb} element inet {self.table} {s} {{ {', '.join(v)} }}\n"
            for s, v in by_set.items()
        )

    # -- operations ----------------------------------------------------------

    def exists(self) -> bool:
        return self.nft.table_exists("inet", self.table)

    def is_intact(self) -> bool:
        """True if the table, its four sets and its drop rules are all there."""
        t = self.table
        try:
            items = self.nft.json(f"list chain inet {t} prerouting")
            self.nft.run("".join(
                f"get element inet {t} {s} {{ {v} }}\n" for s, v in SENTINELS.items()))
        except NftError:
            return False
        rules = [i["rule"] for i in items if "rule" in i]
        referenced = {
            str(e.get("match", {}).get("right", ""))
            for r in rules for e in r.get("expr", []) if isinstance(e, dict)
        }
        return all(f"@{s}" in referenced for s in SETS)

    def replace(self, elements: Sequence[Element]) -> None:
        """Atomically (re)create the whole table holding exactly ``elements``."""
        t = self.table
        script = (
            f"add table inet {t}\n"
            f"delete table inet {t}\n"
            + self._definition()
            + self._elements("add", elements)
        )
        self.nft.run(script)

    def add(self, elements: Sequence[Element], refresh: Sequence[Element] = ()) -> None:
        """Add new elements, and reset the timeout of ``refresh`` (already present) ones.

        nft's ``add element`` leaves an existing element's timeout alone, so a
        refresh is add (no-op if present) + delete + add, in the same transaction.
        """
        if not elements and not refresh:
            return
        script = self._elements("add", elements)
        if refresh:
            script += self._elements("add", refresh)
            script += self._elements("delete", refresh)
            script += self._elements("add", refresh)
        self.nft.run(script)

    def remove(self, targets: Sequence[Target | str]) -> None:
        """Remove elements; missing ones are not an error (add first, then delete)."""
        if not targets:
            return
        els = [Element(t, 1.0) for t in targets]
        self.nft.run(self._elements("add", els) + self._elements("delete", els))

    def list(self) -> dict[str, float]:
        """Elements in the kernel: address/CIDR text → seconds left (inf if none)."""
        out: dict[str, float] = {}
        for name in SETS:
            try:
                items = self.nft.json(f"list set inet {self.table} {name}")
            except NftError:
                continue
            for item in items:
                s = item.get("set")
                if not s:
                    continue
                for el in s.get("elem", []):
                    left = float("inf")
                    val = el
                    if isinstance(el, dict) and "elem" in el:
                        val = el["elem"]["val"]
                        if "expires" in el["elem"]:
                            left = float(el["elem"]["expires"])
                    if isinstance(val, dict) and "prefix" in val:
                        val = f"{val['prefix']['addr']}/{val['prefix']['len']}"
                    if str(val) == SENTINELS[name]:
                        continue
                    out[str(val)] = left
        return out

    def count(self) -> int:
        """Number of elements in all ban sets (one listing per set)."""
        return len(self.list())
