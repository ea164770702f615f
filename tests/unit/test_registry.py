"""A source kind and an alert kind added the way a new one is: defined, with
their config models and factories, in one file (this test module) and
registered there. config.py accepts them and the daemon and the alert service
build them, without a change to kfwguard/config.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import pytest

from kfwguard.alerts.base import SENDERS, ActionConfig, Sender
from kfwguard.alerts.events import AlertEvent, Ban
from kfwguard.alerts.service import AlertService
from kfwguard.config import ConfigError, parse_config
from kfwguard.model import Record
from kfwguard.sources.base import SOURCES, Backlog, Sink, Source, SourceConfig
from kfwguard.store import BanRow
from tests.conftest import eventually

# -- the new source kind -----------------------------------------------------------


class LinesSource:
    """Delivers its configured lines once, then idles (a plugin's own source)."""

    def __init__(self, name: str, lines: list[str]) -> None:
        self.name = name
        self.lines = lines
        self.lines_read = 0
        self.skipped: dict[str, int] = {}
        self.ready = asyncio.Event()
        self.problem: str | None = None

    def lag(self) -> float | None:
        return 0.0

    def backlog(self) -> Backlog:
        return Backlog(unread_bytes=None, caught_up=True)

    def position(self) -> str | None:
        return str(self.lines_read)

    async def run(self, sink: Sink) -> None:
        self.ready.set()
        sink([Record(text=t, position=str(i + 1)) for i, t in enumerate(self.lines)])
        self.lines_read = len(self.lines)
        await asyncio.Event().wait()


@SOURCES.register
class LinesSourceConfig(SourceConfig):
    type: Literal["test-lines"]
    lines: list[str]

    def build(self, position: str | None, *, clock: Callable[[], float]) -> Source:
        return LinesSource(self.name, self.lines)


# -- the new alert kind ------------------------------------------------------------

RECORDED: list[AlertEvent] = []


class Recorder:
    aggregate = 0.0

    def __init__(self, name: str) -> None:
        self.name = name

    async def send(self, events: Sequence[AlertEvent]) -> None:
        RECORDED.extend(events)

    async def close(self) -> None:
        pass


@SENDERS.register
class RecorderActionConfig(ActionConfig):
    type: Literal["test-recorder"]

    def build(self, name: str, node: str) -> Sender:
        return Recorder(name)


# -- the tests ----------------------------------------------------------------------


def failures(addr: str, n: int) -> list[str]:
    stamp = time.strftime("%b %e %H:%M:%S")
    return [f"{stamp} node1 sshd[1]: Failed password for root from {addr} port 22 ssh2"] * n


def config_text(tmp_path: Path, addr: str = "203.0.113.9") -> str:
    lines = ", ".join(f'"{x}"' for x in failures(addr, 2))
    return f"""\
state_dir: {tmp_path}/state
control_socket: {tmp_path}/run/control.sock
sources:
  - {{name: mem, type: test-lines, lines: [{lines}]}}
actions:
  rec: {{type: test-recorder}}
jails:
  - {{name: sshd, source: mem, filter: sshd, maxretry: 2, actions: [rec]}}
"""



class TestRegistry:
    def test_config_accepts_kinds_defined_elsewhere(self, tmp_path: Path) -> None:
        """config.py validates entries of the new kinds with their own models."""
        cfg = parse_config(config_text(tmp_path))
        assert [LinesSourceConfig] == [type(s) for s in cfg.sources]
        assert RecorderActionConfig is type(cfg.actions["rec"])

    def test_new_kind_refuses_unknown_keys_with_line(self, tmp_path: Path) -> None:
        """A key the new kind's model does not have is refused, naming line and key."""
        text = config_text(tmp_path).replace("type: test-recorder", "type: test-recorder, x: 1")
        with pytest.raises(ConfigError) as err:
            parse_config(text, "k.yaml")
        assert "k.yaml: line 6: actions.rec.x: unknown key" == str(err.value)

    def test_unknown_type_names_the_registered_kinds(self) -> None:
        """An unknown type: is blamed on its line and lists every kind, new ones too."""
        with pytest.raises(ConfigError) as err:
            parse_config("sources:\n  - name: a\n    type: tail\n", "k.yaml")
        message = str(err.value)
        assert message.startswith("k.yaml: line 3: sources[0].type: unknown source type 'tail'")
        assert {"file", "journald", "test-lines"} <= set(message.split("one of: ")[1]
                                                         .split(", "))

    def test_missing_type_names_the_kinds(self) -> None:
        """An entry without type: is blamed on its line and lists the kinds to choose."""
        with pytest.raises(ConfigError) as err:
            parse_config("sources:\n  - {name: a, path: /x}\n", "k.yaml")
        assert str(err.value).startswith(
            "k.yaml: line 2: sources[0].type: Field required; one of: file, journald")

    def test_a_taken_tag_is_refused(self) -> None:
        """A second kind claiming a tag already registered is refused at import, naming
        the kind that holds it; the config keeps the first."""
        class Impostor(SourceConfig):
            type: Literal["file"]

            def build(self, position: str | None, *, clock: Callable[[], float]) -> Source:
                raise AssertionError

        taken = r"'file' is already kfwguard\.sources\.file\.FileSourceConfig"
        with pytest.raises(ValueError, match=taken):
            SOURCES.register(Impostor)
        cfg = parse_config("sources: [{name: a, type: file, path: /x}]\n")
        assert "FileSourceConfig" == type(cfg.sources[0]).__name__

    async def test_alert_service_builds_and_feeds_the_new_sender(self, tmp_path: Path) -> None:
        """The alert service builds the new sender from config and hands it typed events."""
        RECORDED.clear()
        svc = AlertService(parse_config(config_text(tmp_path)), None)
        await svc.start()
        try:
            now = time.time()
            svc.on_ban([BanRow("203.0.113.9", "sshd", "2 failures", now, now + 60, 1)])
            await eventually(lambda: bool(RECORDED))
        finally:
            await svc.stop()
        [ev] = RECORDED
        assert isinstance(ev, Ban)
        assert ("203.0.113.9", "sshd") == (ev.target, ev.jail)
