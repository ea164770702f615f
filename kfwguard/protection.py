"""The node's own addresses are never banned: looked up at start and at each
reload (a child process: pyroute2 stays out of the daemon), and followed over
rtnetlink in between, so an address the node takes later (a CNI bridge, a VIP:
the unit starts before the kubelet) is protected at once and a ban covering it
is lifted."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence

import structlog

from kfwguard.addresses import LOOPBACK_NETS, IgnoreList, IPNetwork
from kfwguard.bans import BanManager
from kfwguard.config import Config
from kfwguard.node import AddressWatch, protected_networks

log = structlog.get_logger("kfwguard.daemon")


async def ignore_list(cfg: Config) -> IgnoreList:
    """The daemon-wide ignore list of ``cfg``, with the node's own addresses."""
    # admin_cidrs join every jail's ignore list: bans never beat the failsafe.
    ignore = IgnoreList([*LOOPBACK_NETS, *cfg.ignoreip, *cfg.baseline.admin_cidrs])
    # Runs a child process and waits for it, up to node.CHILD_TIMEOUT: keep
    # that wait off our event loop.
    for net in await asyncio.to_thread(protected_networks):
        ignore.add(net)
    return ignore


async def follow_addresses(ignore: Callable[[], IgnoreList], bans: BanManager) -> None:
    """Until cancelled: put each address netlink announces on the ignore list in
    force (``ignore()``; a reload replaces it) and lift bans covering it."""
    try:
        watch = AddressWatch()
    except OSError as exc:
        log.warning("address_watch_unavailable", error=str(exc),
                    note="addresses added after start are protected at the next reload")
        return
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    loop.add_reader(watch.fileno(), wake.set)
    try:
        # Whatever was added between the start's look-up and the watch.
        protect(await asyncio.to_thread(protected_networks), ignore(), bans)
        while True:
            await wake.wait()
            wake.clear()
            added, lost = watch.read()
            if added:
                protect([ipaddress.ip_network(a) for a in added], ignore(), bans)
            if lost:
                log.warning("address_notifications_lost", note="re-reading the node")
                protect(await asyncio.to_thread(protected_networks), ignore(), bans)
    finally:
        loop.remove_reader(watch.fileno())
        watch.close()


def protect(nets: Sequence[IPNetwork], ignore: IgnoreList, bans: BanManager) -> None:
    """Add ``nets`` (the node's own) to ``ignore``; lift bans covering them."""
    fresh = [n for n in nets if n not in ignore]
    if not fresh:
        return
    for net in fresh:
        ignore.add(net)  # the BanManager's list too: it refuses new bans of it
    log.info("addresses_protected", addresses=[str(n) for n in fresh])
    for row in bans.active():
        try:
            target = ipaddress.ip_network(row.target, strict=False)
        except ValueError:
            continue
        if any(target.version == n.version and target.overlaps(n) for n in fresh):
            log.warning("protected_address_unbanned", target=row.target, jail=row.jail,
                        why="a ban covered an address this node now holds")
            bans.unban(target if "/" in row.target else target.network_address, row.jail)
