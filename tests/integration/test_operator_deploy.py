"""The shipped deployment files: the systemd unit, the Kubernetes manifests and
the Ansible role pass their tools' own checks, and the configs they carry are
valid kfwguard configs."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from kfwguard.config import parse_config, parse_listen
from kfwguard.pipeline import build_filters
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
        files = sorted(str(p) for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
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

    def test_metrics_port_is_what_the_config_binds(self) -> None:
        """The DaemonSet's metrics port is the port the ConfigMap's metrics.listen binds,
        on an address a scraper outside the node can reach (not loopback)."""
        ds = yaml.safe_load((K8S / "daemonset.yaml").read_text())
        [c] = ds["spec"]["template"]["spec"]["containers"]
        [port] = [p for p in c["ports"] if p["name"] == "metrics"]
        cm = yaml.safe_load((K8S / "configmap.yaml").read_text())
        cfg = parse_config(cm["data"]["kfwguard.yaml"], "configmap.yaml")
        assert cfg.metrics is not None
        host, bound = parse_listen(cfg.metrics.listen)
        assert port["containerPort"] == bound
        assert not ipaddress.ip_address(host).is_loopback

    def test_kustomization_names_every_manifest_and_the_image(self) -> None:
        """kustomization.yaml lists every manifest and rewrites the image the
        DaemonSet names (the registry/name:tag an operator sets)."""
        kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
        assert sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml") \
            == sorted(kust["resources"])
        ds = yaml.safe_load((K8S / "daemonset.yaml").read_text())
        [c] = ds["spec"]["template"]["spec"]["containers"]
        [entry] = kust["images"]
        assert c["image"].split(":")[0] == entry["name"]
        assert {"newName", "newTag"} <= set(entry)


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

    def test_role_installs_what_the_unit_documents(self) -> None:
        """The unit's Documentation= names a file the role installs, copied from a
        file that exists in the repository."""
        [doc] = re.findall(r"^Documentation=file://(\S+)$", UNIT.read_text(), re.M)
        defaults = yaml.safe_load((ANSIBLE / "roles/kfwguard/defaults/main.yml").read_text())
        tasks = yaml.safe_load((ANSIBLE / "roles/kfwguard/tasks/main.yml").read_text())
        copies = {t["ansible.builtin.copy"]["dest"]: t["ansible.builtin.copy"]["src"]
                  for t in tasks if "ansible.builtin.copy" in t
                  and "src" in t["ansible.builtin.copy"]}
        assert "{{ kfwguard_doc_src }}" == copies[doc]
        role = ANSIBLE / "roles" / "kfwguard"
        src = Path(defaults["kfwguard_doc_src"].replace("{{ role_path }}", str(role)))
        assert src.resolve() == (REPO / "docs" / "operations.md").resolve()

    def test_role_installs_a_file_never_an_index_name(self) -> None:
        """Every pip task installs a direct reference to a copied file
        (`kfwguard[…] @ file://…`), never a bare name the package index resolves."""
        tasks = yaml.safe_load((ANSIBLE / "roles/kfwguard/tasks/main.yml").read_text())
        pips = [t["ansible.builtin.pip"] for t in tasks if "ansible.builtin.pip" in t]
        assert pips
        for pip in pips:
            assert re.fullmatch(r"kfwguard\[\{\{ kfwguard_extras \| join\(','\) \}\}\] @ "
                                r"file://\{\{ kfwguard_copied\.dest \}\}", pip["name"].strip()), pip
        defaults = yaml.safe_load((ANSIBLE / "roles/kfwguard/defaults/main.yml").read_text())
        assert "kfwguard_package" not in defaults
