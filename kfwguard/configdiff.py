"""What a reload changes (as Vector's ``ConfigDiff``): the parts left alone keep running.

A jail is kept, failure windows and all, when its own config, its filter (the
file's text) and the daemon-wide settings it was built from are unchanged; a
source is kept, reading on from where it is, when its config is unchanged; an
alert action is restarted only when its config changed. What is kept is decided
here, from the two configs only; ``Daemon.reload`` acts on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kfwguard.config import Config


@dataclass(frozen=True)
class ConfigDiff:
    jails_kept: frozenset[str]
    sources_kept: frozenset[str]
    # Alert actions added, removed or changed: their workers restart.
    actions_changed: frozenset[str]

    @classmethod
    def of(cls, old: Config, new: Config, old_filters: Mapping[str, str],
           new_filters: Mapping[str, str]) -> ConfigDiff:
        """The diff of ``old`` → ``new``; ``*_filters`` map filter name → fingerprint
        (``pipeline.filter_fingerprint``) of the filters each config's jails use."""
        built_alike = (old.tracker.max_entries == new.tracker.max_entries
                       and old.ipv6_prefix == new.ipv6_prefix
                       and old.baseline.control_plane_cidrs == new.baseline.control_plane_cidrs)
        old_jails = {j.name: j for j in old.jails if j.enabled}
        jails = frozenset(
            j.name for j in new.jails
            if built_alike and j.enabled and old_jails.get(j.name) == j
            and j.filter in old_filters and old_filters[j.filter] == new_filters.get(j.filter))
        old_sources = {s.name: s for s in old.sources}
        sources = frozenset(s.name for s in new.sources if old_sources.get(s.name) == s)
        return cls(jails, sources, changed_actions(old, new))


def changed_actions(old: Config, new: Config) -> frozenset[str]:
    """The alert actions added, removed or changed from ``old`` to ``new``."""
    names = old.actions.keys() | new.actions.keys()
    return frozenset(n for n in names if old.actions.get(n) != new.actions.get(n))
