"""Which targets may never be banned, and why (BanManager asks before every
ban: a jail's, an operator's, a peer's, a stored one at restore).

Refused whoever asks: a meaningless source (0.0.0.0/8, 224.0.0.0/3,
``::``, ff00::/8, which also hold the ban sets' sentinels), the admin
networks, the ignore lists (with the node's own addresses and loopback), and
networks too wide to mean one offender. The cluster's own networks (cluster,
control plane, pod, service CIDRs) are refused unless an operator forces it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kfwguard.addresses import IgnoreList, IPAddress, host_key
from kfwguard.bans.model import MEANINGLESS, BanRefused, as_net, normalise
from kfwguard.firewall.bantable import Target

# A check that may refuse a target: returns why, or None to let it pass.
BanGuard = Callable[[Target], str | None]


@dataclass(frozen=True, slots=True)
class Protected:
    admin: IgnoreList  # never banned, whoever asks (baseline.admin_cidrs)
    ignore: IgnoreList  # ignoreip, the node's own addresses, loopback
    cluster: IgnoreList  # banned only with force
    guards: Sequence[BanGuard] = ()  # extra refusals (the cluster allowlist)


# host_key ranges (kfwguard.addresses) of MEANINGLESS, and of IPv4-mapped IPv6,
# which checked() folds to IPv4 before judging it.
_MEANINGLESS_KEYS = [*((host_key(n.network_address),
                        host_key(n.network_address) + n.num_addresses - 1)
                       for n, _ in MEANINGLESS),
                     (host_key(ipaddress.IPv6Address("::ffff:0:0")),
                      host_key(ipaddress.IPv6Address("::ffff:ffff:ffff")))]


def refusal_ranges(lists: Sequence[IgnoreList]) -> tuple[list[int], list[int]]:
    """Every host_key range in which an address may be refused (MEANINGLESS,
    IPv4-mapped, and ``lists``), merged and sorted: (starts, ends), for a
    bisect per address where a batch of 100k cannot afford an object each.
    An address outside them passes checked() without force; one inside goes
    to checked(), which decides and says why."""
    spans = sorted([*_MEANINGLESS_KEYS, *(r for lst in lists for r in lst.key_ranges())])
    starts: list[int] = []
    ends: list[int] = []
    for a, b in spans:
        if ends and a <= ends[-1] + 1:
            ends[-1] = max(ends[-1], b)
        else:
            starts.append(a)
            ends.append(b)
    return starts, ends


def checked(target: Target, protected: Protected, *, force: bool = False) -> Target:
    """The target to ban (IPv4-mapped folded to IPv4), or BanRefused."""
    target = normalise(target)
    if isinstance(target, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return _check_address(target, protected, force)
    net = as_net(target)
    for bad, what in MEANINGLESS:
        if net.version == bad.version and net.overlaps(bad):
            raise BanRefused(f"{target} is or covers {what}: not a source to ban")
    if protected.admin.overlaps(net):
        raise BanRefused(f"{target} overlaps admin_cidrs: the operator's access "
                         "is never banned")
    if protected.ignore.overlaps(net):
        raise BanRefused(f"{target} overlaps an ignored or protected address")
    if net.prefixlen < (8 if net.version == 4 else 16):
        raise BanRefused(f"{target} is too wide to ban")
    if not force and protected.cluster.overlaps(net):
        raise BanRefused(f"{target} overlaps the cluster, pod or service CIDRs "
                         "(an operator may insist with --force)")
    _check_guards(target, protected)
    return target


def _check_guards(target: Target, protected: Protected) -> None:
    for guard in protected.guards:
        why = guard(target)
        if why is not None:
            raise BanRefused(why)


def _check_address(addr: IPAddress, protected: Protected, force: bool) -> IPAddress:
    """checked() for one address, on ints: the path every jail ban takes."""
    value = int(addr)
    if addr.version == 4:
        if value >> 24 == 0 or value >= 0xE0000000:
            raise BanRefused(f"{addr} is in 0.0.0.0/8 or 224.0.0.0/3 (multicast, "
                             "reserved, broadcast): not a source to ban")
    elif value == 0 or value >> 120 == 0xFF:
        raise BanRefused(f"{addr} is unspecified or multicast: not a source to ban")
    if addr in protected.admin:
        raise BanRefused(f"{addr} is in admin_cidrs: the operator's access is never banned")
    if addr in protected.ignore:
        raise BanRefused(f"{addr} is on an ignore list or is protected (node, loopback)")
    if not force and addr in protected.cluster:
        raise BanRefused(f"{addr} is in the cluster, pod or service CIDRs "
                         "(an operator may insist with --force)")
    _check_guards(addr, protected)
    return addr
