"""Keeps the baseline in force: applies it, then heals drift, and never stops doing so."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from kfwguard.config import BaselineConfig
from kfwguard.firewall.baseline.drift import describe_drift, snapshot
from kfwguard.firewall.baseline.render import render
from kfwguard.firewall.nft import Nft, NftError

log = structlog.get_logger("kfwguard.baseline")


# --------------------------------------------------------------------------- enforcement

class BaselineEnforcer:
    """Keeps the baseline table as the policy says: applies it, then heals drift."""

    def __init__(self, cfg: BaselineConfig, nft: Nft, *,
                 on_drift: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.nft = nft
        self.on_drift = on_drift
        self.script = render(cfg)
        self.drift_count = 0
        self._expected: dict[str, Any] | None = None

    def apply(self) -> None:
        """Check and apply the policy, then remember how the kernel holds it."""
        self.nft.check(self.script)
        self.nft.run(self.script)
        # What we compare against later is the kernel's own view right after our
        # transaction: independent of how this nft version prints our script.
        self._expected = snapshot(self.nft, self.cfg.table)
        log.info("baseline_applied", table=self.cfg.table, role=self.cfg.role, cni=self.cfg.cni)

    def check_drift(self) -> str | None:
        """A reason when the live table is not what was applied, else None."""
        if self._expected is None:
            return f"baseline table inet {self.cfg.table} has not been applied yet"
        return describe_drift(self.cfg.table, self._expected, snapshot(self.nft, self.cfg.table))

    def _heal(self, reason: str) -> None:
        self.drift_count += 1
        log.warning("drift", table=self.cfg.table, reason=reason, drift_count=self.drift_count)
        if self.on_drift is not None:
            try:
                self.on_drift(reason)
            except Exception:
                # An alerting hiccup must not keep the policy from being put back.
                log.exception("drift_callback_failed")
        self.apply()

    async def run(self) -> None:
        """Apply now (errors propagate), then every reconcile_interval check and heal."""
        await asyncio.to_thread(self.apply)
        await self.keep()

    async def keep(self) -> None:
        """Every reconcile_interval, check the live table and heal drift (already applied)."""
        interval = max(self.cfg.reconcile_interval, 0.1)
        while True:
            await asyncio.sleep(interval)
            try:
                reason = await asyncio.to_thread(self.check_drift)
                if reason is not None:
                    await asyncio.to_thread(self._heal, reason)
            except NftError as exc:
                log.error("baseline_reconcile_failed", table=self.cfg.table, error=str(exc))
