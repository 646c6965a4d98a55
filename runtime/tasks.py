"""Background asyncio tasks of our services."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable


async def cancel(task: asyncio.Task | None) -> None:
    """Cancel a background task and wait until it has stopped (None: nothing was started)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def cancel_all(tasks: Iterable[asyncio.Future]) -> list[Exception]:
    """Cancel ``tasks`` and wait until every one has stopped; what those that failed raised (a cancellation,
    which was asked for, is not among it)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    ended = await asyncio.gather(*tasks, return_exceptions=True)
    return [e for e in ended if isinstance(e, Exception)]
