"""ConfigDiff: which jails, sources and alert actions a reload may keep."""

from __future__ import annotations

from typing import Any

import yaml

from kfwguard.config import Config, parse_config
from kfwguard.configdiff import ConfigDiff


def config(**changes: Any) -> Config:
    data: dict[str, Any] = {
        "sources": [{"name": "auth", "type": "file", "path": "/var/log/auth.log"},
                    {"name": "web", "type": "file", "path": "/var/log/nginx.log"}],
        "jails": [{"name": "sshd", "source": "auth", "filter": "sshd"},
                  {"name": "web", "source": "web", "filter": "nginx-http-auth"}],
        "actions": {"chat": {"type": "webhook", "url": "https://chat.example/hook"}},
    }
    data.update(changes)
    return parse_config(yaml.safe_dump(data), "test.yaml")


FILTERS = {"sshd": "a", "nginx-http-auth": "b"}


class TestConfigDiff:
    def test_unchanged_config_keeps_everything(self) -> None:
        """The same config again keeps every jail and source and restarts no action."""
        diff = ConfigDiff.of(config(), config(node_name="x"), FILTERS, FILTERS)
        assert ConfigDiff(frozenset({"sshd", "web"}), frozenset({"auth", "web"}),
                          frozenset()) == diff

    def test_a_changed_jail_is_rebuilt(self) -> None:
        """A jail whose own settings changed loses its windows; the others keep theirs."""
        new = config(jails=[{"name": "sshd", "source": "auth", "filter": "sshd",
                             "maxretry": 2},
                            {"name": "web", "source": "web", "filter": "nginx-http-auth"}])
        assert frozenset({"web"}) == ConfigDiff.of(config(), new, FILTERS, FILTERS).jails_kept

    def test_a_changed_filter_file_rebuilds_its_jails(self) -> None:
        """A jail whose filter file's text changed is rebuilt."""
        diff = ConfigDiff.of(config(), config(), FILTERS, {**FILTERS, "sshd": "c"})
        assert frozenset({"web"}) == diff.jails_kept

    def test_daemon_wide_settings_rebuild_every_jail(self) -> None:
        """tracker.max_entries and ipv6_prefix shape every jail: all are rebuilt."""
        diff = ConfigDiff.of(config(), config(ipv6_prefix=56), FILTERS, FILTERS)
        assert frozenset() == diff.jails_kept
        diff = ConfigDiff.of(config(), config(tracker={"max_entries": 1000}), FILTERS, FILTERS)
        assert frozenset() == diff.jails_kept

    def test_a_changed_source_is_restarted(self) -> None:
        """A source whose settings changed is rebuilt; the other reads on."""
        new = config(sources=[{"name": "auth", "type": "file", "path": "/var/log/secure"},
                              {"name": "web", "type": "file", "path": "/var/log/nginx.log"}])
        assert frozenset({"web"}) == ConfigDiff.of(config(), new, FILTERS, FILTERS).sources_kept

    def test_only_changed_actions_restart(self) -> None:
        """An action added, removed or changed restarts; an unchanged one does not."""
        new = config(actions={"pager": {"type": "webhook", "url": "https://p.example/h"},
                              "chat": {"type": "webhook", "url": "https://chat.example/hook"}})
        assert frozenset({"pager"}) == ConfigDiff.of(config(), new, FILTERS,
                                                     FILTERS).actions_changed
        gone = config(actions={})
        assert frozenset({"chat"}) == ConfigDiff.of(config(), gone, FILTERS,
                                                    FILTERS).actions_changed
