"""The inference log's tables: what the gateway writes and the ``monitor`` step reads.

Two tables in the database ``INFERENCE_LOG_URI`` names (SQLite under
``STACK_DIR`` for ``make up``, PostgreSQL in compose and Kubernetes):

- ``inference_predictions``: one row per answered prediction: its id, the
  request id, the time, model name and version, the raw input row as sent
  (JSON, less the columns ``INFERENCE_LOG_EXCLUDE_COLUMNS`` names), the label
  and probabilities (JSON), the latency, and its role: ``answer`` (what the
  caller got) or ``shadow`` (what a shadow version said of the same row);
- ``inference_feedback``: the true label a caller sent back for a prediction id
  (the last one sent wins).

The schema is created and migrated by :func:`open_log` (``inference_log_meta``
holds its version), so every process that opens the log finds it ready.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.dialects import postgresql, sqlite

SCHEMA_VERSION = 1
ANSWER, SHADOW = "answer", "shadow"

metadata = MetaData()
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
    metadata.create_all(engine, checkfirst=True)
    with engine.begin() as connection:
        found = connection.execute(select(meta.c.schema_version)).scalar()
        if found is None:
            connection.execute(insert(meta).values(schema_version=SCHEMA_VERSION))
        elif found > SCHEMA_VERSION:
            raise RuntimeError(f"the inference log's schema is version {found}, newer than this release's "
                               f"{SCHEMA_VERSION}: upgrade the gateway")


def insert_predictions(engine: Engine, rows: list[Mapping[str, Any]]) -> None:
    """Insert rows (one transaction); a row already logged (same id and role) is left as it is."""
    statement = _upsert(engine, predictions).on_conflict_do_nothing(index_elements=["id", "role"])
    with engine.begin() as connection:
        connection.execute(statement, list(rows))


def store_feedback(engine: Engine, labels: Mapping[str, str]) -> None:
    """Store true labels (JSON text) by prediction id; sent again, the last one wins."""
    statement = _upsert(engine, feedback)
    statement = statement.on_conflict_do_update(
        index_elements=["prediction_id"],
        set_={"label": statement.excluded.label, "received_at": statement.excluded.received_at})
    now = time.time()
    with engine.begin() as connection:
        connection.execute(statement, [{"prediction_id": k, "label": v, "received_at": now}
                                       for k, v in labels.items()])


def answered(engine: Engine, ids: Iterable[str]) -> dict[str, tuple[str, str]]:
    """(model name, version) of each of ``ids`` that was answered."""
    found: dict[str, tuple[str, str]] = {}
    ids = list(ids)
    with engine.connect() as connection:
        for start in range(0, len(ids), 500):
            query = select(predictions.c.id, predictions.c.model_name, predictions.c.model_version).where(
                predictions.c.id.in_(ids[start:start + 500]), predictions.c.role == ANSWER)
            found.update((row.id, (row.model_name, row.model_version)) for row in connection.execute(query))
    return found


@dataclass(frozen=True)
class LoggedRow:
    id: str
    model_version: str
    created_at: float
    inputs: dict[str, Any]
    label: Any
    probabilities: dict[str, float]
    true_label: Any  # from POST /feedback; None without feedback


def logged_rows(engine: Engine, model_name: str, version: str | None = None, since: float | None = None,
                until: float | None = None, limit: int = 100_000, labelled_only: bool = False) -> list[LoggedRow]:
    """The answered predictions of a model (one version, or all) in a window, newest first, with their
    true label where one was sent."""
    query = (select(predictions, feedback.c.label.label("true_label"))
             .join(feedback, feedback.c.prediction_id == predictions.c.id, isouter=not labelled_only)
             .where(predictions.c.model_name == model_name, predictions.c.role == ANSWER))
    if version:
        query = query.where(predictions.c.model_version == version)
    if since is not None:
        query = query.where(predictions.c.created_at >= since)
    if until is not None:
        query = query.where(predictions.c.created_at < until)
    query = query.order_by(predictions.c.created_at.desc()).limit(limit)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return [LoggedRow(row.id, row.model_version, row.created_at, json.loads(row.inputs), json.loads(row.label),
                      json.loads(row.probabilities),
                      None if row.true_label is None else json.loads(row.true_label)) for row in rows]


def prune(engine: Engine, older_than: float) -> int:
    """Delete predictions (and their feedback) logged before ``older_than``; return how many went."""
    with engine.begin() as connection:
        old = select(predictions.c.id).where(predictions.c.created_at < older_than)
        connection.execute(delete(feedback).where(feedback.c.prediction_id.in_(old)))
        return connection.execute(delete(predictions).where(predictions.c.created_at < older_than)).rowcount


def _upsert(engine: Engine, table: Table) -> Any:
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)
