"""IPv6 rotation inside one prefix (issue 11, item 9): the daemon counts and bans
the /64, on the real kernel."""

from __future__ import annotations

from pathlib import Path

from tests.integration.daemon_harness import DaemonRun, base_config, sshd_fail, wait_until
from tests.netns import Lab


def test_rotating_attacker_gets_maxretry_tries_in_all(lab: Lab, tmp_path: Path) -> None:
    """Three failures from three addresses of one /64 ban that /64 (ban_net_v6), with
    the jail's bantime; addresses of another /64 with a jail-level ipv6_prefix of
    128 are counted one by one."""
    log = tmp_path / "auth.log"
    log.write_text("")
    cfg = base_config(tmp_path, log)
    d = DaemonRun(lab.host("node"), tmp_path, cfg)
    d.start()
    try:
        with log.open("a") as f:
            for i in (1, 0x2222, 0xFFFF):
                f.write(sshd_fail(f"2001:db8:7:7::{i:x}", port=40000 + i))
        assert wait_until(lambda: "2001:db8:7:7::/64" in d.elements("ban_net_v6")), d.log()
        assert 3000 < d.elements("ban_net_v6")["2001:db8:7:7::/64"] <= 3600
        assert not d.elements("ban_v6")
    finally:
        d.stop()
    cfg["jails"][0]["ipv6_prefix"] = 128
    d.write_config(cfg)
    d.start()
    try:
        with log.open("a") as f:
            for i in (1, 2, 3):
                f.write(sshd_fail(f"2001:db8:8:8::{i}", port=41000 + i))
            for i in (1, 2, 3):
                f.write(sshd_fail("2001:db8:9:9::1", port=42000 + i))
        assert wait_until(lambda: "2001:db8:9:9::1" in d.elements("ban_v6")), d.log()
        assert "2001:db8:8:8::/64" not in d.elements("ban_net_v6")
        assert not [a for a in d.elements("ban_v6") if a.startswith("2001:db8:8:8:")]
    finally:
        d.stop()
