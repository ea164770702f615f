"""kfwguard vs fail2ban, side by side: ``python -m bench.run [--quick|--smoke] [--only NAME]``.

Run from the repository root, as root (network namespaces, nftables). It
builds its corpora under bench/out/, installs Debian's fail2ban when it is
missing, runs both daemons on the same input in the same run, prints each
figure with the ratio, and writes bench/RESULTS.md (``--output`` for
another path). Modes:

  (default)  the full run: 1M-line corpus, 3 runs of each kfwguard figure,
             200 latency samples, fail2ban at full size where it finishes
             in minutes (about 30 to 40 minutes in all on 2 cores)
  --quick    smaller corpus, one run each, fail2ban measured on fewer
             items and extrapolated (labelled) — a few minutes
  --smoke    tiny sizes, kfwguard only, for CI: proves every part works
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import sys
import time
from pathlib import Path

from bench import scenarios
from bench.daemons import REPO, fail2ban_installed, install_fail2ban
from bench.report import SECTIONS, Section, machine, print_section, render, to_json

OUT = REPO / "bench" / "out"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a few minutes; fail2ban scaled down")
    mode.add_argument("--smoke", action="store_true", help="seconds; kfwguard only (CI)")
    p.add_argument("--only", action="append", choices=sorted(scenarios.SCENARIOS),
                   help="run only this benchmark (repeatable)")
    p.add_argument("--no-fail2ban", action="store_true", help="measure kfwguard alone")
    p.add_argument("--output", type=Path, default=None,
                   help="report path (default bench/RESULTS.md; bench/out/ for --smoke)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.chdir(REPO)  # the probe and the daemon are run as modules of this checkout
    plan = scenarios.PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    output = args.output or (OUT / "RESULTS-smoke.md" if args.smoke else
                             REPO / "bench" / "RESULTS.md")
    ctx = scenarios.Context(plan=plan, out=OUT, with_f2b=False)
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None:
        ctx.netns = False
        ctx.netns_reason = "needs root, iproute2 and nftables (network namespaces)"
    if args.smoke or args.no_fail2ban:
        ctx.f2b_reason = "kfwguard only in this mode (--smoke / --no-fail2ban)"
    else:
        why = install_fail2ban()
        ctx.with_f2b = why is None and fail2ban_installed()
        ctx.f2b_reason = why or ""
    # Byte-compile the package, as `pip install .` does on a node: a checkout
    # installed editable (or PYTHONDONTWRITEBYTECODE, set on some machines)
    # would recompile every module at each start and time the compiler.
    compileall.compile_dir(REPO / "kfwguard", quiet=1)
    info = machine()
    command = "python -m bench.run" + {"smoke": " --smoke", "quick": " --quick"}.get(
        plan.name, "") + "".join(f" --only {o}" for o in args.only or ())
    print(f"kfwguard benchmark, mode {plan.name}; machine: {info['cpu']}, {info['cores']} "
          f"cores, load {info['load average']}", flush=True)
    sections: list[Section] = []
    started = time.monotonic()
    for key, title in SECTIONS:
        if args.only and key not in args.only:
            sec = Section(key, title, "", skipped="not selected (--only)")
        else:
            t0 = time.monotonic()
            try:
                sec = scenarios.SCENARIOS[key](ctx)
            except Exception as exc:
                # One broken benchmark must not lose the others' figures.
                sec = Section(key, title, "", skipped=f"FAILED: {type(exc).__name__}: {exc}")
            sec.notes.append(f"(took {time.monotonic() - t0:.0f} s)")
        sections.append(sec)
        print_section(sec)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(sections, info, plan.name, command, load_after))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"results-{plan.name}.json").write_text(to_json(sections, info))
    print(f"\nwrote {output} ({time.monotonic() - started:.0f} s)", flush=True)
    failed = [s.key for s in sections if s.skipped.startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
