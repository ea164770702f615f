"""Write journald entries as a process of a given systemd unit, for real.

journald derives ``_SYSTEMD_UNIT`` from the writer's cgroup path
(``/system.slice/ssh.service`` gives ``ssh.service``), ``_COMM`` and ``_EXE``
from ``/proc/<pid>`` and ``_UID`` from the socket's credentials; no client can
set them. systemd is not PID 1 here, so no unit runs and ``systemd-run``
cannot start one; but the cgroup is only a directory in the cgroup file
systems. The writer is moved into ``/system.slice/<unit>`` (the name=systemd
v1 hierarchy and the unified v2 one, whichever journald reads) before it
execs, so journald records the very fields it records for a real unit's
process. The tests then match on ``_SYSTEMD_UNIT`` as the shipped config does.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.conftest import need

CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"),
                Path("/sys/fs/cgroup"))
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

# A root writer that names itself (``_COMM``) before sending, as sshd would be.
_SEND = """
import ctypes, sys
import systemd.journal
name = sys.argv[1].encode()
ctypes.CDLL(None).prctl(15, name, 0, 0, 0)  # PR_SET_NAME: /proc/self/comm
for message in sys.argv[3:]:
    systemd.journal.send(message, SYSLOG_IDENTIFIER=sys.argv[2])
"""


def _hierarchies() -> list[Path]:
    """The cgroup hierarchies journald may read a unit from (v1 name=systemd, v2)."""
    out = []
    for root in CGROUP_ROOTS:
        if (root / "cgroup.procs").exists():
            out.append(root)
    return out


@contextlib.contextmanager
def unit_cgroup(unit: str) -> Iterator[list[Path]]:
    """``/system.slice/<unit>`` in every cgroup hierarchy; removed afterwards."""
    roots = _hierarchies()
    need(os.geteuid() == 0 and bool(roots), "needs root and a writable cgroup file system")
    made = []
    try:
        for root in roots:
            path = root / "system.slice" / unit
            if not path.exists():
                path.mkdir(parents=True)
                made.append(path)
        yield [root / "system.slice" / unit for root in roots]
    finally:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # system.slice, when no one else uses it


def run_in_unit(unit: str, argv: Sequence[str], *, stdin: bytes | None = None) -> None:
    """Run ``argv`` as a process of ``unit`` (see the module doc) and wait for it."""
    with unit_cgroup(unit) as groups:
        def enter() -> None:
            for group in groups:
                (group / "cgroup.procs").write_text(str(os.getpid()))

        subprocess.run(list(argv), input=stdin, preexec_fn=enter, check=True,
                       capture_output=True, timeout=30)


def send_as_root(unit: str, comm: str, identifier: str, *messages: str) -> None:
    """Entries from a root process of ``unit`` whose ``_COMM`` is ``comm``."""
    run_in_unit(unit, [sys.executable, "-c", _SEND, comm, identifier, *messages])


def logger_as_nobody(unit: str, identifier: str, *messages: str) -> None:
    """Entries from ``logger --journald`` run as nobody inside ``unit``'s cgroup:
    what an AuthorizedKeysCommand helper could write."""
    need(os.path.exists("/usr/bin/setpriv"), "needs setpriv")
    for message in messages:
        entry = f"MESSAGE={message}\nSYSLOG_IDENTIFIER={identifier}\n".encode()
        run_in_unit(unit, [*NOBODY, "logger", "--journald"], stdin=entry)
