"""A file source with a glob path follows static pods' CRI logs across restarts."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from kfwguard.sources import build_source, globfile
from kfwguard.sources.file import FileSourceConfig
from tests.integration.test_sources_file import running


def cri(msg: str) -> str:
    return f"2026-11-26T05:00:00.000000000Z stderr F {msg}\n"


def cfg(pattern: Path) -> FileSourceConfig:
    return FileSourceConfig(name="etcd", type="file", format="cri", path=pattern)


class TestGlobFileSource:
    async def test_follows_newest_match_and_new_container(self, tmp_path: Path,
                                                          monkeypatch: object) -> None:
        """The newest file matching the pattern is tailed; a newer one (a restarted
        container's log) is read from its start; a resume finds the file by inode."""
        monkeypatch.setattr(globfile, "RESCAN", 0.05)  # type: ignore[attr-defined]
        pods = tmp_path / "pods"
        pod1 = pods / "kube-system_etcd-node1_uid1" / "etcd"
        pod1.mkdir(parents=True)
        (pod1 / "0.log").write_text(cri("old, before start"))
        pattern = pods / "kube-system_etcd-*" / "etcd" / "*.log"
        src = build_source(cfg(pattern), None)
        async with running(src) as t:
            await asyncio.wait_for(src.ready.wait(), 5)
            with (pod1 / "0.log").open("a") as f:
                f.write(cri("first"))
            await t.until_text("first")
            await asyncio.sleep(0.05)
            pod2 = pods / "kube-system_etcd-node1_uid2" / "etcd"
            pod2.mkdir(parents=True)
            (pod2 / "0.log").write_text(cri("new pod line 1") + cri("new pod line 2"))
            os.utime(pod2 / "0.log", None)
            await t.until_text("new pod line 2")
            saved = src.position()
        assert ["first", "new pod line 1", "new pod line 2"] == t.texts
        with (pod2 / "0.log").open("a") as f:
            f.write(cri("while stopped"))
        again = build_source(cfg(pattern), saved)
        async with running(again) as t2:
            await t2.until_text("while stopped")
        assert ["while stopped"] == t2.texts

    async def test_waits_for_first_match(self, tmp_path: Path, monkeypatch: object) -> None:
        """With nothing matching yet, the source waits and its problem says so; a
        file that appears later is read from its start."""
        monkeypatch.setattr(globfile, "RESCAN", 0.05)  # type: ignore[attr-defined]
        pattern = tmp_path / "pods" / "*" / "etcd" / "*.log"
        src = build_source(cfg(pattern), None)
        async with running(src) as t:
            await asyncio.wait_for(src.ready.wait(), 5)
            assert f"no file matches {pattern}" == src.problem  # shown in status
            d = tmp_path / "pods" / "p" / "etcd"
            d.mkdir(parents=True)
            (d / "0.log").write_text(cri("hello"))
            await t.until_text("hello")
            assert None is src.problem
        assert ["hello"] == t.texts
