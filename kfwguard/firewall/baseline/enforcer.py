"""Keeps the baseline in force: applies it, then heals drift, and never stops doing so."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from kfwguard.config import BaselineConfig
from kfwguard.firewall.baseline.drift import describe_drift, snapshot
from kfwguard.firewall.baseline.names import NameSets
from kfwguard.firewall.baseline.render import render
from kfwguard.firewall.nft import Nft, NftError

log = structlog.get_logger("kfwguard.baseline")


@dataclass
class BaselineStats:
    """Counters that outlive one enforcer (a reload builds a new one): metrics stay monotonic."""

    drift: int = 0          # the live table differed from the policy and was put back
    errors: int = 0         # a check or heal that raised (the loop went on)
    refused: int = 0        # a new policy nft refused; the previous one stayed in force


class BaselineEnforcer:
    """Keeps the baseline table as the policy says: applies it, then heals drift.

    The loop never ends by itself: whatever a check or a heal raises is logged,
    counted and reported through ``on_error`` (once per run of failures), and
    the next interval tries again.
    """

    def __init__(self, cfg: BaselineConfig, nft: Nft, *,
                 on_drift: Callable[[str], None] | None = None,
                 on_error: Callable[[str], None] | None = None,
                 stats: BaselineStats | None = None,
                 lock: threading.RLock | None = None) -> None:
        self.cfg = cfg
        self.nft = nft
        self.on_drift = on_drift
        self.on_error = on_error
        self.stats = stats if stats is not None else BaselineStats()
        self.script = render(cfg)
        self.names = NameSets(cfg, nft)
        self.last_error: str | None = None
        # Wall-clock deadline while this policy waits for confirmation (daemon reload).
        self.pending_until: float | None = None
        # Every nft change of the baseline, by any enforcer of one daemon, holds this
        # lock; a paused enforcer does nothing. Pause the running enforcer before a
        # new one applies: a check already in flight then finishes before the new
        # policy goes in, and cannot "heal" it back afterwards.
        self.lock = lock if lock is not None else threading.RLock()
        self.paused = False
        self._expected: dict[str, Any] | None = None

    @property
    def applied(self) -> dict[str, Any] | None:
        """The kernel's view of the table right after the last apply (None: not yet)."""
        return self._expected

    @property
    def drift_count(self) -> int:
        return self.stats.drift

    def status(self) -> dict[str, Any]:
        """What ``kfwguard status`` shows about the baseline."""
        out: dict[str, Any] = {
            "state": ("not applied" if self._expected is None
                      else "failing" if self.last_error is not None else "enforced"),
            "table": self.cfg.table, "role": self.cfg.role, "cni": self.cfg.cni,
            "drift_count": self.stats.drift, "errors": self.stats.errors,
            "refused": self.stats.refused,
        }
        if self.last_error is not None:
            out["last_error"] = self.last_error
        if self.names:
            out["names"] = self.names.status()
            out["name_lookup_failures"] = self.names.failures
        if self.pending_until is not None:
            out["state"] = "awaiting confirmation"
            out["rolls_back_in"] = max(round(self.pending_until - time.time(), 1), 0.0)
        return out

    def apply(self) -> None:
        """Check and apply the policy, then remember how the kernel holds it."""
        with self.lock:
            self.nft.check(self.script)
            self.nft.run(self.script)
            # What we compare against later is the kernel's own view right after our
            # transaction: independent of how this nft version prints our script.
            self._expected = snapshot(self.nft, self.cfg.table)
            if self.names:
                # the sets are new: put back what we know, then ask the resolvers
                self.names.restore()
                if not any(k.addrs for k in self.names.known.values()):
                    self.names.refresh(force=True)
        log.info("baseline_applied", table=self.cfg.table, role=self.cfg.role, cni=self.cfg.cni)

    def check_drift(self) -> str | None:
        """A reason when the live table is not what was applied, else None."""
        if self._expected is None:
            return f"baseline table inet {self.cfg.table} has not been applied yet"
        return describe_drift(self.cfg.table, self._expected, snapshot(self.nft, self.cfg.table))

    def _heal(self, reason: str) -> None:
        self.stats.drift += 1
        log.warning("drift", table=self.cfg.table, reason=reason, drift_count=self.stats.drift)
        if self.on_drift is not None:
            try:
                self.on_drift(f"it had drifted ({reason}) and was put back")
            except Exception:
                # An alerting hiccup must not keep the policy from being put back.
                log.exception("drift_callback_failed")
        self.apply()

    def reconcile(self) -> None:
        """One check, and a heal if the table drifted (blocking; errors propagate)."""
        with self.lock:
            if self.paused:
                return
            reason = self.check_drift()
            if reason is not None:
                self._heal(reason)
            if self.names:
                self.names.refresh()

    async def run(self) -> None:
        """Apply now (errors propagate), then every reconcile_interval check and heal."""
        await asyncio.to_thread(self.apply)
        await self.keep()

    async def reconcile_once(self) -> bool:
        """One guarded round: True if it went through, False if it failed (logged,
        counted, reported once per run of failures)."""
        try:
            await asyncio.to_thread(self.reconcile)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.errors += 1
            message = f"{type(exc).__name__}: {exc}"
            first = self.last_error is None
            self.last_error = message
            log.error("baseline_reconcile_failed", table=self.cfg.table, error=message,
                      errors=self.stats.errors, exc_info=not isinstance(exc, NftError))
            if first and self.on_error is not None:
                try:
                    self.on_error(f"cannot keep the baseline in force: {message}")
                except Exception:
                    log.exception("error_callback_failed")
            return False
        if self.last_error is not None:
            log.info("baseline_reconcile_recovered", table=self.cfg.table)
            self.last_error = None
        return True

    async def keep(self) -> None:
        """Every reconcile_interval, check the live table and heal drift (already applied).

        Never returns and never raises but CancelledError.
        """
        interval = max(self.cfg.reconcile_interval, 0.1)
        while True:
            # names due before the next round are resolved on time
            wait = min(interval, self.names.next_due() - time.time()) if self.names else interval
            await asyncio.sleep(max(wait, 0.1))
            await self.reconcile_once()
