"""The shipped filters on real logs other projects wrote (bench/reallogs.py)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from bench.reallogs import CORPUS, Score, _beats, counted_lines, default_ignores, measure
from kfwguard.matching import load_filter

ROWS = measure()

# Lines we count where the other tool's expectation says "no": each a decision
# written down in tests/data/reallogs/README.md.
DECIDED_FALSE_POSITIVES = {
    # A PAM failure whose session then ends without sshd's own line: we count
    # it when the session ends; fail2ban never counts a PAM line in normal mode.
    ("fail2ban sshd", "normal", "rhost=192.0.2.112  user=root"),
    ("fail2ban sshd", "aggressive", "rhost=192.0.2.112  user=root"),
    # Aggressive mode: a valid user's failed keys, in a session that never logs
    # in, count once (on the first); fail2ban counts the same connection on the
    # later "Too many" line.
    ("fail2ban sshd", "aggressive", "Failed publickey for git from 192.0.2.111 port 57910 "
                                    "ssh2: ECDSA"),
}


class TestRealLogs:
    @pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r[0]}-{r[2]}")
    def test_no_wrong_host(self, row: tuple[str, str, str, Score]) -> None:
        """No real line is ever counted against an address other than the one its
        writer put there (or the one sshd's format guarantees, where we disagree)."""
        score = row[3]
        assert 0 == score.wrong_host, [w for w in score.wrong if "wrong host" in w]

    def test_false_positives_are_only_the_decided_ones(self) -> None:
        """Across every corpus and mode, the lines counted against the other tools'
        expectation are exactly the documented decisions."""
        found = set()
        for corpus, _, mode, score in ROWS:
            for w in score.wrong:
                if w.startswith("false positive"):
                    match = [d for d in DECIDED_FALSE_POSITIVES
                             if d[0] == corpus and d[1] == mode and d[2] in w]
                    assert match, f"{corpus} [{mode}]: {w}"
                    found.add(match[0])
                elif "got match" in w or "expected" in w:
                    pytest.fail(f"{corpus} [{mode}]: {w}")
        assert DECIDED_FALSE_POSITIVES == found

    def test_cluster_lines_never_count(self) -> None:
        """The real kubelet, etcd and API-server audit lines (the kubelet's own
        certificate problem, misconfigured in-cluster clients, peers, kubelets and pods
        with stale credentials) count nothing by default."""
        rows = [r for r in ROWS if r[1] in ("kubelet", "etcd", "kube-apiserver-audit")]
        assert {"kubelet", "etcd", "kube-apiserver-audit"} == {r[1] for r in rows}
        assert all(0 == r[3].false_pos and [] == r[3].wrong for r in rows)

    def test_audit_401s_of_cluster_clients_are_kept_safe_by_the_default_config(self) -> None:
        """The real 401s of in-cluster clients are read by the audit filter (a failed
        login looks the same from anywhere): the default jail's ignore list is what keeps
        them from a ban, and it does."""
        row = next(r for r in ROWS if r[1] == "kube-apiserver-audit")
        assert 1 <= row[3].kept_safe
        assert any(ipaddress.ip_address("10.0.152.130") in net
                   for net in default_ignores("kube-apiserver-audit"))

    def test_default_configs_ignore_the_cluster_for_cluster_jails(self) -> None:
        """Every shipped config (embedded default, DaemonSet ConfigMap, Ansible role)
        gives its kubelet, API-server audit and etcd jails the cluster's ranges."""
        root = Path(__file__).resolve().parents[2]
        configs = {
            "default": yaml.safe_load((root / "kfwguard" / "default.yaml").read_text()),
            "configmap": yaml.safe_load(yaml.safe_load(
                (root / "deploy" / "kubernetes" / "configmap.yaml").read_text()
            )["data"]["kfwguard.yaml"]),
            "ansible": yaml.safe_load((root / "deploy" / "ansible" / "roles" / "kfwguard"
                                       / "defaults" / "main.yml").read_text())["kfwguard_config"],
        }
        needed = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"}
        for name, config in configs.items():
            for jail in config["jails"]:
                if jail["filter"].split("[")[0] in ("kubelet", "kube-apiserver-audit", "etcd"):
                    assert needed <= set(jail.get("ignoreip", [])), (name, jail["name"])

    def test_ingress_reads_probes_and_leaves_browsers_alone(self) -> None:
        """fail2ban's real .env scanners and CrowdSec's sensitive-file probes are read (but
        for /.cache and /.config, which may be a site's own), and a real controller log of
        ordinary browsing counts nothing."""
        rows = {(r[0], r[2]): r[3] for r in ROWS if r[1] == "ingress-nginx"}
        probes = rows[("CrowdSec hub nginx-http-sensitive-files", "normal")]
        assert (9, 7) == (probes.expected, probes.counted)
        env = rows[("fail2ban nginx-env", "normal")]
        assert (3, 3) == (env.expected, env.counted)
        browsing = rows[("quoted ingress-nginx lines", "aggressive")]
        assert 0 == browsing.false_pos

    def test_recall_of_attack_lines_in_normal_mode(self) -> None:
        """Every CrowdSec brute-force line is read, and most of fail2ban's normal-mode
        lines (the rest: no address on the line, host names, pre-7.4 formats), and all
        but one of Wazuh's (its macOS `log show` header included)."""
        recall = {(r[0], r[2]): r[3] for r in ROWS}
        for corpus in ("CrowdSec hub ssh-bf", "CrowdSec hub ssh-slow-bf"):
            crowdsec = recall[(corpus, "normal")]
            assert crowdsec.expected == crowdsec.counted
        f2b = recall[("fail2ban sshd", "normal")]
        assert f2b.counted >= 46
        # Wazuh's macOS lines ("2020-03-23 06:47:42.801612-0700  localhost sshd[N]:")
        # are read; its one miss is an anonymised address ("183.106.179.x").
        wazuh = recall[("Wazuh ruleset sshd tests", "normal")]
        assert wazuh.counted >= 38
        assert {"no address on the line": 1} == wazuh.missed

    def test_lines_without_an_address_count_under_their_session(self) -> None:
        """fail2ban's multi-line cases (an address-less 'Too many authentication
        failures', 'Read from socket failed', kex_exchange_identification, 'Unable to
        negotiate a key exchange method' after the session's 'Connection from' or
        patched 'SSH: Server;…;Remote:' line) count once per connection, each against
        the address its session named (no wrong host anywhere, tested above)."""
        rows = {(r[0], r[2]): r[3] for r in ROWS}
        missed = {mode: rows[("fail2ban sshd", mode)].missed for mode in
                  ("normal", "ddos", "extra")}
        assert 2 == missed["normal"].get("no address on the line")  # not sshd's own lines
        assert "no address on the line" not in missed["ddos"]
        assert "no address on the line" not in missed["extra"]
        assert rows[("fail2ban sshd", "ddos")].counted >= 16
        assert rows[("fail2ban sshd", "extra")].counted >= 11

    def test_a_real_rhel7_brute_force_counts_each_attempt_once(self) -> None:
        """Elastic's real RHEL 7 log (two attackers, pam_unix and pam_succeed_if lines
        around every password, 'Read from socket failed' and 'PAM N more' summaries,
        an admin's key login in between) counts every 'Failed password' once and
        nothing else, in every mode: PAM's line is never a second count."""
        flt = {m: load_filter(f"sshd[mode={m}]") for m in ("normal", "ddos", "extra",
                                                          "aggressive")}
        expects = list(_beats(CORPUS / "beats" / "secure-rhel7.log"))
        failed = [e for e in expects if e.host is not None and not e.optional]
        assert 51 == len(failed)
        for mode, f in flt.items():
            row = next(r[3] for r in ROWS
                       if r[0] == "Elastic filebeat secure-rhel7" and r[2] == mode)
            assert (51, 51, 0, 0) == (row.expected, row.counted, row.false_pos, row.wrong_host)
            settled = counted_lines(f, [e.line for e in expects])
            assert 51 == sum(len(hosts) for hosts in settled.values())
