"""The operator surface of the real daemon, run in a test namespace: CLI over the
control socket, alerts to a real Alertmanager and a real webhook receiver,
/metrics through promtool, and sd_notify to a NOTIFY_SOCKET listener."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need
from tests.integration.daemon_harness import DaemonRun, base_config, sshd_fail, wait_until
from tests.netns import Host, Lab

REPO = Path(__file__).resolve().parents[2]
TOKEN = "xoxTOKEN-7f3a9c2e4b1d"
AM_PORT = 9093
HOOK_PORT = 8089
METRICS_PORT = 9741
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

# A chat receiver inside the namespace: a real aiohttp server that appends
# each accepted POST (path and JSON body) to a file, and answers the first
# `fail` requests with 500 to play a receiver that is briefly broken.
RECEIVER = """
import json, sys
from aiohttp import web
out, port, fail = sys.argv[1], int(sys.argv[2]), [int(sys.argv[3])]
async def hook(request):
    body = await request.json()
    if fail[0] > 0:
        fail[0] -= 1
        return web.Response(status=500, text="busy")
    with open(out, "a") as f:
        f.write(json.dumps({"path": request.path, "body": body}) + "\\n")
    return web.Response(text="ok")
app = web.Application()
app.router.add_post("/{tail:.*}", hook)
web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
"""


@dataclass
class Node:
    host: Host
    workdir: Path
    log: Path

    def daemon(self, **extra: Any) -> DaemonRun:
        cfg = base_config(self.workdir, self.log, table="kfwop", **extra.pop("jail", {}))
        cfg.update(extra)
        return DaemonRun(self.host, self.workdir, cfg)

    def fail(self, addrs: list[str], times: int = 3) -> None:
        with self.log.open("a") as f:
            f.write("".join(sshd_fail(a, port=40000 + i) for a in addrs for i in range(times)))

    def get(self, url: str) -> Any:
        """GET ``url`` from inside the namespace (where the receivers listen)."""
        code = ("import sys, urllib.request\n"
                f"sys.stdout.write(urllib.request.urlopen({url!r}, timeout=5).read().decode())")
        r = self.host.run(sys.executable, "-c", code, check=False)
        if r.returncode != 0:
            return None
        return r.stdout


@pytest.fixture
def node(lab: Lab, tmp_path: Path) -> Node:
    host = lab.host("node")
    log = tmp_path / "auth.log"
    log.write_text("")
    return Node(host, tmp_path, log)


def cli(cfg: Path, *args: str, user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real `kfwguard` command, from the host namespace (the socket is a file)."""
    return subprocess.run([*(user or []), sys.executable, "-m", "kfwguard", *args,
                           "-c", str(cfg)], capture_output=True, text=True, timeout=60,
                          cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})


def events(d: DaemonRun, name: str) -> list[dict[str, Any]]:
    return [e for e in d.events() if e.get("event") == name]


def restart(d: DaemonRun, env: dict[str, str] | None = None) -> None:
    """Start ``d`` again and wait for this run's "started" (the log is appended to)."""
    before = len(events(d, "started"))
    d.start(wait_ready=False, env=env)
    assert wait_until(lambda: len(events(d, "started")) > before or not d.alive(),
                      timeout=30), d.log()
    assert d.alive(), d.log()


# -- Alertmanager -----------------------------------------------------------------------


class Alertmanager:
    """Debian's prometheus-alertmanager on the namespace's loopback, clustering off."""

    def __init__(self, node: Node) -> None:
        need(shutil.which("prometheus-alertmanager") is not None,
             "needs prometheus-alertmanager (apt-get install prometheus-alertmanager)")
        self.node = node
        self.dir = node.workdir / "am"
        self.dir.mkdir(exist_ok=True)
        (self.dir / "am.yml").write_text(
            "route: {receiver: blackhole}\nreceivers: [{name: blackhole}]\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{AM_PORT}"

    def start(self) -> None:
        logf = (self.dir / "am.log").open("ab")
        self.proc = self.node.host.popen(
            ["prometheus-alertmanager", f"--config.file={self.dir / 'am.yml'}",
             f"--storage.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{AM_PORT}", "--cluster.listen-address="],
            stdout=logf, stderr=logf)
        logf.close()
        assert wait_until(lambda: self.node.get(self.url + "/-/ready") is not None,
                          timeout=30), (self.dir / "am.log").read_text()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
            self.proc = None

    def alerts(self) -> list[dict[str, Any]]:
        out = self.node.get(self.url + "/api/v2/alerts")
        return json.loads(out) if out else []

    def alert_for(self, address: str) -> dict[str, Any] | None:
        for a in self.alerts():
            if a["labels"].get("address") == address:
                return a
        return None


@pytest.fixture
def alertmanager(node: Node) -> Iterator[Alertmanager]:
    am = Alertmanager(node)
    try:
        yield am
    finally:
        am.stop()


# -- tests ------------------------------------------------------------------------------


class TestOperatorCLI:
    def test_ban_list_unban_restart(self, node: Node) -> None:
        """A manual ban from the CLI reaches the kernel, is listed, survives a
        restart, and unban removes it from the kernel."""
        d = node.daemon()
        d.start()
        try:
            r = cli(d.config_path, "ban", "203.0.113.50", "--for", "30m", "--reason", "scan")
            assert 0 == r.returncode, r.stderr
            assert r.stdout.startswith("banned 203.0.113.50 in jail manual for 30m")
            assert 0 == cli(d.config_path, "ban", "2001:db8:9::/48").returncode
            assert "203.0.113.50" in d.elements("ban_v4")
            assert "2001:db8:9::/48" in d.elements("ban_net_v6")
            listed = json.loads(cli(d.config_path, "list", "--json").stdout)
            assert [("203.0.113.50", "manual", "manual: scan"),
                    ("2001:db8:9::/48", "manual", "manual: by operator")] == \
                [(b["target"], b["jail"], b["reason"]) for b in listed]
            assert 0 == d.stop()
            restart(d)
            listed = json.loads(cli(d.config_path, "list", "--json").stdout)
            assert {"203.0.113.50", "2001:db8:9::/48"} == {b["target"] for b in listed}
            r = cli(d.config_path, "unban", "203.0.113.50")
            assert (0, "unbanned 203.0.113.50 in jail manual\n") == (r.returncode, r.stdout)
            assert "203.0.113.50" not in d.elements("ban_v4")
            status = json.loads(cli(d.config_path, "status", "--json").stdout)
            assert 1 == status["bans"]["active"]
            assert status["persisting"] is True
            assert {"auth"} == set(status["sources"])
            assert 0 == cli(d.config_path, "reload").returncode
        finally:
            d.stop()

    def test_invalid_address_and_no_daemon(self, node: Node) -> None:
        """An invalid address exits 2 before asking; with no daemon the CLI says so, exit 1."""
        d = node.daemon()
        r = cli(d.config_path, "ban", "999.1.1.1")
        assert (2, "kfwguard: '999.1.1.1' is not an IPv4 or IPv6 address or CIDR\n") == \
            (r.returncode, r.stderr)
        r = cli(d.config_path, "list")
        assert 1 == r.returncode
        assert "kfwguard is not running" in r.stderr

    def test_socket_root_only(self, node: Node) -> None:
        """The socket is 0600 root; `nobody` running the CLI is refused and told why."""
        need(shutil.which("setpriv") is not None, "needs setpriv (util-linux)")
        # A parent directory everyone may enter, so only the socket's own mode
        # stands between `nobody` and the daemon.
        parent = Path(tempfile.mkdtemp(prefix="kfw-op-"))
        try:
            parent.chmod(0o755)
            d = node.daemon(control_socket=str(parent / "control.sock"))
            d.start()
            try:
                st = (parent / "control.sock").lstat()
                assert (0o600, 0, 0) == (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
                # The config (which names the socket) must be readable to `nobody`.
                public_cfg = parent / "kfwguard.yaml"
                shutil.copy(d.config_path, public_cfg)
                public_cfg.chmod(0o644)
                r = cli(public_cfg, "list", user=NOBODY)
                assert 1 == r.returncode, r.stderr
                assert "the control socket answers root only" in r.stderr
                assert 0 == cli(d.config_path, "list").returncode
            finally:
                d.stop()
        finally:
            shutil.rmtree(parent)


class TestOperatorAlertmanager:
    def test_ban_alert_then_resolved_by_unban(self, node: Node,
                                              alertmanager: Alertmanager) -> None:
        """A jail's ban is one alert in Alertmanager (labels, endsAt = expiry);
        unbanning resolves it."""
        alertmanager.start()
        d = node.daemon(actions={"am": {"type": "alertmanager", "url": alertmanager.url,
                                        "labels": {"severity": "warning"}}},
                        node_name="node-a", jail={"actions": ["am"]})
        d.start()
        try:
            node.fail(["198.51.100.7"])
            assert wait_until(lambda: alertmanager.alert_for("198.51.100.7") is not None,
                              timeout=30), d.log()
            alert = alertmanager.alert_for("198.51.100.7")
            assert alert is not None
            assert {"alertname": "KfwguardBan", "jail": "sshd", "node": "node-a",
                     "address": "198.51.100.7", "severity": "warning"} == alert["labels"]
            assert alert["annotations"]["summary"] == \
                "198.51.100.7 banned in jail sshd on node-a for 1h"
            [ban] = json.loads(cli(d.config_path, "list", "--json").stdout)
            assert alert["endsAt"].startswith(
                time.strftime("%Y-%m-%dT%H:%M", time.gmtime(ban["expires_at"])))
            assert 0 == cli(d.config_path, "unban", "198.51.100.7").returncode
            assert wait_until(lambda: alertmanager.alert_for("198.51.100.7") is None,
                              timeout=30), alertmanager.alerts()
        finally:
            d.stop()

    def test_receiver_down_and_daemon_restarted(self, node: Node,
                                                alertmanager: Alertmanager) -> None:
        """A ban made while Alertmanager is down is kept in the outbox across a daemon
        restart and delivered late, once Alertmanager is up."""
        d = node.daemon(actions={"am": {"type": "alertmanager", "url": alertmanager.url}})
        d.start()
        try:
            r = cli(d.config_path, "ban", "192.0.2.77")
            assert 0 == r.returncode, r.stderr
            assert "192.0.2.77" in d.elements("ban_v4")  # the ban did not wait for alerts
            assert wait_until(lambda: bool(events(d, "alert_delivery_failed")), timeout=30)
            status = json.loads(cli(d.config_path, "status", "--json").stdout)
            assert 1 == status["alerts"]["am"]["queued"]
            assert 0 == d.stop()
            alertmanager.start()
            restart(d)
            assert wait_until(lambda: alertmanager.alert_for("192.0.2.77") is not None,
                              timeout=30), d.log()
            status = json.loads(cli(d.config_path, "status", "--json").stdout)
            assert 0 == status["alerts"]["am"]["queued"]
        finally:
            d.stop()


class TestOperatorWebhook:
    def test_burst_is_one_message_and_url_stays_secret(self, node: Node) -> None:
        """40 bans in a burst reach the chat receiver as ONE message (after a failed
        try), and the URL's token appears nowhere: log, status, metrics."""
        received = node.workdir / "received.jsonl"
        receiver = node.host.popen([sys.executable, "-c", RECEIVER, str(received),
                                    str(HOOK_PORT), "1"])
        url_file = node.workdir / "chat-url"
        url_file.write_text(f"http://127.0.0.1:{HOOK_PORT}/hooks/{TOKEN}\n")
        d = node.daemon(actions={"chat": {"type": "webhook", "url_file": str(url_file),
                                          "format": "slack", "aggregate": "2s"}},
                        metrics={"listen": f"127.0.0.1:{METRICS_PORT}"},
                        jail={"actions": ["chat"]})
        try:
            # Listening before the daemon starts, so the one failure is the 500.
            assert wait_until(lambda: node.host.run(
                sys.executable, "-c",
                f"import socket; socket.create_connection(('127.0.0.1', {HOOK_PORT}), 1)",
                check=False).returncode == 0, timeout=30)
            d.start()
            offenders = [f"198.51.100.{i}" for i in range(1, 41)]
            node.fail(offenders)
            assert wait_until(lambda: received.exists() and received.read_text().strip() != "",
                              timeout=90), d.log()
            assert wait_until(lambda: not json.loads(cli(d.config_path, "status", "--json")
                                                     .stdout)["alerts"]["chat"]["queued"])
            messages = [json.loads(x) for x in received.read_text().splitlines()]
            assert 1 == len(messages), messages
            assert f"/hooks/{TOKEN}" == messages[0]["path"]
            text = messages[0]["body"]["text"]
            assert text.startswith(":no_entry: 40 addresses banned in jail *sshd*")
            assert "… and 30 more" in text
            assert ["HTTP 500"] == [e["error"] for e in events(d, "alert_delivery_failed")]
            assert TOKEN not in d.log()  # ...without the URL
            assert "hooks" not in d.log()
            status = cli(d.config_path, "status", "--json").stdout
            assert TOKEN not in status
            metrics = node.get(f"http://127.0.0.1:{METRICS_PORT}/metrics")
            assert metrics is not None and TOKEN not in metrics
            assert 'kfwguard_alert_failures_total{action="chat"} 1.0' in metrics
        finally:
            d.stop()
            receiver.kill()
            receiver.wait()


class TestOperatorMetrics:
    def test_scrape_passes_promtool(self, node: Node) -> None:
        """/metrics of a daemon that banned someone carries its counters and passes
        `promtool check metrics`."""
        need(shutil.which("promtool") is not None, "needs promtool (apt-get install prometheus)")
        d = node.daemon(metrics={"listen": f"127.0.0.1:{METRICS_PORT}"})
        d.start()
        try:
            node.fail(["203.0.113.9"])
            assert wait_until(lambda: "203.0.113.9" in d.elements("ban_v4")), d.log()
            text = node.get(f"http://127.0.0.1:{METRICS_PORT}/metrics")
            assert text is not None
        finally:
            d.stop()
        assert 'kfwguard_bans_total{jail="sshd",origin="jail"} 1.0' in text
        assert 'kfwguard_source_lines_total{source="auth"} 3.0' in text
        assert "kfwguard_bans_active 1.0" in text
        assert "kfwguard_state_persisting 1.0" in text
        assert "kfwguard_ban_latency_seconds_count 1.0" in text
        assert any(line.startswith('kfwguard_matches_total{jail="sshd",')
                   for line in text.splitlines())
        check = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                               capture_output=True, timeout=30)
        assert (0, "") == (check.returncode, check.stdout + check.stderr)


class TestOperatorNotify:
    def test_ready_watchdog_reload_stopping(self, node: Node) -> None:
        """A NOTIFY_SOCKET listener sees READY=1 with a STATUS, WATCHDOG=1 pings under
        WATCHDOG_USEC, RELOADING=1 then READY=1 on SIGHUP, and STOPPING=1."""
        path = node.workdir / "notify.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(str(path))
        listener.setblocking(False)
        got: list[str] = []

        def drain() -> None:
            while True:
                try:
                    got.append(listener.recv(4096).decode())
                except BlockingIOError:  # nothing more queued for now
                    return

        def seen(prefix: str, n: int = 1) -> bool:
            drain()
            return sum(1 for m in got for line in m.splitlines()
                       if line.startswith(prefix)) >= n

        d = node.daemon()
        try:
            d.start(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
            assert wait_until(lambda: seen("READY=1"), timeout=15), got
            assert any("STATUS=" in m for m in got if "READY=1" in m)
            assert wait_until(lambda: seen("WATCHDOG=1", 3), timeout=15), got
            assert d.proc is not None
            d.proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda: seen("RELOADING=1") and seen("READY=1", 2),
                              timeout=15), got
            assert 0 == d.stop()
            assert wait_until(lambda: seen("STOPPING=1"), timeout=5), got
        finally:
            d.stop()
            listener.close()
