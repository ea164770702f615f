"""Log sources: where records come from (files, CRI logs, the journal).

One file per kind (its config model, registered in ``SOURCES``, builds the
running source); the import below loads the built-in kinds. A new kind is one
file plus its name on that line.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kfwguard.sources import file, journald  # noqa: F401  (each registers its kind)
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
