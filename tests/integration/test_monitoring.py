"""The shipped Prometheus rules and Grafana dashboard: promtool checks and unit
tests pass, the PrometheusRule matches the rules file, and every metric they use
is one a real daemon exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import need
from tests.integration.daemon_harness import wait_until
from tests.integration.test_operator import METRICS_PORT, Node, node  # noqa: F401
from tests.netns import Lab

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"
RULES = PROM / "kfwguard-rules.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "kfwguard.json"

# Series Prometheus makes itself, not the daemon.
SYNTHETIC = {"up"}
# PromQL words that look like metric names.
PROMQL_WORDS = {"sum", "max", "min", "count", "by", "rate", "increase", "topk", "and", "or",
                "histogram_quantile", "le", "without", "on", "ignoring", "unless", "bool",
                "avg", "abs", "absent", "offset"}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    need(shutil.which("promtool") is not None, "needs promtool (apt-get install prometheus)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    return exprs


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers, strings and the
    template's variables removed first)."""
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\$\w+", "", text)
    text = re.sub(r"label_values\(([^,)]*)(,[^)]*)?\)", r"\1", text)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text))
    names -= PROMQL_WORDS
    return {n for n in names if not re.fullmatch(r"[0-9.]+|[a-z]+\d*", n) or n in SYNTHETIC
            or "_" in n} - PROMQL_WORDS - {"instance", "job", "jail", "origin", "rule",
                                            "source", "target", "action", "reason",
                                            "version"}


def exported(text: str) -> set[str]:
    """Every series name an exposition offers: samples, and the families it
    declares (a counter's _total, a histogram's _bucket/_sum/_count)."""
    names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M))
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names.add(name)
        if kind == "counter":
            names.add(name if name.endswith("_total") else f"{name}_total")
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


class TestRules:
    def test_promtool_check_rules(self) -> None:
        """`promtool check rules` accepts kfwguard-rules.yaml."""
        r = promtool("check", "rules", str(RULES))
        assert 0 == r.returncode, r.stdout + r.stderr
        assert "SUCCESS: 6 rules found" in r.stdout

    def test_promtool_unit_tests(self) -> None:
        """`promtool test rules`: each alert fires on its case (a stuck source, kernel
        errors with bans waiting, a dead receiver…) and not on its look-alike (a
        quiet source, one old error, a queue that drains)."""
        r = promtool("test", "rules", "tests/kfwguard-rules.test.yaml", cwd=PROM)
        assert 0 == r.returncode, r.stdout + r.stderr
        assert "SUCCESS" in r.stdout

    def test_prometheusrule_matches_rules_file(self) -> None:
        """The PrometheusRule manifest carries exactly the rules of kfwguard-rules.yaml."""
        manifest = yaml.safe_load((PROM / "kfwguard-prometheusrule.yaml").read_text())
        assert ("monitoring.coreos.com/v1", "PrometheusRule") == (
            manifest["apiVersion"], manifest["kind"])
        assert yaml.safe_load(RULES.read_text()) == manifest["spec"]

    def test_alerts_cover_the_promised_cases(self) -> None:
        """Daemon down, source stalled, kernel updates failing, baseline drift and
        undeliverable alerts each have a rule."""
        doc = yaml.safe_load(RULES.read_text())
        names = {r["alert"] for g in doc["groups"] for r in g["rules"]}
        assert {"KfwguardDown", "KfwguardSourceStalled", "KfwguardKernelUpdatesFailing",
                "KfwguardBaselineDrift", "KfwguardAlertsUndeliverable"} <= names


class TestDashboard:
    def test_queries_are_valid_promql(self, tmp_path: Path) -> None:
        """Every dashboard query parses (checked by promtool as recording rules, with
        Grafana's variables filled in)."""
        exprs = [e for e in dashboard_exprs() if not e.startswith("label_values(")]
        rules = [{"record": f"kfwguard:dashboard_{i}",
                  "expr": e.replace("$__rate_interval", "5m").replace("$job", ".*")
                  .replace("$instance", ".*")} for i, e in enumerate(exprs)]
        f = tmp_path / "dash.yaml"
        f.write_text(yaml.safe_dump({"groups": [{"name": "dash", "rules": rules}]}))
        r = promtool("check", "rules", str(f))
        assert 0 == r.returncode, r.stdout + r.stderr

    def test_promised_panels(self) -> None:
        """Bans by jail and origin, top banned sources, matches by rule, kernel errors,
        source lag, baseline drift and RSS each have a panel."""
        doc = json.loads(DASHBOARD.read_text())
        text = json.dumps([t["expr"] for p in doc["panels"] for t in p["targets"]])
        for needle in ("by (jail, origin) (increase(kfwguard_bans_total",
                       "kfwguard_ban_offence", "by (jail, rule) (rate(kfwguard_matches_total",
                       "kfwguard_kernel_update_errors_total", "kfwguard_source_lag_seconds",
                       "kfwguard_baseline_drift_total", "process_resident_memory_bytes"):
            assert needle in text, needle


@pytest.mark.root
class TestMetricsExist:
    def test_every_metric_used_is_exported(self, lab: Lab, node: Node) -> None:  # noqa: F811
        """A real daemon (a ban, an alert action, the baseline) exports every metric
        the dashboard and the alert rules query."""
        del lab
        d = node.daemon(
            metrics={"listen": f"127.0.0.1:{METRICS_PORT}"},
            actions={"chat": {"type": "webhook", "url": "http://127.0.0.1:9/hook"}},
            baseline={"enabled": True, "table": "kfwtest_base", "role": "worker",
                      "cni": "flannel", "admin_cidrs": ["192.0.2.0/24"],
                      "cluster_cidrs": ["10.93.0.0/16"], "pod_cidrs": ["10.244.0.0/16"],
                      "service_cidrs": ["10.96.0.0/12"]},
        )
        d.start()
        text: Any = None
        try:
            node.fail(["203.0.113.9"])
            assert wait_until(lambda: "203.0.113.9" in d.elements("ban_v4")), d.log()
            text = node.get(f"http://127.0.0.1:{METRICS_PORT}/metrics")
        finally:
            d.stop()
        assert text is not None
        used = set().union(*(metric_names(e) for e in rule_exprs() + dashboard_exprs()))
        assert "kfwguard_source_lag_seconds" in used and "kfwguard_bans_total" in used
        missing = sorted(used - SYNTHETIC - exported(text))
        assert [] == missing
        assert 'kfwguard_ban_offence{jail="sshd",target="203.0.113.9"} 1.0' in text, [
            line for line in text.splitlines() if "offence" in line]
