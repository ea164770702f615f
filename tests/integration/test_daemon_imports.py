"""What a started daemon keeps out of its memory (bench/PROFILE.md, idle RSS).

The control socket and the metrics endpoint are served by kfwguard.operator.http,
and the alert senders import aiohttp's client when they first post, so a
daemon with no alert action never loads aiohttp (nor yarl and multidict) while
still answering both endpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.integration.daemon_harness import base_config
from tests.netns import Lab

DAEMON = """
import asyncio, json, sys
from kfwguard.config import parse_config
from kfwguard import app

async def get(reader, writer, path):
    writer.write(f"GET {{path}} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\\r\\n\\r\\n")
    return head.split(b"\\r\\n")[0].decode(), body.decode()

async def main() -> None:
    path = {path!r}
    built = app.build(parse_config(open(path).read(), path), path)
    d = built.daemon
    await d.start()
    try:
        op = built.operator
        control = await get(*await asyncio.open_unix_connection(str(d.cfg.control_socket)),
                            "/status")
        metrics = await get(*await asyncio.open_connection("127.0.0.1", op.metrics.port),
                            "/metrics")
        loaded = sorted(m for m in sys.modules
                        if m.split(".")[0] in ("aiohttp", "yarl", "multidict"))
        print("RESULT", json.dumps({{
            "loaded": loaded,
            "control": [control[0], sorted(json.loads(control[1]))[:3]],
            "metrics": [metrics[0], "kfwguard_bans_active 0.0" in metrics[1]],
        }}))
    finally:
        await d.shutdown()

asyncio.run(main())
"""


def test_daemon_without_actions_never_imports_aiohttp(lab: Lab, tmp_path: Path) -> None:
    """With metrics on and no alert action, a started daemon answers the control
    socket and /metrics, yet aiohttp, yarl and multidict were never imported."""
    host = lab.host("imports")
    log = tmp_path / "auth.log"
    log.write_text("")
    config = base_config(tmp_path, log)
    config["metrics"] = {"listen": "127.0.0.1:0"}
    cfg = tmp_path / "kfwguard.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = host.python(DAEMON.format(path=str(cfg))).stdout.splitlines()
    result = json.loads(next(x for x in out if x.startswith("RESULT "))[7:])
    assert {
        "loaded": [],
        "control": ["HTTP/1.1 200 OK", ["alerts", "bans", "baseline"]],
        "metrics": ["HTTP/1.1 200 OK", True],
    } == result
