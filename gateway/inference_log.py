"""The inference log, written by the gateway: every answered prediction, off the request path.

A request only appends one entry to a bounded buffer in memory (microseconds):
its body as it came (or its records, when they came another way) and the
model's answer; a background task encodes and writes the entries in batches,
in a thread, one row per request (``contract/inference_log.py``). When the store is slow
or down, predictions go on answering at full speed: the rows that do not fit in
the buffer (``INFERENCE_LOG_BUFFER_ROWS``) are dropped and counted
(``gateway_inference_log_dropped_rows_total``), the incident is logged once when
it starts and once when writing resumes, and writing resumes by itself.
Requests are sampled (``INFERENCE_LOG_SAMPLE_RATE``, all by default), columns
named in ``INFERENCE_LOG_EXCLUDE_COLUMNS`` are never stored, and rows older than
``INFERENCE_LOG_RETENTION_DAYS`` are pruned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Engine

from contract import inference_log as store
from contract.errors import first_line
from contract.packing import pack, pack_many, unpack
from contract.settings import Settings
from contract.tables import column_name
from gateway.observability import Metrics
from runtime.supervision import Supervisor
from runtime.tasks import cancel

log = logging.getLogger("gateway.inference_log")
BATCH_ROWS = 2000  # predictions per transaction (whole requests: one may hold more)
FLUSH_SECONDS = 0.5
PRUNE_SECONDS = 3600.0
MAX_BACKOFF_SECONDS = 5.0
LOOP_NAME = "inference-log"


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 5x as much to make, and one is made per request
class Entry:
    """One answered request, as queued: encoded for the store by the writer, off the request path."""

    key: str
    role: str
    request_id: str | None
    created_at: float
    model: str
    version: str
    inputs_format: str  # store.JSON_ROWS or store.CSV_ROWS
    inputs: bytes | list[dict[str, Any]]  # the body as sent (packed, if ``packed``), or the records
    outputs: list[dict[str, Any]]  # the model's rows
    latency_ms: float
    rows: int  # len(outputs)
    packed: bool = False  # the body came packed (it went to the model server so): 30x less to keep queued


class InferenceLog:
    def __init__(self, settings: Settings, metrics: Metrics, supervisor: Supervisor | None = None):
        self.uri = settings.inference_log
        self.sample_rate = settings.inference_log_sample_rate
        self.retention_seconds = settings.inference_log_retention_days * 86400
        self.capacity = settings.inference_log_buffer_rows
        self.exclude = frozenset(column_name(c) for c in settings.inference_log_exclude_columns)
        self.metrics = metrics
        self.pending: deque[Entry] = deque()
        self.pending_rows = 0
        self._engine: Engine | None = None
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()
        self._failing_since: float | None = None  # an incident: writes failing, or rows dropped
        self._lost_in_incident = 0
        self._task: asyncio.Task | None = None
        self._next_prune = 0.0
        self.supervisor = supervisor or Supervisor()  # runs the writer, counts the entries set aside
        # read when scraped, exact, rather than set on every request
        metrics.log_pending.set_function(lambda: self.pending_rows)

    # --- the request path ---------------------------------------------------------------
    def record(self, key: str, request_id: str | None, model: str, version: str, inputs_format: str,
               inputs: bytes | list[dict[str, Any]], outputs: list[dict[str, Any]], latency_ms: float,
               role: str = store.ANSWER, packed: bytes | None = None) -> None:
        """Queue a request's predictions for the log (unless the request is not sampled): ``inputs`` are the
        body as sent (``inputs_format`` JSON or CSV; ``packed``, if it was packed already) or its records,
        ``outputs`` the model's rows."""
        if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        rows = len(outputs)
        if self.pending_rows + rows > self.capacity:
            self._lose(rows, "buffer_full", f"the buffer of {self.capacity} rows is full")
            return
        self.pending.append(Entry(key, role, request_id, time.time(), model, version, inputs_format,
                                  inputs if packed is None else packed, outputs, latency_ms, rows, packed is not None))
        self.pending_rows += rows
        if self.pending_rows >= BATCH_ROWS:
            self._wake.set()

    def stored(self, batch: list[Entry]) -> tuple[list[dict[str, Any]], list[tuple[Entry, Exception]]]:
        """The entries as the store's rows (in the writer's thread), and those that cannot be made into rows, with
        why. All packed together, in one call for the inputs and one for the answers (contract/packing.py)."""
        encoded, unreadable = [], []
        for entry in batch:
            try:
                encoded.append((entry, *self._encoded(entry)))
            except Exception as err:  # noqa: BLE001 (this entry is poison: set aside, the rest stored)
                unreadable.append((entry, err))
        try:
            packed_inputs = iter(pack_many([inputs for _, _, inputs, packed, _ in encoded if not packed]))
            answers = pack_many([answer for *_, answer in encoded])
        except Exception:  # noqa: BLE001 (one entry zstd refuses: packed one by one, that one set aside alone)
            return self._stored_one_by_one(encoded, unreadable)
        rows = [self._row(entry, inputs_format, inputs if packed else next(packed_inputs), answer)
                for (entry, inputs_format, inputs, packed, _), answer in zip(encoded, answers, strict=True)]
        return rows, unreadable

    def _stored_one_by_one(self, encoded: list[tuple[Entry, str, bytes, bool, bytes]],
                           unreadable: list[tuple[Entry, Exception]],
                           ) -> tuple[list[dict[str, Any]], list[tuple[Entry, Exception]]]:
        rows = []
        for entry, inputs_format, inputs, packed, answer in encoded:
            try:
                rows.append(self._row(entry, inputs_format, inputs if packed else pack(inputs), pack(answer)))
            except Exception as err:  # noqa: BLE001 (this entry is poison: set aside, the rest stored)
                unreadable.append((entry, err))
        return rows, unreadable

    @staticmethod
    def _row(entry: Entry, inputs_format: str, inputs: bytes, answer: bytes) -> dict[str, Any]:
        return {"id": entry.key, "role": entry.role, "request_id": entry.request_id, "created_at": entry.created_at,
                "model_name": entry.model, "model_version": entry.version, "rows": entry.rows,
                "inputs_format": inputs_format, "inputs": inputs, "outputs": answer, "latency_ms": entry.latency_ms}

    def _encoded(self, entry: Entry) -> tuple[str, bytes, bool, bytes]:
        """An entry's inputs as stored: their format, their bytes and whether these are packed already; and its
        answer as JSON."""
        inputs_format, inputs = entry.inputs_format, entry.inputs
        answer = orjson.dumps(entry.outputs)
        if self.exclude:  # never stored: the rows are read, the columns dropped, the rest kept as JSON records
            if isinstance(inputs, bytes):
                inputs = store.body_records(inputs_format, unpack(inputs) if entry.packed else inputs)
            kept = [{k: v for k, v in record.items() if column_name(k) not in self.exclude} for record in inputs]
            return store.JSON_ROWS, orjson.dumps(kept), False, answer
        if isinstance(inputs, bytes):
            return inputs_format, inputs, entry.packed, answer
        return inputs_format, orjson.dumps(inputs), False, answer

    def _write(self, engine: Engine, batch: list[Entry]) -> list[tuple[Entry, Exception]]:
        """Store ``batch``; the entries that cannot be made into rows are left out, and returned with why."""
        rows, unreadable = self.stored(batch)
        if rows:
            store.insert_requests(engine, rows)
        return unreadable

    def _set_aside(self, entry: Entry, err: Exception) -> None:
        """An entry no retry could store (its body unreadable): dropped once, counted and logged."""
        self.metrics.log_dropped.labels("unreadable").inc(entry.rows)
        self.supervisor.item_failed(LOOP_NAME, f"storing request {entry.request_id} to '{entry.model}' version "
                                               f"{entry.version} ({entry.rows} rows; left out)", err)

    # --- the writer -----------------------------------------------------------------------
    def start(self) -> None:
        self._task = self.supervisor.task(LOOP_NAME, self._run)

    async def stop(self) -> None:
        await cancel(self._task)
        try:
            await asyncio.wait_for(self.flush(), 10)  # what can still be written, before the process ends
        except Exception as err:  # noqa: BLE001 (stopping: what is not written now is lost, said so)
            log.warning("inference log: %d rows not written before stopping: %s", self.pending_rows,
                        first_line(err, 300))
        if self._engine is not None:
            self._engine.dispose()

    async def _run(self) -> None:
        backoff = FLUSH_SECONDS
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff)
            self._wake.clear()
            backoff = FLUSH_SECONDS if await self.flush() else min(backoff * 2, MAX_BACKOFF_SECONDS)
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + PRUNE_SECONDS
                await self._prune()

    async def flush(self) -> bool:
        """Write every request queued so far; False if the store refused (they stay queued)."""
        async with self._writing:
            while self.pending:
                batch, rows = [], 0
                for entry in self.pending:
                    if batch and rows + entry.rows > BATCH_ROWS:
                        break
                    batch.append(entry)
                    rows += entry.rows
                try:
                    engine = self._engine or await asyncio.to_thread(store.open_log, self.uri)
                    self._engine = engine
                    unreadable = await asyncio.to_thread(self._write, engine, batch)
                except Exception as err:  # noqa: BLE001 (the store is slow or down: predictions go on)
                    self._failing(err)
                    return False
                for _ in batch:
                    self.pending.popleft()
                for entry, err in unreadable:
                    self._set_aside(entry, err)
                self.pending_rows -= rows
                self.metrics.log_written.inc(rows - sum(entry.rows for entry, _ in unreadable))
            self._resumed()
            return True

    async def engine(self) -> Engine:
        """The store, for reads (feedback); raises if it cannot be opened."""
        if self._engine is None:
            self._engine = await asyncio.to_thread(store.open_log, self.uri)
        return self._engine

    async def _prune(self) -> None:
        try:
            removed = await asyncio.to_thread(store.prune, await self.engine(), time.time() - self.retention_seconds)
        except Exception as err:  # noqa: BLE001 (tried again at the next prune)
            log.warning("inference log: pruning failed: %s", first_line(err, 300))
            return
        if removed:
            log.info("inference log: %d rows older than %.0f days pruned", removed, self.retention_seconds / 86400)

    # --- incidents ------------------------------------------------------------------------
    def _failing(self, err: Exception) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.error("inference log: writing to the store failed, predictions go on and rows are kept in memory "
                      "while they fit: %s", first_line(err, 300))

    def _lose(self, rows: int, reason: str, why: str) -> None:
        self.metrics.log_dropped.labels(reason).inc(rows)
        self._lost_in_incident += rows
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.error("inference log: rows dropped: %s", why)

    def _resumed(self) -> None:
        if self._failing_since is not None:
            log.warning("inference log: writing resumed after %.1fs; %d rows were dropped meanwhile",
                        time.monotonic() - self._failing_since, self._lost_in_incident)
            self._failing_since, self._lost_in_incident = None, 0
