"""Ban-time policy: how long a jail bans an address for its n-th offence."""

from __future__ import annotations

from kfwguard.config import JailConfig


def ban_duration(cfg: JailConfig, offence: int) -> float:
    """Ban length for the ``offence``-th ban of an address (1 = first)."""
    if cfg.bantime_increment is None or offence <= 1:
        return cfg.bantime
    inc = cfg.bantime_increment
    grown = cfg.bantime * inc.factor ** min(offence - 1, 64)
    return max(cfg.bantime, min(grown, inc.max))
