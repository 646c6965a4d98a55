"""The gateway's inference log writer (gateway.inference_log) and the store's reading of it
(contract.inference_log), against a real SQLite store."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import orjson
from hypothesis import given
from hypothesis import settings as settings_of_hypothesis
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from contract import inference_log as store
from contract.inference_log import answered, logged_rows, open_log, prune, store_feedback
from contract.packing import pack, unpack
from contract.settings import Settings
from gateway.inference_log import InferenceLog
from gateway.observability import Metrics, unique_id

PREDICTION = {"label": "yes", "probability": 0.8, "proba_no": 0.2, "proba_yes": 0.8}


def settings(uri: str, **more: object) -> Settings:
    return Settings(inference_log_uri=uri, **more)


def record(log: InferenceLog, rows: int, **cells: object) -> list[str]:
    """A request whose rows came as records (as the V2 protocol's do)."""
    key = unique_id()
    log.record(key, "req-1", "m", "3", store.JSON_ROWS, [{"age": i, **cells} for i in range(rows)],
               [PREDICTION] * rows, 1.5)
    return store.prediction_ids(key, rows)


def record_body(log: InferenceLog, body: bytes, media: str, rows: int, version: str = "3",
                packed: bool = False) -> list[str]:
    """A request whose body is logged as the caller sent it (``packed``: as it went to the model server)."""
    key = unique_id()
    log.record(key, "req-2", "m", version, media, body, [PREDICTION] * rows, 2.0, packed=pack(body) if packed else None)
    return store.prediction_ids(key, rows)


def written(uri: str, rows: int) -> list[str]:
    """The prediction ids of one request of ``rows`` rows, written to the log at ``uri``."""

    async def scenario() -> list[str]:
        log = InferenceLog(settings(uri), Metrics())
        ids = record(log, rows)
        await log.flush()
        return ids

    return asyncio.run(scenario())


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_predictions_are_kept_in_memory_then_written_with_what_the_answer_said(tmp_path):
    uri = f"sqlite:///{tmp_path / 'log.db'}"

    async def scenario() -> list[str]:
        log = InferenceLog(settings(uri), Metrics())
        ids = record(log, 3, city=" Oslo ")
        assert log.pending_rows == 3 and len(log.pending) == 1  # nothing written on the request path
        assert sample(log.metrics, "gateway_inference_log_pending_rows") == 3
        assert await log.flush() and not log.pending
        assert sample(log.metrics, "gateway_inference_log_pending_rows") == 0
        return ids

    ids = asyncio.run(scenario())
    rows = sorted(logged_rows(open_log(uri), "m"), key=lambda r: r.id)
    assert [r.id for r in rows] == sorted(ids) and len(set(ids)) == 3
    assert rows[0].inputs == {"age": 0, "city": " Oslo "}  # the row as sent
    assert rows[0].label == "yes" and rows[0].probabilities == {"no": 0.2, "yes": 0.8}
    assert rows[0].model_version == "3" and rows[0].true_label is None


def test_a_prediction_set_and_its_confidence_are_read_back_with_the_answer(tmp_path):
    uri = f"sqlite:///{tmp_path / 'log.db'}"
    answers = [{**PREDICTION, "prediction_set": ["yes", 1], "confidence": 0.9},
               {**PREDICTION, "prediction_set": "yes", "confidence": 0.9},  # not a list: no set
               {**PREDICTION, "prediction_set": ["no"], "confidence": True},  # not a level: no set
               PREDICTION]

    async def scenario() -> list[str]:
        log = InferenceLog(settings(uri), Metrics())
        key = unique_id()
        log.record(key, "req-1", "m", "3", store.JSON_ROWS, [{"age": i} for i in range(4)], answers, 1.5)
        await log.flush()
        return store.prediction_ids(key, 4)

    ids = asyncio.run(scenario())
    rows = {r.id: r for r in logged_rows(open_log(uri), "m")}
    assert (rows[ids[0]].prediction_set, rows[ids[0]].confidence) == (("yes", "1"), 0.9)
    assert all((rows[i].prediction_set, rows[i].confidence) == (None, None) for i in ids[1:])


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
        assert not await log.flush() and log.pending_rows == 4  # kept while they fit
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
    assert json.loads(unpack(open_log(uri).connect().exec_driver_sql(
        "SELECT inputs FROM inference_requests").scalar())) == [{"age": 0}, {"age": 1}]


def test_a_batch_of_many_requests_is_stored_whole_each_row_with_its_own_request(tmp_path):
    """The writer inserts many requests a statement (contract.inference_log.ROWS_PER_INSERT), their values given by
    position: every request of a batch that does not fill the last statement is stored, each with its own inputs
    and answer, and a request logged again (same key and role) is left as it was."""
    uri = f"sqlite:///{tmp_path / 'log.db'}"
    count = 2 * store.ROWS_PER_INSERT + 7

    async def scenario() -> list[str]:
        log = InferenceLog(settings(uri), Metrics())
        keys = [unique_id() for _ in range(count)]
        for i, key in enumerate(keys):
            log.record(key, f"req-{i}", "m", str(i % 3 + 1), store.JSON_ROWS, [{"n": i}],
                       [{**PREDICTION, "label": f"l{i}"}], float(i))
        log.record(keys[5], "again", "m", "9", store.JSON_ROWS, [{"n": -1}], [PREDICTION], 0.0)
        assert await log.flush() and not log.pending
        return keys

    keys = asyncio.run(scenario())
    rows = {r.id: r for r in logged_rows(open_log(uri), "m")}
    assert len(rows) == count
    for i, key in enumerate(keys):
        row = rows[f"{key}-0"]
        assert (row.inputs, row.label, row.model_version) == ({"n": i}, f"l{i}", str(i % 3 + 1))
    stored = open_log(uri).connect().exec_driver_sql(
        "SELECT request_id, latency_ms FROM inference_requests WHERE id = ?", (keys[9],)).one()
    assert tuple(stored) == ("req-9", 9.0)


def test_a_body_is_stored_as_sent_once_per_request_and_read_back_as_one_row_per_prediction(tmp_path):
    uri = f"sqlite:///{tmp_path / 'log.db'}"
    as_json = orjson.dumps({"records": [{"age": "40", "city": "Oslo"}, {"age": "?", "city": " Rome"}]})
    as_csv = b"age, city\r\n41,Paris\r\n"

    async def scenario() -> tuple[list[str], list[str]]:
        log = InferenceLog(settings(uri), Metrics())
        ids = record_body(log, as_json, store.JSON_ROWS, 2, packed=True), record_body(log, as_csv, store.CSV_ROWS, 1, "4")
        await log.flush()
        return ids

    json_ids, csv_ids = asyncio.run(scenario())
    engine = open_log(uri)
    stored = engine.connect().exec_driver_sql("SELECT inputs, rows FROM inference_requests ORDER BY rows").all()
    assert [(unpack(row.inputs), row.rows) for row in stored] == [(as_csv, 1), (as_json, 2)]  # byte for byte
    rows = {r.id: r for r in logged_rows(engine, "m")}
    assert rows[json_ids[1]].inputs == {"age": "?", "city": " Rome"} and rows[csv_ids[0]].inputs == {
        "age": "41", " city": "Paris"}  # the header as sent: matching columns is the model's rule
    assert rows[csv_ids[0]].model_version == "4" and rows[json_ids[0]].label == "yes"
    assert [r.id for r in logged_rows(engine, "m", version="3")] == json_ids
    # excluded columns are dropped from a body too, by their name as the header gives it
    private_uri = f"sqlite:///{tmp_path / 'private.db'}"

    async def private() -> None:
        log = InferenceLog(settings(private_uri, inference_log_exclude_columns="city"), Metrics())
        record_body(log, as_csv, store.CSV_ROWS, 1)
        record_body(log, as_json, store.JSON_ROWS, 2, packed=True)
        await log.flush()

    asyncio.run(private())
    assert [r.inputs for r in logged_rows(open_log(private_uri), "m")] in (
        [{"age": "41"}, {"age": "40"}, {"age": "?"}], [{"age": "40"}, {"age": "?"}, {"age": "41"}])


def test_a_logged_request_that_cannot_be_read_is_left_out_and_the_others_are_read(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path / 'log.db'}"

    async def scenario() -> list[str]:
        log = InferenceLog(settings(uri), Metrics())
        record_body(log, b"age,city\r\n41\r\n", store.CSV_ROWS, 1)  # a line short of a cell
        record_body(log, b'{"records": [{"age": 1}]}', store.JSON_ROWS, 2)  # fewer rows than answers
        good = record(log, 2)
        await log.flush()
        return good

    good = asyncio.run(scenario())
    assert sorted(r.id for r in logged_rows(open_log(uri), "m")) == sorted(good)
    assert caplog.text.count("cannot be read, left out") == 2


def test_feedback_finds_its_prediction_and_leaves_with_it_when_pruned(tmp_path):
    uri = f"sqlite:///{tmp_path / 'log.db'}"
    ids = written(uri, 3)
    engine = open_log(uri)
    key = ids[0].rpartition("-")[0]
    assert answered(engine, [*ids, f"{key}-3", "nope", f"{key}-x"]) == {i: ("m", "3") for i in ids}
    store_feedback(engine, {ids[1]: json.dumps("no")})
    labelled = logged_rows(engine, "m", labelled_only=True)
    assert [(r.id, r.true_label) for r in labelled] == [(ids[1], "no")]
    assert {r.id: r.true_label for r in logged_rows(engine, "m")} == {ids[0]: None, ids[1]: "no", ids[2]: None}
    assert prune(engine, 0.0) == 0 and len(logged_rows(engine, "m")) == 3
    assert prune(engine, 4e9) == 3 and not logged_rows(engine, "m")
    assert not engine.connect().exec_driver_sql("SELECT * FROM inference_feedback").all()


def test_a_schema_1_log_is_migrated_and_its_rows_read_beside_new_ones(tmp_path):
    path = tmp_path / "old.db"
    old = create_engine(f"sqlite:///{path}")
    with old.begin() as db:  # the tables release 1 created, with one prediction and its feedback
        db.execute(text("CREATE TABLE inference_predictions (id VARCHAR(64) NOT NULL, role VARCHAR(16) NOT NULL, "
                        "request_id VARCHAR(128), created_at FLOAT NOT NULL, model_name VARCHAR(256) NOT NULL, "
                        "model_version VARCHAR(16) NOT NULL, inputs TEXT NOT NULL, label TEXT, probabilities TEXT, "
                        "latency_ms FLOAT, PRIMARY KEY (id, role))"))
        db.execute(text("CREATE TABLE inference_feedback (prediction_id VARCHAR(64) NOT NULL PRIMARY KEY, "
                        "label TEXT NOT NULL, received_at FLOAT NOT NULL)"))
        db.execute(text("CREATE TABLE inference_log_meta (schema_version INTEGER NOT NULL)"))
        db.execute(text("INSERT INTO inference_log_meta VALUES (1)"))
        db.execute(text("INSERT INTO inference_predictions VALUES ('old-0', 'answer', 'r', 1.0, 'm', '1', "
                        "'{\"age\": 30}', '\"no\"', '{\"no\": 0.9, \"yes\": 0.1}', 3.0)"))
        db.execute(text("INSERT INTO inference_feedback VALUES ('old-0', '\"yes\"', 2.0)"))
    old.dispose()
    uri = f"sqlite:///{path}"
    new = written(uri, 1)
    engine = open_log(uri)
    assert engine.connect().exec_driver_sql("SELECT schema_version FROM inference_log_meta").scalar() == 2
    rows = logged_rows(engine, "m")
    assert [r.id for r in rows] == [new[0], "old-0"]  # newest first, across both tables
    assert rows[1].inputs == {"age": 30} and rows[1].true_label == "yes" and rows[1].probabilities["no"] == 0.9
    assert answered(engine, ["old-0", new[0]]) == {"old-0": ("m", "1"), new[0]: ("m", "3")}
    store_feedback(engine, {new[0]: json.dumps("no")})
    assert [r.id for r in logged_rows(engine, "m", labelled_only=True)] == [new[0], "old-0"]
    assert prune(engine, 4e9) == 2 and not logged_rows(engine, "m")


# Column names are data (issue 33): any name, NUL aside (training refuses it), as training keeps it.
LOG_NAME = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=60),
    st.text(st.sampled_from(list("/.()\"':#\\` ,;é城\n")), min_size=1, max_size=8)).map(str.strip).filter(bool)


@settings_of_hypothesis(max_examples=60, deadline=None)
@given(names=st.lists(LOG_NAME, min_size=2, max_size=5, unique=True), data=st.data())
def test_excluded_columns_of_any_name_are_dropped_from_records_and_csv_bodies(names, data):
    """INFERENCE_LOG_EXCLUDE_COLUMNS as one CSV line (a name with a comma or a quote, quoted), and the bodies'
    names matched as the model matches them (spaces around dropped)."""
    excluded = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    line = io.StringIO()
    csv.writer(line).writerow(excluded)  # its \r\n line end: a \n in a name is quoted
    configured = Settings(inference_log_uri="sqlite://", INFERENCE_LOG_EXCLUDE_COLUMNS=line.getvalue().strip())
    assert configured.inference_log_exclude_columns == excluded
    log = InferenceLog(configured, Metrics())
    rows = [{name: f"v{i}" for i, name in enumerate(names)}]
    body = io.StringIO()
    csv.writer(body).writerows([[f" {name} " for name in names], list(rows[0].values())])
    log.record(unique_id(), None, "m", "1", store.JSON_ROWS, rows, [PREDICTION], 1.0)
    log.record(unique_id(), None, "m", "1", store.CSV_ROWS, body.getvalue().encode(), [PREDICTION], 1.0)
    kept = {name: value for name, value in rows[0].items() if name not in excluded}
    stored, unreadable = log.stored(list(log.pending))
    assert len(stored) == 2 and not unreadable
    for row in stored:
        assert [{k.strip(): v for k, v in record.items()} for record in orjson.loads(unpack(row["inputs"]))] == [kept]


def test_an_entry_that_cannot_be_stored_is_set_aside_once_counted_and_the_rest_written(tmp_path, caplog):
    """Symptom 4: with INFERENCE_LOG_EXCLUDE_COLUMNS set, a body the writer could not read raised in stored();
    flush retried the same batch forever, later rows were dropped once the buffer filled (and /feedback,
    which flushes first, answered 503 for good)."""
    uri = f"sqlite:///{tmp_path / 'log.db'}"
    metrics = Metrics()

    async def scenario() -> list[str]:
        log = InferenceLog(settings(uri, inference_log_exclude_columns="email", inference_log_buffer_rows=10), metrics)
        before = record(log, 2, email="a@b.c")
        record_body(log, b'{"records": [{"age": 1, "email": ', store.JSON_ROWS, 3)  # cut short: unreadable
        after = record_body(log, b'{"records": [{"age": 7, "email": "x@y.z"}]}', store.JSON_ROWS, 1)
        assert await log.flush()  # the batch is written, the poison entry left out
        assert not log.pending and log.pending_rows == 0
        more = record(log, 5)  # 2 + 3 + 1 + 5 rows: had the batch stayed queued, these would not fit
        assert await log.flush() and log.pending_rows == 0
        return before + after + more

    with caplog.at_level("WARNING"):
        ids = asyncio.run(scenario())
    stored = logged_rows(open_log(uri), "m")
    assert {r.id for r in stored} == set(ids) and all("email" not in r.inputs for r in stored)
    assert sample(metrics, "gateway_inference_log_dropped_rows_total", reason="unreadable") == 3  # set aside once
    assert sample(metrics, "gateway_inference_log_dropped_rows_total", reason="buffer_full") == 0
    assert sample(metrics, "gateway_inference_log_written_rows_total") == 8
    told = [r for r in caplog.records if "req-2" in r.getMessage()]
    assert len(told) == 1 and told[0].levelname == "WARNING" and told[0].exc_info  # logged once, with why


def test_an_entry_the_packer_refuses_is_set_aside_alone_when_the_batch_cannot_be_packed_at_once(tmp_path,
                                                                                               monkeypatch):
    """The batch is packed in one call; should that call fail, each entry is packed alone and only the one the
    packer refuses is set aside (the batch does not stay queued for good)."""
    import gateway.inference_log as writer

    def refuses(items: list[bytes]) -> list[bytes]:
        raise MemoryError("zstd")

    def packs(data: bytes) -> bytes:
        if b"poison" in data:
            raise MemoryError("zstd")
        return pack(data)

    monkeypatch.setattr(writer, "pack_many", refuses)
    monkeypatch.setattr(writer, "pack", packs)
    uri = f"sqlite:///{tmp_path / 'log.db'}"
    metrics = Metrics()

    async def scenario() -> list[str]:
        log = InferenceLog(settings(uri), metrics)
        kept = record(log, 2)
        record(log, 1, note="poison")  # refused by the packer: set aside
        kept += record(log, 3)
        assert await log.flush() and not log.pending and log.pending_rows == 0
        return kept

    ids = asyncio.run(scenario())
    assert {r.id for r in logged_rows(open_log(uri), "m")} == set(ids)
    assert sample(metrics, "gateway_inference_log_dropped_rows_total", reason="unreadable") == 1
    assert sample(metrics, "gateway_inference_log_written_rows_total") == 5
