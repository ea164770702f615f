"""The shipped deployment files: the systemd unit, the Kubernetes manifests and
the Ansible role pass their tools' own checks, and the configs they carry are
valid kfwguard configs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from kfwguard.config import parse_config
from kfwguard.daemon import build_filters
from tests.conftest import need

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
ANSIBLE = REPO / "deploy" / "ansible"
UNIT = REPO / "systemd" / "kfwguard.service"


def tool(name: str) -> str | None:
    """A tool on PATH or beside this interpreter (the test virtualenv)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


class TestSystemdUnit:
    def test_verify_clean(self, tmp_path: Path) -> None:
        """`systemd-analyze verify` finds nothing wrong (ExecStart pointed at a binary
        that exists here, since kfwguard is not installed in /usr/local/bin)."""
        need(shutil.which("systemd-analyze") is not None, "needs systemd-analyze (systemd)")
        unit = tmp_path / "kfwguard.service"
        unit.write_text(UNIT.read_text().replace("/usr/local/bin/kfwguard", "/bin/true"))
        r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                           text=True, timeout=60)
        # Without systemd as PID 1, verify may note that it cannot reach the
        # manager; anything about our unit file is a failure.
        problems = [line for line in (r.stdout + r.stderr).splitlines()
                    if "kfwguard.service" in line]
        assert [] == problems

    def test_notify_and_hardening(self) -> None:
        """The unit is Type=notify with a watchdog, reloads with SIGHUP and keeps
        only CAP_NET_ADMIN."""
        text = UNIT.read_text()
        for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30s",
                     "ExecReload=/bin/kill -HUP $MAINPID", "CapabilityBoundingSet=CAP_NET_ADMIN",
                     "ProtectSystem=strict", "StateDirectory=kfwguard",
                     "RuntimeDirectoryMode=0700", "NoNewPrivileges=yes"):
            assert re.search(rf"^{re.escape(line)}$", text, re.M), line


class TestKubernetesManifests:
    def test_kubernetes_validate_strict(self) -> None:
        """Every manifest passes `kubernetes-validate --strict`."""
        exe = tool("kubernetes-validate")
        need(exe is not None, "needs kubernetes-validate (pip install kubernetes-validate)")
        assert exe is not None
        files = sorted(str(p) for p in K8S.glob("*.yaml"))
        r = subprocess.run([exe, "--strict", *files], capture_output=True, text=True,
                           timeout=120)
        assert 0 == r.returncode, r.stdout + r.stderr
        assert len(files) == r.stdout.count(" passed for resource ")

    def test_configmap_holds_valid_config(self) -> None:
        """The ConfigMap's kfwguard.yaml validates and names only shipped filters."""
        cm = yaml.safe_load((K8S / "configmap.yaml").read_text())
        cfg = parse_config(cm["data"]["kfwguard.yaml"], "configmap.yaml")
        assert set(build_filters(cfg)) == {j.filter for j in cfg.jails}
        assert "url_env" in (K8S / "configmap.yaml").read_text()  # no URL secret inline

    def test_daemonset_shape(self) -> None:
        """Host network, NET_ADMIN only, the log and state mounts, control-plane toleration."""
        ds = yaml.safe_load((K8S / "daemonset.yaml").read_text())
        pod = ds["spec"]["template"]["spec"]
        assert pod["hostNetwork"] is True and pod["hostPID"] is False
        [c] = pod["containers"]
        assert {"drop": ["ALL"], "add": ["NET_ADMIN"]} == c["securityContext"]["capabilities"]
        mounts = {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]}
        for path in ("/var/log/journal", "/run/log/journal", "/etc/machine-id",
                     "/var/log/kubernetes/audit", "/var/log/pods"):
            assert mounts[path] is True, path
        assert mounts["/var/lib/kfwguard"] is False
        assert {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
                "effect": "NoSchedule"} in pod["tolerations"]
        assert {"operator": "Exists"} in pod["tolerations"]


class TestAnsibleRole:
    def test_syntax_check(self) -> None:
        """`ansible-playbook --syntax-check` accepts site.yml with the role."""
        exe = tool("ansible-playbook")
        need(exe is not None, "needs ansible-core (pip install ansible-core)")
        assert exe is not None
        r = subprocess.run([exe, "--syntax-check", "-i", "localhost,", "site.yml"],
                           cwd=ANSIBLE, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "ANSIBLE_LOCAL_TEMP": "/tmp"})
        assert 0 == r.returncode, r.stdout + r.stderr

    def test_ansible_lint(self) -> None:
        """ansible-lint passes on the playbook and the role."""
        exe = tool("ansible-lint")
        need(exe is not None, "needs ansible-lint (pip install ansible-lint)")
        assert exe is not None
        r = subprocess.run([exe, "site.yml", "roles"], cwd=ANSIBLE, capture_output=True,
                           text=True, timeout=600)
        assert 0 == r.returncode, r.stdout + r.stderr

    def test_default_config_valid(self) -> None:
        """The role's default kfwguard_config validates and names only shipped filters."""
        defaults = yaml.safe_load((ANSIBLE / "roles/kfwguard/defaults/main.yml").read_text())
        cfg = parse_config(yaml.safe_dump(defaults["kfwguard_config"]), "defaults/main.yml")
        assert set(build_filters(cfg)) == {j.filter for j in cfg.jails}
        role = ANSIBLE / "roles" / "kfwguard"
        unit_src = defaults["kfwguard_unit_src"].replace("{{ role_path }}", str(role))
        assert UNIT.resolve() == Path(unit_src).resolve()
