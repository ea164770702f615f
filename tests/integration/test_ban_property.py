"""BanManager driven by random sequences against the real kernel: after every
step the kernel, the store and the ban list agree with a plain model."""

from __future__ import annotations

import asyncio
import ipaddress
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kfwguard.bans import BanManager
from kfwguard.durations import MAX_BAN
from kfwguard.firewall.bantable import BanTable
from kfwguard.firewall.cover import cover
from kfwguard.firewall.nft import Nft
from kfwguard.model import BanRequest
from kfwguard.store import Store

TARGETS = ["203.0.113.1", "203.0.113.2", "2001:db8::1", "198.51.100.5",
           "198.51.100.0/24", "198.51.100.0/25", "198.51.100.64/26", "198.51.100.128/25",
           "2001:db8:1::/48", "2001:db8:1::/64", "2001:db8:1:0:8000::/65"]
JAILS = ["sshd", "web"]
# Long enough that nothing expires during an example (no timing in the checks).
DURATIONS = st.one_of(st.sampled_from([600.0, 7 * 86400.0, 28 * 86400.0, MAX_BAN]),
                      st.floats(min_value=600.0, max_value=MAX_BAN))

OPS = st.one_of(
    st.tuples(st.just("ban"), st.sampled_from(TARGETS), st.sampled_from(JAILS), DURATIONS),
    st.tuples(st.just("unban"), st.sampled_from(TARGETS), st.sampled_from([*JAILS, None])),
    st.tuples(st.just("delete_table")),
    st.tuples(st.just("store_fails")),
    st.tuples(st.just("store_works")),
    st.tuples(st.just("restart"), st.booleans()),
)

Model = dict[tuple[str, str], float]  # (target, jail) -> expiry


def parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | \
        ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text) if "/" in text else ipaddress.ip_address(text)


def kernel_wanted(model: Model) -> dict[str, float]:
    latest: dict[str, float] = {}
    for (target, _), expiry in model.items():
        latest[target] = max(expiry, latest.get(target, 0.0))
    out = {t: x for t, x in latest.items() if "/" not in t}
    # The kernel lists a one-address piece of an interval set without "/len".
    for piece, x in cover({t: x for t, x in latest.items() if "/" in t}).items():
        addr, _, plen = piece.partition("/")
        out[addr if plen in ("32", "128") else piece] = x
    return out


class Run:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.failing = False
        self.m = self._manager()
        self.m.restore()

    def _manager(self) -> BanManager:
        return BanManager(BanTable(Nft(), "kfwtest"), Store.in_dir(self.state))

    @property
    def store(self) -> Store:
        assert self.m.store is not None
        return self.m.store

    def set_failing(self, failing: bool) -> None:
        # A real SQLite refusal ("attempt to write a readonly database"), as a
        # full or read-only disk gives, without remounting per example.
        self.store._db.execute(f"PRAGMA query_only={'ON' if failing else 'OFF'}")
        self.failing = failing
        if not failing:
            self.m.sync_store()  # what the watcher does on its next tick

    async def step(self, op: tuple[object, ...], model: Model) -> None:
        m = self.m
        if op[0] == "ban":
            _, target, jail, duration = op
            assert isinstance(target, str) and isinstance(jail, str)
            assert isinstance(duration, float)
            rows = m.request([BanRequest(parse(target), jail, duration, "prop")])
            assert 1 == len(rows)
            model[(target, jail)] = rows[0].expires_at
        elif op[0] == "unban":
            _, target, jail = op
            assert isinstance(target, str)
            lifted = m.unban(parse(target), jail if isinstance(jail, str) else None)
            gone = {k for k in model if k[0] == target and (jail is None or k[1] == jail)}
            assert gone == {(r.target, r.jail) for r in lifted}
            for k in gone:
                del model[k]
        elif op[0] == "delete_table":
            m.table.nft.run("delete table inet kfwtest")
            assert not m.table.is_intact()
            await m.rebuild()
        elif op[0] == "store_fails":
            self.set_failing(True)
        elif op[0] == "store_works":
            self.set_failing(False)
        elif op[0] == "restart":
            # The daemon stops (after the disk has room again), maybe the node
            # reboots (the table is gone), and it starts again.
            self.set_failing(False)
            await m.flush()
            self.store.close()
            if op[1]:
                m.table.nft.run("delete table inet kfwtest")
            self.m = self._manager()
            self.m.restore()
        await self.m.flush()

    def check(self, model: Model) -> None:
        m = self.m
        listed = {(r.target, r.jail): r.expires_at for r in m.active()}
        assert set(model) == set(listed)
        assert all(abs(listed[k] - x) < 1.0 for k, x in model.items())
        if not self.failing:
            stored = {(r.target, r.jail): r.expires_at for r in self.store.active_bans()}
            assert set(model) == set(stored)
        want = kernel_wanted(model)
        live = m.table.list()
        assert set(want) == set(live)
        now = m.now()
        assert all(abs(live[k] - (x - now)) < 5.0 for k, x in want.items()), (want, live)
        assert m.table.is_intact()
        assert 0 == m.pending


@pytest.mark.usefixtures("private_netns")
@pytest.mark.timeout(600)  # shrinking a failure takes longer than a pass (~15 s)
class TestBanManagerProperty:
    @settings(max_examples=25, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(st.lists(OPS, min_size=1, max_size=14))
    def test_kernel_store_and_list_agree(self, ops: list[tuple[object, ...]]) -> None:
        """Any sequence of bans (lengths up to the maximum, nested CIDRs), unbans,
        table deletions, store failures and restarts leaves the kernel, the
        store and the ban list agreeing with the model after every step."""
        with tempfile.TemporaryDirectory() as state:
            Nft().run("add table inet kfwtest\ndelete table inet kfwtest")
            run = Run(Path(state))
            model: Model = {}

            async def play() -> None:
                for op in ops:
                    await run.step(op, model)
                    run.check(model)

            try:
                asyncio.run(play())
            finally:
                run.store.close()
