"""Every shipped filter against its annotated sample log."""

from __future__ import annotations

from importlib.abc import Traversable

import pytest

from kfwguard.matching import load_filter, shipped_dir, shipped_filter_names
from kfwguard.matching.testing import check_samples, read_samples
from kfwguard.matching.timeparse import parse_rfc3339

NOW = parse_rfc3339("2026-11-26T12:00:00Z") or 0.0
SHIPPED = shipped_filter_names()


def sample_file(name: str) -> Traversable:
    base = shipped_dir() / "samples"
    found = [p for p in (base / f"{name}.log", base / f"{name}.jsonl") if p.is_file()]
    assert len(found) == 1, f"filter {name!r} needs exactly one sample file in samples/"
    return found[0]


class TestShippedFilters:
    def test_library_is_complete(self) -> None:
        """The four filters the design names are shipped."""
        assert {"sshd", "kube-apiserver-audit", "kubelet", "etcd"} <= set(SHIPPED)

    @pytest.mark.parametrize("name", SHIPPED)
    def test_samples(self, name: str) -> None:
        """Every sample line gives what its annotation says, and every rule has a match sample."""
        assert [] == check_samples(load_filter(name), sample_file(name), NOW)

    @pytest.mark.parametrize("name", SHIPPED)
    def test_samples_cover_nomatch(self, name: str) -> None:
        """Every filter's samples also show lines it must leave alone."""
        statuses = {s.expect.status for s in read_samples(sample_file(name))}
        assert "nomatch" in statuses
