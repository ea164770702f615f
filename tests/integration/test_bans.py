"""BanManager and the ban table against a real kernel, inside a test namespace.

Each test runs a short Python program inside a kfwtest- namespace (libnftables
talks to the namespace the process lives in) and checks what the kernel holds.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from tests.integration.daemon_harness import DaemonRun, base_config
from tests.integration.test_operator import cli
from tests.netns import Lab

PRELUDE = """
import asyncio, ipaddress, json, time
from pathlib import Path
from kfwguard.bans import BanManager, BanRefused
from kfwguard.addresses import IgnoreList
from kfwguard.firewall.bantable import BanTable, Element
from kfwguard.firewall.nft import Nft
from kfwguard.model import BanRequest
from kfwguard.store import Store
ip = ipaddress.ip_address
def manager(state, **kw):
    return BanManager(BanTable(Nft(), "kfwtest", kw.pop("set_size", 1000)),
                      Store.in_dir(Path(state)), **kw)
def req(t, jail="sshd", d=3600.0):
    return BanRequest(target=ipaddress.ip_address(t) if "/" not in t
                      else ipaddress.ip_network(t), jail=jail, duration=d, reason="test")
"""


def run_in(lab: Lab, body: str) -> dict[str, object]:
    host = lab.host("bans")
    out = host.python(PRELUDE + textwrap.dedent(body))
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


class TestBanManager:
    def test_ban_unban_idempotent_and_refresh(self, lab: Lab, tmp_path: Path) -> None:
        """Banning twice refreshes the timeout; unbanning twice is harmless."""
        r = run_in(lab, f"""
            async def main():
                m = manager({str(tmp_path)!r}); m.restore()
                m.request([req("203.0.113.1", d=100)]); await m.flush()
                first = m.table.list()["203.0.113.1"]
                m.request([req("203.0.113.1", d=5000)]); await m.flush()
                second = m.table.list()["203.0.113.1"]
                a = len(m.unban(ip("203.0.113.1"))); b = len(m.unban(ip("203.0.113.1")))
                await m.flush()
                return dict(first=first, second=second, a=a, b=b, left=list(m.table.list()))
            print(json.dumps(asyncio.run(main())))
        """)
        assert r["first"] <= 100 and r["second"] > 4000  # type: ignore[operator]
        assert (1, 0, []) == (r["a"], r["b"], r["left"])

    def test_multi_jail_unban_keeps_other_jail(self, lab: Lab, tmp_path: Path) -> None:
        """Unbanning from one jail keeps the kernel element while another jail bans it."""
        r = run_in(lab, f"""
            async def main():
                m = manager({str(tmp_path)!r}); m.restore()
                m.request([req("203.0.113.2", "sshd", 100), req("203.0.113.2", "kubelet", 900)])
                await m.flush()
                m.unban(ip("203.0.113.2"), "kubelet"); await m.flush()
                after_one = m.table.list().get("203.0.113.2")
                m.unban(ip("203.0.113.2"), "sshd"); await m.flush()
                return dict(after_one=after_one, after_both="203.0.113.2" in m.table.list())
            print(json.dumps(asyncio.run(main())))
        """)
        assert r["after_one"] is not None and r["after_one"] <= 100  # type: ignore[operator]
        assert r["after_both"] is False

    def test_restore_after_restart(self, lab: Lab, tmp_path: Path) -> None:
        """Stored bans come back into a fresh table, with their remaining time, in one batch."""
        r = run_in(lab, f"""
            async def main():
                m = manager({str(tmp_path)!r}); m.restore()
                m.request([req(f"198.51.100.{{i}}") for i in range(1, 201)]
                          + [req("2001:db8::7"), req("192.0.2.0/28")])
                m.table.nft.run("delete table inet kfwtest")   # as if the kernel rebooted
                m2 = manager({str(tmp_path)!r}); n = m2.restore()
                return dict(n=n, kernel=len(m2.table.list()))
            print(json.dumps(asyncio.run(main())))
        """)
        assert (202, 202) == (r["n"], r["kernel"])

    def test_protected_refused(self, lab: Lab, tmp_path: Path) -> None:
        """Ignored addresses and CIDRs covering them are refused and never reach the kernel."""
        r = run_in(lab, f"""
            async def main():
                m = manager({str(tmp_path)!r}, ignore=IgnoreList(["10.0.0.1", "127.0.0.0/8"]))
                m.restore()
                rows = m.request([req("10.0.0.1"), req("10.0.0.0/24"), req("127.0.0.1"),
                                  req("203.0.113.9")])
                await m.flush()
                return dict(rows=[x.target for x in rows], kernel=sorted(m.table.list()),
                            refused=m.stats.refused)
            print(json.dumps(asyncio.run(main())))
        """)
        assert (["203.0.113.9"], ["203.0.113.9"], 3) == (r["rows"], r["kernel"], r["refused"])

    def test_full_set_counted_and_retried(self, lab: Lab, tmp_path: Path) -> None:
        """When the set is full the kernel refuses; the error is counted, what fits is
        applied, the rest stays pending, and the manager keeps working."""
        r = run_in(lab, f"""
            async def main():
                m = manager({str(tmp_path)!r}, set_size=16); m.restore()
                m.request([req(f"198.51.100.{{i}}") for i in range(1, 41)])
                for _ in range(600):
                    if m.stats.kernel_errors:
                        break
                    await asyncio.sleep(0.05)
                return dict(kernel=len(m.table.list()), errors=m.stats.kernel_errors,
                            pending=m.pending, stored=len(m.store.active_bans()))
            print(json.dumps(asyncio.run(main())))
        """)
        assert 40 == r["stored"]
        assert r["errors"] >= 1  # type: ignore[operator]
        assert 0 < r["kernel"] < 40  # type: ignore[operator]
        assert r["pending"] > 0  # type: ignore[operator]

    def test_full_set_named_in_the_log(self, lab: Lab, tmp_path: Path) -> None:
        """A full set's refusal is logged naming the set and nftables.set_size, not
        the kernel's ENFILE text ("Too many open files in system")."""
        r = run_in(lab, f"""
            from structlog.testing import capture_logs
            async def main():
                m = manager({str(tmp_path)!r}, set_size=16); m.restore()
                with capture_logs() as logs:
                    m.request([req(f"198.51.100.{{i}}") for i in range(1, 41)])
                    await m.flush()
                return [e.get("error") for e in logs if e["event"] == "kernel_update_failed"]
            print(json.dumps(asyncio.run(main())))
        """)
        assert r, "no kernel_update_failed logged"
        assert ("ban set kfwtest/ban_v4 is full: it holds nftables.set_size = 16 elements "
                "(one is the health-check sentinel); raise nftables.set_size") == r[0]


class TestFullSetCli:
    def test_ban_into_full_set_says_which_setting(self, lab: Lab, tmp_path: Path) -> None:
        """`kfwguard ban` into a full set says the set is full and names
        nftables.set_size, instead of "Too many open files in system"."""
        host = lab.host("node")
        log = tmp_path / "auth.log"
        log.write_text("")
        cfg = base_config(tmp_path, log)
        cfg["nftables"]["set_size"] = 16
        d = DaemonRun(host, tmp_path, cfg)
        d.start()
        try:
            # 15 elements and the sentinel fill the set behind the daemon's back.
            host.nft("add element inet kfwtest ban_v4 { "
                     + ", ".join(f"10.9.0.{i}" for i in range(1, 16)) + " }")
            r = cli(d.config_path, "ban", "203.0.113.77")
            assert 0 == r.returncode, r.stderr
            assert ("kfwguard: stored, but the kernel has not taken it yet: ban set "
                    "kfwtest/ban_v4 is full: it holds nftables.set_size = 16 elements") in r.stderr
            assert "Too many open files" not in r.stderr + d.log()
        finally:
            d.stop()


class TestFlushCancellation:
    def test_caller_giving_up_does_not_cancel_the_shared_flush(
        self, lab: Lab, tmp_path: Path
    ) -> None:
        """A caller of flush() that stops waiting (the control API's 5 s wait on a
        manual ban, via wait_for) must not cancel the flush task every ban
        shares: the batch in flight and the bans queued behind it still reach
        the kernel, with nobody asking again."""
        r = run_in(lab, f"""
            async def main():
                m = manager({str(tmp_path)!r}, set_size=100000); m.restore()
                m.request([req(str(ipaddress.ip_address(0x0A000000 + i)))
                           for i in range(30000)])
                await asyncio.sleep(0)  # the shared flush task takes that batch
                m.request([req("203.0.113.7")])  # queued behind it
                try:
                    await asyncio.wait_for(m.flush(), timeout=0.001)
                    gave_up = False
                except TimeoutError:
                    gave_up = True
                for _ in range(300):
                    if not m.pending:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.2)
                live = m.table.list()
                return dict(gave_up=gave_up, pending=m.pending,
                            queued="203.0.113.7" in live, batch=len(live))
            print(json.dumps(asyncio.run(main())))
        """)
        assert r["gave_up"] is True
        assert (0, True) == (r["pending"], r["queued"])
        assert r["batch"] >= 30001  # type: ignore[operator]
