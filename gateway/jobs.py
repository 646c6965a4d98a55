"""Training jobs: each one a real ``mlflow run`` of this project, one at a time, recorded in SQLite.

Records live in ``STACK_DIR/jobs.db`` and survive a gateway restart: a job that
was running when the gateway stopped is followed again if its process still
runs, and otherwise ends with the outcome MLflow recorded for its run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from contract.errors import first_line
from contract.names import (
    DEFAULT_DATA_PATH,
    DEFAULT_TARGET,
    PROMOTION_TAG_PREFIX,
    TAG_ERROR,
    TAG_JOB_ID,
    MONITORING_SUMMARY_ARTIFACT,
    TAG_MODEL_VERSION,
)
from contract.settings import PROJECT_DIR, Settings
from gateway.auth import (
    RANKS,
    Caller,
    MlflowPermissions,
    as_caller_run,
    experiment_permission,
    set_experiment_permission,
)
from gateway.model_client import announce
from gateway.schemas import MonitorSummary
from runtime.processes import VENV_BIN, identified, process_identity, tool_env
from runtime.supervision import Supervisor
from runtime.tasks import cancel

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
LOG_TAIL_LINES = 20
LOOP_NAME, SCHEDULE_NAME = "job-runner", "monitor-schedule"  # as /ready and /metrics name the loops
log = logging.getLogger("gateway.jobs")


class NotAllowed(Exception):
    """The caller may no longer do what their queued job asks."""

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
# The experiment of each model's jobs, made by the gateway (never one found by name: whoever made that one
# could write every run in it), and each EDIT granted on one for a job, recorded before it is made.
_MORE_TABLES = (
    "CREATE TABLE IF NOT EXISTS experiments (model_name TEXT NOT NULL, purpose TEXT NOT NULL,"
    " experiment_id TEXT NOT NULL, PRIMARY KEY (model_name, purpose))",
    "CREATE TABLE IF NOT EXISTS grants (job_id TEXT NOT NULL, username TEXT NOT NULL, experiment_id TEXT NOT NULL,"
    " prior TEXT NOT NULL, PRIMARY KEY (job_id, username, experiment_id))",
)
# Columns added since the first release, for job stores created before them.
_ADDED_COLUMNS = {"entry_point": "TEXT NOT NULL DEFAULT 'main'", "promotion": "TEXT", "summary": "TEXT",
                  "requested_by": "TEXT", "process": "TEXT"}
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
    # the job's process as runtime/processes.py identifies it (PID and start time): a PID alone may be a
    # stranger's by the time a restarted gateway looks again
    process: str | None = None

    def running_pid(self) -> int | None:
        """The PID of this job's own ``mlflow run`` while it runs, else None (a job stored before start times
        were: its command line must name its run)."""
        return identified(self.process or (str(self.pid) if self.pid else None), marker=self.run_id)

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
            for table in _MORE_TABLES:
                db.execute(table)
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

    def active(self, model_name: str) -> list[Job]:
        """The queued and running jobs of ``model_name``."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs WHERE model_name = ? AND status IN ('queued', 'running')",
                              (model_name,)).fetchall()
        return [Job.from_row(r) for r in rows]

    def experiment(self, model_name: str, purpose: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT experiment_id FROM experiments WHERE model_name = ? AND purpose = ?",
                             (model_name, purpose)).fetchone()
        return row["experiment_id"] if row else None

    def set_experiment(self, model_name: str, purpose: str, experiment_id: str) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO experiments VALUES (?, ?, ?)", (model_name, purpose, experiment_id))

    def add_grant(self, job_id: str, username: str, experiment_id: str, prior: str) -> None:
        with self._connect() as db:
            db.execute("INSERT OR IGNORE INTO grants VALUES (?, ?, ?, ?)", (job_id, username, experiment_id, prior))

    def grants_to_take_back(self) -> list[tuple[str, str, str, str]]:
        """(job, user, experiment, prior permission) of every grant whose job no longer runs."""
        with self._connect() as db:
            return [tuple(r) for r in db.execute(
                "SELECT g.job_id, g.username, g.experiment_id, g.prior FROM grants g LEFT JOIN jobs j"
                " ON j.id = g.job_id WHERE j.status IS NULL OR j.status NOT IN ('queued', 'running')").fetchall()]

    def drop_grant(self, job_id: str, username: str, experiment_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM grants WHERE job_id = ? AND username = ? AND experiment_id = ?",
                       (job_id, username, experiment_id))

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

    def __init__(self, store: JobStore, settings: Settings, client: MlflowClient,
                 supervisor: Supervisor | None = None):
        self.store = store
        self.supervisor = supervisor or Supervisor()
        self.settings = settings
        self.client = client
        # GATEWAY_AUTH=mlflow: the credentials of who asked for each queued job, in memory only (never in
        # the job store, a log or a command line); a job queued before a restart has none and fails
        self._callers: dict[str, Caller] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # jobs that failed in the loop and whose failure could not be stored either: never taken again
        self._set_aside: set[str] = set()

    # --- public -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = self.supervisor.thread(LOOP_NAME, self._loop, self._stop)

    def stop(self) -> None:
        """Stop taking jobs; a running ``mlflow run`` keeps going and is followed again on restart."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
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
                try:
                    self.client.set_terminated(job.run_id, RunStatus.to_string(RunStatus.KILLED))
                except Exception as err:  # noqa: BLE001 (the job is cancelled; only MLflow's run status lags)
                    log.warning("job %s cancelled, but its run %s could not be marked killed: %s", job_id,
                                job.run_id, first_line(err, 300))
        return self.store.get(job_id)

    # --- the loop -----------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self._recover()
        except Exception as err:  # noqa: BLE001 (the jobs not followed again stay running; new ones still run)
            self.supervisor.item_failed(LOOP_NAME, "following the jobs left running again", err)
        while not self._stop.is_set():
            queued = [job for job in self.store.with_status("queued") if job.id not in self._set_aside]
            if not queued:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                self._run(queued[0])
            except Exception as err:  # noqa: BLE001 (this job fails with the reason; the loop goes on)
                self._failed(queued[0], err)

    def _failed(self, job: Job, err: Exception) -> None:
        """``job`` raised in the runner: it ends ``failed`` with the reason, counted; never taken again."""
        self._set_aside.add(job.id)
        self.supervisor.item_failed(LOOP_NAME, f"job {job.id}", err)
        self.store.update(job.id, only_if=("queued", "running"), status="failed", finished_at=_now(),
                          error=f"the gateway failed on this job: {type(err).__name__}: {first_line(err, 300)}")
        self._take_back_grants()  # one made for it while it was still queued

    def _recover(self) -> None:
        """Jobs left ``running`` by an earlier gateway: follow them again, or settle them."""
        for job in self.store.with_status("running"):
            while job.running_pid() and not self._stop.is_set():
                time.sleep(0.5)
            if self._stop.is_set():
                return
            try:
                self._settle(job, exit_code=None)
            except Exception as err:  # noqa: BLE001 (this job fails with the reason; the others are followed)
                self._failed(job, err)
        self._take_back_grants()  # those of jobs that ended while no gateway ran

    def _command(self, job: Job, run_id: str) -> list[str]:
        command = [str(VENV_BIN / "mlflow"), "run", str(PROJECT_DIR), "-e", job.entry_point,
                   "--env-manager", "local", "--run-id", run_id]
        for name, value in job.parameters.items():
            command += ["-P", f"{name}={value}"]
        return command

    def _run(self, job: Job) -> None:
        try:
            self._run_process(job)
        finally:  # the caller's EDIT on the model's experiment lasts as long as their job, not longer
            self._take_back_grants()

    def _experiment(self, job: Job, registered: bool) -> str:
        """The experiment of ``job``'s model and kind (training or monitoring), made by the gateway.

        One a model: EDIT on an experiment reaches every run in it (MLflow's auth app checks run and
        artifact writes against the experiment), so a shared one would let whoever trains one model write
        the runs, and with proxied artifacts the logged code, of every other. A model not registered (yet, or
        any more) gets a new one: the runs of an earlier model of that name are not its new trainer's."""
        purpose = "monitoring" if job.entry_point == MONITOR_ENTRY_POINT else "training"
        known = self.store.experiment(job.model_name, purpose)
        if known and registered and self._active(known):
            return known
        base = self.settings.experiment_name if purpose == "training" else MONITORING_EXPERIMENT
        name = f"{base}/{job.model_name}"
        if self.client.get_experiment_by_name(name) is not None:  # not ours (or deleted): never reused
            name = f"{name} ({job.id})"
        experiment_id = self.client.create_experiment(name)
        self.store.set_experiment(job.model_name, purpose, experiment_id)
        return experiment_id

    def _active(self, experiment_id: str) -> bool:
        try:
            return self.client.get_experiment(experiment_id).lifecycle_stage == "active"
        except MlflowException as err:  # deleted for good (`mlflow gc`): a new one is made
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return False

    def _registered(self, model_name: str) -> bool:
        try:
            self.client.get_registered_model(model_name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return False
        return True

    def _check_still_allowed(self, caller: Caller, model_name: str) -> None:
        """The caller's EDIT on the model, asked again as the job starts: it may have been revoked while
        the job waited in the queue."""
        async def ask() -> str:
            async with httpx.AsyncClient(timeout=30) as http:
                return await MlflowPermissions(self.settings.tracking_uri, 0, http).permission(caller, model_name)

        has = asyncio.run(ask())
        if RANKS.get(has, 0) < RANKS["EDIT"]:
            raise NotAllowed(f"user {caller.username!r} no longer has EDIT on registered model {model_name!r} "
                             f"(has {has})")

    def _grant_edit(self, job: Job, caller: Caller, experiment_id: str) -> None:
        """EDIT for ``caller`` on the experiment of the model they may EDIT, for this job only; recorded
        before it is made, so a gateway stopped mid-job takes it back when it starts again."""
        prior = experiment_permission(self.settings, caller.username, experiment_id)
        if RANKS.get(prior, 0) >= RANKS["EDIT"]:
            return
        self.store.add_grant(job.id, caller.username, experiment_id, prior)
        set_experiment_permission(self.settings, caller.username, experiment_id, "EDIT", prior)

    def _take_back_grants(self) -> None:
        """Every recorded grant whose job no longer runs goes back to what the user had before, or READ: who
        trained a model may read its runs in MLflow's own UI."""
        for job_id, username, experiment_id, prior in self.store.grants_to_take_back():
            kept = prior if RANKS.get(prior, 0) >= RANKS["READ"] else "READ"
            try:
                set_experiment_permission(self.settings, username, experiment_id, kept, "EDIT")
            except Exception as err:  # noqa: BLE001 (the record stays: taken back at the next job or start)
                log.warning("could not take back %s's EDIT on experiment %s (job %s): %s", username,
                            experiment_id, job_id, first_line(err, 300))
                continue
            self.store.drop_grant(job_id, username, experiment_id)

    def _run_process(self, job: Job) -> None:
        log_path = self.settings.logs_dir / f"job-{job.id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        caller = self._callers.pop(job.id, None)
        if job.requested_by and caller is None:
            self.store.update(job.id, only_if=("queued",), status="failed", finished_at=_now(),
                              error="the gateway restarted before the job started and keeps no credentials: "
                                    "submit it again")
            return
        try:
            registered = self._registered(job.model_name)
            if caller and registered:
                self._check_still_allowed(caller, job.model_name)
            experiment_id = self._experiment(job, registered)
            tags = {TAG_JOB_ID: job.id}
            if job.entry_point == MONITOR_ENTRY_POINT:
                # monitoring reads the versions' training runs, wherever they are, and writes only its own
                # run and the versions' monitoring tags: the gateway's work, once the caller's EDIT is checked
                caller = None
            if caller:  # the run is the caller's: created with their credentials, under their name
                self._grant_edit(job, caller, experiment_id)
                run_id = as_caller_run(self.settings, caller, experiment_id, f"job-{job.id}", tags)
            else:
                run_id = self.client.create_run(experiment_id, tags=tags, run_name=f"job-{job.id}").info.run_id
        except NotAllowed as err:
            self.store.update(job.id, only_if=("queued",), status="failed", finished_at=_now(), error=str(err))
            return
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
        try:
            started = self.store.update(job.id, only_if=("queued",), status="running", started_at=_now(),
                                        run_id=run_id, pid=process.pid, process=process_identity(process.pid))
        except BaseException:  # nothing would follow it: it must not run on
            self._kill_process(process.pid)
            process.wait()
            raise
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
            try:
                summary = self._monitoring_summary(run.info.run_id)
            except Exception as err:  # noqa: BLE001 (this job fails with the reason; the loop goes on)
                self.store.update(job.id, only_if=("running",), status="failed", finished_at=_now(), log_tail=tail,
                                  error=f"the monitoring run's {MONITORING_SUMMARY_ARTIFACT} is missing or unreadable: "
                                        f"{first_line(err, 300)}")
                return
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
            if promotion.get("decision") == "promoted":  # the model server loads it now, not at its next poll
                announce(self.settings, job.model_name)
            return
        if exit_code is None:
            reason = "the gateway stopped while this job ran and its process is gone"
            if run and run.info.status == "RUNNING":  # nobody else will end it
                try:
                    self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
                except Exception as err:  # noqa: BLE001 (the job fails anyway; only MLflow's run status lags)
                    log.warning("job %s failed, but its run %s could not be marked failed: %s", job.id,
                                run.info.run_id, first_line(err, 300))
        else:
            reason = tags.get(TAG_ERROR) or self._error_line(tail) or f"mlflow run exited with status {exit_code}"
        self.store.update(job.id, only_if=("running",), status="failed", finished_at=_now(),
                          error=reason, log_tail=tail)

    def _monitoring_summary(self, run_id: str) -> dict[str, Any]:
        """The summary the monitor step wrote as an artifact (it grows with the columns: never a tag)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(run_id, MONITORING_SUMMARY_ARTIFACT, tmp)
            summary = json.loads(Path(path).read_text(encoding="utf-8"))
        # what GET /monitor/{id} shows: one that does not fit fails its job here, never a listing later
        MonitorSummary.model_validate(summary)
        return summary

    @staticmethod
    def _error_line(tail: str) -> str | None:
        lines = [line for line in tail.splitlines() if line.startswith("error: ")]
        return lines[-1].removeprefix("error: ") if lines else None

    @staticmethod
    def _kill_process(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)

    def _kill(self, job: Job) -> None:
        pid = job.running_pid()
        if pid:
            self._kill_process(pid)


class MonitorSchedule:
    """Queue the monitor step for every served model every ``MONITOR_EVERY_MINUTES`` (the window: the
    minutes since the previous run)."""

    def __init__(self, runner: TrainingJobRunner, minutes: float, served_models: Callable[[], Awaitable[list[str]]]):
        self.runner = runner
        self.seconds = minutes * 60
        self.served_models = served_models
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = self.runner.supervisor.task(SCHEDULE_NAME, self._run)

    async def stop(self) -> None:
        await cancel(self._task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.seconds)
            await self.round()

    async def round(self) -> None:
        """Queue one monitor job per served model; a model whose job cannot be queued does not stop the others."""
        since = datetime.fromtimestamp(time.time() - self.seconds, UTC).isoformat()
        try:
            names = await self.served_models()
        except Exception as err:  # noqa: BLE001 (the model server is down: the next round tries again)
            log.warning("monitor schedule: no served models to monitor this round: %s", first_line(err, 300))
            return
        for name in names:
            try:
                self.runner.submit({"model_name": name, "since": since}, name, entry_point=MONITOR_ENTRY_POINT)
            except Exception as err:  # noqa: BLE001 (this model waits for the next round; the others go on)
                self.runner.supervisor.item_failed(SCHEDULE_NAME, f"queueing the monitor job of '{name}'", err)
