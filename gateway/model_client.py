"""The gateway's one client of the model server: pooled connections, orjson, optional batching."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from contract.settings import Settings
from gateway.batching import Answer, MicroBatcher
from gateway.observability import Metrics


class ModelServerClient:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.metrics = metrics
        self.url = f"{settings.model_server}/invocations"
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.model_server_timeout, connect=settings.model_server_connect_timeout),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )
        self.batcher = (
            MicroBatcher(self.invoke, settings.batch_max_rows, settings.batch_max_wait_ms, settings.batch_concurrency,
                         on_batch=metrics.batch_requests.observe)
            if settings.batching else None
        )

    def start(self) -> None:
        if self.batcher:
            self.batcher.start()

    async def close(self) -> None:
        if self.batcher:
            await self.batcher.stop()
        await self.http.aclose()

    async def invoke(self, records: list[dict[str, Any]]) -> Answer:
        """One /invocations call: (status, JSON body, served version). Raises httpx errors."""
        self.metrics.batch_rows.observe(len(records))
        answer = await self.http.post(
            self.url, content=orjson.dumps({"dataframe_records": records}),
            headers={"Content-Type": "application/json"},
        )
        try:
            body = orjson.loads(answer.content)
        except orjson.JSONDecodeError:
            body = {"message": answer.text[:500]}
        return answer.status_code, body, answer.headers.get("X-Model-Version")

    async def predict(self, records: list[dict[str, Any]]) -> Answer:
        return await (self.batcher.submit(records) if self.batcher else self.invoke(records))
