"""Micro-batching: concurrent /predict calls share one /invocations call.

A call to the model server costs milliseconds of fixed overhead (HTTP, JSON,
MLflow's DataFrame handling) and microseconds per row, so under load the
gateway sends the rows of many callers at once. At most
``GATEWAY_BATCH_CONCURRENCY`` batches are in flight; while they are, new
requests queue up and leave together as the next batch (up to
``GATEWAY_BATCH_MAX_ROWS`` rows). A lone request is not held back beyond
``GATEWAY_BATCH_MAX_WAIT_MS``, so light traffic keeps its latency.

If the model server refuses a batch (a caller's bad row), each caller's rows
are sent again on their own: the bad caller gets its own error, the others
their predictions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from runtime.supervision import Supervisor
from runtime.tasks import cancel


@dataclass(frozen=True)
class Answer:
    """What the model server said to one call."""

    status: int
    body: Any  # the JSON body
    version: str | None = None  # X-Model-Version: the version that answered
    retry_after: str | None = None  # Retry-After of a 503


Send = Callable[[list[dict[str, Any]]], Awaitable[Answer]]


@dataclass
class _Pending:
    records: list[dict[str, Any]]
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    def __init__(self, send: Send, max_rows: int, max_wait_ms: float, concurrency: int,
                 on_batch: Callable[[int], None] | None = None):
        self._send = send
        self._on_batch = on_batch  # told how many callers share each batch
        self._max_rows = max_rows
        self._max_wait = max_wait_ms / 1000.0
        self._slots = asyncio.Semaphore(concurrency)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._dispatcher: asyncio.Task | None = None
        self._in_flight: set[asyncio.Task] = set()

    def start(self, supervisor: Supervisor) -> None:
        # supervised: a dispatcher that died would leave every later request of this target waiting
        self._dispatcher = supervisor.task("micro-batcher", self._dispatch)

    async def stop(self) -> None:
        await cancel(self._dispatcher)
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def submit(self, records: list[dict[str, Any]]) -> Answer:
        """The model server's answer for these records, possibly sent with others'."""
        pending = _Pending(records)
        await self._queue.put(pending)
        return await pending.done

    async def _dispatch(self) -> None:
        while True:
            first = await self._queue.get()
            await self._slots.acquire()  # while batches are in flight, the queue fills up
            batch, rows = [first], len(first.records)
            deadline = first.arrived + self._max_wait
            while rows < self._max_rows:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                if rows + len(item.records) > self._max_rows:
                    await self._requeue_first(item)
                    break
                batch.append(item)
                rows += len(item.records)
            if self._on_batch:
                self._on_batch(len(batch))
            task = asyncio.create_task(self._run(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _requeue_first(self, item: _Pending) -> None:
        """Put ``item`` back at the head of the queue: it leads the next batch."""
        rest = []
        while not self._queue.empty():
            rest.append(self._queue.get_nowait())
        for pending in (item, *rest):
            self._queue.put_nowait(pending)

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            if len(batch) == 1:
                await self._answer_alone(batch[0])
                return
            combined = [record for pending in batch for record in pending.records]
            try:
                answer = await self._send(combined)
            except Exception as err:  # the transport failed: every caller learns it
                for pending in batch:
                    _settle(pending, exception=err)
                return
            if answer.status == 200:
                predictions = answer.body["predictions"]
                start = 0
                for pending in batch:
                    end = start + len(pending.records)
                    _settle(pending, result=replace(answer, body={"predictions": predictions[start:end]}))
                    start = end
            elif 400 <= answer.status < 500:
                # Someone's rows were refused: find whose by asking for each caller alone.
                await asyncio.gather(*(self._answer_alone(p) for p in batch))
            else:
                for pending in batch:
                    _settle(pending, result=answer)
        except Exception as err:  # noqa: BLE001 (an answer not as expected: its callers learn it, none waits forever)
            for pending in batch:
                _settle(pending, exception=err)
        finally:
            self._slots.release()

    async def _answer_alone(self, pending: _Pending) -> None:
        try:
            _settle(pending, result=await self._send(pending.records))
        except Exception as err:
            _settle(pending, exception=err)


def _settle(pending: _Pending, result: Answer | None = None, exception: BaseException | None = None) -> None:
    if pending.done.done():  # the caller went away
        return
    if exception is not None:
        pending.done.set_exception(exception)
    else:
        pending.done.set_result(result)
