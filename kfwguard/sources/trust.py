"""Who could have written a source's lines: warnings for sources a local user can forge.

A syslog file cannot prove who wrote a line: the tag (``sshd[123]:``) is chosen
by the client, so ``logger -t sshd "Failed password for root from <anyone> port
22 ssh2"``, run by any local user, bans ``<anyone>`` through a jail reading
``/var/log/auth.log``. journald's trusted fields (``_SYSTEMD_UNIT``, ``_COMM``,
``_EXE``, ``_UID``: underscore fields are set by journald from the sender's
credentials, never by the sender) can prove it, and only if the source's
match requires them: ``_SYSTEMD_UNIT`` alone lets any process in the unit's
cgroup through (sshd's ``AuthorizedKeysCommand`` helper, a session with
``UsePAM no``), hence a writer field (``_UID``, ``_COMM`` or ``_EXE``) as well.

These are warnings, not refusals: a node without journald has only files.
They are logged at start and reload and shown in ``status``.
"""

from __future__ import annotations

from collections.abc import Mapping

from kfwguard.config import Config
from kfwguard.matching import Filter, TextFilter


def forgery_warnings(cfg: Config, filters: Mapping[str, Filter]) -> list[str]:
    """One sentence per enabled jail whose lines a local user could forge (each
    source kind says so for itself: ``SourceConfig.forgery_warning``)."""
    sources = {s.name: s for s in cfg.sources}
    out: list[str] = []
    for jail in cfg.jails:
        src = sources.get(jail.source)
        flt = filters.get(jail.filter)
        if not jail.enabled or src is None or flt is None:
            continue
        syslog_tag = isinstance(flt, TextFilter) and "syslog" in flt.headers
        warning = src.forgery_warning(jail.name, jail.filter, syslog_tag=syslog_tag)
        if warning is not None:
            out.append(warning)
    return out
