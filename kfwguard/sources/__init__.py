"""Log sources: where records come from (files, CRI logs, the journal).

One file per kind (its config model, registered in ``SOURCES``, builds the
running source); kinds.py names the built-in ones. A new kind is one file
plus its name there.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kfwguard.sources.base import SOURCES, Sink, Source, SourceConfig

__all__ = ["SOURCES", "Sink", "Source", "SourceConfig", "build_source"]


def build_source(
    cfg: SourceConfig,
    position: str | None,
    *,
    clock: Callable[[], float] = time.time,
) -> Source:
    """The running source for ``cfg``, resuming at ``position`` when given."""
    return cfg.build(position, clock=clock)
