"""The gateway's inference log writer (gateway.inference_log), against a real SQLite store."""

from __future__ import annotations

import asyncio
import json

from contract.inference_log import logged_rows, open_log
from contract.settings import Settings
from gateway.inference_log import InferenceLog, prediction_ids
from gateway.observability import Metrics

PREDICTION = {"label": "yes", "probability": 0.8, "proba_no": 0.2, "proba_yes": 0.8}


def settings(uri: str, **more: object) -> Settings:
    return Settings(inference_log_uri=uri, **more)


def record(log: InferenceLog, rows: int, **cells: object) -> list[str]:
    ids = prediction_ids(rows)
    log.record(ids, "req-1", "m", "3", [{"age": i, **cells} for i in range(rows)], [PREDICTION] * rows, 1.5)
    return ids


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_predictions_are_kept_in_memory_then_written_with_what_the_answer_said(tmp_path):
    uri = f"sqlite:///{tmp_path / 'log.db'}"

    async def scenario() -> list[str]:
        log = InferenceLog(settings(uri), Metrics())
        ids = record(log, 3, city=" Oslo ")
        assert len(log.pending) == 3  # nothing written on the request path
        assert await log.flush() and not log.pending
        return ids

    ids = asyncio.run(scenario())
    rows = sorted(logged_rows(open_log(uri), "m"), key=lambda r: r.id)
    assert [r.id for r in rows] == sorted(ids) and len(set(ids)) == 3
    assert rows[0].inputs == {"age": 0, "city": " Oslo "}  # the row as sent
    assert rows[0].label == "yes" and rows[0].probabilities == {"no": 0.2, "yes": 0.8}
    assert rows[0].model_version == "3" and rows[0].true_label is None


def test_excluded_columns_are_never_stored_and_unsampled_requests_not_at_all(tmp_path):
    uri = f"sqlite:///{tmp_path / 'log.db'}"

    async def scenario() -> None:
        private = InferenceLog(settings(uri, inference_log_exclude_columns="email, phone"), Metrics())
        record(private, 2, **{"email": "a@b.c", " phone ": "123"})
        await private.flush()
        unsampled = InferenceLog(settings(uri, inference_log_sample_rate=0.0), Metrics())
        record(unsampled, 5)
        assert not unsampled.pending

    asyncio.run(scenario())
    assert all(set(r.inputs) == {"age"} for r in logged_rows(open_log(uri), "m"))
    assert len(logged_rows(open_log(uri), "m")) == 2


def test_a_store_that_is_down_costs_rows_beyond_the_buffer_counted_and_writing_resumes(tmp_path):
    folder = tmp_path / "not-yet"
    uri = f"sqlite:///{folder / 'log.db'}"  # SQLite cannot create a file in a missing folder: the store is "down"
    metrics = Metrics()

    async def scenario() -> None:
        log = InferenceLog(settings(uri, inference_log_buffer_rows=5), metrics)
        kept = record(log, 4)
        assert not await log.flush() and len(log.pending) == 4  # kept while they fit
        record(log, 3)  # 4 + 3 > 5: these are dropped, and counted
        assert sample(metrics, "gateway_inference_log_dropped_rows_total", reason="buffer_full") == 3
        folder.mkdir()
        assert await log.flush()  # resumes by itself
        assert {r.id for r in logged_rows(open_log(uri), "m")} == set(kept)
        assert sample(metrics, "gateway_inference_log_written_rows_total") == 4
        assert sample(metrics, "gateway_inference_log_pending_rows") == 0

    asyncio.run(scenario())


def test_the_writer_task_writes_without_being_asked(tmp_path):
    uri = f"sqlite:///{tmp_path / 'log.db'}"

    async def scenario() -> None:
        log = InferenceLog(settings(uri), Metrics())
        log.start()
        record(log, 2)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not log.pending:
                break
        await log.stop()
        assert not log.pending

    asyncio.run(scenario())
    assert len(logged_rows(open_log(uri), "m")) == 2
    assert json.loads(open_log(uri).connect().exec_driver_sql(
        "SELECT inputs FROM inference_predictions LIMIT 1").scalar()) in ({"age": 0}, {"age": 1})
