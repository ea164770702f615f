"""Waiting on a condition with a deadline, the one way tests wait (never a fixed sleep)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> bool:
    """Poll ``pred`` every ``step`` seconds until it holds or ``timeout`` passes;
    its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


async def until(pred: Callable[[], bool], within: float = 10.0, step: float = 0.005) -> bool:
    """``wait_until`` for a test on the event loop: the loop runs while it waits."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(step)
    return pred()
