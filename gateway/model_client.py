"""The gateway's one client of the model server: pooled connections, orjson, micro-batching per target."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from contract.packing import ENCODING, pack
from contract.settings import Settings
from gateway.batching import Answer, MicroBatcher
from gateway.observability import Metrics

JSON, CSV = "application/json", "text/csv"
# Targets with a batcher of their own at most; calls for others go unbatched (a client naming
# random models cannot grow the gateway's memory without bound).
MAX_BATCHERS = 256


@dataclass(frozen=True)
class Target:
    """What a prediction asks for: a model's served version, the version holding an alias, or a version."""

    name: str
    alias: str | None = None
    version: str | None = None

    def path(self) -> str:
        model = f"/models/{quote(self.name, safe='')}"
        if self.version:
            return f"{model}/versions/{self.version}/invocations"
        return f"{model}/invocations" + (f"?alias={quote(self.alias, safe='')}" if self.alias else "")


@dataclass
class Rows:
    """A prediction request's rows: its records, or the body the caller sent (``{"records": [...]}`` as JSON,
    or CSV with a header row) to pass to the model server unread, with how to read it when the gateway must
    (``parse``: the route's own reading, which raises the caller's 4xx naming the field)."""

    records: list[dict[str, Any]] | None = None
    body: bytes | None = None
    media: str = JSON
    parse: Callable[[], list[dict[str, Any]]] | None = None
    packed: bytes | None = None  # the body packed (contract/packing.py) once it was sent so

    def parsed(self) -> list[dict[str, Any]]:
        if self.records is None:
            self.records = self.parse() if self.parse else []
        return self.records


class ModelServerClient:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.base = settings.model_server
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.model_server_timeout, connect=settings.model_server_connect_timeout),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )
        self.batchers: dict[Target, MicroBatcher] = {}

    def _batcher(self, target: Target) -> MicroBatcher | None:
        if not self.settings.batching:
            return None
        batcher = self.batchers.get(target)
        if batcher is None and len(self.batchers) < MAX_BATCHERS:
            s = self.settings
            batcher = MicroBatcher(lambda records: self.invoke(records, target), s.batch_max_rows, s.batch_max_wait_ms,
                                   s.batch_concurrency, on_batch=self.metrics.batch_requests.observe)
            batcher.start()
            self.batchers[target] = batcher
        return batcher

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()
        await self.http.aclose()

    async def invoke(self, records: list[dict[str, Any]], target: Target,
                     params: dict[str, Any] | None = None) -> Answer:
        """One call to the model server for ``target``, with the model's ``params``. Raises httpx errors."""
        self.metrics.batch_rows.observe(len(records))
        payload: dict[str, Any] = {"dataframe_records": records}
        if params:
            payload["params"] = params
        answer = await self.http.post(self.base + target.path(), content=orjson.dumps(payload),
                                      headers={"Content-Type": JSON})
        return self._answer(answer)

    def _answer(self, answer: httpx.Response) -> Answer:
        try:
            body = orjson.loads(answer.content)
        except orjson.JSONDecodeError:
            body = {"message": answer.text[:500]}
        return Answer(answer.status_code, body, answer.headers.get("X-Model-Version"),
                      answer.headers.get("Retry-After"))

    async def send_body(self, rows: Rows, target: Target) -> Answer:
        """The caller's body as it came, for the model server to read (the gateway's ``{"records": [...]}``
        is read there as MLflow's ``dataframe_records``), packed: 30 times fewer bytes for the model server
        and its worker to move, and the bytes the inference log keeps. Raises httpx errors."""
        if rows.packed is None:
            rows.packed = await asyncio.to_thread(pack, rows.body or b"")  # zstd lets go of the GIL meanwhile
        answer = self._answer(await self.http.post(self.base + target.path(), content=rows.packed,
                                                   headers={"Content-Type": rows.media, "Content-Encoding": ENCODING}))
        if answer.status == 200:
            self.metrics.batch_rows.observe(len(answer.body.get("predictions", ())))
        return answer

    async def predict(self, rows: Rows, target: Target, params: dict[str, Any] | None = None) -> Answer:
        """Micro-batched with other callers' rows for ``target`` (records, without ``params`` asking for more
        than predictions); a body passed on unread."""
        if rows.records is None:
            return await self.send_body(rows, target)
        batcher = None if params else self._batcher(target)
        return await (batcher.submit(rows.records) if batcher else self.invoke(rows.records, target, params))
