"""Stopping a background task within a bound, even while NATS does not answer.

A background loop (presence, gauges, maintenance, the claim loop) is told to stop by a flag it
checks, and usually ends at once; one that waits for an answer NATS does not give (a cluster
electing leaders) would hold a shutdown up to the retry deadline, so after ``grace`` seconds it
is cancelled. A loop's own flag is checked as well as the cancel, because Python 3.11's
``asyncio.wait_for`` can swallow a cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

STOP_GRACE = 5.0
"""Seconds a stopping background task gets to end by itself before it is cancelled."""


async def finish(task: asyncio.Task[Any] | None, grace: float = STOP_GRACE) -> None:
    """Wait up to ``grace`` seconds for ``task`` to end, then cancel it (0: at once) and wait
    for the cancel to land (its errors are its own to log; nothing is raised here)."""
    if task is None:
        return
    _, busy = await asyncio.wait({task}, timeout=grace)
    for late in busy:
        late.cancel()
        await asyncio.wait({late}, timeout=STOP_GRACE)  # the cancel lands at its next await


async def unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``work`` until it ends or ``stop`` is set, which cancels it (a signal while a worker
    starts: a connect that is slow or never answers ends at once). Returns whether ``work`` ran
    to its end; its exception is raised."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=STOP_GRACE)
    if task.cancelled() or not task.done():
        return False
    task.result()
    return True
