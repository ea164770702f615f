"""The words every part of kfwguard.bans shares: jail names, the refusal,
the counters, and cheap checks on target text (as stored and shared).

Target text is canonical (``str()`` of a normalised address or network): the
index, the store and the kernel sync all key on it, and a restore or a
peer's feed of 100k bans checks it with ``inet_pton``, never an ipaddress
object per ban.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

from kfwguard.addresses import _V6_FLAG as V6_FLAG  # host_key's IPv6 mark
from kfwguard.addresses import IPNetwork
from kfwguard.firewall.bantable import SENTINELS, Target

MANUAL_JAIL = "manual"
# The jail of a ban found in the kernel and not in the store: who decided it
# is unknown (kfwguard.bans.restore).
ADOPTED_JAIL = "restored"
DEFAULT_MANUAL_BANTIME = 3600.0

# The jail of a ban decided by another node (cluster mode): "peer:<node>".
# Such a ban is stored with its origin, never published again, never counted
# as an offence of a local jail, and announced to no on_ban/on_unban listener.
PEER_JAIL_PREFIX = "peer:"


def peer_jail(node: str) -> str:
    return PEER_JAIL_PREFIX + node


def is_peer_jail(jail: str) -> bool:
    return jail.startswith(PEER_JAIL_PREFIX)


class BanRefused(ValueError):
    """A ban that must not happen (an ignored, protected or meaningless target,
    or a ban length out of range)."""


@dataclass
class BanStats:
    bans: int = 0
    unbans: int = 0
    refused: int = 0
    refused_manual: int = 0  # of which asked for by an operator (kfwguard ban)
    refused_peer: int = 0  # of which decided by a peer (cluster mode)
    simulated: int = 0  # decided in observe mode (dry_run), kept out of the kernel
    duplicates: int = 0
    kernel_errors: int = 0
    store_errors: int = 0
    table_restores: int = 0
    per_jail: dict[str, int] = field(default_factory=dict)


# Sources no packet can truly carry, or ranges whose ban means nothing but
# harm; 224.0.0.0/3 and ff00::/8 also hold the ban sets' sentinels.
MEANINGLESS: tuple[tuple[IPNetwork, str], ...] = (
    (ipaddress.ip_network("0.0.0.0/8"), "'this network' (0.0.0.0/8)"),
    (ipaddress.ip_network("224.0.0.0/3"), "multicast, reserved or broadcast"),
    (ipaddress.ip_network("::/128"), "the unspecified address"),
    (ipaddress.ip_network("ff00::/8"), "multicast"),
)

_SENTINEL_TEXTS = frozenset(SENTINELS.values())


def valid_target_text(text: str) -> bool:
    """True if ``text`` is an address or CIDR in the form we store (checked in C:
    a restore of 100k bans cannot afford ipaddress objects)."""
    addr, _, plen = text.partition("/")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        socket.inet_pton(family, addr)
    except (OSError, ValueError):
        return False
    if not plen:
        return text not in _SENTINEL_TEXTS
    return plen.isdigit() and int(plen) <= (128 if family == socket.AF_INET6 else 32)


def normalise(target: Target) -> Target:
    """Fold IPv4-mapped IPv6 (``::ffff:a.b.c.d``, ``::ffff:0:0/96``) to IPv4, so
    that the protected-address checks see the address the kernel would see,
    and a one-address network to the address."""
    if isinstance(target, ipaddress.IPv6Address) and target.ipv4_mapped is not None:
        return target.ipv4_mapped
    if isinstance(target, ipaddress.IPv6Network) and target.prefixlen >= 96 \
            and target.network_address.ipv4_mapped is not None:
        v4 = ipaddress.IPv4Network((int(target.network_address) & 0xFFFFFFFF,
                                    target.prefixlen - 96))
        return v4.network_address if v4.num_addresses == 1 else v4
    if isinstance(target, ipaddress.IPv4Network | ipaddress.IPv6Network) \
            and target.num_addresses == 1:
        return target.network_address
    return target


def as_net(target: Target) -> IPNetwork:
    if isinstance(target, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return ipaddress.ip_network(target)
    return target


def plain_key(text: str) -> int | None:
    """``host_key`` of a single address given as canonical text (as stored and
    shared), or None if ``text`` is not one: a peer's 100k bans cannot afford
    an ipaddress object each."""
    if ":" not in text:
        # IPv4: inet_pton takes only the canonical dotted quad (no leading
        # zeros, four parts; tests/unit/test_addresses.py holds it to
        # ipaddress on hostile input), so no round trip is needed.
        try:
            return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
        except (OSError, ValueError):
            return None
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return None
    if socket.inet_ntop(socket.AF_INET6, packed) != text:
        return None
    return int.from_bytes(packed, "big") | V6_FLAG


_gc_pauses = 0
_gc_was_enabled = False


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside: a batch of 100k new rows would
    otherwise trigger full collections that walk every object of the
    process, about half the cost of indexing them. The objects made are not
    cycles; collection resumes when the last pause ends. Pauses may span
    awaits and overlap (a new node's listing and its apply): collection is
    on again once every one has ended, if it was on before the first."""
    global _gc_pauses, _gc_was_enabled
    if _gc_pauses == 0:
        _gc_was_enabled = gc.isenabled()
        gc.disable()
    _gc_pauses += 1
    try:
        yield
    finally:
        _gc_pauses -= 1
        if _gc_pauses == 0 and _gc_was_enabled:
            gc.enable()


class GcHold:
    """paused_gc() taken and given back by hand, across awaits: ``hold()``
    and ``release()`` may each be called any number of times; leaving a
    ``with`` block releases."""

    def __init__(self) -> None:
        self._pause: contextlib.AbstractContextManager[None] | None = None

    @property
    def held(self) -> bool:
        return self._pause is not None

    def hold(self) -> None:
        if self._pause is None:
            self._pause = paused_gc()
            self._pause.__enter__()

    def release(self) -> None:
        if self._pause is not None:
            pause, self._pause = self._pause, None
            pause.__exit__(None, None, None)

    def __enter__(self) -> GcHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
