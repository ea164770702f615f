"""Pure tests of the baseline policy: validation, rendering, drift description, confirm files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kfwguard.cli.baseline import baseline as baseline_cli
from kfwguard.config import BaselineConfig
from kfwguard.firewall import baseline as bl


def make(**over: Any) -> BaselineConfig:
    data: dict[str, Any] = {
        "admin_cidrs": ["192.0.2.0/24", "2001:db8:a::/64"],
        "cluster_cidrs": ["10.0.0.0/16", "fd00:10::/64"],
        "pod_cidrs": ["10.244.0.0/16", "fd00:244::/56"],
        "service_cidrs": ["10.96.0.0/12"],
        "dns_servers": ["10.0.0.2"], "ntp_servers": [],
    }
    data.update(over)
    return BaselineConfig.model_validate(data)


def rules(script: str, chain: str) -> list[str]:
    """The rule lines of ``chain`` in a rendered script, comments left out."""
    lines = script.splitlines()
    start = lines.index(f"\tchain {chain} {{")
    out = []
    for line in lines[start + 2:]:
        if line == "\t}":
            break
        if not line.strip().startswith("#"):
            out.append(line.strip())
    return out


class TestPortSpec:
    def test_accepts_ports_and_ranges(self) -> None:
        """Ints, numeric strings and ascending ranges become nft port syntax."""
        assert ["22", "8443", "30000-32767", "53"] == [
            bl.port_spec(22), bl.port_spec("8443"), bl.port_spec("30000-32767"),
            bl.port_spec("53-53")]

    @pytest.mark.parametrize("bad", [0, 65536, "http", "10-5", "1-70000", "", True, "22 "])
    def test_refuses_non_ports(self, bad: Any) -> None:
        """Zero, out-of-range, named, descending and boolean ports are refused."""
        if bad == "22 ":  # surrounding blanks are tolerated, not refused
            assert "22" == bl.port_spec(bad)
            return
        with pytest.raises(ValueError):
            bl.port_spec(bad)


class TestParseFailsafe:
    def test_splits_proto_and_port(self) -> None:
        """'tcp/22' names a protocol and a port."""
        assert ("tcp", "22") == bl.parse_failsafe("tcp/22")

    @pytest.mark.parametrize("bad", ["22", "icmp/8", "tcp/", "tcp/ssh", "tcp/0"])
    def test_refuses_malformed_entries(self, bad: str) -> None:
        """Anything but tcp|udp/PORT is refused with the accepted form in the message."""
        with pytest.raises(ValueError, match=r"PROTO/PORT|port"):
            bl.parse_failsafe(bad)


class TestValidate:
    def test_default_failsafe_without_admin_is_refused(self) -> None:
        """Failsafe ports with no admin_cidrs would lock the operator out: refused, saying how."""
        with pytest.raises(bl.BaselineError) as exc:
            bl.validate(make(admin_cidrs=[]))
        assert "failsafe_ports: []" in str(exc.value)
        assert "admin_cidrs" in str(exc.value)

    def test_explicitly_disabled_failsafe_is_accepted(self) -> None:
        """failsafe_ports: [] turns the failsafe off on purpose, so no admin_cidrs is fine."""
        bl.validate(make(admin_cidrs=[], failsafe_ports=[]))

    def test_bad_failsafe_port_is_named(self) -> None:
        """An invalid failsafe entry is reported with its index."""
        with pytest.raises(bl.BaselineError, match=r"failsafe_ports\[1\]: 'tcp/ssh'"):
            bl.validate(make(failsafe_ports=["tcp/22", "tcp/ssh"]))

    def test_bad_allow_port_is_named(self) -> None:
        """An invalid port in allow_in is reported with rule and port index."""
        cfg = make(allow_in=[{"proto": "tcp", "ports": [80, "9-1"]}])
        with pytest.raises(bl.BaselineError, match=r"allow_in\[0\]\.ports\[1\]"):
            bl.validate(cfg)

    def test_empty_ports_refused(self) -> None:
        """An allow rule without ports is refused rather than silently opening everything."""
        with pytest.raises(bl.BaselineError, match=r"allow_out\[0\]\.ports"):
            bl.validate(make(allow_out=[{"proto": "udp", "ports": []}]))

    def test_family_mismatch_refused(self) -> None:
        """A rule whose from and to share no address family could never match: refused."""
        cfg = make(allow_out=[{"proto": "tcp", "ports": [1], "from": ["10.0.0.1"],
                               "to": ["2001:db8::1"]}])
        with pytest.raises(bl.BaselineError, match="share no address family"):
            bl.validate(cfg)

    def test_missing_cluster_networks_refused(self) -> None:
        """Without cluster or pod CIDRs the node would drop its own cluster: refused."""
        with pytest.raises(bl.BaselineError) as exc:
            bl.validate(make(cluster_cidrs=[], pod_cidrs=[]))
        assert 2 == len(exc.value.problems)

    def test_reserved_table_refused(self) -> None:
        """A table name that belongs to others (or to the ban table) is refused."""
        with pytest.raises(bl.BaselineError, match="other software owns"):
            bl.validate(make(table="kfwguard"))


class TestDiscovery:
    def test_resolv_conf_and_resolved_upstreams(self, tmp_path: Path) -> None:
        """With the systemd-resolved stub in resolv.conf, its upstreams are the DNS
        servers; loopback stubs need no rule (lo is open); a scope id is dropped."""
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc/resolv.conf").write_text(
            "# stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\n")
        up = tmp_path / "run/systemd/resolve"
        up.mkdir(parents=True)
        (up / "resolv.conf").write_text("nameserver 10.0.0.2\nnameserver fe80::1%eth0\n")
        found = bl.discover.dns_servers(tmp_path)
        assert ["10.0.0.2/32", "fe80::1/128"] == [str(a) for a in found.servers]
        script = bl.render(make(dns_servers=None), root=tmp_path)
        assert "elements = { 10.0.0.2/32 }" in script.split("set dns4 {")[1].split("\n\t}")[0]

    def test_resolved_file_ignored_without_stub(self, tmp_path: Path) -> None:
        """A plain resolv.conf is all there is; resolved's file is not read then."""
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc/resolv.conf").write_text("nameserver 192.0.2.53\n")
        up = tmp_path / "run/systemd/resolve"
        up.mkdir(parents=True)
        (up / "resolv.conf").write_text("nameserver 10.9.9.9\n")
        assert ["192.0.2.53/32"] == [str(a) for a in bl.discover.dns_servers(tmp_path).servers]

    def test_ntp_from_chrony_and_timesyncd(self, tmp_path: Path) -> None:
        """chrony's server/pool lines and timesyncd's NTP=/FallbackNTP= give the NTP
        servers; names are reported, not guessed."""
        (tmp_path / "etc/chrony/sources.d").mkdir(parents=True)
        (tmp_path / "etc/chrony/chrony.conf").write_text(
            "pool 2.debian.pool.ntp.org iburst\nserver 192.0.2.123 iburst\n")
        (tmp_path / "etc/chrony/sources.d/lan.sources").write_text("server 2001:db8::7b\n")
        (tmp_path / "etc/systemd").mkdir(parents=True)
        (tmp_path / "etc/systemd/timesyncd.conf").write_text(
            "[Time]\nNTP=198.51.100.1 time.example\n#FallbackNTP=10.1.1.1\n")
        found = bl.discover.ntp_servers(tmp_path)
        assert ["192.0.2.123/32", "2001:db8::7b/128", "198.51.100.1/32"] == [
            str(a) for a in found.servers]
        assert ["2.debian.pool.ntp.org", "time.example"] == found.names
        script = bl.render(make(ntp_servers=None), root=tmp_path)
        assert "named servers left out (list their addresses in ntp_servers): " \
               "2.debian.pool.ntp.org, time.example" in script

    def test_nothing_found_means_no_egress(self, tmp_path: Path) -> None:
        """No resolv.conf and no NTP config: no 53/123 egress at all, and the script says so."""
        script = bl.render(make(dns_servers=None, ntp_servers=None), root=tmp_path)
        assert "dport 53" not in script and "dport 123" not in script
        assert "# dns_servers (unset): none from nothing" in script


class TestRender:
    def test_replaces_only_its_table_atomically(self) -> None:
        """The script creates, deletes and redefines only table inet <table>."""
        script = bl.render(make(table="kfw_b"))
        tables = [x for x in script.splitlines() if "table" in x and not x.startswith("#")]
        assert ["table inet kfw_b {}", "delete table inet kfw_b", "table inet kfw_b {"] == tables

    def test_base_chains_drop_at_own_priority(self) -> None:
        """input, forward and output drop by default at filter + 10, never 0."""
        script = bl.render(make())
        for hook in ("input", "forward", "output"):
            assert (f"\t\ttype filter hook {hook} priority filter + 10; policy drop;"
                    in script.splitlines())

    def test_essentials_come_first(self) -> None:
        """Loopback, invalid drop and established/related open the input chain in that order."""
        assert ['iif "lo" accept', "ct state invalid drop",
                "ct state established,related accept"] == rules(bl.render(make()), "input")[:3]

    def test_icmpv6_keeps_nd_mld_and_pmtu(self) -> None:
        """ND 133-136, MLD 130-132/143 and packet-too-big are allowed in and out."""
        script = bl.render(make())
        for chain in ("input", "output"):
            icmp6 = next(r for r in rules(script, chain) if r.startswith("icmpv6"))
            for t in ("nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit",
                      "nd-router-advert", "mld-listener-query", "mld-listener-report",
                      "mld-listener-done", "mld2-listener-report", "packet-too-big"):
                assert t in icmp6
            icmp4 = next(r for r in rules(script, chain) if r.startswith("icmp "))
            assert "destination-unreachable" in icmp4  # carries frag-needed (PMTU)

    def test_failsafe_from_admin_only(self) -> None:
        """Failsafe ports are opened to the admin sets, per family."""
        r = rules(bl.render(make(failsafe_ports=["tcp/22", "udp/500", "tcp/6443"])), "input")
        assert "ip saddr @admin4 tcp dport { 22, 6443 } accept" in r
        assert "ip6 saddr @admin6 tcp dport { 22, 6443 } accept" in r
        assert "ip saddr @admin4 udp dport 500 accept" in r

    def test_worker_ports(self) -> None:
        """A worker opens kubelet to nodes and pods, NodePorts (by the client's original
        port) and kube-proxy health to nodeports.from; no API server, no etcd."""
        r = rules(bl.render(make(role="worker")), "input")
        assert "ip saddr @nodes4 tcp dport 10250 accept" in r
        assert "ip saddr @pods4 tcp dport 10250 accept" in r
        for proto in ("tcp", "udp"):
            assert (f"ip saddr @nodeport_clients4 meta l4proto {proto} "
                    "ct original proto-dst 30000-32767 accept") in r
            assert (f"ip6 saddr @nodeport_clients6 meta l4proto {proto} "
                    "ct original proto-dst 30000-32767 accept") in r
        assert "ip saddr @nodeport_clients4 tcp dport 10256 accept" in r
        assert not any("dport 30000" in x for x in r)
        assert not any("2379" in x or ("6443" in x and "admin" not in x) for x in r)

    def test_control_plane_ports_by_source(self) -> None:
        """6443 from api_cidrs, nodes and pods only; etcd from control_plane_cidrs only;
        10257/10259 from nowhere but the node itself (lo); no NodePorts."""
        cfg = make(role="control-plane", control_plane_cidrs=["10.0.0.5/32"],
                   api_cidrs=["198.51.100.0/24"])
        script = bl.render(cfg)
        r = rules(script, "input")
        assert [x for x in r if "6443" in x and "admin" not in x] == [
            "ip saddr @api4 tcp dport 6443 accept", "ip saddr @nodes4 tcp dport 6443 accept",
            "ip6 saddr @nodes6 tcp dport 6443 accept", "ip saddr @pods4 tcp dport 6443 accept",
            "ip6 saddr @pods6 tcp dport 6443 accept"]
        assert "elements = { 198.51.100.0/24 }" in script.split("set api4 {")[1].split("\n\t}")[0]
        assert [x for x in r if "2379" in x] == [
            "ip saddr @control_plane4 tcp dport 2379-2380 accept"]
        assert not any("10257" in x or "10259" in x for x in r)
        assert not any("30000" in x or "10256" in x for x in r)
        assert not any("30000" in x for x in rules(script, "forward"))

    def test_api_cidrs_default_to_admin(self) -> None:
        """Without api_cidrs, 6443 beyond the cluster is open to admin_cidrs."""
        script = bl.render(make(role="control-plane", control_plane_cidrs=["10.0.0.5/32"]))
        assert "192.0.2.0/24" in script.split("set api4 {")[1].split("}")[0]
        assert "2001:db8:a::/64" in script.split("set api6 {")[1].split("}")[0]

    def test_control_plane_requires_control_plane_cidrs(self) -> None:
        """A control plane without control_plane_cidrs is refused: no silent fallback."""
        with pytest.raises(bl.BaselineError, match="control_plane_cidrs is empty"):
            bl.render(make(role="control-plane"))

    def test_nodeports_switch_and_sources(self) -> None:
        """nodeports.enabled false closes them on a worker (input and forward);
        enabled on a control plane opens them; 'from' limits who reaches them."""
        off = bl.render(make(nodeports={"enabled": False}))
        assert "30000" not in off
        on = bl.render(make(role="control-plane", control_plane_cidrs=["10.0.0.5/32"],
                            nodeports={"enabled": True, "from": ["203.0.113.0/24"]}))
        assert "elements = { 203.0.113.0/24 }" in on.split("set nodeport_clients4 {")[1]
        assert "set nodeport_clients6" not in on
        assert ("ct status dnat ip saddr @nodeport_clients4 meta l4proto udp "
                "ct original proto-dst 30000-32767 accept") in rules(on, "forward")

    def test_egress_limited_to_servers_and_roles(self) -> None:
        """DNS and NTP go to their servers only; nodes only on the ports the role and CNI
        use; pods and translated Services on any port; DHCP."""
        r = rules(bl.render(make(dns_servers=["10.0.0.2"], ntp_servers=["2001:db8::123"])),
                  "output")
        for rule in ("ip daddr @dns4 meta l4proto { tcp, udp } th dport 53 accept",
                     "ip6 daddr @ntp6 udp dport 123 accept",
                     "meta nfproto ipv4 udp sport 68 udp dport 67 accept",
                     "meta nfproto ipv6 udp sport 546 udp dport 547 accept",
                     "ip daddr @nodes4 tcp dport { 6443, 10250 } accept",
                     "ip daddr @nodes4 udp dport 8472 accept",
                     "ip6 daddr @pods6 accept",
                     "ct status dnat ct original ip daddr @services4 accept"):
            assert rule in r
        assert not any(x.endswith("daddr @nodes4 accept") or "th dport 53 accept" == x
                       or x == "udp dport 123 accept" for x in r)
        none = rules(bl.render(make(dns_servers=[], ntp_servers=[])), "output")
        assert not any("dport 53" in x or "dport 123" in x for x in none)

    def test_forward_bound_to_pod_interfaces(self) -> None:
        """From pods only on the CNI's interfaces; to pods from elsewhere only what a
        Service translated; doNotTrack (untracked) flows pass."""
        assert ["ct state invalid drop", "ct state established,related accept",
                "ct state untracked accept",
                'iifname { "cni0", "flannel.1", "flannel-v6.1", "flannel-wg", '
                '"flannel-wg-v6" } ip saddr @pods4 accept',
                'iifname { "cni0", "flannel.1", "flannel-v6.1", "flannel-wg", '
                '"flannel-wg-v6" } ip6 saddr @pods6 accept',
                "ct status dnat ip saddr @nodeport_clients4 meta l4proto tcp "
                "ct original proto-dst 30000-32767 accept",
                "ct status dnat ip6 saddr @nodeport_clients6 meta l4proto tcp "
                "ct original proto-dst 30000-32767 accept",
                "ct status dnat ip saddr @nodeport_clients4 meta l4proto udp "
                "ct original proto-dst 30000-32767 accept",
                "ct status dnat ip6 saddr @nodeport_clients6 meta l4proto udp "
                "ct original proto-dst 30000-32767 accept",
                "ct status dnat ct original ip daddr @services4 accept",
                'counter name "dropped_forward" drop'] == rules(bl.render(make()), "forward")
        calico = rules(bl.render(make(cni="calico", pod_interfaces=["cali*", "eth0"])),
                       "forward")
        assert 'iifname { "cali*", "eth0" } ip saddr @pods4 accept' in calico

    def test_bad_pod_interface_refused(self) -> None:
        """An interface name nft could not match is refused with its index."""
        with pytest.raises(bl.BaselineError, match=r"pod_interfaces\[1\]"):
            bl.render(make(pod_interfaces=["cni0", "a b"]))

    @pytest.mark.parametrize(("cni", "expected"), [
        ("flannel", ["ip saddr @nodes4 udp dport 8472 accept"]),
        ("calico", ["ip saddr @nodes4 tcp dport 179 accept",
                    "ip saddr @nodes4 ip protocol ipip accept",
                    "ip saddr @nodes4 udp dport 4789 accept",
                    "ip saddr @nodes4 tcp dport 5473 accept",
                    "ip6 saddr @nodes6 udp dport { 51820, 51821 } accept"]),
        ("cilium", ["ip saddr @nodes4 udp dport 8472 accept",
                    "ip6 saddr @nodes6 udp dport 6081 accept",
                    "ip saddr @nodes4 tcp dport 4240 accept",
                    "ip saddr @nodes4 udp dport 51871 accept",
                    "ip6 saddr @nodes6 meta l4proto esp accept"]),
    ])
    def test_cni_ports_from_nodes(self, cni: str, expected: list[str]) -> None:
        """Each CNI's overlay/BGP/health/encryption traffic is admitted from the nodes."""
        r = rules(bl.render(make(cni=cni)), "input")
        for rule in expected:
            assert rule in r

    def test_no_cni_ports_for_none(self) -> None:
        """cni: none opens no overlay port, and IP-in-IP is never rendered for IPv6."""
        assert not any("8472" in x for x in rules(bl.render(make(cni="none")), "input"))
        assert not any(x.startswith("ip6") and "ipip" in x
                       for x in rules(bl.render(make(cni="calico")), "input"))

    def test_everything_else_counted_and_dropped(self) -> None:
        """Each chain ends with a named counter and drop."""
        script = bl.render(make())
        for chain in ("input", "forward", "output"):
            assert f'counter name "dropped_{chain}" drop' == rules(script, chain)[-1]
            assert f"\tcounter dropped_{chain} {{}}" in script.splitlines()

    def test_allow_rules_split_by_family(self) -> None:
        """allow_in/allow_out give one rule per address family present, ranges kept."""
        cfg = make(
            allow_in=[{"proto": "tcp", "ports": [8443, "9000-9010"],
                       "from": ["198.51.100.0/24", "2001:db8:1::/48"]}],
            allow_out=[{"proto": "udp", "ports": [514], "to": ["203.0.113.10"]},
                       {"proto": "tcp", "ports": [443]}])
        script = bl.render(cfg)
        assert ("ip saddr 198.51.100.0/24 tcp dport { 8443, 9000-9010 } accept"
                in rules(script, "input"))
        assert ("ip6 saddr 2001:db8:1::/48 tcp dport { 8443, 9000-9010 } accept"
                in rules(script, "input"))
        out = rules(script, "output")
        assert "ip daddr 203.0.113.10/32 udp dport 514 accept" in out
        assert not any(x.startswith("ip6") and "514" in x for x in out)
        assert "tcp dport 443 accept" in out

    def test_overlapping_cidrs_merged(self) -> None:
        """Overlapping CIDRs are merged, because interval sets refuse overlaps."""
        script = bl.render(make(cluster_cidrs=["10.0.0.0/16", "10.0.1.0/24", "10.2.0.0/16"]))
        assert "elements = { 10.0.0.0/16, 10.2.0.0/16 }" in script

    def test_empty_family_sets_left_out(self) -> None:
        """A family with no CIDRs gets neither a set nor rules that name it."""
        script = bl.render(make(admin_cidrs=["192.0.2.0/24"]))
        assert "admin6" not in script

    def test_render_refuses_invalid_policy(self) -> None:
        """render validates first: an unsafe policy never becomes a script."""
        with pytest.raises(bl.BaselineError):
            bl.render(make(admin_cidrs=[]))


def snap(rules_in: list[Any], **extra: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "chains": {"input": {"name": "input", "hook": "input", "policy": "drop"}},
        "rules": {"input": rules_in}, "sets": {"nodes4": {"elem": ["10.0.0.0/16"]}},
        "counters": {"dropped_input": {"name": "dropped_input"}}, "other": []}
    s.update(extra)
    return s


class TestDescribeDrift:
    def test_same_is_none(self) -> None:
        """Identical snapshots are no drift."""
        assert bl.describe_drift("t", snap([1, 2]), snap([1, 2])) is None

    def test_deleted_table(self) -> None:
        """A missing table is reported as deleted."""
        assert "table inet t was deleted" == bl.describe_drift("t", snap([1]), None)

    def test_flushed_chain(self) -> None:
        """A chain that lost all its rules is reported as flushed."""
        assert "chain input was flushed" == bl.describe_drift("t", snap([1, 2]), snap([]))

    def test_edited_rule(self) -> None:
        """A changed or added rule is reported as an edit of that chain."""
        assert "rules of chain input were edited" == bl.describe_drift(
            "t", snap([1, 2]), snap([1, 3]))

    def test_policy_changed(self) -> None:
        """A chain redefined with another policy is reported."""
        live = snap([1], chains={"input": {"name": "input", "hook": "input",
                                           "policy": "accept"}})
        assert "redefined" in (bl.describe_drift("t", snap([1]), live) or "")

    def test_set_changed_and_chain_added(self) -> None:
        """Changed sets and foreign chains in our table are both named."""
        live = snap([1], sets={"nodes4": {"elem": []}})
        live["chains"] = {**live["chains"], "x": {"name": "x"}}
        live["rules"] = {**live["rules"], "x": []}
        assert "chain x was added; set nodes4 was changed" == bl.describe_drift(
            "t", snap([1]), live)


class TestConfirm:
    def test_nothing_pending(self, tmp_path: Path) -> None:
        """confirm with no waiting apply says so."""
        with pytest.raises(bl.BaselineError, match="no apply is waiting"):
            bl.confirm(tmp_path)

    def test_dead_waiter(self, tmp_path: Path) -> None:
        """A pending file whose process is gone is reported and cleared, not confirmed."""
        proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        files = bl.StateFiles(tmp_path)
        files.pending.write_text(json.dumps({"pid": int(proc.stdout), "token": "x"}))
        with pytest.raises(bl.BaselineError, match="is gone"):
            bl.confirm(tmp_path)
        assert not files.pending.exists()

    def test_answered_by_waiter(self, tmp_path: Path) -> None:
        """confirm writes the token and returns once the waiter reports it confirmed."""
        files = bl.StateFiles(tmp_path)
        files.pending.write_text(json.dumps({"pid": os.getpid(), "token": "tok"}))

        def waiter(_: float) -> None:
            if files.confirm.exists() and files.confirm.read_text().strip() == "tok":
                files.outcome.write_text(json.dumps({"token": "tok", "outcome": "confirmed"}))

        bl.confirm(tmp_path, sleep=waiter)

    def test_too_late(self, tmp_path: Path) -> None:
        """A confirm that arrives after the rollback fails with the reason."""
        files = bl.StateFiles(tmp_path)
        files.pending.write_text(json.dumps({"pid": os.getpid(), "token": "tok"}))
        files.outcome.write_text(json.dumps({"token": "tok", "outcome": "rolled back",
                                             "reason": "the deadline passed"}))
        with pytest.raises(bl.BaselineError, match=r"too late.*deadline"):
            bl.confirm(tmp_path)


class TestBaselineCli:
    def write(self, tmp_path: Path, body: str) -> Path:
        path = tmp_path / "kfwguard.yaml"
        path.write_text(f"state_dir: {tmp_path / 'state'}\n{body}")
        return path

    def test_render_prints_script(self, tmp_path: Path) -> None:
        """render prints the same script the library renders."""
        path = self.write(tmp_path, "baseline:\n  admin_cidrs: [192.0.2.0/24]\n"
                                    "  cluster_cidrs: [10.0.0.0/16]\n"
                                    "  pod_cidrs: [10.244.0.0/16]\n")
        result = CliRunner().invoke(baseline_cli, ["render", "-c", str(path)])
        assert 0 == result.exit_code
        assert "table inet kfwguard_baseline {" in result.output

    def test_unsafe_policy_exit_2(self, tmp_path: Path) -> None:
        """A policy without admin access is refused with exit 2 and names the file."""
        path = self.write(tmp_path, "baseline:\n  cluster_cidrs: [10.0.0.0/16]\n"
                                    "  pod_cidrs: [10.244.0.0/16]\n")
        for cmd in ("render", "apply", "diff"):
            result = CliRunner().invoke(baseline_cli, [cmd, "-c", str(path)])
            assert 2 == result.exit_code
            assert f"{path}: baseline.admin_cidrs is empty" in result.output

    def test_config_error_exit_2(self, tmp_path: Path) -> None:
        """A broken config prints the ConfigError and exits 2."""
        path = self.write(tmp_path, "baseline:\n  role: king\n")
        result = CliRunner().invoke(baseline_cli, ["render", "-c", str(path)])
        assert 2 == result.exit_code
        assert "baseline.role" in result.output

    def test_bad_duration(self, tmp_path: Path) -> None:
        """--confirm-within refuses a malformed duration before anything is applied."""
        path = self.write(tmp_path, "")
        result = CliRunner().invoke(baseline_cli, ["apply", "-c", str(path),
                                                   "--confirm-within", "soon"])
        assert 2 == result.exit_code
        assert "invalid duration" in result.output


class TestSshGuard:
    @pytest.mark.parametrize(("conn", "cut"), [
        ("192.0.2.9 5000 10.0.0.1 22", False),           # admin, failsafe tcp/22
        ("::ffff:192.0.2.9 5000 10.0.0.1 22", False),    # v4-mapped client
        ("2001:db8:a::9 5000 fd00:10::1 22", False),
        ("203.0.113.9 5000 10.0.0.1 22", True),          # not an admin network
        ("192.0.2.9 5000 10.0.0.1 2222", True),           # admin, but not a failsafe port
        ("127.0.0.1 5000 127.0.0.1 22", False),          # loopback always passes
        ("garbage", False),                              # cannot tell: no refusal
    ])
    def test_failsafe_and_admin(self, conn: str, cut: bool) -> None:
        """The session's client must reach the session's port again through the failsafe
        (admin_cidrs) or an allow_in rule."""
        assert cut == (bl.ssh_session_cut(make(), conn) is not None)

    def test_allow_in_keeps_session(self) -> None:
        """An allow_in rule for the port from the client's network keeps the session."""
        cfg = make(allow_in=[{"proto": "tcp", "ports": ["2200-2300"],
                              "from": ["203.0.113.0/24"]}])
        assert bl.ssh_session_cut(cfg, "203.0.113.9 5000 10.0.0.1 2222") is None
        assert bl.ssh_session_cut(cfg, "198.51.100.9 5000 10.0.0.1 2222") is not None


class TestToNames:
    def test_rendered_as_timeout_sets(self) -> None:
        """to_names becomes one timeout set per family, matched by the rule's ports; a
        rule with names only opens nothing else."""
        script = bl.render(make(allow_out=[
            {"proto": "tcp", "ports": [443], "to_names": ["registry.example.com"]}]))
        assert "\tset names04 {\n\t\ttype ipv4_addr\n\t\tflags timeout\n\t}" in script
        r = rules(script, "output")
        assert "ip daddr @names04 tcp dport 443 accept" in r
        assert "ip6 daddr @names06 tcp dport 443 accept" in r
        assert "tcp dport 443 accept" not in r

    @pytest.mark.parametrize(("rules_", "where"), [
        ({"allow_in": [{"proto": "tcp", "ports": [1], "to_names": ["a.example"]}]},
         "allow_in[0].to_names"),
        ({"allow_out": [{"proto": "tcp", "ports": [1], "to_names": ["bad name"]}]},
         "allow_out[0].to_names[0]"),
        ({"name_ttl": {"floor": "0s"}}, "name_ttl"),
    ])
    def test_refused(self, rules_: dict[str, Any], where: str) -> None:
        """Names in allow_in, a malformed name and a zero floor are refused by key."""
        with pytest.raises(bl.BaselineError, match=re.escape(where)):
            bl.render(make(**rules_))

    def test_elements_are_not_policy(self) -> None:
        """The names sets' elements are left out of drift snapshots and normalised
        listings (the daemon fills them from DNS)."""
        head = "table inet t {\n\tset names04 {\n\t\ttype ipv4_addr\n\t\tflags timeout\n"
        a = head + "\t\telements = { 10.0.0.1 timeout 30s expires 29s }\n\t}\n}\n"
        b = head + ("\t\telements = { 10.0.0.2 timeout 30s expires 3s,\n"
                    "\t\t\t     10.0.0.3 }\n\t}\n}\n")
        assert bl.drift.parse_listing(a) == bl.drift.parse_listing(b)
        assert bl.normalise_listing(a) == bl.normalise_listing(b) == head + "\t}\n}\n"
