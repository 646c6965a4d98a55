"""The gateway's one client of the model server: pooled connections, orjson, micro-batching per target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from contract.settings import Settings
from gateway.batching import Answer, MicroBatcher
from gateway.observability import Metrics

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
                                      headers={"Content-Type": "application/json"})
        try:
            body = orjson.loads(answer.content)
        except orjson.JSONDecodeError:
            body = {"message": answer.text[:500]}
        return Answer(answer.status_code, body, answer.headers.get("X-Model-Version"),
                      answer.headers.get("Retry-After"))

    async def predict(self, records: list[dict[str, Any]], target: Target,
                      params: dict[str, Any] | None = None) -> Answer:
        """Micro-batched with other callers' rows for ``target``, unless ``params`` ask for more than predictions."""
        batcher = None if params else self._batcher(target)
        return await (batcher.submit(records) if batcher else self.invoke(records, target, params))
