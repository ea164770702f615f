"""A real 3-member etcd cluster with mutual TLS, for the cluster-mode tests and bench.

The members run Debian's ``etcd`` in one ``kfwtest-`` namespace (the "etcd
network"), each on an address of its own; client and peer traffic both use
TLS with certificates this module makes with ``openssl``. Node namespaces
reach the members through a veth link each (``attach``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.netns import Host, Lab, sh

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
MEMBER_NET = "10.77.0"  # members on 10.77.0.11-13, on the etcd namespace's loopback


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(d: Path, members: list[str], clients: list[str]) -> None:
    """A CA, a server+peer certificate per member (SAN = its IP), a client
    certificate per client name (CN = name, as etcd RBAC reads it)."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=kfwtest-etcd-ca", cwd=d)

    def issue(name: str, san: str, usage: str) -> None:
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(
            f"subjectAltName={san}\nextendedKeyUsage={usage}\n"
            "keyUsage=digitalSignature,keyEncipherment\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=d)

    # Every member's certificate names every member address: on one loopback
    # the kernel may pick any of them as a peer connection's source, and etcd
    # checks a peer's certificate against the address it connects from.
    san = ",".join(f"IP:{ip}" for ip in [*members, "127.0.0.1"])
    for i in range(len(members)):
        issue(f"member{i}", san, "serverAuth,clientAuth")
    for c in clients:
        issue(c, "DNS:" + c, "clientAuth")


@dataclass
class Member:
    name: str
    ip: str
    data: Path
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False

    @property
    def client_url(self) -> str:
        return f"https://{self.ip}:2379"


@dataclass
class EtcdCluster:
    lab: Lab
    workdir: Path
    size: int = 3
    host: Host = field(init=False)
    members: list[Member] = field(default_factory=list)
    certs: Path = field(init=False)
    _links: int = 0

    def __post_init__(self) -> None:
        self.host = self.lab.host("etcd")
        self.certs = self.workdir / "certs"
        ips = [f"{MEMBER_NET}.{11 + i}" for i in range(self.size)]
        for ip in ips:
            self.host.run("ip", "addr", "add", f"{ip}/32", "dev", "lo")
        make_certs(self.certs, ips, ["root", "node-a", "node-b", "node-c", "node-d"])
        self.members = [Member(f"m{i}", ip, self.workdir / f"m{i}") for i, ip in enumerate(ips)]

    # -- lifecycle -----------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def tls(self, client: str = "root") -> dict[str, str]:
        return {"ca": str(self.certs / "ca.crt"), "cert": str(self.certs / f"{client}.crt"),
                "key": str(self.certs / f"{client}.key")}

    def start(self) -> None:
        initial = ",".join(f"{m.name}=https://{m.ip}:2380" for m in self.members)
        for i in range(len(self.members)):
            self._start_member(i, initial, "new")
        assert self.wait_healthy(), self.logs()

    def _start_member(self, i: int, initial: str, state: str) -> None:
        m = self.members[i]
        c = self.certs
        args = [
            ETCD, "--name", m.name, "--data-dir", str(m.data),
            "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", f"https://{m.ip}:2380",
            "--initial-advertise-peer-urls", f"https://{m.ip}:2380",
            "--initial-cluster", initial, "--initial-cluster-state", state,
            "--initial-cluster-token", "kfwtest",
            "--client-cert-auth", "--trusted-ca-file", str(c / "ca.crt"),
            "--cert-file", str(c / f"member{i}.crt"), "--key-file", str(c / f"member{i}.key"),
            "--peer-client-cert-auth", "--peer-trusted-ca-file", str(c / "ca.crt"),
            "--peer-cert-file", str(c / f"member{i}.crt"),
            "--peer-key-file", str(c / f"member{i}.key"),
            # Short election timers: a lost leader is replaced in about a second.
            "--heartbeat-interval", "100", "--election-timeout", "1000",
            "--snapshot-count", "100000", "--logger", "zap", "--log-outputs", "stderr",
            "--quota-backend-bytes", str(2 * 1024**3),
        ]
        with (self.workdir / f"{m.name}.log").open("ab") as log:
            m.proc = self.host.popen(args, stdout=log, stderr=log)
        m.stopped = False

    def restart_member(self, i: int) -> None:
        initial = ",".join(f"{m.name}=https://{m.ip}:2380" for m in self.members)
        self._start_member(i, initial, "existing")

    def kill_member(self, i: int) -> None:
        m = self.members[i]
        if m.proc is not None:
            if m.stopped:
                m.proc.send_signal(signal.SIGCONT)
            m.proc.kill()
            m.proc.wait()
            m.proc = None

    def freeze(self, i: int) -> None:
        m = self.members[i]
        assert m.proc is not None
        m.proc.send_signal(signal.SIGSTOP)
        m.stopped = True

    def thaw(self, i: int) -> None:
        m = self.members[i]
        if m.proc is not None and m.stopped:
            m.proc.send_signal(signal.SIGCONT)
            m.stopped = False

    def stop(self) -> None:
        for i in range(len(self.members)):
            self.kill_member(i)

    def logs(self) -> str:
        return "\n".join((self.workdir / f"{m.name}.log").read_text(errors="replace")[-3000:]
                         for m in self.members if (self.workdir / f"{m.name}.log").exists())

    # -- etcdctl ---------------------------------------------------------------

    def ctl(self, *args: str, endpoints: list[str] | None = None, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        c = self.certs
        eps = ",".join(endpoints or [m.client_url for m in self.members
                                     if m.proc is not None and not m.stopped])
        return self.host.run(
            "env", "ETCDCTL_API=3", ETCDCTL, "--endpoints", eps, "--cacert", str(c / "ca.crt"),
            "--cert", str(c / "root.crt"), "--key", str(c / "root.key"),
            "--command-timeout=10s", *args, check=check, timeout=timeout)

    def wait_healthy(self, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.ctl("endpoint", "health", check=False)
            if r.returncode == 0:
                return True
            time.sleep(0.2)
        return False

    def leader(self) -> int:
        """Index of the current leader (waits for one)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = self.ctl("endpoint", "status", "-w", "json", check=False)
            if r.returncode == 0:
                for st in json.loads(r.stdout):
                    s = st["Status"]
                    if s["leader"] == s["header"]["member_id"]:
                        ep = st["Endpoint"]
                        return next(i for i, m in enumerate(self.members) if m.client_url == ep)
            time.sleep(0.2)
        raise AssertionError("no etcd leader: " + self.logs())

    def revision(self) -> int:
        r = self.ctl("endpoint", "status", "-w", "json")
        return int(json.loads(r.stdout)[0]["Status"]["header"]["revision"])

    def keys(self, prefix: str) -> list[str]:
        r = self.ctl("get", "--prefix", "--keys-only", prefix)
        return [k for k in r.stdout.splitlines() if k]

    # -- networking ------------------------------------------------------------

    def attach(self, node: Host) -> None:
        """Join ``node`` to the etcd network with a veth pair and a route to the members."""
        self._links += 1
        net4 = f"10.76.{self._links}"
        self.lab.link(self.host, node, net4, f"fd00:76:{self._links}")
        node.run("ip", "route", "add", f"{MEMBER_NET}.0/24", "via", f"{net4}.1")


def have_etcd() -> bool:
    return os.path.exists(ETCD) and os.path.exists(ETCDCTL) and shutil.which("openssl") is not None


__all__ = ["EtcdCluster", "have_etcd", "sh"]
