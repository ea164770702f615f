"""The baseline policy: deny everything in and out, allow what a Kubernetes node needs.

The policy lives in its own ``table inet <table>`` and every change replaces that
table, and only that table, in one nft transaction. Other tables (the ban table,
kube-proxy, Calico, Cilium, fail2ban) are never read for writing nor flushed.

Comparisons are always made between two listings that the kernel produced
(never between our script text and nft's listing), so that a different nft
version printing the same rules differently can neither hide drift nor make the
enforcer re-apply forever.
"""

from __future__ import annotations

import asyncio
import difflib
import ipaddress
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from kfwguard.config import BaselineConfig, PortRule
from kfwguard.firewall.nft import Nft, NftError

log = structlog.get_logger("kfwguard.baseline")

# filter + 10 on input/forward/output. Within one hook, lower runs first:
#   kube-proxy (nftables mode) filter chains  -110   (rejects for services without endpoints)
#   iptables-nft filter tables (kube-proxy iptables mode, Calico, Cilium)  0
#   this baseline                               +10
# Not 0, because equal priorities run in an undefined order. After 0, so that
# their REJECTs (with their ICMP answers) and their own drops happen first, and
# we only add a final say. Every DNAT (kube-proxy -100 in prerouting/output)
# has happened by then, so the output chain sees a Service's real endpoint and
# the forward chain sees the pod address a NodePort was translated to. The ban
# chain (table inet kfwguard, prerouting raw - 10) runs long before any of this.
PRIORITY = "filter + 10"

# Table names that belong to others or to common distribution firewalls: a
# baseline under one of these names would replace someone else's rules.
RESERVED_TABLES = frozenset({
    "kfwguard", "filter", "nat", "mangle", "raw", "security", "calico", "cilium",
    "kube_proxy", "kubeproxy", "f2b_table", "firewalld", "docker",
})

ICMP_TYPES = ("echo-request", "destination-unreachable", "time-exceeded", "parameter-problem")
# RFC 4890: without ND (133-136) IPv6 stops working; without MLD (130-132, 143)
# multicast listeners (including ND's solicited-node groups on some switches) go.
ICMPV6_TYPES = (
    "destination-unreachable", "packet-too-big", "time-exceeded", "parameter-problem",
    "echo-request", "nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit",
    "nd-neighbor-advert", "mld-listener-query", "mld-listener-report",
    "mld-listener-done", "mld2-listener-report",
)

# Overlay, BGP, health and encryption traffic of each CNI, admitted from nodes.
# Entries are (l4 protocol, ports); ports None means the whole protocol.
CNI_PORTS: dict[str, tuple[tuple[str, tuple[str, ...] | None], ...]] = {
    "flannel": (("udp", ("8472",)),),
    "calico": (
        ("tcp", ("179",)),           # BGP
        ("ipip", None),              # IP-in-IP (IPv4 only)
        ("udp", ("4789",)),          # VXLAN
        ("tcp", ("5473",)),          # Typha
        ("udp", ("51820", "51821")),  # WireGuard v4, v6
    ),
    "cilium": (
        ("udp", ("8472",)),          # VXLAN
        ("udp", ("6081",)),          # Geneve
        ("tcp", ("4240",)),          # cilium-health
        ("udp", ("51871",)),         # WireGuard
        ("esp", None),               # IPsec
    ),
    "none": (),
}

NODEPORTS = "30000-32767"


class BaselineError(Exception):
    """The policy is refused (invalid, or unsafe to apply), or a baseline operation failed."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = (problems,) if isinstance(problems, str) else tuple(problems)
        super().__init__("\n".join(self.problems))


# --------------------------------------------------------------------------- validation

_PORT_RE = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?")
_FAILSAFE_RE = re.compile(r"(tcp|udp)/(\S+)")


def port_spec(value: int | str) -> str:
    """``value`` as nft writes a port or range (``22``, ``30000-32767``); ValueError if not."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a port")
    if isinstance(value, int):
        lo, hi = value, None
    else:
        m = _PORT_RE.fullmatch(value.strip())
        if m is None:
            raise ValueError(f"{value!r} is not a port or a range like 30000-32767")
        lo, hi = int(m.group(1)), (int(m.group(2)) if m.group(2) else None)
    if not 1 <= lo <= 65535 or (hi is not None and not lo <= hi <= 65535):
        raise ValueError(f"{value!r} is not a port (1-65535) or an ascending range")
    return str(lo) if hi is None or hi == lo else f"{lo}-{hi}"


def parse_failsafe(entry: str) -> tuple[str, str]:
    """Split ``tcp/22`` into ("tcp", "22"). Raises ValueError with the accepted form."""
    m = _FAILSAFE_RE.fullmatch(entry.strip().lower()) if isinstance(entry, str) else None
    if m is None:
        raise ValueError(f"{entry!r} is not PROTO/PORT, e.g. tcp/22 or udp/51820")
    try:
        return m.group(1), port_spec(m.group(2))
    except ValueError as exc:
        raise ValueError(f"{entry!r}: {exc}") from None


def validate(cfg: BaselineConfig) -> None:
    """Refuse a policy that cannot be rendered or could lock the operator or the cluster out."""
    problems: list[str] = []
    if cfg.table.lower() in RESERVED_TABLES:
        problems.append(f"table: {cfg.table!r} is a table other software owns; "
                        "use a name of its own such as kfwguard_baseline")
    for i, entry in enumerate(cfg.failsafe_ports):
        try:
            parse_failsafe(entry)
        except ValueError as exc:
            problems.append(f"failsafe_ports[{i}]: {exc}")
    if cfg.failsafe_ports and not cfg.admin_cidrs:
        problems.append(
            "admin_cidrs is empty, so the failsafe ports "
            f"({', '.join(cfg.failsafe_ports)}) would be open to no one and a bad policy "
            "could lock you out: list the networks you administer the node from in "
            "admin_cidrs, or turn the failsafe off explicitly with failsafe_ports: []"
        )
    if not cfg.cluster_cidrs:
        problems.append("cluster_cidrs is empty: kubelet, CNI and etcd traffic from the other "
                        "nodes would be dropped; list the networks of the cluster's nodes")
    if not cfg.pod_cidrs:
        problems.append("pod_cidrs is empty: pod traffic could not be forwarded; "
                        "list the cluster's pod networks")
    for kind, rules in (("allow_in", cfg.allow_in), ("allow_out", cfg.allow_out)):
        for i, rule in enumerate(rules):
            if not rule.ports:
                problems.append(f"{kind}[{i}].ports: list at least one port "
                                "(write 1-65535 for all of them)")
            for j, p in enumerate(rule.ports):
                try:
                    port_spec(p)
                except ValueError as exc:
                    problems.append(f"{kind}[{i}].ports[{j}]: {exc}")
            if rule.from_ and rule.to and not _families(rule):
                problems.append(f"{kind}[{i}]: 'from' and 'to' share no address family, "
                                "so the rule could never match")
    if problems:
        raise BaselineError([f"baseline.{p}" for p in problems])


# --------------------------------------------------------------------------- rendering

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _split(nets: Iterable[Net]) -> tuple[list[str], list[str]]:
    """IPv4 and IPv6 members, overlaps merged (interval sets refuse overlapping elements)."""
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    return ([str(n) for n in ipaddress.collapse_addresses(v4)],
            [str(n) for n in ipaddress.collapse_addresses(v6)])


def _families(rule: PortRule) -> list[str]:
    fams = []
    for fam, cls in (("ip", ipaddress.IPv4Network), ("ip6", ipaddress.IPv6Network)):
        if all(not side or any(isinstance(n, cls) for n in side)
               for side in (rule.from_, rule.to)):
            fams.append(fam)
    return fams


def _set_of(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _l4(proto: str, ports: Sequence[str] | None) -> str:
    if ports is None:
        return {"ipip": "ip protocol ipip", "esp": "meta l4proto esp"}[proto]
    return f"{proto} dport {_set_of(ports)}"


class _Sets:
    """Named CIDR sets of the table; a set is declared only when it has members."""

    def __init__(self) -> None:
        self.decls: list[str] = []
        self.names: set[str] = set()

    def add(self, name: str, nets: Iterable[Net]) -> None:
        for fam, members in zip(("4", "6"), _split(nets), strict=True):
            if not members:
                continue
            kind = "ipv4_addr" if fam == "4" else "ipv6_addr"
            self.decls += [
                f"\tset {name}{fam} {{",
                f"\t\ttype {kind}",
                "\t\tflags interval",
                f"\t\telements = {{ {', '.join(members)} }}",
                "\t}",
            ]
            self.names.add(f"{name}{fam}")

    def match(self, name: str, direction: str, what: str) -> list[str]:
        """Rules ``ip[6] <direction> @<name>[46] <what> accept`` for the declared families."""
        out = []
        for fam, ipf in (("4", "ip"), ("6", "ip6")):
            if f"{name}{fam}" in self.names:
                out.append(f"{ipf} {direction} @{name}{fam} {what} accept".replace("  ", " "))
        return out


def _allow_rules(rules: Sequence[PortRule]) -> list[str]:
    out: list[str] = []
    for rule in rules:
        l4 = _l4(rule.proto, [port_spec(p) for p in rule.ports])
        src4, src6 = _split(rule.from_)
        dst4, dst6 = _split(rule.to)
        if not rule.from_ and not rule.to:
            out.append(f"{l4} accept")
            continue
        for fam, src, dst in (("ip", src4, dst4), ("ip6", src6, dst6)):
            if fam not in _families(rule):
                continue
            parts = [f"{fam} saddr {_set_of(src)}" if src else "",
                     f"{fam} daddr {_set_of(dst)}" if dst else ""]
            if not src and not dst:
                # e.g. from: [v4 only] but no 'to': no IPv6 rule at all.
                continue
            out.append(" ".join(p for p in parts if p) + f" {l4} accept")
    return out


def render(cfg: BaselineConfig) -> str:
    """The nft script that atomically replaces ``table inet <cfg.table>`` with the policy."""
    validate(cfg)
    t = cfg.table
    sets = _Sets()
    sets.add("admin", cfg.admin_cidrs)
    sets.add("nodes", cfg.cluster_cidrs)
    sets.add("control_plane", cfg.control_plane_cidrs or cfg.cluster_cidrs)
    sets.add("pods", cfg.pod_cidrs)
    sets.add("services", cfg.service_cidrs)

    icmp = ("icmp type { " + ", ".join(ICMP_TYPES) + " } accept",
            "icmpv6 type { " + ", ".join(ICMPV6_TYPES) + " } accept")

    inp = ['iif "lo" accept', "ct state invalid drop", "ct state established,related accept",
           *icmp]
    failsafe: dict[str, list[str]] = {}
    for entry in cfg.failsafe_ports:
        proto, port = parse_failsafe(entry)
        failsafe.setdefault(proto, []).append(port)
    if failsafe:
        inp.append("# failsafe: open from admin_cidrs whatever else the policy says")
        for proto, ports in sorted(failsafe.items()):
            inp += sets.match("admin", "saddr", _l4(proto, ports))
    inp.append(f"# kubernetes: {cfg.role}")
    kubelet = ["10250"]
    if cfg.role == "control-plane":
        inp.append("tcp dport 6443 accept")
        inp += sets.match("control_plane", "saddr", _l4("tcp", ["2379-2380"]))
        kubelet += ["10257", "10259"]
    for who in ("nodes", "pods"):
        # pods too: metrics-server and Prometheus scrape the kubelet from pod addresses
        inp += sets.match(who, "saddr", _l4("tcp", kubelet))
    if cfg.role == "worker":
        # NodePorts and kube-proxy's health port are meant for load balancers outside.
        inp += [f"tcp dport {NODEPORTS} accept", f"udp dport {NODEPORTS} accept",
                "tcp dport 10256 accept"]
    if CNI_PORTS[cfg.cni]:
        inp.append(f"# cni: {cfg.cni}, from the cluster's nodes")
        for proto, cni_ports in CNI_PORTS[cfg.cni]:
            inp += [r for r in sets.match("nodes", "saddr", _l4(proto, cni_ports))
                    if not (proto == "ipip" and r.startswith("ip6"))]
    inp += ["# DHCP replies come from the server, not from a tracked connection",
            "meta nfproto ipv4 udp sport 67 udp dport 68 accept",
            "meta nfproto ipv6 udp sport 547 udp dport 546 accept"]
    if cfg.allow_in:
        inp.append("# allow_in")
        inp += _allow_rules(cfg.allow_in)
    inp.append('counter name "dropped_input" drop')

    fwd = ["ct state invalid drop", "ct state established,related accept",
           "# pod-to-pod policy is the CNI's NetworkPolicy job, not ours"]
    fwd += sets.match("pods", "saddr", "")
    fwd += sets.match("pods", "daddr", "")
    fwd += sets.match("services", "daddr", "")
    fwd.append('counter name "dropped_forward" drop')

    out = ['oif "lo" accept', "ct state invalid drop", "ct state established,related accept",
           *icmp,
           "meta l4proto { tcp, udp } th dport 53 accept",
           "udp dport 123 accept",
           "meta nfproto ipv4 udp sport 68 udp dport 67 accept",
           "meta nfproto ipv6 udp sport 546 udp dport 547 accept",
           "# the cluster's own networks"]
    for who in ("nodes", "pods", "services"):
        out += sets.match(who, "daddr", "")
    if cfg.allow_out:
        out.append("# allow_out")
        out += _allow_rules(cfg.allow_out)
    out.append('counter name "dropped_output" drop')

    def chain(name: str, rules: list[str]) -> list[str]:
        return [f"\tchain {name} {{",
                f"\t\ttype filter hook {name} priority {PRIORITY}; policy drop;",
                *(f"\t\t{r}" for r in rules), "\t}"]

    lines = [
        f"# kfwguard baseline (role {cfg.role}, cni {cfg.cni}); generated, do not edit:",
        "# kfwguard puts its own table back. Replaces table inet "
        f"{t} and nothing else, atomically.",
        f"table inet {t} {{}}",
        f"delete table inet {t}",
        f"table inet {t} {{",
        *(f"\tcounter dropped_{c} {{}}" for c in ("input", "forward", "output")),
        *sets.decls,
        *chain("input", inp),
        *chain("forward", fwd),
        *chain("output", out),
        "}",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- live state

def _replace_table(table: str) -> str:
    # "add" then "delete" so the script works whether or not the table exists.
    return f"table inet {table} {{}}\ndelete table inet {table}\n"


def table_exists(nft: Nft, table: str) -> bool:
    return any(item.get("table", {}).get("name") == table
               for item in nft.json("list tables inet"))


def live_listing(nft: Nft, table: str) -> str | None:
    """``nft list table inet <table>`` text, or None when the table does not exist."""
    if not table_exists(nft, table):
        return None
    return nft.run(f"list table inet {table}")


_COUNTS = re.compile(r"packets \d+ bytes \d+")


def normalise_listing(text: str) -> str:
    """Listing text without the values that change by themselves (counters)."""
    return _COUNTS.sub("packets 0 bytes 0", text)


def _strip_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_volatile(v) for k, v in value.items()
                if k not in ("handle", "packets", "bytes")}
    if isinstance(value, list):
        return [_strip_volatile(v) for v in value]
    return value


def snapshot(nft: Nft, table: str) -> dict[str, Any] | None:
    """The table as the kernel holds it, reduced to what a policy decides; None if absent."""
    if not table_exists(nft, table):
        return None
    try:
        items = nft.json(f"list table inet {table}")
    except NftError:
        return None  # deleted between the two calls
    snap: dict[str, Any] = {"chains": {}, "rules": {}, "sets": {}, "counters": {}, "other": []}
    for item in items:
        for kind, body in item.items():
            body = _strip_volatile(body)
            if kind in ("metainfo", "table"):
                continue
            if kind == "chain":
                snap["chains"][body["name"]] = body
                snap["rules"].setdefault(body["name"], [])
            elif kind == "rule":
                snap["rules"].setdefault(body["chain"], []).append(body["expr"])
            elif kind == "set":
                snap["sets"][body["name"]] = body
            elif kind == "counter":
                snap["counters"][body["name"]] = body
            else:
                snap["other"].append({kind: body})
    return snap


def describe_drift(table: str, expected: dict[str, Any], live: dict[str, Any] | None) -> str | None:
    """A reason naming what changed between two snapshots, or None if they are the same."""
    if live is None:
        return f"table inet {table} was deleted"
    reasons: list[str] = []
    for name, chain in expected["chains"].items():
        got = live["chains"].get(name)
        want_rules, got_rules = expected["rules"][name], live["rules"].get(name, [])
        if got is None:
            reasons.append(f"chain {name} was deleted")
        elif got != chain:
            reasons.append(f"chain {name} was redefined (hook, priority or policy)")
        elif want_rules and not got_rules:
            reasons.append(f"chain {name} was flushed")
        elif got_rules != want_rules:
            reasons.append(f"rules of chain {name} were edited")
    for kind in ("chains", "sets", "counters"):
        noun = kind[:-1]
        for name in sorted(set(live[kind]) - set(expected[kind])):
            reasons.append(f"{noun} {name} was added")
        if kind == "chains":
            continue
        for name, body in expected[kind].items():
            if name not in live[kind]:
                reasons.append(f"{noun} {name} was deleted")
            elif live[kind][name] != body:
                reasons.append(f"{noun} {name} was changed")
    if live["other"] != expected["other"]:
        reasons.append("other objects of the table were changed")
    return "; ".join(reasons) or None


# --------------------------------------------------------------------------- state files

@dataclass(frozen=True)
class StateFiles:
    """Where apply keeps what it needs to roll back and to be confirmed, under state_dir."""

    state_dir: Path

    @property
    def previous(self) -> Path:
        return self.state_dir / "baseline.previous.nft"

    @property
    def pending(self) -> Path:
        return self.state_dir / "baseline.pending.json"

    @property
    def confirm(self) -> Path:
        return self.state_dir / "baseline.confirm"

    @property
    def outcome(self) -> Path:
        return self.state_dir / "baseline.outcome.json"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def rollback_script(nft: Nft, table: str) -> str:
    """A script that puts ``table`` back exactly as it is now (or removes it if absent)."""
    listing = live_listing(nft, table)
    if listing is None:
        return (f"# kfwguard baseline rollback: table inet {table} did not exist\n"
                + _replace_table(table))
    return (f"# kfwguard baseline rollback: table inet {table} as it was\n"
            + _replace_table(table) + listing)


def apply(nft: Nft, table: str, script: str, state_dir: Path) -> Path:
    """Check ``script``, save the live table for rollback, then apply in one transaction.

    Raises NftError (nothing changed) when nft refuses the script. Returns the
    rollback file.
    """
    nft.check(script)
    back = rollback_script(nft, table)
    # A rollback that nft cannot parse would be discovered exactly when it is needed.
    nft.check(back)
    files = StateFiles(state_dir)
    _write_atomic(files.previous, back)
    nft.run(script)
    return files.previous


def rollback(nft: Nft, state_dir: Path) -> str:
    """Restore the table saved by the last apply. Returns the script that was run."""
    path = StateFiles(state_dir).previous
    try:
        script = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BaselineError(f"no previous baseline saved at {path}: nothing to roll back") from None
    nft.run(script)
    return script


_PROBE = """
import sys
from kfwguard.firewall.nft import Nft
nft = Nft()
nft.run(sys.stdin.read())
sys.stdout.write(nft.run("list table inet " + sys.argv[1]))
"""


def desired_listing(script: str, table: str) -> str:
    """How the kernel lists ``script``'s table, learnt in a private, throwaway network namespace.

    Applying it there is the only way to get nft's own canonical form of our
    script without touching the live ruleset.
    """
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    try:
        proc = subprocess.run(
            ["unshare", "--net", "--", sys.executable, "-c", _PROBE, table],
            input=script, capture_output=True, text=True, timeout=60, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BaselineError(f"cannot run nft in a private network namespace: {exc}") from None
    if proc.returncode != 0:
        raise BaselineError("cannot list the desired table in a private network namespace "
                            f"(needs CAP_SYS_ADMIN and unshare): {proc.stderr.strip()}")
    return proc.stdout


def diff(nft: Nft, cfg: BaselineConfig) -> str:
    """Unified diff from the live table to the desired one; empty when they are the same."""
    live = live_listing(nft, cfg.table)
    want = normalise_listing(desired_listing(render(cfg), cfg.table))
    have = normalise_listing(live) if live is not None else ""
    label = f"live table inet {cfg.table}" + (" (absent)" if live is None else "")
    return "".join(difflib.unified_diff(
        have.splitlines(keepends=True), want.splitlines(keepends=True),
        fromfile=label, tofile="desired"))


# --------------------------------------------------------------------------- commit-confirmed

def _alive(pid: int) -> bool:
    if pid <= 0:  # kill(0) would signal our own process group and look "alive"
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def apply_confirmed(nft: Nft, table: str, script: str, state_dir: Path, within: float, *,
                    notify: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep, poll: float = 0.1,
                    instructions: str = "") -> bool:
    """Apply, then wait for ``confirm``; roll back on the deadline, SIGINT, SIGTERM or SIGHUP.

    Returns True if confirmed (the policy stays), False if rolled back. The
    confirmation arrives as a token file in state_dir, so ``confirm`` works
    from any shell, network namespace or container that sees the state dir.
    Must run in the main thread (it installs signal handlers).
    """
    files = StateFiles(state_dir)
    pending = _read_json(files.pending)
    if pending is not None and _alive(int(pending.get("pid", 0))):
        raise BaselineError(f"another apply (pid {pending['pid']}) is waiting for confirmation; "
                            "confirm it or let it roll back first")
    token = secrets.token_hex(16)
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    # Handlers go in before the policy does: a signal in between must roll back, not kill us.
    old = {s: signal.signal(s, on_signal) for s in watched}
    confirmed = False
    reason = "an error"
    applied = False
    try:
        files.confirm.unlink(missing_ok=True)
        apply(nft, table, script, state_dir)
        applied = True
        _write_atomic(files.pending, json.dumps({
            "pid": os.getpid(), "token": token, "table": table,
            "deadline": time.time() + within}))
        notify(f"applied table inet {table}; it rolls back in {within:g}s unless confirmed"
               + (f"\n{instructions}" if instructions else ""))

        def has_confirmation() -> bool:
            try:
                return files.confirm.read_text(encoding="utf-8").strip() == token
            except OSError:
                return False

        deadline = clock() + within
        while True:
            # Confirmation wins a tie with a signal or the deadline: the operator said so.
            if has_confirmation():
                confirmed = True
                break
            if received:
                reason = f"got {signal.Signals(received[0]).name}"
                break
            if clock() >= deadline:
                reason = "the deadline passed"
                break
            sleep(poll)
    finally:
        try:
            outcome = "confirmed" if confirmed else "rolled back"
            failure: NftError | None = None
            if applied and not confirmed:
                try:
                    rollback(nft, state_dir)
                except NftError as exc:
                    outcome, failure = "rollback failed", exc
            if applied:
                _write_atomic(files.outcome, json.dumps({
                    "token": token, "outcome": outcome, "reason": reason}))
            if failure is not None:
                raise BaselineError(
                    f"rolling back ({reason}) failed, the new policy is still live: {failure}; "
                    f"restore by hand with: nft -f {files.previous}") from failure
        finally:
            files.pending.unlink(missing_ok=True)
            files.confirm.unlink(missing_ok=True)
            for s, h in old.items():
                signal.signal(s, h)
    if confirmed:
        notify("confirmed: the new baseline stays")
    else:
        notify(f"rolled back: {reason}")
    return confirmed


def confirm(state_dir: Path, *, timeout: float = 5.0,
            clock: Callable[[], float] = time.monotonic,
            sleep: Callable[[float], None] = time.sleep) -> None:
    """Confirm the apply that is waiting; raise BaselineError if there is none or it is too late."""
    files = StateFiles(state_dir)
    pending = _read_json(files.pending)
    if pending is None:
        raise BaselineError("no apply is waiting for confirmation")
    pid, token = int(pending.get("pid", 0)), str(pending.get("token", ""))
    if not _alive(pid):
        files.pending.unlink(missing_ok=True)
        raise BaselineError(f"the apply that was waiting (pid {pid}) is gone without rolling back; "
                            "the live baseline stays as it is (use 'baseline rollback' to undo)")
    _write_atomic(files.confirm, token + "\n")

    def answered() -> bool:
        outcome = _read_json(files.outcome)
        if outcome is None or outcome.get("token") != token:
            return False
        if outcome.get("outcome") == "confirmed":
            return True
        raise BaselineError(f"too late: {outcome.get('outcome')} ({outcome.get('reason')})")

    end = clock() + timeout
    while clock() < end and _alive(pid):
        if answered():
            return
        sleep(0.05)
    if answered():  # the waiter may have answered just before it exited
        return
    raise BaselineError(f"the waiting apply (pid {pid}) did not answer")


# --------------------------------------------------------------------------- enforcement

class BaselineEnforcer:
    """Keeps the baseline table as the policy says: applies it, then heals drift."""

    def __init__(self, cfg: BaselineConfig, nft: Nft, *,
                 on_drift: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.nft = nft
        self.on_drift = on_drift
        self.script = render(cfg)
        self.drift_count = 0
        self._expected: dict[str, Any] | None = None

    def apply(self) -> None:
        """Check and apply the policy, then remember how the kernel holds it."""
        self.nft.check(self.script)
        self.nft.run(self.script)
        # What we compare against later is the kernel's own view right after our
        # transaction: independent of how this nft version prints our script.
        self._expected = snapshot(self.nft, self.cfg.table)
        log.info("baseline_applied", table=self.cfg.table, role=self.cfg.role, cni=self.cfg.cni)

    def check_drift(self) -> str | None:
        """A reason when the live table is not what was applied, else None."""
        if self._expected is None:
            return f"baseline table inet {self.cfg.table} has not been applied yet"
        return describe_drift(self.cfg.table, self._expected, snapshot(self.nft, self.cfg.table))

    def _heal(self, reason: str) -> None:
        self.drift_count += 1
        log.warning("drift", table=self.cfg.table, reason=reason, drift_count=self.drift_count)
        if self.on_drift is not None:
            try:
                self.on_drift(reason)
            except Exception:
                # An alerting hiccup must not keep the policy from being put back.
                log.exception("drift_callback_failed")
        self.apply()

    async def run(self) -> None:
        """Apply now (errors propagate), then every reconcile_interval check and heal."""
        await asyncio.to_thread(self.apply)
        await self.keep()

    async def keep(self) -> None:
        """Every reconcile_interval, check the live table and heal drift (already applied)."""
        interval = max(self.cfg.reconcile_interval, 0.1)
        while True:
            await asyncio.sleep(interval)
            try:
                reason = await asyncio.to_thread(self.check_drift)
                if reason is not None:
                    await asyncio.to_thread(self._heal, reason)
            except NftError as exc:
                log.error("baseline_reconcile_failed", table=self.cfg.table, error=str(exc))
