"""Training jobs: each one a real ``mlflow run`` of this project, one at a time, recorded in SQLite.

Records live in ``STACK_DIR/jobs.db`` and survive a gateway restart: a job that
was running when the gateway stopped is followed again if its process still
runs, and otherwise ends with the outcome MLflow recorded for its run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import RunStatus

from contract.errors import first_line
from contract.names import (
    DEFAULT_DATA_PATH,
    DEFAULT_TARGET,
    PROMOTION_TAG_PREFIX,
    TAG_ERROR,
    TAG_JOB_ID,
    TAG_MODEL_VERSION,
    TAG_MONITORING_SUMMARY,
)
from contract.settings import PROJECT_DIR, Settings
from gateway.auth import Caller, as_caller_run
from runtime.processes import VENV_BIN, pid_alive, tool_env
from runtime.tasks import cancel

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
LOG_TAIL_LINES = 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    parameters TEXT NOT NULL,
    model_name TEXT NOT NULL,
    run_id TEXT,
    model_version TEXT,
    metrics TEXT,
    error TEXT,
    log_tail TEXT,
    pid INTEGER,
    entry_point TEXT NOT NULL DEFAULT 'main',
    promotion TEXT,
    summary TEXT
)
"""
# Columns added since the first release, for job stores created before them.
_ADDED_COLUMNS = {"entry_point": "TEXT NOT NULL DEFAULT 'main'", "promotion": "TEXT", "summary": "TEXT",
                  "requested_by": "TEXT"}
# The jobs that train (POST /train) and the one that monitors (POST /monitor): each its experiment.
TRAINING_ENTRY_POINTS = ("main", "tune")
MONITOR_ENTRY_POINT = "monitor"
MONITORING_EXPERIMENT = "monitoring"


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class Job:
    id: str
    status: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    parameters: dict[str, str]
    model_name: str
    run_id: str | None
    model_version: str | None
    metrics: dict[str, float] | None
    error: str | None
    log_tail: str | None
    pid: int | None
    entry_point: str
    promotion: dict[str, str] | None
    summary: dict[str, Any] | None
    requested_by: str | None = None  # the MLflow user who asked (GATEWAY_AUTH=mlflow)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        data = dict(row)
        data["parameters"] = json.loads(data["parameters"])
        for name in ("metrics", "promotion", "summary"):
            data[name] = json.loads(data[name]) if data[name] else None
        return cls(**data)


class JobStore:
    """The job table; every method is one short transaction, safe across threads."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            present = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            for column, definition in _ADDED_COLUMNS.items():
                if column not in present:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {definition}")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            with db:
                yield db
        finally:
            db.close()

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:12]

    def add(self, parameters: Mapping[str, str], model_name: str, entry_point: str = "main",
            requested_by: str | None = None, job_id: str | None = None) -> Job:
        job_id = job_id or self.new_id()
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (id, status, created_at, parameters, model_name, entry_point, requested_by)"
                " VALUES (?, 'queued', ?, ?, ?, ?, ?)",
                (job_id, _now(), json.dumps(dict(parameters)), model_name, entry_point, requested_by),
            )
        return self.get(job_id)

    def get(self, job_id: str) -> Job | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def list(self, entry_points: tuple[str, ...], limit: int = 100) -> list[Job]:
        """The newest jobs of these entry points first."""
        marks = ", ".join("?" for _ in entry_points)
        with self._connect() as db:
            rows = db.execute(f"SELECT * FROM jobs WHERE entry_point IN ({marks}) ORDER BY created_at DESC LIMIT ?",
                              (*entry_points, limit)).fetchall()
        return [Job.from_row(r) for r in rows]

    def with_status(self, status: str) -> list[Job]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs WHERE status = ? ORDER BY created_at", (status,)).fetchall()
        return [Job.from_row(r) for r in rows]

    def count_by_status(self) -> dict[str, int]:
        with self._connect() as db:
            return dict(db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())

    def update(self, job_id: str, *, only_if: tuple[str, ...] | None = None, **fields: Any) -> bool:
        """Set ``fields``; with ``only_if``, only while the job is in one of those statuses."""
        for name in ("metrics", "promotion", "summary"):
            if fields.get(name) is not None:
                fields[name] = json.dumps(fields[name])
        assignments = ", ".join(f"{k} = ?" for k in fields)
        query = f"UPDATE jobs SET {assignments} WHERE id = ?"
        args: list[Any] = [*fields.values(), job_id]
        if only_if:
            query += f" AND status IN ({', '.join('?' for _ in only_if)})"
            args += list(only_if)
        with self._connect() as db:
            return db.execute(query, args).rowcount == 1


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class TrainingJobRunner:
    """Runs queued jobs one after another in a background thread."""

    def __init__(self, store: JobStore, settings: Settings, client: MlflowClient):
        self.store = store
        self.settings = settings
        self.client = client
        # GATEWAY_AUTH=mlflow: the credentials of who asked for each queued job, in memory only (never in
        # the job store, a log or a command line); a job queued before a restart has none and fails
        self._callers: dict[str, Caller] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="training-jobs", daemon=True)

    # --- public -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop taking jobs; a running ``mlflow run`` keeps going and is followed again on restart."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def submit(self, parameters: Mapping[str, str], model_name: str, entry_point: str = "main",
               caller: Caller | None = None) -> Job:
        job_id = self.store.new_id()
        if caller:
            # before the job is in the store: the runner's thread may take it up at once, and a queued job
            # without its caller's credentials is one from before a restart (it fails)
            self._callers[job_id] = caller
        try:
            job = self.store.add(parameters, model_name, entry_point, caller.username if caller else None, job_id)
        except BaseException:
            self._callers.pop(job_id, None)
            raise
        self._wake.set()
        return job

    def bootstrap(self, model_name: str) -> Job | None:
        """A first start: train ``model_name`` on the embedded default data with ``promote=if_better``
        (no champion yet: promoted) when the registry has no version of it and no job is training one."""
        if self.client.search_model_versions(f"name = '{model_name}'", max_results=1):
            return None
        if any(j.model_name == model_name and j.status in ("queued", "running")
               for j in self.store.list(TRAINING_ENTRY_POINTS)):
            return None
        parameters = {"data_path": str(PROJECT_DIR / DEFAULT_DATA_PATH), "target": DEFAULT_TARGET,
                      "model_name": model_name, "promote": "if_better"}
        return self.submit(parameters, model_name)

    def cancel(self, job_id: str) -> Job | None:
        job = self.store.get(job_id)
        if job is None or job.status not in ("queued", "running"):
            return job
        if self.store.update(job_id, only_if=("queued",), status="cancelled", finished_at=_now(),
                             error="cancelled before it started"):
            self._callers.pop(job_id, None)  # its caller's credentials are never needed now
            return self.store.get(job_id)
        if self.store.update(job_id, only_if=("running",), status="cancelled", finished_at=_now(),
                             error="cancelled while running"):
            self._kill(job)
            if job.run_id:
                with contextlib.suppress(Exception):
                    self.client.set_terminated(job.run_id, RunStatus.to_string(RunStatus.KILLED))
        return self.store.get(job_id)

    # --- the loop -----------------------------------------------------------------------
    def _loop(self) -> None:
        self._recover()
        while not self._stop.is_set():
            queued = self.store.with_status("queued")
            if not queued:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            self._run(queued[0])

    def _recover(self) -> None:
        """Jobs left ``running`` by an earlier gateway: follow them again, or settle them."""
        for job in self.store.with_status("running"):
            while pid_alive(job.pid) and not self._stop.is_set():
                time.sleep(0.5)
            if self._stop.is_set():
                return
            self._settle(job, exit_code=None)

    def _command(self, job: Job, run_id: str) -> list[str]:
        command = [str(VENV_BIN / "mlflow"), "run", str(PROJECT_DIR), "-e", job.entry_point,
                   "--env-manager", "local", "--run-id", run_id]
        for name, value in job.parameters.items():
            command += ["-P", f"{name}={value}"]
        return command

    def _run(self, job: Job) -> None:
        log_path = self.settings.logs_dir / f"job-{job.id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        caller = self._callers.pop(job.id, None)
        if job.requested_by and caller is None:
            self.store.update(job.id, only_if=("queued",), status="failed", finished_at=_now(),
                              error="the gateway restarted before the job started and keeps no credentials: "
                                    "submit it again")
            return
        try:
            name = MONITORING_EXPERIMENT if job.entry_point == MONITOR_ENTRY_POINT else self.settings.experiment_name
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            tags = {TAG_JOB_ID: job.id}
            if caller:  # the run is the caller's: created with their credentials, under their name
                run_id = as_caller_run(self.settings, caller, experiment_id, f"job-{job.id}", tags)
            else:
                run_id = self.client.create_run(experiment_id, tags=tags, run_name=f"job-{job.id}").info.run_id
        except Exception as err:  # tracking server down: the job fails, the gateway carries on
            self.store.update(job.id, only_if=("queued",), status="failed", finished_at=_now(),
                              error=f"tracking server unavailable: {first_line(err, 300)}")
            return
        env = tool_env(MLFLOW_TRACKING_URI=self.settings.tracking_uri, MLFLOW_EXPERIMENT_ID=experiment_id)
        if caller:  # `mlflow run` and its steps act as the caller (the environment: not on a command line)
            env.update(MLFLOW_TRACKING_USERNAME=caller.username, MLFLOW_TRACKING_PASSWORD=caller.password)
        with open(log_path, "ab") as out:
            process = subprocess.Popen(self._command(job, run_id), cwd=PROJECT_DIR, env=env,
                                       stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        started = self.store.update(job.id, only_if=("queued",), status="running", started_at=_now(),
                                    run_id=run_id, pid=process.pid)
        if not started:  # cancelled between being picked and starting
            self._kill_process(process.pid)
            process.wait()
            return
        exit_code = process.wait()
        self._settle(self.store.get(job.id), exit_code)

    def _settle(self, job: Job, exit_code: int | None) -> None:
        """Record the outcome of a job whose process has ended, from what MLflow holds."""
        tail = log_tail(self.settings.logs_dir / f"job-{job.id}.log")
        try:
            run = self.client.get_run(job.run_id) if job.run_id else None
        except Exception as err:
            self.store.update(job.id, only_if=("running",), status="failed", finished_at=_now(), log_tail=tail,
                              error=f"outcome unknown, tracking server unavailable: {first_line(err, 300)}")
            return
        tags = run.data.tags if run else {}
        if run and run.info.status == "FINISHED" and job.entry_point == MONITOR_ENTRY_POINT:
            summary = json.loads(tags.get(TAG_MONITORING_SUMMARY) or "{}")
            self.store.update(job.id, only_if=("running",), status="succeeded", finished_at=_now(),
                              model_version=tags.get(TAG_MODEL_VERSION) or None, metrics=run.data.metrics,
                              log_tail=tail, summary=summary)
            return
        if run and run.info.status == "FINISHED" and tags.get(TAG_MODEL_VERSION):
            promotion = {k.removeprefix(PROMOTION_TAG_PREFIX): v for k, v in tags.items()
                         if k.startswith(PROMOTION_TAG_PREFIX)}
            self.store.update(job.id, only_if=("running",), status="succeeded", finished_at=_now(),
                              model_version=tags[TAG_MODEL_VERSION], metrics=run.data.metrics, log_tail=tail,
                              promotion=promotion or None)
            return
        if exit_code is None:
            reason = "the gateway stopped while this job ran and its process is gone"
            if run and run.info.status == "RUNNING":  # nobody else will end it
                with contextlib.suppress(Exception):
                    self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
        else:
            reason = tags.get(TAG_ERROR) or self._error_line(tail) or f"mlflow run exited with status {exit_code}"
        self.store.update(job.id, only_if=("running",), status="failed", finished_at=_now(),
                          error=reason, log_tail=tail)

    @staticmethod
    def _error_line(tail: str) -> str | None:
        lines = [line for line in tail.splitlines() if line.startswith("error: ")]
        return lines[-1].removeprefix("error: ") if lines else None

    @staticmethod
    def _kill_process(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)

    def _kill(self, job: Job) -> None:
        if job.pid and pid_alive(job.pid):
            self._kill_process(job.pid)


class MonitorSchedule:
    """Queue the monitor step for every served model every ``MONITOR_EVERY_MINUTES`` (the window: the
    minutes since the previous run)."""

    def __init__(self, runner: TrainingJobRunner, minutes: float, served_models: Callable[[], Awaitable[list[str]]]):
        self.runner = runner
        self.seconds = minutes * 60
        self.served_models = served_models
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await cancel(self._task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.seconds)
            since = datetime.fromtimestamp(time.time() - self.seconds, UTC).isoformat()
            try:
                names = await self.served_models()
            except Exception:  # noqa: BLE001 (the model server is down: the next round tries again)
                continue
            for name in names:
                self.runner.submit({"model_name": name, "since": since}, name, entry_point=MONITOR_ENTRY_POINT)
