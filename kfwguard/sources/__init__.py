"""Log sources: where records come from (files, CRI logs, the journal).

``build_source(cfg, position)`` gives the running object for a source's
config; ``position`` is what the daemon saved from ``records[-1].position``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kfwguard.config import FileSourceConfig, JournaldSourceConfig
from kfwguard.sources.base import Sink, Source

__all__ = ["Sink", "Source", "build_source"]


def build_source(
    cfg: FileSourceConfig | JournaldSourceConfig,
    position: str | None,
    *,
    clock: Callable[[], float] = time.time,
) -> Source:
    """The running source for ``cfg``, resuming at ``position`` when given."""
    if isinstance(cfg, FileSourceConfig):
        from kfwguard.sources.globfile import GlobFileSource, is_glob

        if is_glob(str(cfg.path)):
            return GlobFileSource(cfg, position, clock=clock)
        from kfwguard.sources.file import FileSource

        return FileSource(cfg, position, clock=clock)
    # Imported here so hosts without systemd-python can still tail files.
    from kfwguard.sources.journald import JournaldSource

    return JournaldSource(cfg, position, clock=clock)
