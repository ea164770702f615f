"""Figures, side by side: the data model of a benchmark run and its Markdown rendering."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

# "count": a tally, not a speed: no ratio is shown.
Better = Literal["higher", "lower", "count"]


@dataclass
class Figure:
    """One measured quantity for both daemons (None: not measured, see the note)."""

    name: str
    unit: str
    kfw: float | None
    f2b: float | None = None
    better: Better = "lower"
    target: str = ""
    met: bool | None = None
    note: str = ""

    def ratio(self) -> float | None:
        """How many times better kfwguard is (> 1: kfwguard ahead)."""
        if self.kfw is None or self.f2b is None or not self.kfw or not self.f2b:
            return None
        if self.better == "count":
            return None
        return self.kfw / self.f2b if self.better == "higher" else self.f2b / self.kfw


@dataclass
class Section:
    key: str
    title: str
    how: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str = ""


SECTIONS = (
    ("throughput", "Matching throughput, sshd filter"),
    ("throughput-distributed", "Matching throughput, sshd filter, distributed brute force"),
    ("latency", "Ban latency: line appended → element in the kernel set"),
    ("burst", "Burst: distinct offenders written at once → all in the kernel"),
    ("restore", "Start-up with bans in force → all back in the kernel"),
    ("memory", "Memory: idle, and under a distributed attack"),
)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0 to 100): a value that was actually measured."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _cmd(*args: str) -> str:
    if shutil.which(args[0]) is None:
        return "not installed"
    try:
        r = subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr) else "?"


def machine() -> dict[str, str]:
    """What the figures were measured on; the load average says how noisy it was."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "unknown"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "fail2ban": _cmd("fail2ban-server", "-V"),
        "nft": _cmd("nft", "--version"),
        "kfwguard block scan": _block_engine(),
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _block_engine() -> str:
    """Which engine scans the sshd filter's blocks here (the C++ scanner is
    optional at install): the figures depend on it."""
    from kfwguard.matching import load_filter

    return load_filter("sshd").block_engine


def _num(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    if unit == "lines/s" or unit == "bans/s" or unit == "elements/s":
        return f"{v:,.0f} {unit}"
    if unit == "ms":
        return f"{v:,.1f} ms"
    if unit == "s":
        return f"{v:,.3f} s" if v < 10 else f"{v:,.1f} s"
    if unit == "MiB":
        return f"{v:,.1f} MiB"
    return f"{v:,.0f} {unit}".strip()


def render(sections: list[Section], info: dict[str, str], mode: str, command: str,
           load_after: str) -> str:
    out = [
        "# kfwguard vs fail2ban: benchmark results",
        "",
        f"Produced by `{command}` (mode: {mode}). Each figure is the median of the "
        "runs stated in its section; both daemons read the same bytes in the same run, "
        "each in a network namespace of its own.",
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in info.items()),
        f"| load average after | {load_after} |",
        "",
        "A load average near or above the core count means other work shared the CPU: "
        "figures from such a run are noisy.",
        "",
        "## Targets (issue 6)",
        "",
        "| figure | kfwguard | target | met |",
        "| --- | --- | --- | --- |",
    ]
    for s in sections:
        for f in s.figures:
            if f.target:
                met = "—" if f.met is None else ("yes" if f.met else "**no**")
                out.append(f"| {f.name} | {_num(f.kfw, f.unit)} | {f.target} | {met} |")
    for s in sections:
        out += ["", f"## {s.title}", "", s.how, ""]
        if s.skipped:
            out += [f"Skipped: {s.skipped}", ""]
            continue
        out += ["| figure | kfwguard | fail2ban | kfwguard ahead by | target |",
                "| --- | --- | --- | --- | --- |"]
        for f in s.figures:
            r = f.ratio()
            ratio = "—" if r is None else f"{r:,.1f}×"
            target = f.target + (" ✔" if f.met else " ✘" if f.met is False else "")
            out.append(f"| {f.name} | {_num(f.kfw, f.unit)} | {_num(f.f2b, f.unit)} | "
                       f"{ratio} | {target} |")
            if f.note:
                out.append(f"|   ↳ {f.note} | | | | |")
        if s.notes:
            out += ["", *(f"- {n}" for n in s.notes)]
    return "\n".join(out) + "\n"


def to_json(sections: list[Section], info: dict[str, str]) -> str:
    return json.dumps({"machine": info, "sections": [asdict(s) for s in sections]}, indent=1)


def print_section(s: Section) -> None:
    """The side-by-side figures of one section, on the terminal as soon as it is done."""
    print(f"\n== {s.title}", flush=True)
    if s.skipped:
        print(f"   skipped: {s.skipped}", flush=True)
        return
    for f in s.figures:
        r = f.ratio()
        ratio = "" if r is None else f"  ({r:,.1f}× kfwguard)"
        verdict = "" if f.met is None else ("  target met" if f.met else "  TARGET MISSED")
        print(f"   {f.name:<46} kfwguard {_num(f.kfw, f.unit):>18}   "
              f"fail2ban {_num(f.f2b, f.unit):>18}{ratio}{verdict}", flush=True)
        if f.note:
            print(f"      {f.note}", flush=True)
    for n in s.notes:
        print(f"   - {n}", flush=True)
