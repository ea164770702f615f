"""Every shipped filter against its annotated sample log."""

from __future__ import annotations

from importlib.abc import Traversable

import pytest

from kfwguard.matching import load_filter, shipped_dir, shipped_filter_names
from kfwguard.matching.testing import check_samples, read_samples
from kfwguard.timestamps import parse_rfc3339

NOW = parse_rfc3339("2026-11-26T12:00:00Z") or 0.0
SHIPPED = shipped_filter_names()


def sample_file(name: str) -> Traversable:
    base = shipped_dir() / "samples"
    found = [p for p in (base / f"{name}.log", base / f"{name}.jsonl") if p.is_file()]
    assert len(found) == 1, f"filter {name!r} needs exactly one sample file in samples/"
    return found[0]


class TestShippedFilters:
    def test_library_is_complete(self) -> None:
        """The filters the design and issue 13 name are shipped."""
        assert {"sshd", "kube-apiserver-audit", "kubelet", "etcd", "ingress-nginx",
                "traefik"} <= set(SHIPPED)

    @pytest.mark.parametrize("name", SHIPPED)
    def test_samples(self, name: str) -> None:
        """Every sample line gives what its annotation says in every mode of the filter,
        and every rule has a match sample."""
        default = load_filter(name)
        problems = check_samples(default, sample_file(name), NOW)
        for mode in default.modes[1:]:
            problems += check_samples(load_filter(f"{name}[mode={mode}]"), sample_file(name), NOW)
        # "has no matching sample" is per mode; a rule is covered if any mode covers it.
        assert [] == [p for p in problems if "has no matching sample" not in p]
        covered = set()
        for mode in default.modes or (None,):
            flt = load_filter(name if mode is None else f"{name}[mode={mode}]")
            missing = {p.split("'")[1] for p in check_samples(flt, sample_file(name), NOW)
                       if "has no matching sample" in p}
            covered |= set(flt.rules) - missing
        all_rules = {r for mode in default.modes or (None,)
                     for r in load_filter(name if mode is None else f"{name}[mode={mode}]").rules}
        assert set() == all_rules - covered

    @pytest.mark.parametrize("name", SHIPPED)
    def test_samples_cover_nomatch(self, name: str) -> None:
        """Every filter's samples also show lines it must leave alone."""
        statuses = {s.expect.status for s in read_samples(sample_file(name))}
        assert "nomatch" in statuses
