"""Prometheus metrics read from the daemon's counters; exposition checked by promtool."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kfwguard.bans import BanManager
from kfwguard.config import BaselineConfig
from kfwguard.firewall.baseline import BaselineEnforcer
from kfwguard.firewall.baseline.keeper import BaselineKeeper
from kfwguard.firewall.nft import Nft
from kfwguard.model import BanRequest, Record
from kfwguard.operator.metrics import Metrics, parse_listen
from kfwguard.pipeline import SourcePipeline
from kfwguard.sources.base import Backlog, Sink
from kfwguard.telemetry import Telemetry
from tests.conftest import need
from tests.integration.operator_fixtures import VALID_BASELINE, jails_named, make_daemon

# A real ban table in a network namespace of the test's own (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("private_netns")


class CountingSource:
    """The Source protocol's counters, without reading anything."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines_read = 120
        self.skipped = {"too_long": 2, "binary": 1}
        self.problem: str | None = None

    def lag(self) -> float | None:
        return 0.25

    def backlog(self) -> Backlog:
        return Backlog(unread_bytes=4096, caught_up=False)

    async def run(self, sink: Sink) -> None:
        sink([Record("x")])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    need(shutil.which("promtool") is not None, "needs promtool (apt-get install prometheus)")
    return subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                          capture_output=True, timeout=30)


def metrics_with_activity(tmp_path: Path) -> Metrics:
    daemon, _ = make_daemon(tmp_path)
    metrics = Metrics(Telemetry(daemon))
    bans = daemon.bans
    assert isinstance(bans, BanManager)
    bans.on_ban.append(metrics.on_ban)
    bans.on_applied.append(metrics.on_applied)
    from ipaddress import ip_address
    bans.request([BanRequest(ip_address("192.0.2.1"), "sshd", 600, "r"),
                  BanRequest(ip_address("192.0.2.2"), "sshd", 600, "r"),
                  BanRequest(ip_address("192.0.2.3"), "manual", 600, "manual: by operator"),
                  BanRequest(ip_address("192.0.2.4"), "sshd", 600, "r", offence=3)])
    bans.flush_now()
    bans.unban(ip_address("192.0.2.3"))
    rt = SourcePipeline(CountingSource("auth"), [], None, bans.request, time.time)  # type: ignore[arg-type]
    rt.matches = {("sshd", "password"): 7, ("sshd", "invalid_user"): 2}
    daemon.sources = {"auth": rt}
    return metrics


class TestMetrics:
    def test_reads_daemon_counters(self, tmp_path: Path) -> None:
        """Sources, matches, bans per jail, unbans, active bans and latency are exported."""
        m = samples(metrics_with_activity(tmp_path).exposition().decode())
        assert 120 == m[("kfwguard_source_lines_total", (("source", "auth"),))]
        assert 2 == m[("kfwguard_source_skipped_total",
                       (("reason", "too_long"), ("source", "auth")))]
        assert 0.25 == m[("kfwguard_source_lag_seconds", (("source", "auth"),))]
        assert 4096 == m[("kfwguard_source_backlog_bytes", (("source", "auth"),))]
        assert 0 == m[("kfwguard_source_caught_up", (("source", "auth"),))]
        assert 0 < m[("process_resident_memory_bytes", ())]
        assert 7 == m[("kfwguard_matches_total", (("jail", "sshd"), ("rule", "password")))]
        assert 3 == m[("kfwguard_bans_total", (("jail", "sshd"), ("origin", "jail")))]
        assert 1 == m[("kfwguard_bans_total", (("jail", "manual"), ("origin", "manual")))]
        assert 3 == m[("kfwguard_ban_offence", (("jail", "sshd"), ("target", "192.0.2.4")))]
        assert 1 == m[("kfwguard_unbans_total", ())]
        assert 3 == m[("kfwguard_bans_active", ())]
        assert 1 == m[("kfwguard_state_persisting", ())]
        assert 0 == m[("kfwguard_kernel_update_errors_total", ())]
        assert 4 == m[("kfwguard_ban_latency_seconds_count", ())]
        assert 4 == m[("kfwguard_ban_latency_seconds_bucket", (("le", "+Inf"),))]

    def test_promtool_accepts_exposition(self, tmp_path: Path) -> None:
        """`promtool check metrics` finds no problem in the exposition."""
        text = metrics_with_activity(tmp_path).exposition().decode()
        result = promtool_check(text)
        assert (0, "") == (result.returncode, result.stdout + result.stderr)

    def test_registries_are_separate(self, tmp_path: Path) -> None:
        """Two daemons in one process each have their own registry."""
        a = metrics_with_activity(tmp_path / "a")
        b = Metrics(Telemetry(make_daemon(tmp_path / "b")[0]))
        assert 4 == sum(v for (n, _), v in samples(a.exposition().decode()).items()
                        if n == "kfwguard_bans_total")
        assert 0 == sum(v for (n, _), v in samples(b.exposition().decode()).items()
                        if n == "kfwguard_bans_total")

    def test_baseline_drift(self, tmp_path: Path) -> None:
        """A daemon's baseline drift_count is exported as kfwguard_baseline_drift_total."""
        daemon, _ = make_daemon(tmp_path)
        keeper = BaselineKeeper(Nft(), daemon.cfg.state_dir)
        keeper.enforcer = BaselineEnforcer(BaselineConfig.model_validate(VALID_BASELINE),
                                           keeper.nft, stats=keeper.stats)
        keeper.stats.drift = 4
        daemon.baseline = keeper
        m = samples(Metrics(Telemetry(daemon)).exposition().decode())
        assert 4 == m[("kfwguard_baseline_drift_total", ())]

    async def test_served_over_http(self, tmp_path: Path) -> None:
        """GET /metrics on the listen address answers the exposition format."""
        metrics = metrics_with_activity(tmp_path)
        await metrics.start("127.0.0.1:0")
        try:
            port = metrics.port
            assert port is not None
            async with aiohttp.ClientSession() as s, \
                    s.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert 200 == resp.status
                assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await resp.text()
        finally:
            await metrics.stop()
        assert "kfwguard_bans_active 3.0" in text

    def test_parse_listen(self) -> None:
        """HOST:PORT and [V6]:PORT are accepted; anything else is an error."""
        assert ("127.0.0.1", 9741) == parse_listen("127.0.0.1:9741")
        assert ("::1", 9741) == parse_listen("[::1]:9741")
        assert ("0.0.0.0", 9741) == parse_listen(":9741")
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen("localhost")




class TestObserveMode:
    async def test_simulated_bans_counted_apart_and_kept_out_of_the_kernel(
            self, tmp_path: Path) -> None:
        """A dry_run jail's ban is counted in kfwguard_simulated_bans_total and
        _active, not in kfwguard_bans_total/_active, and the kernel's set lacks it;
        enforce_simulated() after dry_run is turned off moves it to the kernel."""
        from ipaddress import ip_address

        daemon, table = make_daemon(tmp_path, **jails_named(tmp_path, "sshd", dry_run=True))
        metrics = Metrics(Telemetry(daemon))
        bans = daemon.bans
        assert isinstance(bans, BanManager)
        bans.on_ban.append(metrics.on_ban)
        [row] = bans.request([BanRequest(ip_address("192.0.2.7"), "sshd", 600, "r")])
        await bans.flush()
        assert row.simulated
        got = samples(metrics.exposition().decode())
        assert 1 == got[("kfwguard_simulated_bans_total", (("jail", "sshd"),))]
        assert 1 == got[("kfwguard_simulated_bans_active", ())]
        assert 0 == got[("kfwguard_bans_active", ())]
        assert ("kfwguard_bans_total", (("jail", "sshd"), ("origin", "jail"))) not in got
        assert "192.0.2.7" not in table.list()
        assert [("192.0.2.7", True)] == [(r.target, r.simulated) for r in bans.active()]

        cfg = daemon.cfg.jails[0].model_copy(update={"dry_run": False})
        bans.jails = {"sshd": cfg}
        assert ["192.0.2.7"] == [r.target for r in bans.enforce_simulated()]
        await bans.flush()
        assert "192.0.2.7" in table.list()
        got = samples(metrics.exposition().decode())
        assert (1, 0) == (got[("kfwguard_bans_active", ())],
                          got[("kfwguard_simulated_bans_active", ())])
        assert daemon.store is not None
        assert [False] == [r.simulated for r in daemon.store.active_bans()]
        daemon.store.close()
