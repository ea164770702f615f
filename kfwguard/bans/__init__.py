"""Bans: deciding them, the index of those in force, saving them, and the kernel.

``manager.BanManager`` is the one decision point (jails, operators, peers);
``index`` holds the bans in force (pure data); ``journal`` saves every change
to the store, keeping what a full disk refuses; ``enforcer`` keeps the
kernel's ban table in step (its worker thread does nft I/O only);
``restore`` says what a start takes from the kernel; ``model`` holds the
shared names.
"""

from kfwguard.bans.manager import BanManager
from kfwguard.bans.model import (
    ADOPTED_JAIL,
    DEFAULT_MANUAL_BANTIME,
    MANUAL_JAIL,
    BanRefused,
    BanStats,
    GcHold,
    is_peer_jail,
    paused_gc,
    peer_jail,
    plain_key,
)

__all__ = ["ADOPTED_JAIL", "DEFAULT_MANUAL_BANTIME", "MANUAL_JAIL", "BanManager",
           "BanRefused", "BanStats", "GcHold", "is_peer_jail", "paused_gc", "peer_jail",
           "plain_key"]
