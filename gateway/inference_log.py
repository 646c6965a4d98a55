"""The inference log, written by the gateway: every answered prediction, off the request path.

A request only appends its rows to a bounded buffer in memory (microseconds);
a background task writes them in batches, in a thread. When the store is slow
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
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Engine

from contract import inference_log as store
from contract.errors import first_line
from contract.model_output import PROBA_PREFIX
from contract.settings import Settings
from contract.tables import column_name
from gateway.observability import Metrics
from runtime.tasks import cancel

log = logging.getLogger("gateway.inference_log")
BATCH_ROWS = 2000
FLUSH_SECONDS = 0.5
PRUNE_SECONDS = 3600.0
MAX_BACKOFF_SECONDS = 5.0


def prediction_ids(count: int) -> list[str]:
    """Ids for the predictions of one request: unique, and cheap for thousands of rows."""
    base = uuid.uuid4().hex
    return [f"{base}-{i}" for i in range(count)]


class InferenceLog:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.uri = settings.inference_log
        self.sample_rate = settings.inference_log_sample_rate
        self.retention_seconds = settings.inference_log_retention_days * 86400
        self.capacity = settings.inference_log_buffer_rows
        self.exclude = frozenset(column_name(c) for c in settings.inference_log_exclude_columns)
        self.metrics = metrics
        self.pending: deque[dict[str, Any]] = deque()
        self._engine: Engine | None = None
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()
        self._failing_since: float | None = None  # an incident: writes failing, or rows dropped
        self._lost_in_incident = 0
        self._task: asyncio.Task | None = None
        self._next_prune = 0.0

    # --- the request path ---------------------------------------------------------------
    def record(self, ids: Sequence[str], request_id: str | None, model: str, version: str,
               records: Sequence[dict[str, Any]], predictions: Sequence[dict[str, Any]], latency_ms: float,
               role: str = store.ANSWER) -> None:
        """Queue a request's predictions for the log (unless the request is not sampled)."""
        if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        if len(self.pending) + len(records) > self.capacity:
            self._lose(len(records), "buffer_full", f"the buffer of {self.capacity} rows is full")
            return
        now = time.time()
        exclude = self.exclude
        for prediction_id, record, prediction in zip(ids, records, predictions, strict=True):
            inputs = {k: v for k, v in record.items() if column_name(k) not in exclude} if exclude else record
            probabilities = {k.removeprefix(PROBA_PREFIX): v for k, v in prediction.items() if k.startswith(PROBA_PREFIX)}
            self.pending.append({
                "id": prediction_id, "role": role, "request_id": request_id, "created_at": now, "model_name": model,
                "model_version": version, "inputs": orjson.dumps(inputs).decode(),
                "label": orjson.dumps(prediction.get("label")).decode(),
                "probabilities": orjson.dumps(probabilities).decode(), "latency_ms": latency_ms})
        self.metrics.log_pending.set(len(self.pending))
        if len(self.pending) >= BATCH_ROWS:
            self._wake.set()

    # --- the writer -----------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await cancel(self._task)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), 10)  # what can still be written, before the process ends
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
        """Write every row queued so far; False if the store refused (the rows stay queued)."""
        async with self._writing:
            while self.pending:
                batch = [self.pending[i] for i in range(min(BATCH_ROWS, len(self.pending)))]
                try:
                    engine = self._engine or await asyncio.to_thread(store.open_log, self.uri)
                    self._engine = engine
                    await asyncio.to_thread(store.insert_predictions, engine, batch)
                except Exception as err:  # noqa: BLE001 (the store is slow or down: predictions go on)
                    self._failing(err)
                    return False
                for _ in batch:
                    self.pending.popleft()
                self.metrics.log_written.inc(len(batch))
                self.metrics.log_pending.set(len(self.pending))
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
