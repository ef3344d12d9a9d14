"""Waiting on conditions, the one way the tests wait for something another task, thread or
process does (never a fixed ``sleep``): ``await until(lambda: stats.windows >= 4, "4 windows")``.

The condition is checked at once and then every ``poll`` seconds; past ``timeout`` the test fails
naming what it waited for. The timeout only bounds a hang: it is no speed target, so it is long.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

TIMEOUT_S = 120.0
POLL_S = 0.01


async def until(
    condition: Callable[[], T | Awaitable[T]], what: str, *, timeout: float = TIMEOUT_S, poll: float = POLL_S
) -> T:
    """Wait (on the event loop) until ``condition()`` is truthy; return its value. The condition
    may be a coroutine function (e.g. one that asks a server)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        await asyncio.sleep(poll)


def until_sync(condition: Callable[[], T], what: str, *, timeout: float = TIMEOUT_S, poll: float = POLL_S) -> T:
    """:func:`until` for a test that is not a coroutine (a subprocess, a browser)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(poll)
    return value
