"""The ``type: file`` source kind: its config, and the choice (as uvicorn's
``auto.py`` chooses) between tailing one path (kfwguard.sources.tail) and
following the newest match of a glob (kfwguard.sources.globfile)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from kfwguard.configtypes import AbsolutePath
from kfwguard.sources.base import SOURCES, Source, SourceConfig
from kfwguard.sources.formats import LineFormat
from kfwguard.sources.globfile import GlobFileSource, is_glob
from kfwguard.sources.tail import FileSource


@SOURCES.register
class FileSourceConfig(SourceConfig):
    type: Literal["file"]
    # A glob (/var/log/pods/kube-system_etcd-*/etcd/*.log) follows the newest match.
    path: AbsolutePath
    format: LineFormat = "text"
    # A log path that is a symlink resolving outside the directory it is
    # configured in is refused (a writable log directory would otherwise let
    # a local user point the daemon at any file root can read). Set true when
    # such a link is intended (e.g. /var/log/containers/*.log).
    allow_outside_dir: bool = False

    def build(self, position: str | None, *, clock: Callable[[], float]) -> Source:
        if is_glob(str(self.path)):
            return GlobFileSource(self.name, self.path, position, fmt=self.format,
                                  allow_outside_dir=self.allow_outside_dir, clock=clock)
        return FileSource(self.name, self.path, position, fmt=self.format,
                          allow_outside_dir=self.allow_outside_dir, clock=clock)

    def forgery_warning(self, jail: str, filter_name: str, *, syslog_tag: bool) -> str | None:
        if self.format != "text" or not syslog_tag:
            return None
        return (f"jail {jail!r} reads the syslog file {str(self.path)!r}: any local user "
                f"can write a line there with any tag (logger -t {filter_name} ...) and "
                "have the address in it banned; read it from journald with "
                "_SYSTEMD_UNIT and _UID (or _COMM/_EXE) in the match")
