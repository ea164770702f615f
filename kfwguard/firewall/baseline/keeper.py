"""The baseline across the daemon's life: applied at start, replaced at a reload
(waiting for confirmation when ``confirm_within`` says so), dropped when disabled.

``BaselineKeeper`` owns the enforcer in force and its task, the counters that
outlive one enforcer, and the table this daemon put in the kernel (a renamed or
disabled baseline's old table is removed: it would go on dropping).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from kfwguard.config import BaselineConfig
from kfwguard.durations import format_duration
from kfwguard.firewall.baseline.apply import (
    StateFiles,
    confirmation_received,
    owned_table,
    remember_owned,
    remove_table,
    write_json_atomic,
)
from kfwguard.firewall.baseline.enforcer import BaselineEnforcer, BaselineStats
from kfwguard.firewall.baseline.policy import validate
from kfwguard.firewall.nft import Nft, NftError
from kfwguard.lifecycle import StartupError

log = structlog.get_logger("kfwguard.baseline")


@dataclass
class PendingBaseline:
    """A reloaded baseline in the kernel, waiting for confirmation."""

    cfg: BaselineConfig
    enforcer: BaselineEnforcer
    previous: BaselineEnforcer | None   # the confirmed policy (None: no baseline)
    token: str
    deadline: float                     # wall clock


class BaselineKeeper:
    """Keeps the configured baseline in force for one daemon (state in ``state_dir``)."""

    def __init__(self, nft: Nft, state_dir: Path, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.nft = nft
        self.state_dir = state_dir
        self.clock = clock
        self.enforcer: BaselineEnforcer | None = None
        # Counters that survive the enforcer being replaced at a reload, and the lock
        # every enforcer holds while it changes the kernel.
        self.stats = BaselineStats()
        self._lock = threading.RLock()
        self._task: asyncio.Task[None] | None = None
        # The baseline table this daemon put in the kernel (None: none).
        self._owned_table: str | None = None
        self._pending: PendingBaseline | None = None
        # Called with a reason each time the baseline had drifted and was healed.
        self.on_drift: list[Callable[[str], None]] = []

    @staticmethod
    def check(cfg: BaselineConfig) -> None:
        """Raise BaselineError if ``cfg`` enables a baseline that may not be applied."""
        if cfg.enabled:
            validate(cfg)

    def status(self) -> dict[str, Any] | None:
        """What ``kfwguard status`` shows (None: no baseline in force)."""
        return self.enforcer.status() if self.enforcer is not None else None

    # -- start, stop -------------------------------------------------------------

    async def start(self, cfg: BaselineConfig) -> None:
        """Apply the baseline now (a refusal stops the start) and keep it in force."""
        if not cfg.enabled:
            await self._drop()
            return
        enforcer = self._new_enforcer(cfg)
        try:
            await asyncio.to_thread(enforcer.apply)
        except NftError as exc:
            raise StartupError(f"baseline policy refused by nft: {exc}") from exc
        await self._install(enforcer)

    async def stop(self) -> None:
        await self._stop_task()

    # -- reload --------------------------------------------------------------------

    async def reload(self, new: BaselineConfig, confirm_hint: str) -> tuple[str | None, str | None]:
        """Bring the baseline to ``new``: (why it was refused, what the operator must do).

        A refused policy leaves the previous one in force, checked at once. The running
        enforcer is replaced only after the new policy is in the kernel.
        """
        have = self.enforcer.cfg if self.enforcer is not None else None
        if self._pending is not None and new != have:
            return ("reload refused: a baseline change is waiting for confirmation; confirm "
                    "it (kfwguard baseline confirm) or let it roll back first"), None
        if not new.enabled:
            if have is not None or self._owned_table is not None:
                await self._drop()
            return None, None
        if new == have:
            return None, None
        enforcer = self._new_enforcer(new)
        if self.enforcer is not None:
            self.enforcer.paused = True
        try:
            await asyncio.to_thread(enforcer.apply)
        except Exception as exc:
            if self.enforcer is not None:
                self.enforcer.paused = False
            self.stats.refused += 1
            reason = (f"reload refused: nft refused the new baseline policy "
                      f"({type(exc).__name__}: {exc}); the previous policy stays in force")
            log.error("baseline_refused", table=new.table, error=str(exc),
                      refused=self.stats.refused)
            self._drifted(reason)
            if self.enforcer is not None:
                # Heal now, not one interval later: the old table may be gone.
                await self.enforcer.reconcile_once()
            return reason, None
        within = new.confirm_within
        if within > 0:
            await self._begin_pending(new, enforcer, within)
            return None, (f"the new baseline rolls back in {format_duration(within)} unless "
                          f"confirmed: kfwguard baseline confirm{confirm_hint}")
        await self._install(enforcer)
        return None, None

    # -- enforcers -------------------------------------------------------------------

    def _new_enforcer(self, cfg: BaselineConfig) -> BaselineEnforcer:
        return BaselineEnforcer(cfg, self.nft, on_drift=self._drifted,
                                on_error=self._drifted, stats=self.stats, lock=self._lock)

    async def _install(self, enforcer: BaselineEnforcer) -> None:
        """Make ``enforcer`` (whose policy is already in the kernel) the one kept in
        force; then remove the table of a renamed baseline, which would go on dropping."""
        await self._stop_task()
        self.enforcer = enforcer
        self._task = asyncio.create_task(enforcer.keep(), name="baseline")
        await self._remove_stale_tables(keep=enforcer.cfg.table)

    async def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _drop(self) -> None:
        """``baseline.enabled: false``: stop enforcing and remove the table we put in."""
        await self._stop_task()
        self.enforcer = None
        await self._remove_stale_tables(keep=None)

    async def _remove_stale_tables(self, keep: str | None) -> None:
        """Remove the baseline tables this daemon owned other than ``keep``, and record
        ``keep`` as the one it owns now. Only a table we recorded is ever removed."""
        nft, state_dir = self.nft, self.state_dir
        stale = {t for t in (self._owned_table, owned_table(state_dir)) if t and t != keep}

        def work() -> None:
            for table in sorted(stale):
                if remove_table(nft, table):
                    log.warning("baseline_table_removed", table=table,
                                reason="baseline disabled" if keep is None
                                else f"baseline.table is now {keep}")
            remember_owned(state_dir, keep)

        try:
            await asyncio.to_thread(work)
        except (NftError, OSError) as exc:
            log.error("baseline_table_not_removed", tables=sorted(stale), error=str(exc))
            self._drifted(f"cannot remove the old baseline table(s) {sorted(stale)}: {exc}")
        self._owned_table = keep

    def _drifted(self, reason: str) -> None:
        for cb in self.on_drift:
            cb(reason)

    # -- a reloaded baseline waits for confirmation -----------------------------

    async def _begin_pending(self, new: BaselineConfig, enforcer: BaselineEnforcer,
                             within: float) -> None:
        """The new policy is in the kernel; keep it only if confirmed within ``within``.
        Meanwhile drift is healed back to the confirmed policy, not to the new one."""
        previous = self.enforcer
        await self._stop_task()
        token = secrets.token_hex(16)
        deadline = self.clock() + within
        files = StateFiles(self.state_dir)
        files.confirm.unlink(missing_ok=True)
        write_json_atomic(files.pending, {"pid": os.getpid(), "token": token,
                                          "table": new.table, "deadline": deadline,
                                          "by": "daemon"})
        enforcer.pending_until = deadline
        self.enforcer = enforcer
        self._pending = PendingBaseline(new, enforcer, previous, token, deadline)
        log.warning("baseline_pending", table=new.table, confirm_within=within)
        self._task = asyncio.create_task(self._await_confirmation(), name="baseline")

    async def _await_confirmation(self) -> None:
        p = self._pending
        assert p is not None
        files = StateFiles(self.state_dir)
        interval = max(p.enforcer.cfg.reconcile_interval, 0.1)
        next_check = time.monotonic() + interval
        while True:
            await asyncio.sleep(0.1)
            if confirmation_received(files, p.token):
                await self._settle(p, True, "confirmed")
                return
            if self.clock() >= p.deadline:
                await self._settle(p, False, "it was not confirmed in time")
                return
            if time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + interval
            try:
                drift = await asyncio.to_thread(p.enforcer.check_drift)
            except Exception as exc:
                self.stats.errors += 1
                log.error("baseline_reconcile_failed", table=p.enforcer.cfg.table,
                          error=f"{type(exc).__name__}: {exc}")
                continue
            if drift is not None:
                self.stats.drift += 1
                await self._settle(p, False, f"it was changed while waiting ({drift})")
                return

    async def _settle(self, p: PendingBaseline, confirmed: bool, reason: str) -> None:
        """End the wait: keep the new policy, or put the confirmed one back."""
        self._pending = None
        nft = self.nft
        if confirmed:
            p.enforcer.pending_until = None
            self._task = asyncio.create_task(p.enforcer.keep(), name="baseline")
            await self._remove_stale_tables(keep=p.cfg.table)
            log.info("baseline_confirmed", table=p.enforcer.cfg.table)
        else:
            new_table = p.enforcer.cfg.table
            try:
                if p.previous is not None:
                    p.previous.paused = False
                    await asyncio.to_thread(p.previous.apply)
                if p.previous is None or p.previous.cfg.table != new_table:
                    await asyncio.to_thread(remove_table, nft, new_table)
            except Exception as exc:
                # The confirmed policy's own loop retries within one interval.
                log.error("baseline_rollback_failed", error=f"{type(exc).__name__}: {exc}")
            self.enforcer = p.previous
            if p.previous is not None:
                self._task = asyncio.create_task(p.previous.keep(), name="baseline")
            else:
                self._task = None
            log.warning("baseline_rolled_back", table=new_table, reason=reason)
            self._drifted(f"the reloaded baseline was rolled back to the confirmed one: {reason}")
        files = StateFiles(self.state_dir)
        write_json_atomic(files.outcome, {"token": p.token,
                                          "outcome": "confirmed" if confirmed else "rolled back",
                                          "reason": reason})
        files.pending.unlink(missing_ok=True)
        files.confirm.unlink(missing_ok=True)
