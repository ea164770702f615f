"""sd_notify without libsystemd: one datagram per state change to $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Speaks the systemd notify protocol when NOTIFY_SOCKET is set; otherwise silent."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.address: str | None = None
        if address:
            # '@' names a socket in the abstract namespace.
            self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval: float | None = None
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if usec and usec.isdigit() and (not pid or pid == str(os.getpid())):
            # Ping at half the deadline, as sd_watchdog_enabled(3) recommends.
            self.watchdog_interval = int(usec) / 2_000_000

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **state: str | int) -> bool:
        if self.address is None:
            return False
        msg = "\n".join(f"{k.upper()}={v}" for k, v in state.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(msg, self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> None:
        self.send(ready=1, status=status)

    def status(self, status: str) -> None:
        self.send(status=status)

    def stopping(self) -> None:
        self.send(stopping=1, status="stopping")

    def reloading(self) -> None:
        self.send(reloading=1, status="reloading")

    def watchdog(self) -> None:
        self.send(watchdog=1)
