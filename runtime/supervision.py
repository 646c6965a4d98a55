"""Background loops that survive their own faults: run, and if one dies anyway, log, count, show and restart it.

A service's background loops (the gateway's job runner, inference-log writer, rollback watcher and
monitor schedule; the model server's registry follower) each serve many items. Two layers keep them going:

- inside a loop, one item's failure is that item's: the loop catches it, records the reason where the
  item lives (a job's ``error``, a dropped log row) and tells :meth:`Supervisor.item_failed`, which logs
  and counts it; the loop goes on to the next item and never takes the same poison item again;
- around a loop, the :class:`Supervisor`: a loop that raises anyway (a bug, a store gone mid-step) is
  logged with its traceback, counted, marked ``restarting`` with its last error (``/ready``, ``/status``)
  and started again after a backoff that doubles while it keeps dying young.

The counts are read at scrape time (:meth:`Supervisor.report`): this module needs no metrics library,
so both deployables use it as it is.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from contract.errors import first_line

log = logging.getLogger("runtime.supervision")

FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
# A loop that ran this long before dying was healthy: its next restart waits the first backoff again.
HEALTHY_AFTER_SECONDS = 60.0
RUNNING, RESTARTING, STOPPED = "running", "restarting", "stopped"


@dataclass
class LoopState:
    """What is known of one supervised loop."""

    name: str
    state: str = RUNNING
    restarts: int = 0  # deaths so far, each followed by a restart
    items_failed: int = 0  # items the loop failed or set aside and went on
    last_error: str | None = None  # the last death's exception, one line
    last_died_at: float | None = None  # wall clock
    started_at: float = 0.0  # monotonic, of the current run

    def describe(self) -> dict[str, Any]:
        return {"state": self.state, "restarts": self.restarts, "items_failed": self.items_failed,
                "last_error": self.last_error, "last_died_at": self.last_died_at}


class Supervisor:
    """Runs background loops (threads or asyncio tasks), restarts the ones that die, and keeps their story."""

    def __init__(self, first_backoff: float = FIRST_BACKOFF_SECONDS, max_backoff: float = MAX_BACKOFF_SECONDS,
                 healthy_after: float = HEALTHY_AFTER_SECONDS):
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.healthy_after = healthy_after
        self.loops: dict[str, LoopState] = {}
        self._lock = threading.Lock()  # loops in threads and in the event loop report at once

    # --- running loops ----------------------------------------------------------------------
    def thread(self, name: str, loop: Callable[[], None], stop: threading.Event) -> threading.Thread:
        """Start ``loop`` in a daemon thread, again after each death, until ``stop`` is set."""

        def supervise() -> None:
            quick_deaths = 0
            while not stop.is_set():
                state = self._started(name)
                try:
                    loop()
                except Exception as err:  # noqa: BLE001 (the loop's death: logged, counted, shown, restarted)
                    quick_deaths = self._died(state, err, quick_deaths)
                else:
                    if stop.is_set():
                        break
                    quick_deaths = self._died(state, RuntimeError("the loop returned without being stopped"),
                                              quick_deaths)
                stop.wait(self._backoff(quick_deaths))
            self._stopped(name)

        worker = threading.Thread(target=supervise, name=name, daemon=True)
        worker.start()
        return worker

    def task(self, name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task:
        """Run ``loop()`` as an asyncio task, again after each death, until the task is cancelled."""

        async def supervise() -> None:
            quick_deaths = 0
            try:
                while True:
                    state = self._started(name)
                    try:
                        await loop()
                        err: Exception = RuntimeError("the loop returned without being stopped")
                    except Exception as died:  # noqa: BLE001 (the loop's death: logged, counted, shown, restarted)
                        err = died
                    quick_deaths = self._died(state, err, quick_deaths)
                    await asyncio.sleep(self._backoff(quick_deaths))
            finally:  # cancelled: the service is stopping
                self._stopped(name)

        return asyncio.create_task(supervise(), name=name)

    # --- what loops report ----------------------------------------------------------------
    def item_failed(self, loop: str, item: str, err: BaseException) -> None:
        """One item of ``loop`` failed (or was set aside) and the loop goes on: logged with its traceback,
        counted. The loop records the reason on the item itself."""
        with self._lock:
            self._state(loop).items_failed += 1
        log.warning("%s: %s failed, the loop goes on: %s", loop, item, first_line(err, 300),
                    exc_info=(type(err), err, err.__traceback__),
                    extra={"loop": loop, "item": item, "error": first_line(err, 300)})

    def report(self) -> dict[str, dict[str, Any]]:
        """Every loop known so far, by name: state, restarts, items failed, last error."""
        with self._lock:
            return {name: state.describe() for name, state in self.loops.items()}

    def troubled(self) -> dict[str, dict[str, Any]]:
        """The loops that have died at least once, or are not running now: what ``/ready`` names."""
        return {name: entry for name, entry in self.report().items()
                if entry["restarts"] or entry["state"] == RESTARTING}

    # --- bookkeeping ----------------------------------------------------------------------
    def _state(self, name: str) -> LoopState:
        if name not in self.loops:
            self.loops[name] = LoopState(name)
        return self.loops[name]

    def _started(self, name: str) -> LoopState:
        with self._lock:
            state = self._state(name)
            state.state, state.started_at = RUNNING, time.monotonic()
            return state

    def _stopped(self, name: str) -> None:
        with self._lock:
            self._state(name).state = STOPPED

    def _died(self, state: LoopState, err: Exception, quick_deaths: int) -> int:
        """Record a death; the count of deaths in a row of a loop that never ran long (for the backoff)."""
        lived = time.monotonic() - state.started_at
        quick_deaths = 0 if lived >= self.healthy_after else quick_deaths
        with self._lock:
            state.state, state.restarts = RESTARTING, state.restarts + 1
            state.last_error = f"{type(err).__name__}: {first_line(err, 300)}"
            state.last_died_at = time.time()
        backoff = self._backoff(quick_deaths + 1)
        log.error("background loop %s died after %.1fs; restarting it in %.1fs: %s", state.name, lived, backoff,
                  state.last_error, exc_info=(type(err), err, err.__traceback__),
                  extra={"loop": state.name, "restarts": state.restarts})
        return quick_deaths + 1

    def _backoff(self, quick_deaths: int) -> float:
        return min(self.max_backoff, self.first_backoff * 2 ** max(quick_deaths - 1, 0))
