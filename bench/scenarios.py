"""The five benchmarks. Each returns a report Section with both daemons side by side.

Daemons run one at a time (never both at once: the machine has two cores),
each in a fresh ``kfwtest-*`` namespace that is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import corpus
from bench.daemons import REPO, Daemon, Fail2ban, Jail, Kfwguard, rss_mb
from bench.report import Figure, Section, median, percentile
from tests.integration.daemon_harness import wait_until
from tests.netns import Host, Lab


@dataclass(frozen=True)
class Plan:
    """Sizes and repetitions of one mode (smoke, quick, full)."""

    name: str
    corpus_lines: int
    runs: int
    f2b_regex_runs: int
    latency_samples: int
    f2b_latency_samples: int
    f2b_polling_samples: int
    burst: int
    f2b_burst: int
    restore: int
    f2b_restore: int
    flood: int
    max_entries: int
    f2b_flood_cap: float
    f2b_cap: float


PLANS = {
    "smoke": Plan("smoke", corpus_lines=2000, runs=1, f2b_regex_runs=1, latency_samples=5,
                  f2b_latency_samples=5, f2b_polling_samples=3, burst=200, f2b_burst=50,
                  restore=1000, f2b_restore=20, flood=20_000, max_entries=1000,
                  f2b_flood_cap=10, f2b_cap=30),
    "quick": Plan("quick", corpus_lines=200_000, runs=1, f2b_regex_runs=1, latency_samples=60,
                  f2b_latency_samples=40, f2b_polling_samples=15, burst=10_000,
                  f2b_burst=1000, restore=100_000, f2b_restore=300, flood=1_000_000,
                  max_entries=200_000, f2b_flood_cap=30, f2b_cap=60),
    "full": Plan("full", corpus_lines=1_000_000, runs=3, f2b_regex_runs=3,
                 latency_samples=200, f2b_latency_samples=200, f2b_polling_samples=60,
                 burst=10_000, f2b_burst=10_000, restore=100_000, f2b_restore=2000,
                 flood=1_000_000, max_entries=200_000, f2b_flood_cap=180, f2b_cap=300),
}


@dataclass
class Context:
    plan: Plan
    out: Path
    with_f2b: bool
    f2b_reason: str = ""
    netns: bool = True
    netns_reason: str = ""


# -- helpers -------------------------------------------------------------------


@contextlib.contextmanager
def namespace(role: str) -> Iterator[tuple[Host, Path]]:
    """A fresh kfwtest-* namespace and a scratch directory, both removed afterwards."""
    lab = Lab()
    tmp = tempfile.TemporaryDirectory(prefix=f"kfwbench-{role}-")
    try:
        host = lab.host(f"b{role}")
        yield host, Path(tmp.name)
    finally:
        lab.close()
        tmp.cleanup()


def probe_cmd(host: Host, *args: str) -> list[str]:
    return ["ip", "netns", "exec", host.name, sys.executable, "-m", "bench.probe", *args]


def run_probe(host: Host, *args: str, timeout: float) -> dict[str, Any]:
    r = subprocess.run(probe_cmd(host, *args), capture_output=True, text=True, cwd=REPO,
                       timeout=timeout + 60, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"probe failed: {r.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def sets_args(d: Daemon) -> list[str]:
    return ["--table", d.table, "--set4", d.set4, "--set6", d.set6]


def write_addresses(path: Path, addrs: list[str]) -> str:
    path.write_text("\n".join(addrs) + "\n")
    return str(path)


def make_daemon(kind: str, host: Host, work: Path, jail: Jail, **kw: Any) -> Daemon:
    logfile = work / "auth.log"
    logfile.touch()
    if kind == "kfwguard":
        return Kfwguard(host, work, logfile, jail, **kw)
    return Fail2ban(host, work, logfile, jail, **kw)


def _ms(x: float | None) -> float | None:
    return None if x is None else x * 1000


# -- 1. throughput ---------------------------------------------------------------

_F2B_LINES = re.compile(r"Lines: (\d+) lines, (\d+) ignored, (\d+) matched")
_KFW_MATCHED = re.compile(r"matched\s+(\d+)")


def _timed(cmd: list[str], timeout: float) -> tuple[float, str]:
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout,
                       check=False)
    took = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {r.stderr.strip()[-1500:]}")
    return took, r.stdout


def throughput(ctx: Context) -> Section:
    plan = ctx.plan
    sec = Section("throughput", "Matching throughput, sshd filter", "")
    path = corpus.auth_log(ctx.out, plan.corpus_lines)
    n = plan.corpus_lines
    sec.how = (
        f"Corpus: `{path.name}`, {n:,} lines ({path.stat().st_size / 1e6:.1f} MB), seeded "
        "auth.log noise with sshd failures of every kind from IPv4 and IPv6 attackers. "
        "*Whole process*: wall time of `python -m kfwguard test-filter sshd CORPUS` against "
        "`fail2ban-regex CORPUS /etc/fail2ban/filter.d/sshd.conf`, start-up included. "
        "*Pipeline*: kfwguard in-process (`bench/pipeline.py`: the file source's line "
        "splitter and decoder, then the daemon's jail intake `JailFeed.take`, sshd's "
        "session pairing included) over the corpus bytes, filter "
        "loading excluded, against fail2ban-regex's own whole-process rate (fail2ban has "
        f"no cheaper entry point). Median of {plan.runs} run(s) for kfwguard, "
        f"{plan.f2b_regex_runs} for fail2ban-regex.")
    kfw_wall: list[float] = []
    kfw_matched = ""
    for _ in range(plan.runs):
        took, out = _timed([sys.executable, "-m", "kfwguard", "test-filter", "sshd",
                            str(path)], timeout=3600)
        kfw_wall.append(took)
        m = _KFW_MATCHED.search(out)
        kfw_matched = m.group(1) if m else "?"
    pipe: list[dict[str, Any]] = []
    for _ in range(plan.runs):
        _, out = _timed([sys.executable, "-m", "bench.pipeline", str(path)], timeout=3600)
        pipe.append(json.loads(out))
    f2b_wall: list[float] = []
    f2b_matched = ""
    if ctx.with_f2b:
        for _ in range(plan.f2b_regex_runs):
            took, out = _timed(["fail2ban-regex", str(path),
                                "/etc/fail2ban/filter.d/sshd.conf"], timeout=7200)
            f2b_wall.append(took)
            m = _F2B_LINES.search(out)
            f2b_matched = m.group(3) if m else "?"
    kw, fw = median(kfw_wall), median(f2b_wall)
    kfw_rate = n / kw if kw else None
    f2b_rate = n / fw if fw else None
    pipe_rate = median([p["lines_per_second"] for p in pipe])
    sec.figures = [
        Figure("whole process: wall time", "s", kw, fw, "lower"),
        Figure("whole process: lines/s", "lines/s", kfw_rate, f2b_rate, "higher",
               target="≥ 10× fail2ban-regex" if f2b_rate else "",
               met=(kfw_rate / f2b_rate >= 10) if kfw_rate and f2b_rate else None),
        Figure("pipeline (in-process): lines/s", "lines/s", pipe_rate, f2b_rate, "higher",
               target="≥ 20× fail2ban-regex" if f2b_rate else "",
               met=(pipe_rate / f2b_rate >= 20) if pipe_rate and f2b_rate else None),
    ]
    sec.notes.append(
        f"Lines matched: kfwguard {kfw_matched} (every failure rule), fail2ban-regex "
        f"{f2b_matched or 'not run'} (its 'matched' count, after its NOFAIL/ignore "
        "bookkeeping). The rule sets differ in detail; both read every line.")
    rates = ", ".join(f"{p['lines_per_second']:,.0f}" for p in pipe)
    sec.notes.append(
        f"Pipeline runs: {rates} lines/s; "
        f"{pipe[-1]['matches']:,} matches, {pipe[-1]['bans']:,} ban decisions (maxretry 5).")
    if not ctx.with_f2b:
        sec.notes.append(f"fail2ban not run: {ctx.f2b_reason}")
    return sec


def throughput_distributed(ctx: Context) -> Section:
    """Whole-process test-filter against fail2ban-regex where most lines are
    failures and nearly every failure comes from a distinct address."""
    plan = ctx.plan
    sec = Section("throughput-distributed",
                  "Matching throughput, sshd filter, distributed brute force", "")
    path = corpus.distributed_log(ctx.out, plan.corpus_lines)
    n = plan.corpus_lines
    sec.how = (
        f"Corpus: `{path.name}`, {n:,} lines ({path.stat().st_size / 1e6:.1f} MB): 80 % "
        "sshd failures, nearly each from an address seen nowhere else (a botnet trying "
        "every address once), the rest the usual noise. *Whole process*: wall time of "
        "`python -m kfwguard test-filter sshd CORPUS` against `fail2ban-regex CORPUS "
        f"/etc/fail2ban/filter.d/sshd.conf`, start-up included. Median of {plan.runs} "
        f"run(s) for kfwguard, {plan.f2b_regex_runs} for fail2ban-regex.")
    kfw_wall: list[float] = []
    kfw_matched = ""
    for _ in range(plan.runs):
        took, out = _timed([sys.executable, "-m", "kfwguard", "test-filter", "sshd",
                            str(path)], timeout=3600)
        kfw_wall.append(took)
        m = _KFW_MATCHED.search(out)
        kfw_matched = m.group(1) if m else "?"
    f2b_wall: list[float] = []
    f2b_matched = ""
    if ctx.with_f2b:
        for _ in range(plan.f2b_regex_runs):
            took, out = _timed(["fail2ban-regex", str(path),
                                "/etc/fail2ban/filter.d/sshd.conf"], timeout=7200)
            f2b_wall.append(took)
            m = _F2B_LINES.search(out)
            f2b_matched = m.group(3) if m else "?"
    kw, fw = median(kfw_wall), median(f2b_wall)
    kfw_rate = n / kw if kw else None
    f2b_rate = n / fw if fw else None
    sec.figures = [
        Figure("whole process: wall time", "s", kw, fw, "lower"),
        Figure("whole process: lines/s", "lines/s", kfw_rate, f2b_rate, "higher",
               target="≥ 10× fail2ban-regex" if f2b_rate else "",
               met=(kfw_rate / f2b_rate >= 10) if kfw_rate and f2b_rate else None),
    ]
    sec.notes.append(f"Lines matched: kfwguard {kfw_matched}, fail2ban-regex "
                     f"{f2b_matched or 'not run'}.")
    if not ctx.with_f2b:
        sec.notes.append(f"fail2ban not run: {ctx.f2b_reason}")
    return sec


# -- 2. latency ------------------------------------------------------------------


def _latency_run(kind: str, samples: int, backend: str = "pyinotify",
                 seed: int = 20) -> dict[str, Any]:
    with namespace("lat") as (host, work):
        kw: dict[str, Any] = {"backend": backend} if kind == "fail2ban" else {}
        d = make_daemon(kind, host, work, Jail(maxretry=1), **kw)
        d.start()
        try:
            # The first ban creates fail2ban's table and set (its actionstart):
            # a one-off cost, kept out of the samples for both daemons.
            addrs = corpus.distinct_addresses(samples + 1, seed=seed)
            timeout = 10.0
            res = run_probe(
                host, "latency", "--table", d.table, "--log", str(d.logfile),
                "--addresses", write_addresses(work / "addrs", addrs),
                "--template", corpus.FAILURE_TEMPLATE, "--timeout", str(timeout),
                timeout=(samples + 1) * (timeout + 1))
        finally:
            d.stop()
    lat = res["latencies"][1:]
    return {"ok": [x for x in lat if x is not None], "missed": sum(x is None for x in lat),
            "lost": res["lost_notifications"]}


def latency(ctx: Context) -> Section:
    plan = ctx.plan
    sec = Section("latency", "Ban latency: line appended → element in the kernel set",
                  f"A probe process inside the daemon's namespace appends one sshd failure "
                  f"line (a new address each time, maxretry 1) and waits for the kernel's "
                  f"nftables notification that the element was added; both ends are read "
                  f"from the probe's own CLOCK_MONOTONIC. Samples are 15–45 ms apart, so "
                  f"each is a lone event. kfwguard: {plan.latency_samples} samples per run, "
                  f"median of {plan.runs} run(s)' percentiles; fail2ban (nftables-multiport "
                  f"action): {plan.f2b_latency_samples} samples with backend pyinotify, "
                  f"{plan.f2b_polling_samples} with backend polling, one run each.")
    if not ctx.netns:
        sec.skipped = ctx.netns_reason
        return sec
    kruns = [_latency_run("kfwguard", plan.latency_samples, seed=20 + i)
             for i in range(plan.runs)]
    f2b: dict[str, dict[str, Any]] = {}
    if ctx.with_f2b:
        f2b["pyinotify"] = _latency_run("fail2ban", plan.f2b_latency_samples, "pyinotify", 40)
        f2b["polling"] = _latency_run("fail2ban", plan.f2b_polling_samples, "polling", 41)

    def kq(q: float) -> float | None:
        return median([v for r in kruns if (v := percentile(r["ok"], q)) is not None])

    def fq(backend: str, q: float) -> float | None:
        return percentile(f2b[backend]["ok"], q) if backend in f2b else None

    p50, p95, p99 = (_ms(kq(q)) for q in (50, 95, 99))
    sec.figures = [
        Figure("p50 (fail2ban with pyinotify)", "ms", p50, _ms(fq("pyinotify", 50)),
               target="≤ 20 ms", met=None if p50 is None else p50 <= 20),
        Figure("p95 (fail2ban with pyinotify)", "ms", p95, _ms(fq("pyinotify", 95))),
        Figure("p99 (fail2ban with pyinotify)", "ms", p99, _ms(fq("pyinotify", 99)),
               target="≤ 50 ms", met=None if p99 is None else p99 <= 50),
        Figure("p50 (fail2ban with polling)", "ms", p50, _ms(fq("polling", 50))),
        Figure("p99 (fail2ban with polling)", "ms", p99, _ms(fq("polling", 99))),
    ]
    missed = sum(r["missed"] for r in kruns)
    sec.notes.append(
        "kfwguard per run (p50/p99 ms): " + ", ".join(
            f"{_ms(percentile(r['ok'], 50)) or 0:.1f}/{_ms(percentile(r['ok'], 99)) or 0:.1f}"
            for r in kruns) + f"; samples never seen: {missed}.")
    for b, r in f2b.items():
        sec.notes.append(f"fail2ban {b}: {len(r['ok'])} samples, {r['missed']} never seen "
                         "within 10 s.")
    if not ctx.with_f2b:
        sec.notes.append(f"fail2ban not run: {ctx.f2b_reason}")
    return sec


# -- 3. burst --------------------------------------------------------------------


def _burst_run(kind: str, n: int, cap: float, seed: int) -> dict[str, Any]:
    with namespace("burst") as (host, work):
        d = make_daemon(kind, host, work, Jail(maxretry=1))
        d.start()
        try:
            addrs = corpus.distinct_addresses(n, seed=seed)
            data = work / "burst.log"
            data.write_bytes(corpus.failures(addrs, corpus.syslog_stamp(time.time())))
            res = run_probe(host, "append", *sets_args(d), "--log", str(d.logfile),
                            "--data", str(data), "--chunk", str(data.stat().st_size),
                            "--addresses", write_addresses(work / "addrs", addrs),
                            "--timeout", str(cap), timeout=cap)
        finally:
            d.stop()
    return _until_all(res, res["start"], n, cap)


def _until_all(res: dict[str, Any], start: float, n: int, cap: float) -> dict[str, Any]:
    """A probe's ``wait`` result as a run's figures: seconds from ``start`` until
    all ``n`` were in the kernel (None if the cap came first) and the rate."""
    done = res["done"]
    elapsed = done - start if done is not None else None
    return {"elapsed": elapsed, "present": res["present"], "n": n, "cap": cap,
            "rate": (n / elapsed) if elapsed else res["present"] / cap}


def burst(ctx: Context) -> Section:
    plan = ctx.plan
    sec = Section("burst", "Burst: distinct offenders written at once → all in the kernel",
                  f"{plan.burst:,} failure lines from distinct addresses (10 % IPv6, "
                  "maxretry 1) appended in one write; time until the probe in the namespace "
                  "finds every one of them in the kernel's sets (polled by netlink "
                  "GETSETELEM every 1 ms, then checked in full). kfwguard: median of "
                  f"{plan.runs} run(s). fail2ban: {plan.f2b_burst:,} offenders, one run, "
                  f"capped at {plan.f2b_cap:.0f} s.")
    if not ctx.netns:
        sec.skipped = ctx.netns_reason
        return sec
    kr = [_burst_run("kfwguard", plan.burst, 60.0, 100 + i) for i in range(plan.runs)]
    fr = _burst_run("fail2ban", plan.f2b_burst, plan.f2b_cap, 200) if ctx.with_f2b else None
    k_el = median([r["elapsed"] for r in kr if r["elapsed"] is not None])
    f_el: float | None = None
    note = ""
    if fr is not None:
        if fr["n"] == plan.burst and fr["elapsed"] is not None:
            f_el = fr["elapsed"]
        else:
            # Extrapolated from its rate: fail2ban's per-ban cost is flat (one
            # sh + nft process per address), so the time scales linearly.
            f_el = plan.burst / fr["rate"] if fr["rate"] else None
            note = (f"fail2ban figure EXTRAPOLATED to {plan.burst:,} from "
                    f"{fr['present']:,}/{fr['n']:,} offenders in "
                    f"{fr['elapsed'] if fr['elapsed'] else fr['cap']:.1f} s "
                    f"({fr['rate']:.0f} bans/s)")
    sec.figures = [
        Figure(f"{plan.burst:,} offenders: all in the kernel", "s", k_el, f_el,
               target="≤ 1 s" if plan.burst >= 10_000 else "",
               met=(k_el <= 1.0) if k_el is not None and plan.burst >= 10_000 else None,
               note=note),
        Figure("rate", "bans/s", plan.burst / k_el if k_el else None,
               fr["rate"] if fr else None, "higher"),
    ]
    sec.notes.append("kfwguard runs (s): " + ", ".join(
        f"{r['elapsed']:.3f}" if r["elapsed"] is not None else f"timeout ({r['present']} in)"
        for r in kr))
    if not ctx.with_f2b:
        sec.notes.append(f"fail2ban not run: {ctx.f2b_reason}")
    return sec


# -- 4. restore ------------------------------------------------------------------


def _prefill_kfw(d: Kfwguard, addrs: list[str]) -> None:
    from kfwguard.store import BanRow, Store

    now = time.time()
    store = Store.in_dir(d.state_dir)
    try:
        store.save_bans([BanRow(a, "sshd", "bench: restored", now, now + 7200, 1)
                         for a in addrs])
    finally:
        store.close()


_F2B_DB_INIT = ("from fail2ban.server.database import Fail2BanDb; import sys; "
                "Fail2BanDb(sys.argv[1])")


def fail2ban_python() -> str:
    """The interpreter fail2ban is installed for (its script's #!), not ours."""
    server = shutil.which("fail2ban-server") or "/usr/bin/fail2ban-server"
    with open(server, "rb") as f:
        first = f.readline().decode(errors="replace")
    return first[2:].strip().split()[0] if first.startswith("#!") else "/usr/bin/python3"


def _prefill_f2b(d: Fail2ban, addrs: list[str]) -> None:
    # fail2ban's own code creates its schema (system python: Debian's package).
    subprocess.run([fail2ban_python(), "-c", _F2B_DB_INIT, str(d.dbfile)], check=True,
                   timeout=60)
    now = int(time.time())
    db = sqlite3.connect(d.dbfile)
    with db:
        db.execute("INSERT OR IGNORE INTO jails(name, enabled) VALUES ('sshd', 1)")
        rows = [("sshd", a, now, 7200, 1, "{}") for a in addrs]
        db.executemany("INSERT INTO bans(jail, ip, timeofban, bantime, bancount, data) "
                       "VALUES (?, ?, ?, ?, ?, ?)", rows)
        db.executemany("INSERT INTO bips(jail, ip, timeofban, bantime, bancount, data) "
                       "VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.close()


def _restore_run(kind: str, n: int, cap: float, seed: int) -> dict[str, Any]:
    with namespace("restore") as (host, work):
        d = make_daemon(kind, host, work, Jail(maxretry=5))
        addrs = corpus.distinct_addresses(n, seed=seed)
        if isinstance(d, Kfwguard):
            _prefill_kfw(d, addrs)
        elif isinstance(d, Fail2ban):
            _prefill_f2b(d, addrs)
        probe = subprocess.Popen(
            probe_cmd(host, "wait", *sets_args(d), "--timeout", str(cap),
                      "--addresses", write_addresses(work / "addrs", addrs)),
            stdout=subprocess.PIPE, text=True, cwd=REPO)
        try:
            assert probe.stdout is not None
            if probe.stdout.readline().strip() != "ready":
                raise RuntimeError("probe did not start")
            start = time.perf_counter()
            d.start(wait_ready=False)
            out, _ = probe.communicate(timeout=cap + 120)
            res = json.loads(out.strip().splitlines()[-1])
        finally:
            if probe.poll() is None:
                probe.kill()
            # Let it finish starting before stopping it (a clean stop).
            wait_until(lambda: ('"started"' in d.log() or "Jail 'sshd' started" in d.log()),
                       timeout=30)
            d.stop()
    return _until_all(res, start, n, cap)


def restore(ctx: Context) -> Section:
    plan = ctx.plan
    sec = Section("restore", "Start-up with bans in force → all back in the kernel",
                  f"kfwguard: {plan.restore:,} bans in force written to its state.db "
                  "(with `kfwguard.store.Store`); time from starting the process (Python "
                  "start-up included) until the probe finds every one in the kernel. "
                  f"Median of {plan.runs} run(s). fail2ban: {plan.f2b_restore:,} bans in "
                  "force in its sqlite database (schema created by fail2ban's own "
                  "`Fail2BanDb`, rows in `bans` and `bips`, dbpurgeage 1d, bantime 2h), "
                  f"same measurement, capped at {plan.f2b_cap:.0f} s; its figure for "
                  f"{plan.restore:,} is extrapolated from its rate.")
    if not ctx.netns:
        sec.skipped = ctx.netns_reason
        return sec
    kr = [_restore_run("kfwguard", plan.restore, 120.0, 300 + i) for i in range(plan.runs)]
    fr = (_restore_run("fail2ban", plan.f2b_restore, plan.f2b_cap, 400)
          if ctx.with_f2b else None)
    k_el = median([r["elapsed"] for r in kr if r["elapsed"] is not None])
    f_el = plan.restore / fr["rate"] if fr and fr["rate"] else None
    sec.figures = [
        Figure(f"{plan.restore:,} bans restored", "s", k_el, f_el,
               target="≤ 2 s" if plan.restore >= 100_000 else "",
               met=(k_el <= 2.0) if k_el is not None and plan.restore >= 100_000 else None,
               note=(f"fail2ban figure EXTRAPOLATED from {fr['present']:,}/{fr['n']:,} "
                     f"restored in {fr['elapsed'] if fr['elapsed'] else fr['cap']:.1f} s "
                     f"({fr['rate']:.0f}/s)") if fr else ""),
        Figure("rate", "elements/s", plan.restore / k_el if k_el else None,
               fr["rate"] if fr else None, "higher"),
    ]
    sec.notes.append("kfwguard runs (s): " + ", ".join(
        f"{r['elapsed']:.3f}" if r["elapsed"] is not None else f"timeout ({r['present']} in)"
        for r in kr))
    if not ctx.with_f2b:
        sec.notes.append(f"fail2ban not run: {ctx.f2b_reason}")
    return sec


# -- 5. memory -------------------------------------------------------------------


# Host texts a filter may hold: two generations of engine._HOST_CACHE_MAX.
HOST_CACHE = 2 * 16384
IN_FLIGHT_MIB = 16


def tracker_bytes_per_entry(samples: int = 200_000) -> float:
    """Bytes the jail's failure tracker holds per remembered address: RSS growth in a
    fresh process (``bench/tracker.py``; tracemalloc cannot see the C++ windows)."""
    out = subprocess.run([sys.executable, "-m", "bench.tracker", str(samples)], cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=600)
    return float(json.loads(out.stdout)["bytes_per_entry"])


class RssSampler:
    """Samples a process's RSS every 50 ms in a thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.is_set():
            try:
                v = rss_mb(self.pid)
            except (OSError, LookupError):
                return
            self.peak = max(self.peak, v)
            self.samples.append((time.perf_counter() - t0, v))
            self._stop.wait(0.05)


def _idle(kind: str, settle: float) -> float:
    with namespace("idle") as (host, work):
        kw: dict[str, Any] = {"extra_sources": True} if kind == "kfwguard" else {}
        d = make_daemon(kind, host, work, Jail(maxretry=5, findtime=600, bantime=3600), **kw)
        d.start()
        try:
            time.sleep(settle)
            assert d.proc is not None
            return rss_mb(d.proc.pid)
        finally:
            d.stop()


def _flood_run(kind: str, plan: Plan, cap: float,
               progress: Callable[[Daemon], int | None] | None = None) -> dict[str, Any]:
    maxretry = 3
    with namespace("flood") as (host, work):
        kw: dict[str, Any] = {"max_entries": plan.max_entries} if kind == "kfwguard" else {}
        d = make_daemon(kind, host, work, Jail(maxretry=maxretry, findtime=7200), **kw)
        d.start()
        try:
            assert d.proc is not None
            time.sleep(1.0)
            start_rss = rss_mb(d.proc.pid)
            addrs = corpus.distinct_addresses(plan.flood, seed=500)
            offenders = corpus.distinct_addresses(10, seed=501)
            # Each offender's failures are a quarter of the tracker's size apart:
            # an address that fails maxretry times within that many others is
            # still remembered when it reaches maxretry.
            gap = max(1, min(plan.max_entries // 4, plan.flood // (maxretry * 4)))
            data = work / "flood.log"
            data.write_bytes(corpus.flood(addrs, offenders, maxretry,
                                          corpus.syslog_stamp(time.time()), gap))
            with RssSampler(d.proc.pid) as rss:
                res = run_probe(host, "append", *sets_args(d), "--log", str(d.logfile),
                                "--data", str(data), "--timeout", str(cap),
                                "--addresses", write_addresses(work / "offenders", offenders),
                                timeout=cap)
            hwm = rss_mb(d.proc.pid, "VmHWM")
            counted = progress(d) if progress else None
        finally:
            d.stop()
    done = res["done"]
    return {"start_rss": start_rss, "peak": max(rss.peak, hwm), "offenders": len(offenders),
            "banned": res["present"], "elapsed": None if done is None else done - res["start"],
            "counted": counted, "lines": plan.flood + maxretry * len(offenders), "cap": cap,
            "gap": gap}


def memory(ctx: Context) -> Section:
    plan = ctx.plan
    settle = 2.0 if plan.name == "smoke" else 5.0
    sec = Section("memory", "Memory: idle, and under a distributed attack",
                  f"*Idle*: RSS {settle:.0f} s after start. kfwguard runs the embedded "
                  "default's four jails (sshd, kubelet, kube-apiserver-audit, etcd) on "
                  "file sources (journald may not run here); fail2ban runs its sshd jail "
                  "(pyinotify). *Flood*: "
                  f"{plan.flood:,} distinct addresses fail once each (maxretry 3, so none is "
                  "banned) and 10 offenders fail 3 times each in between; RSS sampled every "
                  "50 ms plus the kernel's high-water mark (VmHWM). kfwguard's "
                  f"`tracker.max_entries` is {plan.max_entries:,}.")
    if not ctx.netns:
        sec.skipped = ctx.netns_reason
        return sec
    k_idle = _idle("kfwguard", settle)
    f_idle = _idle("fail2ban", settle) if ctx.with_f2b else None
    per_entry = tracker_bytes_per_entry()
    kf = _flood_run("kfwguard", plan, 600.0)
    # The cap: RSS before the flood, plus a full tracker and a full host cache
    # of the filter (HOST_CACHE addresses) at twice the measured cost per entry
    # (allocator slack), plus 16 MiB for what is in flight (a 256 KiB read,
    # up to 2000 records per batch, their matches).
    cap = (kf["start_rss"] + 2 * per_entry * (plan.max_entries + HOST_CACHE) / 2**20
           + IN_FLIGHT_MIB)
    ff = (_flood_run("fail2ban", plan, plan.f2b_flood_cap,
                     progress=lambda d: d.total_failed() if isinstance(d, Fail2ban) else None)
          if ctx.with_f2b else None)
    sec.figures = [
        Figure("idle RSS", "MiB", k_idle, f_idle, target="≤ 60 MiB",
               met=None if k_idle is None else k_idle <= 60),
        Figure(f"peak RSS, {plan.flood:,}-address flood", "MiB", kf["peak"],
               ff["peak"] if ff else None,
               target=f"≤ cap {cap:.0f} MiB", met=kf["peak"] <= cap,
               note=("fail2ban capped at "
                     f"{ff['cap']:.0f} s: counted {ff['counted'] or 0:,} of "
                     f"{ff['lines']:,} failures by then" if ff and ff["elapsed"] is None
                     else "")),
        Figure("offenders banned during the flood", "of 10", kf["banned"],
               ff["banned"] if ff else None, "count", target="10 (no missed ban)",
               met=kf["banned"] == kf["offenders"]),
        Figure("flood read in", "s", kf["elapsed"], ff["elapsed"] if ff else None),
    ]
    sec.notes.append(
        f"Cap derivation: RSS before the flood {kf['start_rss']:.1f} MiB + 2 × "
        f"{per_entry:.0f} B/entry (RSS growth per address, `bench/tracker.py`) × "
        f"({plan.max_entries:,} tracker entries + {HOST_CACHE:,} host-cache entries) + "
        f"{IN_FLIGHT_MIB} MiB in "
        f"flight = {cap:.0f} MiB. Offenders' failures were {kf['gap']:,} lines apart.")
    if not ctx.with_f2b:
        sec.notes.append(f"fail2ban not run: {ctx.f2b_reason}")
    return sec


SCENARIOS: dict[str, Callable[[Context], Section]] = {
    "throughput": throughput,
    "throughput-distributed": throughput_distributed,
    "latency": latency,
    "burst": burst,
    "restore": restore,
    "memory": memory,
}
