"""The ban table: ``table inet <name>`` with timeout sets and one drop chain.

Layout (README.md, What it does): sets ``ban_v4``/``ban_v6`` for single addresses and
``ban_net_v4``/``ban_net_v6`` (interval) for CIDR bans, all ``flags timeout``,
dropped by a chain on ``prerouting`` at ``raw - 10``: before conntrack,
kube-proxy's DNAT and Calico's raw chain, so a ban covers host ports,
NodePorts, forwarded pod traffic and connections that were already open.

Before the drops, the chain accepts the admin networks (sets ``admin_v4``/
``admin_v6``, filled from ``baseline.admin_cidrs``): a ban that slipped in
by any path never cuts the operator off.

Every method sends one nft transaction, however many elements it carries.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import structlog

from kfwguard.addresses import IPAddress, IPNetwork
from kfwguard.firewall.nft import Nft, NftError
from kfwguard.firewall.nlsets import PREFIX, TIMED, TIMEOUT_HEADER, NetlinkUnavailable, SetWriter

log = structlog.get_logger("kfwguard.firewall")

Target = IPAddress | IPNetwork

SETS = ("ban_v4", "ban_v6", "ban_net_v4", "ban_net_v6")

# One permanent element per set that no real packet can carry as its source
# (limited broadcast, multicast). A flushed or recreated set loses it, which
# lets us check the table's health with a dry-run delete of each instead of
# listing every ban. Bans can never reach them: BanManager refuses targets
# in 224.0.0.0/3 (multicast, reserved, broadcast) and ff00::/8 (multicast),
# so no ban element equals or covers a sentinel (nft would refuse the
# overlap in an interval set).
SENTINELS = {
    "ban_v4": "255.255.255.255",
    "ban_v6": "ff0f::6b66:7767",
    "ban_net_v4": "255.255.255.255",
    "ban_net_v6": "ff0f::6b66:7767",
}


# nf_tables answers ENFILE when a set already holds ``size`` elements, and nft
# prints that errno's text, which says nothing about sets.
_SET_FULL = "Too many open files in system"


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


def timeout_ms(seconds: float) -> int:
    """An element timeout in milliseconds: at least one second."""
    if not math.isfinite(seconds):
        raise ValueError(f"ban timeout {seconds} is not finite")
    return max(1000, math.ceil(seconds * 1000))


def nft_timeout(seconds: float) -> str:
    """An element timeout nft 1.0.6 parses for every ban length we allow.

    nft refuses ``100000000ms`` and more ("value too large": it caps each
    number it reads), so whole seconds go as ``<N>s`` (fine up to
    ``99999999s``, ~3.2 years; durations.MAX_BAN is one year) plus the
    milliseconds left. Below one second is not a useful ban: one second.
    """
    whole, frac = divmod(timeout_ms(seconds), 1000)
    return f"{whole}s{frac}ms" if frac else f"{whole}s"


class Element(NamedTuple):
    # A tuple, not a frozen dataclass: the kernel plan makes 100k of them
    # for a new node's listing (0.3 µs each instead of 2 µs).
    target: Target | str  # str: normalised address or CIDR text
    timeout: float  # seconds from now


class BanTable:
    """Creates, fills and inspects the ban table. Raises NftError on kernel refusal."""

    def __init__(self, nft: Nft, table: str = "kfwguard", set_size: int = 1_000_000,
                 admin: Sequence[IPNetwork] = ()) -> None:
        self.nft = nft
        self.table = table
        self.set_size = set_size
        self.admin = list(admin)
        # Handles of the chain's rules, as the definition creates them in a
        # fresh table (learnt once from a probe table): the health check asks
        # the kernel about these by handle, which costs the same at 200k bans
        # as at none (listing the chain makes nft fetch every set element).
        self._rule_handles: list[int] | None = None
        # Single addresses over netlink (nlsets) until it fails for a reason
        # of its own (not a refusal): then everything through nft.
        self.netlink = True

    def refusal_text(self, key: str, exc: NftError) -> str:
        """The kernel's refusal of element ``key`` in words an operator can act on."""
        if _SET_FULL in str(exc):
            return (f"ban set {self.table}/{set_for(key)} is full: it holds "
                    f"nftables.set_size = {self.set_size} elements (one is the health-check "
                    "sentinel); raise nftables.set_size")
        return str(exc)

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
            f"add set inet {t} admin_v4 {{ type ipv4_addr; flags interval; }}\n"
            f"add set inet {t} admin_v6 {{ type ipv6_addr; flags interval; }}\n"
            f"add chain inet {t} prerouting {{ type filter hook prerouting priority raw - 10; "
            f"policy accept; }}\n"
            f"add rule inet {t} prerouting ip saddr @admin_v4 accept\n"
            f"add rule inet {t} prerouting ip6 saddr @admin_v6 accept\n"
            f"add rule inet {t} prerouting ip saddr @ban_v4 counter drop\n"
            f"add rule inet {t} prerouting ip saddr @ban_net_v4 counter drop\n"
            f"add rule inet {t} prerouting ip6 saddr @ban_v6 counter drop\n"
            f"add rule inet {t} prerouting ip6 saddr @ban_net_v6 counter drop\n"
            + "".join(f"add element inet {t} {s} {{ {v} }}\n" for s, v in SENTINELS.items())
            + self._admin_elements()
        )

    def _admin_elements(self) -> str:
        out = ""
        for version, name in ((4, "admin_v4"), (6, "admin_v6")):
            nets = ipaddress.collapse_addresses(  # type: ignore[type-var]
                n for n in self.admin if n.version == version)
            text = ", ".join(str(n) for n in nets)
            if text:
                out += f"add element inet {self.table} {name} {{ {text} }}\n"
        return out

    def set_admin(self, admin: Sequence[IPNetwork]) -> None:
        """Replace the admin networks accepted before the drops (a reload)."""
        self.admin = list(admin)
        t = self.table
        self.nft.run(f"flush set inet {t} admin_v4\nflush set inet {t} admin_v6\n"
                     + self._admin_elements())

    def replace_expiring(self, items: Sequence[tuple[str, float]], now: float) -> None:
        """Like replace(), from (normalised target text, absolute expiry) pairs:
        the restore path, where building objects per ban would cost seconds."""
        groups: dict[str, list[str]] = {s: [] for s in SETS}
        for target, expiry in items:
            left = expiry - now
            if left >= 1.0:
                groups[set_for(target)].append(f"{target} timeout {nft_timeout(left)}")
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
                f"{e.target} timeout {nft_timeout(e.timeout)}" if verb == "add"
                else str(e.target))
        return "".join(
            f"{verb} element inet {self.table} {s} {{ {', '.join(v)} }}\n"
            for s, v in by_set.items()
        )

    # -- operations ----------------------------------------------------------

    def exists(self) -> bool:
        return self.nft.table_exists("inet", self.table)

    def rule_handles(self) -> list[int]:
        """The handles the definition gives the chain's rules in a fresh table,
        learnt from a probe table built from the same script (the kernel
        numbers a table's objects in creation order)."""
        if self._rule_handles is None:
            probe = f"{self.table[:27]}_hchk"
            real = self.table
            try:
                self.table = probe
                script = self._definition()
            finally:
                self.table = real
            self.nft.run(f"add table inet {probe}\ndelete table inet {probe}\n" + script)
            try:
                items = self.nft.json(f"list chain inet {probe} prerouting")
            finally:
                self.nft.run(f"delete table inet {probe}")
            self._rule_handles = [int(i["rule"]["handle"]) for i in items if "rule" in i]
        return self._rule_handles

    def is_intact(self) -> bool:
        """True if the table, its sets (sentinels in place), the chain and its
        rules are all there. One dry-run transaction deleting every sentinel
        and every rule by handle: it succeeds only if they all exist, and
        costs the same however many bans the sets hold.

        The check runs in a fresh libnftables context: nft 1.0.6 drops the
        elements a dry-run deletes from its context's cache (the kernel keeps
        them), so a second check in the same context reported the sentinels
        gone, and the daemon rebuilt its table on every check."""
        t = self.table
        handles = self.rule_handles()
        script = "".join(f"delete element inet {t} {s} {{ {v} }}\n"
                         for s, v in SENTINELS.items())
        script += "".join(f"delete rule inet {t} prerouting handle {h}\n" for h in handles)
        fresh = type(self.nft)()
        try:
            fresh.check(script)
        except NftError:
            return False
        finally:
            fresh.close()
        return True

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

        ``add element`` leaves an existing element's timeout alone before Linux
        6.10 (and takes the new one after), so a refresh is add (no-op if
        present) + delete + add, in the same transaction: the new timeout on
        every kernel, a shorter one too.
        Single addresses go over netlink (nlsets), CIDRs through nft.
        """
        if not elements and not refresh:
            return
        if self._by_netlink([("add", elements), ("add", refresh), ("delete", refresh),
                             ("add", refresh)]):
            return
        script = self._elements("add", elements)
        if refresh:
            script += self._elements("add", refresh)
            script += self._elements("delete", refresh)
            script += self._elements("add", refresh)
        self.nft.run(script)

    def update(self, removes: Sequence[Target | str], elements: Sequence[Element],
               refresh: Sequence[Element] = ()) -> None:
        """remove() then add(), in one transaction: a CIDR ban cut into pieces
        (or its pieces joined again) never leaves a moment without a drop."""
        if not removes and not elements and not refresh:
            return
        els = [Element(t, 1.0) for t in removes]
        if self._by_netlink([("add", els), ("delete", els), ("add", elements),
                             ("add", refresh), ("delete", refresh), ("add", refresh)]):
            return
        script = self._elements("add", els) + self._elements("delete", els)
        script += self._elements("add", elements)
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
        if self._by_netlink([("add", els), ("delete", els)]):
            return
        self.nft.run(self._elements("add", els) + self._elements("delete", els))

    def _by_netlink(self, steps: Sequence[tuple[str, Sequence[Element]]]) -> bool:
        """Make the changes (in order, one transaction) over netlink if they
        are all single addresses. False: not done (a CIDR among them, or
        netlink unusable here), for nft to do. Raises NftError if the
        kernel refused them (then none is in force). Written for speed: a
        new node in a cluster sends 100k elements at start."""
        if not self.netlink:
            return False
        groups: list[tuple[str, str, list[bytes]]] = []
        pton, v4, v6, ceil = socket.inet_pton, socket.AF_INET, socket.AF_INET6, math.ceil
        pack4, pack6 = TIMED[4].pack, TIMED[16].pack
        for verb, elements in steps:
            if not elements:
                continue
            add = verb == "add"
            out: tuple[list[bytes], list[bytes]] = ([], [])
            pre4, pre6 = PREFIX[(4, add)], PREFIX[(16, add)]
            try:
                for e in elements:
                    t = e.target
                    if type(t) is str:
                        if "/" in t:
                            return False
                        six = ":" in t
                        key = pton(v6 if six else v4, t)
                    elif isinstance(t, ipaddress.IPv4Address | ipaddress.IPv6Address):
                        six, key = t.version == 6, t.packed
                    else:
                        return False
                    if add:
                        ms = ceil(e.timeout * 1000)  # timeout_ms(), without the call
                        if ms < 1000:
                            ms = 1000
                        out[six].append(pack6(pre6, key, TIMEOUT_HEADER, ms) if six
                                        else pack4(pre4, key, TIMEOUT_HEADER, ms))
                    else:
                        out[six].append((pre6 if six else pre4) + key)
            except (OSError, ValueError, OverflowError, struct.error):
                return False  # not an address, or no finite timeout: nft says why
            groups += [(verb, name, els) for name, els in zip(("ban_v4", "ban_v6"), out,
                                                              strict=True) if els]
        writer = SetWriter(self.table)
        for verb, name, items in groups:
            writer.change(verb, name, items)
        try:
            writer.commit()
        except NetlinkUnavailable as exc:
            log.warning("netlink_unusable", error=str(exc), note="ban sets written through nft")
            self.netlink = False
            return False
        except OSError as exc:
            # This batch only (a buffer, a timeout): nft sends it again (it is
            # idempotent, and says why if the kernel refuses it).
            log.warning("netlink_batch_failed", error=str(exc), note="sent through nft")
            return False
        return True

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
