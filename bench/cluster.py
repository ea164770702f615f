"""Cluster mode benchmark: three daemons sharing bans through a real 3-member etcd (TLS).

From the repository root, as root (``kfwtest-*`` namespaces, removed after):

    .venv/bin/python -m bench.cluster            # full sizes, writes bench/RESULTS.md's section
    .venv/bin/python -m bench.cluster --quick    # smaller sizes, prints only

Figures:

* propagation at a steady 100 bans/s: a line appended to node A's log (the
  bench takes the time) to the element in node B's and C's kernel sets (a
  probe inside each namespace listens to nf_tables notifications); both ends
  are CLOCK_MONOTONIC readings of this one machine;
* a 10,000-offender burst on A: until every address is in B's and C's sets;
* a new node loading 100,000 shared bans: from its daemon's start to all of
  them in its kernel (the gate is the last address, then a full check).

CrowdSec's documented default (the firewall bouncer polls the LAPI every
10 s) is given for comparison as arithmetic, not measured here: a decision
waits for the next poll, uniformly 0-10 s.
"""

from __future__ import annotations

import argparse
import compileall
import ipaddress
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.nlsets import SetMonitor, SetQuery

RESULTS = Path(__file__).with_name("RESULTS.md")
BEGIN, END = "<!-- cluster:begin -->", "<!-- cluster:end -->"
TABLE = "kfwtest"


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, math.ceil(p * len(xs)) - 1)]


# -- in-namespace probes ---------------------------------------------------------

def probe_monitor(seconds: float, out: Path) -> None:
    """Record when each address first appears in this namespace's ban sets."""
    mon = SetMonitor([TABLE])
    print("ready", flush=True)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        mon.pump(0.05)
    out.write_text(json.dumps({str(ipaddress.ip_address(k)): t for k, t in mon.seen.items()
                               if len(k) in (4, 16)}))


def probe_etcd(tls_json: str, endpoint: str, prefix: str, n: int, timeout: float,
               out: Path) -> None:
    """Record when each key under ``prefix`` is seen in a watch (gRPC) of
    ``endpoint``: the time etcd has committed it, from outside the daemons."""
    import asyncio

    from kfwguard.cluster.etcdgrpc import GrpcClient
    from kfwguard.cluster.etcdtypes import TLSFiles, prefix_end

    async def main() -> dict[str, float]:
        g = GrpcClient(TLSFiles(**json.loads(tls_json)))
        rev, _ = await g.range_prefix(endpoint, prefix.encode(), prefix_end(prefix), 10.0)
        stream = g.watch(endpoint, prefix.encode(), prefix_end(prefix), rev + 1)
        seen: dict[str, float] = {}
        print("ready", flush=True)
        try:
            async with asyncio.timeout(timeout):
                async for _, evs in stream.batches(lambda: None):
                    now = time.perf_counter()
                    for e in evs:
                        if e.kind == "put":
                            seen.setdefault(e.kv.key.rsplit("/", 1)[-1], now)
                    if len(seen) >= n:
                        break
        except TimeoutError:
            pass
        finally:
            await stream.close()
        return seen

    out.write_text(json.dumps(asyncio.run(main())))


def probe_wait(addresses: Path, timeout: float) -> None:
    """Print the monotonic time when every address is in ban_v4. Every 2 ms
    the probe asks for a sample (every 100th address and the last, 1,001,
    shuffled so that a missing one is met early), a request laid out once;
    the time is taken after the answer that has them all. Then it checks
    every address: if one is missing, it polls the whole list and takes
    the time of the check that finds them all. A daemon puts a listing's
    page (20,000 bans) in its kernel in one transaction, so the sample, a
    few hundred addresses of each page, is all in when the last page is.

    (Until 2026-11-30 the probe took the time when one gate address was in,
    then checked every address, 2.5 s of CPU for 100k with a 4 MiB
    allocation per answer, and reported that earlier time if the check
    passed: the daemon's pages come in key order, not in this list's, and
    the last one came in during the check. It reported up to ~0.3 s early,
    and its check took a core the daemon under test needed.)"""
    import random

    keys = [ipaddress.ip_address(a).packed for a in addresses.read_text().split()]
    sample = [*keys[::100], keys[-1]]
    random.Random(0).shuffle(sample)
    q = SetQuery(TABLE)
    gate = q.prepared("ban_v4", sample)
    print("ready", flush=True)
    deadline = time.perf_counter() + timeout
    full = False  # the sample was all in: now every address
    while time.perf_counter() < deadline:
        try:
            if full or gate():
                t = time.perf_counter()
                if q.all_present("ban_v4", keys):
                    print(json.dumps({"done": t if not full else time.perf_counter()}),
                          flush=True)
                    return
                full = True
        except OSError:
            pass  # the table does not exist yet
        time.sleep(0.002)
    print(json.dumps({"done": None, "present": q.count_present("ban_v4", keys)}), flush=True)


# -- the harness -------------------------------------------------------------------

def addresses(base: int, n: int) -> list[str]:
    start = int(ipaddress.IPv4Address(f"{base}.0.0.1"))
    return [str(ipaddress.IPv4Address(start + i)) for i in range(n)]


def spy(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    """py-spy (if installed) sampling ``pid`` into ``out``: collapsed stacks, or
    $SPY_FORMAT (``speedscope`` keeps the samples' order: what ran before the
    kernel had the listing can be told from what ran after)."""
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        print(f"no {exe}: pip install py-spy to profile", file=sys.stderr)
        return None
    return subprocess.Popen([str(exe), "record", "--pid", str(pid), "--rate", "200",
                             "--format", os.environ.get("SPY_FORMAT", "raw"),
                             "--output", str(out), "--duration", str(int(seconds)),
                             "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pids: dict[str, int], timeout: float = 60.0) -> dict[str, float]:
    """Wait until ``pids`` together use under 10 % of a core over a second
    (the others finished storing what they took in). Returns the wait and
    each process's share of a core over the last second."""
    t0 = time.perf_counter()
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    use: dict[str, float] = {}
    while time.perf_counter() - t0 < timeout:
        time.sleep(1.0)
        now = {k: cpu_seconds(p) for k, p in pids.items()}
        use = {k: round(now[k] - before[k], 3) for k in pids}
        if sum(use.values()) < 0.1:
            break
        before = now
    return {"wait_s": round(time.perf_counter() - t0, 2), **use}


def spread(times: list[float], start: float) -> dict[str, float] | None:
    """First, median and last of ``times`` (seconds after ``start``)."""
    if not times:
        return None
    return {"n": len(times), "first": round(min(times) - start, 3),
            "p50": round((pct(times, .5) or 0) - start, 3),
            "last": round(max(times) - start, 3)}


def run(quick: bool, profile: Path | None = None, *, new_node_only: bool = False,
        repeat: int = 1, compare: Path | None = None, new_node: bool = True,
        burst_size: int | None = None) -> dict[str, Any]:
    from tests.integration.daemon_harness import DaemonRun, base_config, wait_until
    from tests.integration.etcd_cluster import EtcdCluster
    from tests.netns import Lab

    n_steady, n_burst, n_load = (300, 2000, 20_000) if quick else (1000, 10_000, 100_000)
    n_burst = burst_size or n_burst
    lab = Lab()
    work = Path(tempfile.mkdtemp(prefix="kfwbench-cluster-"))
    etcd = EtcdCluster(lab, work / "etcd")
    daemons: dict[str, DaemonRun] = {}
    logs: dict[str, Path] = {}
    out: dict[str, Any] = {"sizes": {"steady": n_steady, "burst": n_burst, "load": n_load},
                           "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]}

    def daemon(name: str, run_dir: str | None = None) -> DaemonRun:
        host = lab.host(f"node{name}")
        etcd.attach(host)
        d = work / (run_dir or name)
        d.mkdir()
        logs[name] = d / "auth.log"
        logs[name].write_text("")
        cfg = base_config(d, logs[name], table=TABLE, maxretry=1, bantime="2h")
        cfg["tracker"] = {"max_entries": 200_000}
        cfg["nftables"]["set_size"] = 400_000
        cfg["cluster"] = {"endpoints": etcd.endpoints, "tls": etcd.tls(f"node-{name}"),
                          "node_name": f"node-{name}", "heartbeat": "5s"}
        return DaemonRun(host, d, cfg)

    try:
        etcd.start()
        for name in "abc":
            daemons[name] = daemon(name)
            daemons[name].start()
        for d in daemons.values():
            assert wait_until(lambda d=d: '"cluster_synced"' in d.log(), 30), d.log()

        if not new_node_only:
            steady_and_burst(quick, profile, daemons, logs, work, n_steady, n_burst, out,
                             etcd)
        if new_node:
            new_nodes(profile, etcd, daemon, daemons, work, n_load, out, repeat, compare)
    finally:
        out["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        for dr in daemons.values():
            dr.stop()
        etcd.stop()
        lab.close()
    return out


def steady_and_burst(quick: bool, profile: Path | None, daemons: dict[str, Any],
                     logs: dict[str, Path], work: Path, n_steady: int, n_burst: int,
                     out: dict[str, Any], etcd: Any) -> None:
    from tests.integration.daemon_harness import sshd_fail

    py = sys.executable
    # 1. steady 100 bans/s
    probes = {}
    for name in "bc":
        f = work / f"seen-{name}.json"
        p = daemons[name].host.popen([py, "-m", "bench.cluster", "probe-monitor",
                                      str(n_steady / 100 + 15), str(f)],
                                     stdout=subprocess.PIPE)
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        probes[name] = (p, f)
    sent: dict[str, float] = {}
    addrs = addresses(101, n_steady)
    t0 = time.perf_counter()
    with logs["a"].open("a") as fh:
        for i, a in enumerate(addrs):
            delay = t0 + i / 100 - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent[a] = time.perf_counter()
            fh.write(sshd_fail(a))
            fh.flush()
    for name, (p, f) in probes.items():
        p.wait(timeout=120)
        seen = json.loads(f.read_text())
        lat = [seen[a] - sent[a] for a in addrs if a in seen]
        out[f"steady_{name}"] = {"received": len(lat), "p50_ms": 1000 * (pct(lat, .5) or 0),
                                 "p99_ms": 1000 * (pct(lat, .99) or 0),
                                 "max_ms": 1000 * max(lat, default=0),
                                 # the slowest, as (seconds into the run, ms): a stall
                                 # shows as a run of consecutive sends
                                 "slowest": sorted(
                                     ((round(sent[a] - t0, 2), round(1000 * (seen[a] - sent[a])))
                                      for a in addrs if a in seen), key=lambda x: -x[1])[:12]}

    # 2. burst of n_burst offenders on A
    burst = addresses(102, n_burst)
    bf = work / "burst.txt"
    bf.write_text("\n".join(burst))
    waiters = {name: daemons[name].host.popen(
        [py, "-m", "bench.cluster", "probe-wait", str(bf), "120"], stdout=subprocess.PIPE)
        for name in "abc"}
    # Where the time goes: when each address reaches each node's kernel,
    # and when etcd has each of A's keys (a watcher of A's subtree).
    monitors = {}
    for name in "abc":
        f = work / f"burst-seen-{name}.json"
        monitors[name] = (daemons[name].host.popen(
            [py, "-m", "bench.cluster", "probe-monitor", "25", str(f)],
            stdout=subprocess.PIPE), f)
    ef = work / "burst-etcd.json"
    etcd_probe = etcd.host.popen(
        [py, "-m", "bench.cluster", "probe-etcd", json.dumps(etcd.tls("root")),
         etcd.endpoints[0], "/kfwguard/v1/bans/node-a/", str(n_burst), "60", str(ef)],
        stdout=subprocess.PIPE)
    for w in [*waiters.values(), *(m for m, _ in monitors.values()), etcd_probe]:
        assert w.stdout is not None and w.stdout.readline().strip() == b"ready"
    text = "".join(sshd_fail(a) for a in burst)
    spies = []
    if profile is not None:
        for name in "ab":
            proc = daemons[name].proc
            assert proc is not None
            spies.append(spy(proc.pid, profile / f"burst-{name}.txt", 30))
        time.sleep(1.0)  # py-spy attaches
    pids = {f"daemon_{n}": d.proc.pid for n, d in daemons.items() if d.proc is not None}
    pids.update({f"etcd_{m.name}": m.proc.pid for m in etcd.members if m.proc is not None})
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    start = time.perf_counter()
    with logs["a"].open("a") as fh:
        fh.write(text)
    for name, w in waiters.items():
        assert w.stdout is not None
        res = json.loads(w.stdout.readline())
        w.wait(timeout=30)
        out[f"burst_{name}_s"] = None if res["done"] is None else res["done"] - start
    out["burst_cpu_s"] = {k: round(cpu_seconds(p) - cpu0[k], 2) for k, p in pids.items()}
    out["burst_loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    for sp in spies:
        if sp is not None:
            sp.send_signal(2)
            sp.wait(timeout=60)
    split: dict[str, Any] = {}
    for name, (m, f) in monitors.items():
        m.wait(timeout=120)
        seen = json.loads(f.read_text())
        split[f"kernel_{name}"] = spread([seen[a] for a in burst if a in seen], start)
    etcd_probe.wait(timeout=120)
    seen = json.loads(ef.read_text())
    split["etcd_has_a"] = spread([seen[a] for a in burst if a in seen], start)
    out["burst_split"] = split


def new_nodes(profile: Path | None, etcd: Any, daemon: Any, daemons: dict[str, Any],
              work: Path, n_load: int, out: dict[str, Any], repeat: int,
              compare: Path | None) -> None:
    """A new node loading n_load shared bans (written by a "node-x" directly),
    ``repeat`` times, each a fresh node (namespace, state, table). With
    ``compare`` (a source tree), each start of this tree's daemon follows one
    of that tree's (PYTHONPATH), back to back under the same load."""
    py = sys.executable
    load = addresses(103, n_load)
    lf = work / "load.txt"
    lf.write_text("\n".join(load))
    t = time.perf_counter()
    writer = etcd.host.run(py, "-m", "bench.cluster", "write-bans", str(lf),
                           json.dumps(etcd.tls("node-d")), *etcd.endpoints, timeout=600)
    out["load_write_s"] = time.perf_counter() - t
    out["load_write"] = writer.stdout.strip()
    # A new node joins a settled cluster: the others have taken them in
    # (a netlink look-up of the last one: `nft get element` would load the
    # whole set into libnftables' cache each time).
    lastf = work / "last.txt"
    lastf.write_text(load[-1])
    for name in "abc":
        r = daemons[name].host.run(py, "-m", "bench.cluster", "probe-wait", str(lastf),
                                   "900", timeout=960)
        out[f"settled_{name}"] = json.loads(r.stdout.splitlines()[-1])["done"] is not None
    # ...and are idle again: taking 100k bans in is seconds of their CPU after
    # their kernel (the state DB), which a new node started then would share.
    pids = {f"daemon_{n}": d.proc.pid for n, d in daemons.items() if d.proc is not None}
    pids.update({f"etcd_{m.name}": m.proc.pid for m in etcd.members if m.proc is not None})
    variants: list[tuple[str, dict[str, str]]] = [("", {})]
    if compare is not None:
        # PYTHONSAFEPATH: the current directory (this tree) does not come first.
        variants.insert(0, ("before_", {"PYTHONPATH": str(compare), "PYTHONSAFEPATH": "1"}))
    for i in range(repeat):
        for tag, env in variants:
            key = f"{tag}load" + (f"_{i}" if i else "")
            out[f"{key}_settled"] = settle(pids)
            res = one_new_node(profile, daemon, daemons, lf, f"d-{tag}{i}", env)
            out[f"{key}_s"] = res["load_s"]
            out[f"{key}_cpu_s"] = res["cpu_s"]
            out[f"{key}_timeline"] = res["timeline"]
            out[f"{key}_loadavg"] = res["loadavg"]
            print(key, json.dumps(res), file=sys.stderr, flush=True)


def one_new_node(profile: Path | None, daemon: Any, daemons: dict[str, Any], lf: Path,
                 run_dir: str, env: dict[str, str]) -> dict[str, Any]:
    from tests.integration.daemon_harness import wait_until

    py = sys.executable
    d = daemons["d"] = daemon("d", run_dir)
    w = d.host.popen([py, "-m", "bench.cluster", "probe-wait", str(lf), "120"],
                     stdout=subprocess.PIPE)
    assert w.stdout is not None and w.stdout.readline().strip() == b"ready"
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    start, start_wall = time.perf_counter(), time.time()
    d.start(wait_ready=False, env=env)
    assert d.proc is not None
    sp = (spy(d.proc.pid, profile / f"load-{run_dir}.txt", 60) if profile is not None
          else None)
    res = json.loads(w.stdout.readline())
    # The daemon's CPU time (all threads) until then: what the load does not inflate.
    stat = Path(f"/proc/{d.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    if sp is not None:
        sp.send_signal(2)
        sp.wait(timeout=60)
    w.wait(timeout=30)
    # The rest of the start (the state DB) finishes before the next node starts.
    wait_until(lambda: '"cluster_synced"' in d.log(), 120)
    events = {e.get("event"): e for e in d.events()}
    ev = {k: e.get("timestamp") for k, e in events.items()}
    d.stop()

    def since_start(stamp: str | None) -> float | None:
        if stamp is None:
            return None
        from datetime import datetime
        return round(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                     - start_wall, 2)
    return {"load_s": None if res["done"] is None else res["done"] - start,
            "cpu_s": cpu, "loadavg": loadavg,
            # from asking etcd for the listing to all of it decoded
            "list_s": events.get("cluster_synced", {}).get("list_seconds"),
            # from asking etcd for the listing to all of it in the kernel (the daemon's view)
            "enforced_s": events.get("cluster_synced", {}).get("enforced_seconds"),
            # seconds from the daemon's start to each of these lines of its log
            "timeline": {k: since_start(ev.get(k)) for k in (
                "cluster_listing_asked", "bans_restored", "cluster_started", "started",
                "peer_bans",
                "cluster_synced")}}


def write_bans(addr_file: Path, tls_json: str, endpoints: list[str]) -> None:
    """Put one ban per address under node-x, as node-x's daemon would."""
    import asyncio

    from kfwguard.cluster.etcd import EtcdFeed
    from kfwguard.cluster.etcdclient import EtcdClient
    from kfwguard.cluster.etcdtypes import TLSFiles
    from kfwguard.cluster.feed import SharedBan

    tls = TLSFiles(**json.loads(tls_json))
    targets = addr_file.read_text().split()

    async def main() -> None:
        feed = EtcdFeed(EtcdClient(endpoints, tls), "/kfwguard/v1")
        now = time.time()
        bans = [SharedBan("node-x", a, "sshd", "bench", now, now + 7200, now)
                for a in targets]
        sem = asyncio.Semaphore(8)

        async def chunk(i: int) -> None:
            async with sem:
                await feed.publish("node-x", bans[i:i + 128], [])
        await asyncio.gather(*(chunk(i) for i in range(0, len(bans), 128)))
        await feed.close()
        print(len(bans))
    asyncio.run(main())


def report(r: dict[str, Any]) -> str:
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f} ms"

    def s(x: float | None) -> str:
        return "not all (timeout)" if x is None else f"{x:.2f} s"
    sz = r["sizes"]
    lines = [
        BEGIN,
        "## Cluster mode (bench/cluster.py)",
        "",
        f"Three daemons and a 3-member etcd 3.4.23 (mutual TLS) on this 2-core machine, "
        f"each in its own namespace; run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"Load average {' '.join(r['loadavg_start'])} at the start, "
        f"{' '.join(r['loadavg_end'])} at the end (2 cores; the bench's own six processes "
        "make most of it when nothing else runs).",
        "",
        "| figure | node B | node C | target |",
        "| --- | --- | --- | --- |",
        f"| propagation at 100 bans/s, p50 ({sz['steady']} bans, line on A → element in "
        f"the node's kernel) | {ms(r['steady_b']['p50_ms'])} | {ms(r['steady_c']['p50_ms'])} "
        f"| ≤ 50 ms |",
        f"| propagation at 100 bans/s, p99 | {ms(r['steady_b']['p99_ms'])} | "
        f"{ms(r['steady_c']['p99_ms'])} | ≤ 250 ms |",
        f"| received of {sz['steady']} | {r['steady_b']['received']} | "
        f"{r['steady_c']['received']} | all |",
        f"| {sz['burst']:,}-offender burst on A, all in the node's kernel | "
        f"{s(r['burst_b_s'])} | {s(r['burst_c_s'])} | ≤ 3 s (A itself: {s(r['burst_a_s'])}) |",
        "",
        f"A new node loading {sz['load']:,} shared bans (start of its daemon → all in its "
        f"kernel): **{s(r['load_s'])}** (target ≤ 3 s; writing them into etcd took "
        f"{r['load_write_s']:.1f} s; the node's own log: {r['load_timeline']}).",
        "",
        "For comparison, CrowdSec's firewall bouncer polls its LAPI every 10 s by default "
        "(`update_frequency: 10s`): a decision made elsewhere waits for the next poll, "
        "uniformly 0-10 s, i.e. about 5 s at the median and 9.9 s at p99 before the "
        "bouncer even starts applying it (arithmetic from the documented default, not "
        "measured here).",
        END,
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd")
    m = sub.add_parser("probe-monitor")
    m.add_argument("seconds", type=float)
    m.add_argument("out", type=Path)
    w = sub.add_parser("probe-wait")
    w.add_argument("addresses", type=Path)
    w.add_argument("timeout", type=float)
    pe = sub.add_parser("probe-etcd")
    pe.add_argument("tls")
    pe.add_argument("endpoint")
    pe.add_argument("prefix")
    pe.add_argument("n", type=int)
    pe.add_argument("timeout", type=float)
    pe.add_argument("out", type=Path)
    wb = sub.add_parser("write-bans")
    wb.add_argument("addresses", type=Path)
    wb.add_argument("tls")
    wb.add_argument("endpoints", nargs="+")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="py-spy A and B during the burst and the new node at start "
                         "(collapsed stacks in DIR)")
    ap.add_argument("--new-node", action="store_true",
                    help="only the new node's figure (no steady rate, no burst); prints only")
    ap.add_argument("--repeat", type=int, default=1, help="start a new node this many times")
    ap.add_argument("--compare", type=Path, metavar="SRC",
                    help="before each new node, one running the kfwguard package in SRC "
                         "(e.g. a `git worktree` of the old commit): before/after under "
                         "the same load")
    ap.add_argument("--no-new-node", action="store_true",
                    help="only the steady rate and the burst (with where the burst's "
                         "time goes); prints only")
    ap.add_argument("--burst", type=int, metavar="N", help="offenders in the burst")
    a = ap.parse_args()
    if a.cmd == "probe-monitor":
        probe_monitor(a.seconds, a.out)
    elif a.cmd == "probe-wait":
        probe_wait(a.addresses, a.timeout)
    elif a.cmd == "probe-etcd":
        probe_etcd(a.tls, a.endpoint, a.prefix, a.n, a.timeout, a.out)
    elif a.cmd == "write-bans":
        write_bans(a.addresses, a.tls, a.endpoints)
    else:
        if a.profile is not None:
            a.profile.mkdir(parents=True, exist_ok=True)
        # Byte-compiled, as `pip install .` leaves it on a node: an editable
        # checkout under PYTHONDONTWRITEBYTECODE (set on this machine) compiled
        # ~35 modules at each daemon start, 0.6 s of a new node's CPU.
        for tree in (Path(__file__).resolve().parents[1], a.compare):
            if tree is not None:
                compileall.compile_dir(tree / "kfwguard", quiet=1)
        r = run(a.quick, a.profile, new_node_only=a.new_node, repeat=a.repeat,
                compare=a.compare, new_node=not a.no_new_node, burst_size=a.burst)
        print(json.dumps(r, indent=1, default=str))
        if a.new_node or a.no_new_node or a.burst:
            return
        text = report(r)
        print(text)
        if not a.quick:
            old = RESULTS.read_text() if RESULTS.exists() else ""
            if BEGIN in old and END in old:
                new = old[:old.index(BEGIN)] + text + old[old.index(END) + len(END):]
            else:
                new = old.rstrip() + "\n\n" + text + "\n"
            RESULTS.write_text(new)


if __name__ == "__main__":
    main()
