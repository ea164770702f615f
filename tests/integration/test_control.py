"""The control API over a real Unix socket: root only, manual bans through the
BanManager, listing, status, reload."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml

from kfwguard.alerts.service import AlertService
from kfwguard.config import BaselineConfig
from kfwguard.daemon import Daemon
from kfwguard.firewall.bantable import BanTable
from kfwguard.firewall.baseline import BaselineEnforcer
from kfwguard.firewall.baseline.keeper import BaselineKeeper
from kfwguard.firewall.nft import Nft
from kfwguard.operator.client import ControlClient, ControlError, DaemonNotRunning
from kfwguard.operator.control import ControlServer, ControlUnavailable
from kfwguard.telemetry import Telemetry
from tests.conftest import need
from tests.integration.operator_fixtures import VALID_BASELINE, jails_named, make_daemon

# A real ban table in a network namespace of the test's own (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("private_netns")

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

# A stdlib-only HTTP request over the socket, so that it runs as `nobody`
# whatever the permissions of the checkout and the virtualenv.
RAW_CLIENT = """
import socket, sys

s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
s.sendall(b"GET /bans HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
print(s.recv(4096).split(b"\\r\\n")[0].decode())
"""


class Served:
    def __init__(self, daemon: Daemon, table: BanTable, server: ControlServer) -> None:
        self.daemon = daemon
        self.table = table
        self.server = server
        self.client = ControlClient(server.path)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    daemon, table = make_daemon(tmp_path, **jails_named(tmp_path, "web", "a", "b"))
    server = ControlServer(daemon, daemon.cfg.control_socket, Telemetry(daemon))
    await server.start()
    try:
        yield Served(daemon, table, server)
    finally:
        await server.stop()
        assert daemon.store is not None
        daemon.store.close()


async def run_as_nobody(*args: str) -> str:
    need(os.geteuid() == 0 and shutil.which("setpriv") is not None,
         "needs root and setpriv to act as another user")
    proc = await asyncio.create_subprocess_exec(
        *NOBODY, "/usr/bin/python3", "-c", RAW_CLIENT, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


@contextlib.contextmanager
def reachable_by_all(sock: Path, mode: int | None) -> Iterator[str]:
    """Move the socket into a directory every user may enter (pytest's tmp dirs
    are 0700), optionally opening the socket's own mode."""
    folder = tempfile.mkdtemp(prefix="kfw-ctl-")
    try:
        os.chmod(folder, 0o755)
        moved = os.path.join(folder, "ctl.sock")
        os.rename(sock, moved)
        if mode is not None:
            os.chmod(moved, mode)
        yield moved
    finally:
        shutil.rmtree(folder)


def edit_config(path: str, **changes: object) -> None:
    data = yaml.safe_load(Path(path).read_text())
    data.update(changes)
    Path(path).write_text(yaml.safe_dump(data))


class TestControlServer:
    async def test_socket_is_root_only_file(self, served: Served) -> None:
        """The socket is mode 0600 owned by root, in a directory created 0700."""
        st = served.server.path.lstat()
        assert stat.S_ISSOCK(st.st_mode)
        assert 0o600 == stat.S_IMODE(st.st_mode)
        assert (0, 0) == (st.st_uid, st.st_gid)
        assert 0o700 == stat.S_IMODE(served.server.path.parent.stat().st_mode)

    async def test_socket_mode_refuses_other_users(self, served: Served) -> None:
        """A non-root user cannot even connect to the 0600 socket."""
        with reachable_by_all(served.server.path, mode=None) as path:
            assert "EACCES" == await run_as_nobody(path)

    async def test_peer_credentials_refuse_other_users(self, served: Served) -> None:
        """With the file mode opened up, SO_PEERCRED still turns a non-root peer away (403)."""
        with reachable_by_all(served.server.path, mode=0o666) as path:
            assert "HTTP/1.0 403 Forbidden" == await run_as_nobody(path)

    async def test_stale_socket_replaced(self, tmp_path: Path) -> None:
        """A socket file left by a dead daemon is removed and served anew."""
        daemon, _ = make_daemon(tmp_path)
        path = daemon.cfg.control_socket
        path.parent.mkdir(mode=0o700)
        dead = socket.socket(socket.AF_UNIX)
        dead.bind(str(path))
        dead.close()
        server = ControlServer(daemon, path, Telemetry(daemon))
        await server.start()
        try:
            assert [] == await ControlClient(path).bans()
        finally:
            await server.stop()
        assert not path.exists()

    async def test_second_daemon_refused(self, served: Served) -> None:
        """A socket another daemon still answers on is not taken over."""
        other = ControlServer(served.daemon, served.server.path, served.server.telemetry)
        with pytest.raises(ControlUnavailable, match="another kfwguard"):
            await other.start()
        assert [] == await served.client.bans()

    async def test_manual_ban_goes_through_ban_manager(self, served: Served) -> None:
        """POST /bans stores the ban, applies it to the table and lists it."""
        out = await served.client.ban("203.0.113.7", duration=600, reason="scanner")
        assert out["applied"] is True
        assert [("203.0.113.7", "manual", "manual: scanner")] == [
            (b["target"], b["jail"], b["reason"]) for b in out["banned"]]
        assert 600 == pytest.approx(out["banned"][0]["expires_at"]
                                    - out["banned"][0]["banned_at"])
        assert "203.0.113.7" in served.table.list()
        assert served.daemon.store is not None
        assert ["203.0.113.7"] == [r.target for r in served.daemon.store.active_bans()]
        assert ["203.0.113.7"] == [b["target"] for b in await served.client.bans()]

    async def test_ban_defaults_and_cidr(self, served: Served) -> None:
        """A CIDR may be banned; without --for a manual ban lasts an hour."""
        out = await served.client.ban("2001:db8:1::/48", jail="web")
        row = out["banned"][0]
        assert ("2001:db8:1::/48", "web") == (row["target"], row["jail"])
        assert 3600 == pytest.approx(row["expires_at"] - row["banned_at"])

    async def test_invalid_and_protected_targets_refused(self, served: Served) -> None:
        """An invalid address or a protected one (loopback) is a 400 with the reason."""
        with pytest.raises(ControlError, match="not an IPv4 or IPv6") as bad:
            await served.client.ban("300.1.2.3")
        assert 400 == bad.value.status
        with pytest.raises(ControlError, match="ignore list or is protected") as lo:
            await served.client.ban("127.0.0.1")
        assert 400 == lo.value.status
        with pytest.raises(ControlError, match="duration"):
            await served.client.call("POST", "/bans", {"target": "192.0.2.1",
                                                       "duration": "soon"})
        assert [] == await served.client.bans()

    async def test_unknown_jail_refused(self, served: Served) -> None:
        """A manual ban naming a jail the config lacks (a typo) is refused; 'manual' is not."""
        with pytest.raises(ControlError, match="no jail named 'wbe'") as exc:
            await served.client.ban("192.0.2.20", jail="wbe")
        assert 400 == exc.value.status
        assert [] == await served.client.bans()
        out = await served.client.ban("192.0.2.20", jail="manual")
        assert ["manual"] == [r["jail"] for r in out["banned"]]

    async def test_protected_manual_ban_counted(self, served: Served) -> None:
        """A manual ban refused for a protected address is counted in status and metrics."""
        from kfwguard.operator.metrics import Metrics

        with pytest.raises(ControlError, match="protected"):
            await served.client.ban("127.0.0.1")
        st = await served.client.status()
        assert (1, 1) == (st["bans"]["refused"], st["bans"]["refused_manual"])
        text = Metrics(served.server.telemetry).exposition().decode()
        assert "kfwguard_manual_bans_refused_total 1.0" in text.splitlines()

    async def test_unban(self, served: Served) -> None:
        """DELETE /bans/{target} lifts the ban (CIDR in the path too); a second one is 404."""
        await served.client.ban("198.51.100.0/24")
        await served.client.ban("198.51.100.77", jail="a")
        await served.client.ban("198.51.100.77", jail="b")
        out = await served.client.unban("198.51.100.0/24")
        assert ["198.51.100.0/24"] == [r["target"] for r in out["unbanned"]]
        out = await served.client.unban("198.51.100.77", jail="a")
        assert [("198.51.100.77", "a")] == [(r["target"], r["jail"]) for r in out["unbanned"]]
        assert [("198.51.100.77", "b")] == [(b["target"], b["jail"])
                                            for b in await served.client.bans()]
        with pytest.raises(ControlError, match="not banned") as exc:
            await served.client.unban("198.51.100.0/24")
        assert 404 == exc.value.status
        assert "198.51.100.0/24" not in served.table.list()

    async def test_status(self, served: Served) -> None:
        """GET /status reports bans, persistence and the alert service's section."""
        served.server.telemetry.alerts = AlertService(served.daemon.cfg, None)
        await served.client.ban("192.0.2.10")
        st = await served.client.status()
        assert 1 == st["bans"]["active"]
        assert 0 == st["bans"]["pending"]
        assert st["persisting"] is True
        assert {"bans_active": 1} == st["jails"]["manual"]
        assert {} == st["sources"]
        assert st["baseline"] is None
        assert {} == st["alerts"]

    async def test_status_reports_baseline(self, served: Served) -> None:
        """GET /status shows the baseline keeper's enforcer as it describes itself."""
        keeper = BaselineKeeper(Nft(), served.daemon.cfg.state_dir)
        keeper.enforcer = BaselineEnforcer(BaselineConfig.model_validate(VALID_BASELINE),
                                           keeper.nft, stats=keeper.stats)
        keeper.stats.drift = 2
        served.daemon.baseline = keeper
        st = await served.client.status()
        assert {"state": "not applied", "table": "kfwguard_baseline", "role": "worker",
                "cni": "flannel", "drift_count": 2, "errors": 0,
                "refused": 0} == st["baseline"]

    async def test_reload(self, served: Served) -> None:
        """POST /reload applies a valid config and explains why an invalid one is refused."""
        assert served.daemon.cfg_path is not None
        edit_config(served.daemon.cfg_path, node_name="reloaded-node")
        out = await served.client.reload()
        assert out["reloaded"] is True
        assert "reloaded-node" == served.daemon.cfg.node_name
        edit_config(served.daemon.cfg_path, jails=[{"name": "x"}])
        with pytest.raises(ControlError, match="reload refused") as exc:
            await served.client.reload()
        assert "source" in str(exc.value)
        assert "reloaded-node" == served.daemon.cfg.node_name


class TestControlClient:
    async def test_not_running(self, tmp_path: Path) -> None:
        """No socket, or a socket nobody answers on: DaemonNotRunning naming the path."""
        path = tmp_path / "none.sock"
        with pytest.raises(DaemonNotRunning, match="not running"):
            await ControlClient(path).status()
        dead = socket.socket(socket.AF_UNIX)
        dead.bind(str(path))
        dead.close()
        with pytest.raises(DaemonNotRunning, match=str(path)):
            await ControlClient(path).status()

