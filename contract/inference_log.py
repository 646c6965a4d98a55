"""The inference log's tables: what the gateway writes and the ``monitor`` step reads.

Tables in the database ``INFERENCE_LOG_URI`` names (SQLite under ``STACK_DIR``
for ``make up``, PostgreSQL in compose and Kubernetes):

- ``inference_requests``: one row per answered request (schema 2): its key
  (the request's prediction ids are ``<key>-<row>``), the request id, the
  time, model name and version, the number of rows, the input rows as sent
  (the body's own bytes: JSON records or CSV with its header, less the columns
  ``INFERENCE_LOG_EXCLUDE_COLUMNS`` names), the model's answer for them (JSON:
  label, probability and ``proba_<class>`` per row), the latency, and its role:
  ``answer`` (what the caller got) or ``shadow`` (what a shadow version said of
  the same rows). One row per request rather than per prediction: a 1,000-row
  request costs one insert of the bytes it came with, not a thousand rows
  re-encoded (the log's cost was most of the gateway's on bulk requests);
- ``inference_predictions``: one row per prediction, as schema 1 wrote them;
  still read, no longer written;
- ``inference_feedback``: the true label a caller sent back for a prediction id
  (the last one sent wins), with the key of the request it belongs to.

Read them through :func:`logged_rows` and :func:`answered`, which give one row
per prediction whichever table holds it. The schema is created and migrated by
:func:`open_log` (``inference_log_meta`` holds its version), so every process
that opens the log finds it ready.
"""

from __future__ import annotations

import functools
import json
import logging
import operator
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import OperationalError, ProgrammingError

from contract.model_output import CONFIDENCE_COLUMN, PREDICTION_SET_COLUMN, PROBA_PREFIX
from contract.packing import unpack
from contract.tables import csv_records

log = logging.getLogger("inference_log")
SCHEMA_VERSION = 2
ANSWER, SHADOW = "answer", "shadow"
JSON_ROWS, CSV_ROWS = "json", "csv"  # inputs_format: JSON records (a list, or {"records": [...]}), or CSV text
# ids per IN (...) query: well under every database's limit on bound parameters
_CHUNK = 500

metadata = MetaData()
requests = Table(
    "inference_requests", metadata,
    Column("id", String(64), primary_key=True),  # the request's key: its predictions are <id>-<row>
    Column("role", String(16), primary_key=True),  # answer or shadow
    Column("request_id", String(128)),
    Column("created_at", Float, nullable=False),  # seconds since the epoch, UTC
    Column("model_name", String(256), nullable=False),
    Column("model_version", String(16), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("inputs_format", String(16), nullable=False),  # JSON_ROWS or CSV_ROWS
    Column("inputs", LargeBinary, nullable=False),  # the rows as sent, packed (contract/packing.py)
    Column("outputs", LargeBinary, nullable=False),  # the model's rows as JSON, packed
    Column("latency_ms", Float),
)
Index("ix_inference_requests_model_time", requests.c.model_name, requests.c.model_version, requests.c.created_at)
Index("ix_inference_requests_time", requests.c.created_at)
# schema 1: one row per prediction
predictions = Table(
    "inference_predictions", metadata,
    Column("id", String(64), primary_key=True),
    Column("role", String(16), primary_key=True),  # answer or shadow
    Column("request_id", String(128)),
    Column("created_at", Float, nullable=False),  # seconds since the epoch, UTC
    Column("model_name", String(256), nullable=False),
    Column("model_version", String(16), nullable=False),
    Column("inputs", Text, nullable=False),  # the row as sent, JSON
    Column("label", Text),  # JSON
    Column("probabilities", Text),  # JSON object: class -> probability
    Column("latency_ms", Float),
)
Index("ix_inference_predictions_model_time", predictions.c.model_name, predictions.c.model_version,
      predictions.c.created_at)
Index("ix_inference_predictions_time", predictions.c.created_at)
feedback = Table(
    "inference_feedback", metadata,
    Column("prediction_id", String(64), primary_key=True),
    Column("label", Text, nullable=False),  # JSON
    Column("received_at", Float, nullable=False),
    Column("request_key", String(64), index=True),  # the request the prediction belongs to (schema 2)
)
meta = Table("inference_log_meta", metadata, Column("schema_version", Integer, nullable=False))


def open_log(uri: str) -> Engine:
    """An engine for the log at ``uri``, its database (PostgreSQL), tables and indexes created or migrated."""
    engine = create_engine(uri, pool_pre_ping=True, **_options(uri))
    if engine.dialect.name == "postgresql":
        create_database(engine)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers (feedback, monitor) beside the writer
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()
    migrate(engine)
    return engine


def _options(uri: str) -> dict[str, Any]:
    if uri.startswith("sqlite"):
        return {"connect_args": {"timeout": 30}}
    # a dead server is found out in seconds, and a restarted one is reconnected to by pool_pre_ping
    return {"connect_args": {"connect_timeout": 5}, "pool_size": 2, "max_overflow": 2}


def create_database(engine: Engine) -> None:
    """Create the log's own database on a PostgreSQL server that lacks it (compose's first start, an
    upgrade from a release without the log), as the stack's database user."""
    try:
        with engine.connect():
            return
    except OperationalError as err:
        if "does not exist" not in str(err):
            raise
    server = create_engine(engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT", **_options("postgresql"))
    try:
        with server.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{engine.url.database}"'))
    except ProgrammingError as err:
        if "already exists" not in str(err):  # created meanwhile by another replica
            raise
    finally:
        server.dispose()


def migrate(engine: Engine) -> None:
    metadata.create_all(engine, checkfirst=True)  # the tables a store lacks: all of them, or schema 2's
    with engine.begin() as connection:
        found = connection.execute(select(meta.c.schema_version)).scalar()
        if found is None:
            connection.execute(insert(meta).values(schema_version=SCHEMA_VERSION))
        elif found > SCHEMA_VERSION:
            raise RuntimeError(f"the inference log's schema is version {found}, newer than this release's "
                               f"{SCHEMA_VERSION}: upgrade the gateway")
        elif found < SCHEMA_VERSION:
            # 1 -> 2: feedback learns its request's key (NULL for schema 1's predictions, which are joined by id)
            if "request_key" not in {c["name"] for c in inspect(connection).get_columns(feedback.name)}:
                connection.execute(text(f"ALTER TABLE {feedback.name} ADD COLUMN request_key VARCHAR(64)"))
                connection.execute(text(f"CREATE INDEX ix_{feedback.name}_request_key ON {feedback.name} "
                                        "(request_key)"))
            connection.execute(meta.update().values(schema_version=SCHEMA_VERSION))


def insert_requests(engine: Engine, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert logged requests (one transaction); one already logged (same key and role) is left as it is."""
    with engine.begin() as connection:
        for start in range(0, len(rows), ROWS_PER_INSERT):
            chunk = rows[start:start + ROWS_PER_INSERT]
            sql, names = _insert_requests_sql(engine.dialect, len(chunk))
            values = [value for row in chunk for value in _REQUEST_VALUES(row)]
            connection.exec_driver_sql(sql, tuple(values) if names is None else dict(zip(names, values)))


# Requests per INSERT statement: 550 parameters, under every database's limit (SQLite's was 999 before 3.32).
ROWS_PER_INSERT = 50
_REQUEST_COLUMNS = tuple(column.name for column in requests.columns)
_REQUEST_VALUES = operator.itemgetter(*_REQUEST_COLUMNS)  # a row's values, in the statement's order


@functools.lru_cache(maxsize=4 * ROWS_PER_INSERT)
def _insert_requests_sql(dialect: Dialect, count: int) -> tuple[str, list[str] | None]:
    """The insert of ``count`` requests, compiled once for ``dialect``, and the names of its parameters (None: the
    driver takes them by position, row after row, columns in table order). Executed as the driver's own SQL, one
    statement for many rows: SQLAlchemy's processing of every parameter, then SQLite's of every statement, cost
    more than the inserts themselves (and none of these columns' types needs processing: the drivers take str,
    int, float and bytes as they are)."""
    names = [f"{column}_{i}" for i in range(count) for column in _REQUEST_COLUMNS]
    statement = _upsert(dialect, requests).values(
        [{column: bindparam(f"{column}_{i}") for column in _REQUEST_COLUMNS} for i in range(count)])
    compiled = statement.on_conflict_do_nothing(index_elements=["id", "role"]).compile(dialect=dialect)
    if not compiled.positional:
        return str(compiled), names
    if list(compiled.positiontup) != names:  # the order the values are given in
        raise RuntimeError(f"the insert's parameters came out of order: {compiled.positiontup[:len(names)]}")
    return str(compiled), None


def prediction_ids(key: str, count: int) -> list[str]:
    """The ids of a request's predictions: ``<key>-<row>``, unique, and cheap for thousands of rows."""
    return [f"{key}-{i}" for i in range(count)]


def split_prediction_id(prediction_id: str) -> tuple[str, int | None]:
    """(the request's key, the row) of a prediction id; the row is None for an id not of that form (schema 1's
    ids were, but an id sent back by a caller may be anything)."""
    key, _, row = prediction_id.rpartition("-")
    return key, int(row) if key and row.isdigit() and row.isascii() else None


def store_feedback(engine: Engine, labels: Mapping[str, str]) -> None:
    """Store true labels (JSON text) by prediction id; sent again, the last one wins."""
    statement = _upsert(engine.dialect, feedback)
    statement = statement.on_conflict_do_update(
        index_elements=["prediction_id"],
        set_={"label": statement.excluded.label, "received_at": statement.excluded.received_at})
    now = time.time()
    with engine.begin() as connection:
        connection.execute(statement, [{"prediction_id": k, "label": v, "received_at": now,
                                        "request_key": split_prediction_id(k)[0]} for k, v in labels.items()])


def answered(engine: Engine, ids: Iterable[str]) -> dict[str, tuple[str, str]]:
    """(model name, version) of each of ``ids`` that was answered."""
    found: dict[str, tuple[str, str]] = {}
    ids = list(dict.fromkeys(ids))
    by_key: dict[str, list[tuple[str, int]]] = {}
    for prediction_id in ids:
        key, row = split_prediction_id(prediction_id)
        if row is not None:
            by_key.setdefault(key, []).append((prediction_id, row))
    with engine.connect() as connection:
        for keys in _chunks(list(by_key)):
            query = select(requests.c.id, requests.c.model_name, requests.c.model_version, requests.c.rows).where(
                requests.c.id.in_(keys), requests.c.role == ANSWER)
            for logged in connection.execute(query):
                found.update((prediction_id, (logged.model_name, logged.model_version))
                             for prediction_id, row in by_key[logged.id] if row < logged.rows)
        for chunk in _chunks([i for i in ids if i not in found]):  # schema 1's predictions
            query = select(predictions.c.id, predictions.c.model_name, predictions.c.model_version).where(
                predictions.c.id.in_(chunk), predictions.c.role == ANSWER)
            found.update((row.id, (row.model_name, row.model_version)) for row in connection.execute(query))
    return found


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start:start + _CHUNK]


@dataclass(frozen=True)
class LoggedRow:
    id: str
    model_version: str
    created_at: float
    inputs: dict[str, Any]
    label: Any
    probabilities: dict[str, float]
    true_label: Any  # from POST /feedback; None without feedback
    # the classes of the set the answer carried (as text) and the confidence asked for it; None without one
    prediction_set: tuple[str, ...] | None = None
    confidence: float | None = None


def body_records(inputs_format: str, body: bytes) -> list[dict[str, Any]]:
    """The rows of a prediction body as sent: JSON records (a list, or ``{"records": [...]}``) or CSV."""
    if inputs_format == CSV_ROWS:
        return csv_records(body)
    payload = json.loads(body)
    return payload["records"] if isinstance(payload, dict) else payload


def input_records(inputs_format: str, inputs: bytes) -> list[dict[str, Any]]:
    """The rows of a logged request's inputs (packed: contract/packing.py), as sent."""
    return body_records(inputs_format, unpack(inputs))


def output_rows(outputs: bytes) -> list[dict[str, Any]]:
    """The model's rows of a logged request's answer (packed: contract/packing.py)."""
    return json.loads(unpack(outputs))


def logged_rows(engine: Engine, model_name: str, version: str | None = None, since: float | None = None,
                until: float | None = None, limit: int = 100_000, labelled_only: bool = False) -> list[LoggedRow]:
    """The answered predictions of a model (one version, or all) in a window, newest first, with their
    true label where one was sent."""
    with engine.connect() as connection:
        found = _request_rows(connection, model_name, version, since, until, limit, labelled_only)
        found += _prediction_rows(connection, model_name, version, since, until, limit, labelled_only)
    found.sort(key=lambda row: row.created_at, reverse=True)
    return found[:limit]


def _window(table: Table, model_name: str, version: str | None, since: float | None, until: float | None) -> Any:
    query = select(table).where(table.c.model_name == model_name, table.c.role == ANSWER)
    if version:
        query = query.where(table.c.model_version == version)
    if since is not None:
        query = query.where(table.c.created_at >= since)
    if until is not None:
        query = query.where(table.c.created_at < until)
    return query.order_by(table.c.created_at.desc())


def _request_rows(connection: Any, model_name: str, version: str | None, since: float | None, until: float | None,
                  limit: int, labelled_only: bool) -> list[LoggedRow]:
    """Schema 2: each logged request's rows, requests newest first, until ``limit`` rows."""
    query = _window(requests, model_name, version, since, until)
    if labelled_only:  # only the requests some feedback is about
        query = query.where(requests.c.id.in_(select(feedback.c.request_key).where(feedback.c.request_key.isnot(None))))
    found: list[LoggedRow] = []
    for batch in connection.execute(query).yield_per(_CHUNK).partitions():
        labels = _feedback_for(connection, [logged.id for logged in batch])
        for logged in batch:
            try:
                inputs_of, outputs_of = input_records(logged.inputs_format, logged.inputs), output_rows(logged.outputs)
                if not len(inputs_of) == len(outputs_of) == logged.rows:
                    raise ValueError(f"{len(inputs_of)} input rows, {len(outputs_of)} answered, {logged.rows} logged")
            except (ValueError, KeyError, TypeError) as err:  # one unreadable request does not hide the others
                log.warning("inference log: request %s cannot be read, left out: %s", logged.id, err)
                continue
            ids = prediction_ids(logged.id, logged.rows)
            for prediction_id, inputs, output in zip(ids, inputs_of, outputs_of, strict=True):
                true_label = labels.get(prediction_id)
                if labelled_only and true_label is None:
                    continue
                found.append(LoggedRow(prediction_id, logged.model_version, logged.created_at, inputs,
                                       output.get("label"),
                                       {k.removeprefix(PROBA_PREFIX): v for k, v in output.items()
                                        if k.startswith(PROBA_PREFIX)},
                                       None if true_label is None else json.loads(true_label),
                                       *_prediction_set(output)))
                if len(found) >= limit:
                    return found
    return found


def _prediction_set(output: Mapping[str, Any]) -> tuple[tuple[str, ...] | None, float | None]:
    """(the set, the confidence) an answered row carries, or (None, None): an answer without a set, or whose
    set is not a list of classes and a level."""
    members, level = output.get(PREDICTION_SET_COLUMN), output.get(CONFIDENCE_COLUMN)
    if not isinstance(members, list) or isinstance(level, bool) or not isinstance(level, (int, float)):
        return None, None
    return tuple(str(m) for m in members), float(level)


def _feedback_for(connection: Any, keys: Sequence[str]) -> dict[str, str]:
    """The true labels sent for the predictions of the requests ``keys`` names, by prediction id."""
    query = select(feedback.c.prediction_id, feedback.c.label).where(feedback.c.request_key.in_(keys))
    return {row.prediction_id: row.label for row in connection.execute(query)}


def _prediction_rows(connection: Any, model_name: str, version: str | None, since: float | None,
                     until: float | None, limit: int, labelled_only: bool) -> list[LoggedRow]:
    """Schema 1's rows, one per prediction."""
    window = _window(predictions, model_name, version, since, until).subquery()
    query = (select(window, feedback.c.label.label("true_label"))
             .join(feedback, feedback.c.prediction_id == window.c.id, isouter=not labelled_only)
             .order_by(window.c.created_at.desc()).limit(limit))
    return [LoggedRow(row.id, row.model_version, row.created_at, json.loads(row.inputs), json.loads(row.label),
                      json.loads(row.probabilities),
                      None if row.true_label is None else json.loads(row.true_label))
            for row in connection.execute(query)]


def prune(engine: Engine, older_than: float) -> int:
    """Delete predictions (and their feedback) logged before ``older_than``; return how many went."""
    with engine.begin() as connection:
        old = select(requests.c.id).where(requests.c.created_at < older_than)
        connection.execute(delete(feedback).where(feedback.c.request_key.in_(old)))
        removed = connection.execute(select(func.coalesce(func.sum(requests.c.rows), 0))
                                     .where(requests.c.created_at < older_than)).scalar()
        connection.execute(delete(requests).where(requests.c.created_at < older_than))
        old = select(predictions.c.id).where(predictions.c.created_at < older_than)
        connection.execute(delete(feedback).where(feedback.c.prediction_id.in_(old)))
        return int(removed) + connection.execute(delete(predictions).where(predictions.c.created_at < older_than)).rowcount


def _upsert(dialect: Dialect, table: Table) -> Any:
    return (postgresql if dialect.name == "postgresql" else sqlite).insert(table)
