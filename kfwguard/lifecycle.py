"""What the daemon's lifecycle and the parts it starts agree on.

A ``Component`` (the operator surface, cluster mode) is prepared first thing,
started after the bans are restored and before READY=1, reloaded after the pipeline was rebuilt,
and stopped after the sources. The composition root (``kfwguard.app``) builds
the components and hands them to the daemon; neither imports the other.
"""

from __future__ import annotations

from typing import Protocol

from kfwguard.config import Config


class StartupError(Exception):
    """The daemon cannot start; the message says why."""


class Component(Protocol):
    def prepare(self, cfg: Config) -> None:
        """Begin, before the bans are restored, what only waits on the network
        (cluster mode's listing): its wait then overlaps the rest of the start.
        Nothing may be enforced or changed here."""

    async def start(self, cfg: Config) -> None:
        """Start; raise StartupError if the daemon must not run without it."""

    async def reload(self, cfg: Config) -> None:
        """Take the reloaded config."""

    async def stop(self) -> None:
        """Stop; never raise."""
