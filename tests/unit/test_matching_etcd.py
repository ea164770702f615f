"""etcd and kubelet filters: peers and the cluster's own clients are never counted."""

from __future__ import annotations

import ipaddress
import time

from kfwguard.matching import load_filter
from kfwguard.model import Record

NOW = time.mktime((2026, 11, 26, 12, 0, 0, 0, 0, -1))
CONTROL_PLANE = {"control_plane": [ipaddress.ip_network("10.0.0.0/24")]}


def zap(msg: str, addr: str) -> str:
    return ('{"level":"warn","ts":"2026-11-26T04:57:47.000Z",'
            '"caller":"embed/config_logging.go:169",'
            f'"msg":"{msg}","remote-addr":"{addr}","server-name":"","error":"EOF"}}')


class TestEtcdPeers:
    def test_peer_rejections_count_only_outside_the_control_plane(self) -> None:
        """A peer-endpoint rejection from a control-plane address is never counted;
        from outside it is."""
        flt = load_filter("etcd", networks=CONTROL_PLANE)
        msg = "rejected connection on peer endpoint"
        assert "ignored" == flt.evaluate(Record(zap(msg, "10.0.0.12:2380")), NOW).status
        outside = flt.evaluate(Record(zap(msg, "203.0.113.10:2380")), NOW)
        assert ("match", "rejected-peer") == (outside.status, outside.rule)

    def test_unknown_control_plane_counts_no_peer(self) -> None:
        """Without control_plane_cidrs no rejection that may come from a peer counts."""
        flt = load_filter("etcd")
        for line in (zap("rejected connection on peer endpoint", "203.0.113.10:2380"),
                     zap("rejected connection", "203.0.113.11:2379"),
                     'embed: rejected connection from "203.0.113.12:1" (error "EOF", '
                     'ServerName "")'):
            assert "ignored" == flt.evaluate(Record(line), NOW).status

    def test_old_forms_count_outside_the_control_plane(self) -> None:
        """etcd 3.4's zap message and capnslog text count from outside the control plane."""
        flt = load_filter("etcd", networks=CONTROL_PLANE)
        for line, rule in ((zap("rejected connection", "203.0.113.11:2379"), "rejected"),
                           ('2019-08-01 10:00:00.123456 I | embed: rejected connection from '
                            '"203.0.113.12:1" (error "EOF", ServerName "")', "rejected-capnslog")):
            out = flt.evaluate(Record(line), NOW)
            assert ("match", rule) == (out.status, out.rule)

    def test_journald_message_is_parsed(self) -> None:
        """A zap line read from journald (fields are journald's) is parsed from MESSAGE."""
        flt = load_filter("etcd")
        text = zap("rejected connection on client endpoint", "203.0.113.13:1")
        out = flt.evaluate(Record(text, fields={"MESSAGE": text, "__CURSOR": "c"}), NOW)
        assert ("match", "203.0.113.13") == (out.status, str(out.match.host if out.match else ""))


class TestKubelet:
    def test_no_serving_certificate_never_counts(self) -> None:
        """The kubelet's own certificate problem is not counted in any mode."""
        line = ("I1126 04:57:46.800001    1234 log.go:245] http: TLS handshake error from "
                "203.0.113.5:41305: no serving certificate available for the kubelet")
        for name in ("kubelet", "kubelet[mode=aggressive]"):
            assert "nomatch" == load_filter(name).evaluate(Record(line), NOW).status

    def test_eof_counts_only_in_aggressive_mode(self) -> None:
        """EOF mid-handshake counts only in aggressive mode."""
        line = ("I1126 04:57:46.800001    1234 log.go:245] http: TLS handshake error from "
                "203.0.113.5:41305: EOF")
        assert "nomatch" == load_filter("kubelet").evaluate(Record(line), NOW).status
        assert "match" == load_filter("kubelet[mode=aggressive]").evaluate(
            Record(line), NOW).status

    def test_default_config_ignores_cluster_ranges(self) -> None:
        """The embedded default config never bans private, CGNAT, ULA or cloud
        load-balancer health-check addresses on the kubelet and etcd jails."""
        from kfwguard.config import default_config_text, parse_config
        cfg = parse_config(default_config_text(), "<embedded default>")
        for jail in cfg.jails:
            if jail.name not in ("kubelet", "etcd"):
                continue
            nets = jail.ignoreip
            for addr in ("10.244.1.5", "172.20.0.3", "192.168.1.10", "100.64.0.9", "fd00::5",
                         "35.191.0.1", "130.211.0.1", "168.63.129.16"):
                assert any(ipaddress.ip_address(addr) in n for n in nets), (jail.name, addr)
            assert not any(ipaddress.ip_address("203.0.113.5") in n for n in nets)
