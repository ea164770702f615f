"""Fair scheduling: a flood on one source does not starve the others."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kfwguard.model import Record
from kfwguard.sources import build_source
from kfwguard.sources.file import FileSourceConfig


class TestFairness:
    async def test_flood_does_not_starve_other_source(self, tmp_path: Path) -> None:
        """With 300k lines arriving on one source and one line on another, the lone
        line is delivered before the flood has been read to its end."""
        flood_path, quiet_path = tmp_path / "flood.log", tmp_path / "quiet.log"
        flood_path.write_text("")
        quiet_path.write_text("")
        order: list[str] = []

        def sink_for(name: str):  # type: ignore[no-untyped-def]
            def sink(batch: list[Record]) -> None:
                order.extend(name for _ in batch)
            return sink

        flood = build_source(FileSourceConfig(name="flood", type="file", path=flood_path), None)
        quiet = build_source(FileSourceConfig(name="quiet", type="file", path=quiet_path), None)
        tasks = [asyncio.create_task(flood.run(sink_for("flood"))),
                 asyncio.create_task(quiet.run(sink_for("quiet")))]
        try:
            await asyncio.wait_for(asyncio.gather(flood.ready.wait(), quiet.ready.wait()), 10)
            flood_path.write_text("noise line that matches nothing at all\n" * 300_000)
            quiet_path.write_text("the attack\n")
            for _ in range(600):
                if order.count("flood") == 300_000 and "quiet" in order:
                    break
                await asyncio.sleep(0.05)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert 300_000 == order.count("flood")
        assert order.index("quiet") < len(order) - 1
        assert order.index("quiet") < 300_000 - 1000  # well before the flood ended
