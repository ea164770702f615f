"""Deterministic inputs: a noisy sshd auth.log, and lines that make offenders.

Everything is derived from a seed, so two runs (and kfwguard and fail2ban
within a run) read byte-identical input. The auth.log mixes what a node
exposed to the internet writes: sessions, cron, systemd, the kernel's
firewall log, the kubelet and containerd, and about half sshd failures of
every kind from a skewed population of IPv4 and IPv6 attackers (a few
addresses are very busy, most appear a handful of times).
"""

from __future__ import annotations

import ipaddress
import random
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HOST = "node-1"
# Local time of the first line: fixed so the corpus is the same every run.
BASE = time.mktime((2025, 3, 3, 0, 0, 0, 0, 0, -1))
LINES_PER_SECOND = 30

_ATTACK_USERS = ("root", "admin", "test", "ubuntu", "oracle", "postgres", "user", "guest",
                 "pi", "git", "ftpuser", "deploy", "support", "ubnt", "hadoop", "nagios",
                 "minecraft", "steam", "es", "jenkins")
_STAFF = ("deploy", "alice", "bob", "ci")


def syslog_stamp(t: float) -> str:
    # rsyslog's traditional format pads the day with a space ("Mar  3").
    return time.strftime("%b %e %H:%M:%S", time.localtime(t))


def failure_line(ts: str, addr: str, port: int, user: str = "admin") -> str:
    """One sshd failure that both fail2ban's and kfwguard's sshd filters count."""
    return (f"{ts} {HOST} sshd[{2000 + port % 30000}]: Failed password for invalid user "
            f"{user} from {addr} port {port} ssh2")


# The template the probe fills in for ban-latency samples: same line as above.
FAILURE_TEMPLATE = (f"{{ts}} {HOST} sshd[{{port}}]: Failed password for invalid user admin "
                    "from {addr} port {port} ssh2")


def distinct_addresses(n: int, seed: int, v6_share: float = 0.1) -> list[str]:
    """``n`` distinct public-looking addresses (IPv4, and IPv6 at ``v6_share``).

    IPv4 comes from 1.0.0.0 to 9.255.255.255 and IPv6 from 2001:db8::/32, far
    from loopback and the namespaces' own addresses, which no daemon bans.
    """
    rng = random.Random(seed)
    n6 = int(n * v6_share)
    v4 = rng.sample(range(1 << 24, 10 << 24), n - n6)
    base6 = int(ipaddress.IPv6Address("2001:db8::"))
    v6 = rng.sample(range(1, 1 << 62), n6)
    # inet_ntoa: ipaddress's str() would take seconds for a million.
    out = [socket.inet_ntoa(x.to_bytes(4, "big")) for x in v4]
    out += [str(ipaddress.IPv6Address(base6 + (seed % 65536 << 64) + x)) for x in v6]
    rng.shuffle(out)
    return out


def _attackers(rng: random.Random, n4: int, n6: int) -> list[str]:
    return distinct_addresses(n4 + n6, rng.randrange(1 << 30), n6 / (n4 + n6))


def _line_kinds(rng: random.Random, attackers: list[str]
                ) -> list[tuple[int, Callable[[str, int], str]]]:
    """(weight, make(ts, pid) → line) for every kind of line in the corpus."""
    n = len(attackers)
    staff4 = [f"10.20.{i // 250}.{i % 250 + 1}" for i in range(40)]
    staff6 = [f"fd00:20::{i + 1:x}" for i in range(10)]
    staff = staff4 + staff6

    def bad() -> str:
        # Skewed: index ~ n·u³ puts most lines on a few busy addresses.
        return attackers[int(n * rng.random() ** 3)]

    def port() -> int:
        return rng.randrange(1024, 65536)

    def auser() -> str:
        return rng.choice(_ATTACK_USERS) if rng.random() < 0.8 else f"u{rng.randrange(10**6)}"

    S = HOST
    kinds: list[tuple[int, Callable[[str, int], str]]] = [
        # normal operation
        (4, lambda ts, p: f"{ts} {S} sshd[{p}]: Accepted publickey for {rng.choice(_STAFF)} "
            f"from {rng.choice(staff)} port {port()} ssh2: ED25519 "
            f"SHA256:{rng.randbytes(24).hex()[:43]}"),
        (4, lambda ts, p: f"{ts} {S} sshd[{p}]: pam_unix(sshd:session): session opened for "
            f"user {rng.choice(_STAFF)}(uid=1000) by (uid=0)"),
        (4, lambda ts, p: f"{ts} {S} sshd[{p}]: pam_unix(sshd:session): session closed for "
            f"user {rng.choice(_STAFF)}"),
        (2, lambda ts, p: f"{ts} {S} sshd[{p}]: Received disconnect from {rng.choice(staff)} "
            f"port {port()}:11: disconnected by user"),
        (2, lambda ts, p: f"{ts} {S} sshd[{p}]: Disconnected from user {rng.choice(_STAFF)} "
            f"{rng.choice(staff)} port {port()}"),
        (2, lambda ts, p: f"{ts} {S} sshd[{p}]: Connection from {bad()} port {port()} on "
            f"10.0.0.5 port 22 rdomain \"\""),
        (3, lambda ts, p: f"{ts} {S} systemd-logind[612]: New session {p} of user "
            f"{rng.choice(_STAFF)}."),
        (3, lambda ts, p: f"{ts} {S} systemd[1]: Started session-{p}.scope - Session {p} of "
            f"User {rng.choice(_STAFF)}."),
        (1, lambda ts, p: f"{ts} {S} systemd[1]: Starting logrotate.service - Rotate log "
            "files..."),
        (8, lambda ts, p: f"{ts} {S} CRON[{p}]: pam_unix(cron:session): session opened for "
            "user root(uid=0) by (uid=0)"),
        (4, lambda ts, p: f"{ts} {S} CRON[{p}]: (root) CMD (command -v debian-sa1 > "
            "/dev/null && debian-sa1 1 1)"),
        (8, lambda ts, p: f"{ts} {S} CRON[{p}]: pam_unix(cron:session): session closed for "
            "user root"),
        (8, lambda ts, p: f"{ts} {S} kernel: [{p}.{rng.randrange(10**6):06d}] [UFW BLOCK] "
            f"IN=eth0 OUT= MAC=52:54:00:12:34:56:52:54:00:65:43:21:08:00 SRC={bad()} "
            f"DST=10.0.0.5 LEN=44 TOS=0x00 PREC=0x00 TTL=47 ID={rng.randrange(65536)} "
            f"PROTO=TCP SPT={port()} DPT={rng.choice((23, 445, 3389, 8080))} WINDOW=1024 "
            "RES=0x00 SYN URGP=0"),
        (5, lambda ts, p: f"{ts} {S} kubelet[987]: I0303 {ts[7:]}.{rng.randrange(10**6):06d}"
            f"     987 kubelet.go:2453] \"SyncLoop (PLEG): event for pod\" "
            f"pod=\"kube-system/kube-proxy-{rng.randbytes(3).hex()}\" "
            "event={\"Type\":\"ContainerStarted\"}"),
        (3, lambda ts, p: f"{ts} {S} containerd[654]: time=\"2025-03-03T{ts[7:]}."
            f"{rng.randrange(10**9):09d}Z\" level=info msg=\"ImageCreate event "
            f"name:\\\"registry.k8s.io/pause:3.9\\\"\""),
        (2, lambda ts, p: f"{ts} {S} sudo[{p}]: {rng.choice(_STAFF)} : TTY=pts/0 ; "
            "PWD=/home/deploy ; USER=root ; COMMAND=/usr/bin/systemctl status kubelet"),
        # attacks
        (12, lambda ts, p: f"{ts} {S} sshd[{p}]: Failed password for root from {bad()} "
            f"port {port()} ssh2"),
        (7, lambda ts, p: f"{ts} {S} sshd[{p}]: Failed password for invalid user {auser()} "
            f"from {bad()} port {port()} ssh2"),
        (7, lambda ts, p: f"{ts} {S} sshd[{p}]: Invalid user {auser()} from {bad()} "
            f"port {port()}"),
        (4, lambda ts, p: f"{ts} {S} sshd[{p}]: Connection closed by authenticating user "
            f"root {bad()} port {port()} [preauth]"),
        (3, lambda ts, p: f"{ts} {S} sshd[{p}]: Disconnected from invalid user {auser()} "
            f"{bad()} port {port()} [preauth]"),
        (4, lambda ts, p: f"{ts} {S} sshd[{p}]: Received disconnect from {bad()} "
            f"port {port()}:11: Bye Bye [preauth]"),
        (3, lambda ts, p: f"{ts} {S} sshd[{p}]: Connection closed by {bad()} port {port()} "
            "[preauth]"),
        (4, lambda ts, p: f"{ts} {S} sshd[{p}]: pam_unix(sshd:auth): authentication failure; "
            f"logname= uid=0 euid=0 tty=ssh ruser= rhost={bad()}  user=root"),
        (1, lambda ts, p: f"{ts} {S} sshd[{p}]: error: kex_exchange_identification: "
            "Connection closed by remote host"),
        (1, lambda ts, p: f"{ts} {S} sshd[{p}]: banner exchange: Connection from {bad()} "
            f"port {port()}: invalid format"),
        (1, lambda ts, p: f"{ts} {S} sshd[{p}]: Unable to negotiate with {bad()} port "
            f"{port()}: no matching key exchange method found. Their offer: "
            "diffie-hellman-group14-sha1,diffie-hellman-group1-sha1 [preauth]"),
        (1, lambda ts, p: f"{ts} {S} sshd[{p}]: error: maximum authentication attempts "
            f"exceeded for root from {bad()} port {port()} ssh2 [preauth]"),
        (1, lambda ts, p: f"{ts} {S} sshd[{p}]: Did not receive identification string from "
            f"{bad()} port {port()}"),
    ]
    return kinds


def auth_log_lines(n: int, seed: int) -> Iterator[str]:
    """``n`` lines of a noisy auth.log, in time order, 30 lines a second."""
    rng = random.Random(seed)
    attackers = _attackers(rng, n4=max(10, n // 40), n6=max(2, n // 400))
    kinds = _line_kinds(rng, attackers)
    makers = [make for _, make in kinds]
    picks = rng.choices(range(len(kinds)), weights=[w for w, _ in kinds], k=n)
    stamp = ""
    for i, k in enumerate(picks):
        if i % LINES_PER_SECOND == 0:
            stamp = syslog_stamp(BASE + i // LINES_PER_SECOND)
        yield makers[k](stamp, rng.randrange(1000, 99999))


def auth_log(out_dir: Path, n: int, seed: int = 6) -> Path:
    """The corpus file for ``n`` lines (built once; same seed, same bytes)."""
    path = out_dir / f"auth-{n}-{seed}.log"
    if path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        batch: list[str] = []
        for line in auth_log_lines(n, seed):
            batch.append(line)
            if len(batch) >= 10000:
                f.write("\n".join(batch) + "\n")
                batch.clear()
        if batch:
            f.write("\n".join(batch) + "\n")
    tmp.rename(path)
    return path


def distributed_lines(n: int, seed: int, failure_share: float = 0.8) -> Iterator[str]:
    """``n`` lines of an auth.log under a distributed brute force: ``failure_share``
    of them are sshd failures, nearly each from an address seen nowhere else
    (a botnet trying every address once), the rest the usual noise."""
    rng = random.Random(seed)
    fails = int(n * failure_share)
    botnet = distinct_addresses(fails, rng.randrange(1 << 30))
    noise = [(w, make) for w, make in _line_kinds(rng, botnet[:1000] or ["1.2.3.4"])
             if "sshd" not in make("", 0) or "Accepted" in make("", 0)]
    makers = [make for _, make in noise]
    picks = rng.choices(range(len(noise)), weights=[w for w, _ in noise], k=n - fails)
    kinds = ("Failed password for root from {a} port {p} ssh2",
             "Failed password for invalid user {u} from {a} port {p} ssh2",
             "Invalid user {u} from {a} port {p}")
    order = [True] * fails + [False] * (n - fails)
    rng.shuffle(order)
    stamp = ""
    f = k = 0
    for i, failure in enumerate(order):
        if i % LINES_PER_SECOND == 0:
            stamp = syslog_stamp(BASE + i // LINES_PER_SECOND)
        pid = rng.randrange(1000, 99999)
        if failure:
            msg = rng.choice(kinds).format(a=botnet[f], p=rng.randrange(1024, 65536),
                                           u=rng.choice(_ATTACK_USERS))
            f += 1
            yield f"{stamp} {HOST} sshd[{pid}]: {msg}"
        else:
            yield makers[picks[k]](stamp, pid)
            k += 1


def distributed_log(out_dir: Path, n: int, seed: int = 7) -> Path:
    """The distributed brute force corpus for ``n`` lines (built once)."""
    path = out_dir / f"distributed-{n}-{seed}.log"
    if path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write("\n".join(distributed_lines(n, seed)) + "\n")
    tmp.rename(path)
    return path


def failures(addrs: list[str], ts: str, repeat: int = 1) -> bytes:
    """``repeat`` failure lines per address, the repeats of one address together."""
    lines = [failure_line(ts, a, 40000 + (i * 7 + r) % 20000)
             for i, a in enumerate(addrs) for r in range(repeat)]
    return ("\n".join(lines) + "\n").encode()


def flood(addrs: list[str], offenders: list[str], maxretry: int, ts: str, gap: int) -> bytes:
    """One failure for each of ``addrs``, and ``maxretry`` failures for each offender,
    ``gap`` lines apart, their last ones spread evenly through the flood. The
    last offender's last failure is the final line, so once every offender is
    banned the daemon has read the whole flood."""
    slots = len(addrs)
    extra: dict[int, list[str]] = {}
    k = len(offenders)
    for j, addr in enumerate(offenders):
        last = slots * (j + 1) // k
        for r in range(maxretry):
            pos = max(0, last - (maxretry - 1 - r) * gap)
            extra.setdefault(pos, []).append(failure_line(ts, addr, 30000 + r))
    lines: list[str] = []
    for i, a in enumerate(addrs):
        lines.extend(extra.get(i, ()))
        lines.append(failure_line(ts, a, 40000 + i % 20000))
    lines.extend(extra.get(slots, ()))
    return ("\n".join(lines) + "\n").encode()
