"""The gateway's background loops under faults (issue 33, symptom 8 and "supervised background work"): an
exception in one item fails that item with its reason and the loop goes on to the next; a loop that dies anyway
is restarted, counted on /metrics and named in /ready. Real job store, real MLflow registry (SQLite), real app."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from contract.names import TAG_ROLLBACK_REASON
from contract.registry import Registry
from contract.settings import Settings
from contract.traffic import TrafficPolicy
from gateway.app import create_app
from gateway.jobs import MONITOR_ENTRY_POINT, Job, JobStore, MonitorSchedule, TrainingJobRunner
from gateway.observability import Metrics
from gateway.rollouts import Rollouts


def wait_until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class PoisonRunner(TrainingJobRunner):
    """A runner whose jobs "run" in process: the job for model ``poison`` raises, the others succeed."""

    def _run(self, job: Job) -> None:
        if job.model_name == "poison":
            raise KeyError("a job the runner cannot handle")
        self.store.update(job.id, only_if=("queued",), status="succeeded", finished_at="now")


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the module (creating one costs seconds); each test its own model names."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # created once, here
    return uri


def runner(tmp_path: Path, uri: str, cls: type[TrainingJobRunner] = PoisonRunner) -> TrainingJobRunner:
    return cls(JobStore(tmp_path / "jobs.db"), Settings(stack_dir=tmp_path), MlflowClient(uri))


def test_a_job_that_raises_in_the_runner_fails_with_its_reason_and_the_next_job_runs(tmp_path, tracking_uri):
    jobs = runner(tmp_path, tracking_uri)
    poison = jobs.submit({"target": "y"}, "poison")
    good = jobs.submit({"target": "y"}, "good")
    jobs.start()
    try:
        wait_until(lambda: jobs.store.get(good.id).status == "succeeded", what="the job after the poison one")
    finally:
        jobs.stop()
    failed = jobs.store.get(poison.id)
    assert failed.status == "failed" and "KeyError" in failed.error and "cannot handle" in failed.error
    assert failed.finished_at is not None
    loop = jobs.supervisor.report()["job-runner"]
    assert loop["items_failed"] == 1 and loop["restarts"] == 0  # the item failed, never the loop


class PoisonSettle(PoisonRunner):
    """The outcome of the job of model ``poison`` cannot be read (as a monitor job's cut summary could not)."""

    def _settle(self, job: Job, exit_code: int | None) -> None:
        if job.model_name == "poison":
            raise ValueError("Unterminated string starting at: line 1 column 7900")
        super()._settle(job, exit_code)


def test_a_job_left_running_that_raises_when_read_again_fails_and_the_others_are_settled_and_run(
        tmp_path, tracking_uri):
    jobs = runner(tmp_path, tracking_uri, PoisonSettle)
    left = {}
    for name in ("poison", "other"):  # left running by an earlier gateway, their processes gone
        job = jobs.store.add({"target": "y"}, name)
        jobs.store.update(job.id, status="running", started_at="earlier")
        left[name] = job.id
    queued = jobs.submit({"target": "y"}, "good")
    jobs.start()
    try:
        wait_until(lambda: jobs.store.get(queued.id).status == "succeeded", what="the queued job after restart")
    finally:
        jobs.stop()
    poison, other = jobs.store.get(left["poison"]), jobs.store.get(left["other"])
    assert poison.status == "failed" and "line 1 column 7900" in poison.error
    assert other.status == "failed" and "the gateway stopped while this job ran" in other.error
    assert jobs.supervisor.report()["job-runner"]["restarts"] == 0


class RefusingRunner(TrainingJobRunner):
    """The job store refuses the monitor job of model ``a`` (as a locked database would)."""

    def submit(self, parameters, model_name, entry_point="main", caller=None) -> Job:
        if model_name == "a":
            raise OSError("database is locked")
        return super().submit(parameters, model_name, entry_point, caller)


def test_a_monitor_round_that_cannot_queue_one_model_queues_the_others(tmp_path, tracking_uri, caplog):
    jobs = runner(tmp_path, tracking_uri, RefusingRunner)  # not started: the jobs stay queued

    async def served() -> list[str]:
        return ["a", "b"]

    schedule = MonitorSchedule(jobs, 5, served)
    with caplog.at_level(logging.WARNING):
        asyncio.run(schedule.round())
    queued = jobs.store.with_status("queued")
    assert [(j.model_name, j.entry_point) for j in queued] == [("b", MONITOR_ENTRY_POINT)]
    assert jobs.supervisor.report()["monitor-schedule"]["items_failed"] == 1
    assert any("'a'" in r.getMessage() and "database is locked" in r.getMessage() for r in caplog.records)


def test_a_monitor_round_without_the_model_server_says_so_and_queues_nothing(tmp_path, tracking_uri, caplog):
    jobs = runner(tmp_path, tracking_uri)

    async def down() -> list[str]:
        raise RuntimeError("model server unreachable at http://127.0.0.1:9")

    with caplog.at_level(logging.WARNING, "gateway.jobs"):
        asyncio.run(MonitorSchedule(jobs, 5, down).round())
    assert not jobs.store.with_status("queued")
    assert any("model server unreachable" in r.getMessage() for r in caplog.records)


def test_the_rollback_watcher_logs_and_counts_a_canary_it_cannot_check_and_still_rolls_back_the_next(
        tmp_path, tracking_uri, caplog):
    """Symptom 8: the watcher ran each check under suppress(Exception), without a log line or a metric."""
    client = MlflowClient(tracking_uri)
    settings = Settings(stack_dir=tmp_path, rollout_min_requests=5, rollout_window_seconds=60)
    registry = Registry(client, settings.serve_alias)
    metrics = Metrics()
    rollouts = Rollouts(registry, settings, metrics)
    for name in ("broken", "bad-canary"):
        client.create_registered_model(name)
        rollouts.set_policy(name, TrafficPolicy.canary_default())
    for _ in range(10):  # the canary of bad-canary fails every request, its served version none
        rollouts.observe("bad-canary", "1", False, 0.01)
        rollouts.observe("bad-canary", "2", True, 0.01)

    async def versions_of(name: str, alias: str | None) -> tuple[str | None, str | None]:
        if name == "broken":
            raise LookupError("registry answer without aliases")
        return "1", "2"

    async def scenario() -> None:
        watcher = asyncio.create_task(rollouts.watch(versions_of))
        try:
            for _ in range(300):
                await asyncio.sleep(0.02)
                if rollouts.policy("bad-canary").mode == "single":
                    break
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await rollouts.close()

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    assert client.get_registered_model("bad-canary").tags[TAG_ROLLBACK_REASON].startswith("canary error rate")
    told = [r for r in caplog.records if "broken" in r.getMessage() and "without aliases" in r.getMessage()]
    assert told and told[0].levelno >= logging.WARNING and told[0].exc_info  # logged, with its traceback
    assert rollouts.supervisor.report()["rollback-watcher"]["items_failed"] >= 1  # counted


def test_a_loop_that_dies_is_restarted_counted_on_metrics_and_named_in_ready(tmp_path, tracking_uri):
    settings = Settings(_env_file=None, stack_dir=tmp_path, mlflow_tracking_uri=tracking_uri,
                        model_server_url="http://127.0.0.1:9", api_token=None)  # no model server: /ready is 503
    app = create_app(settings)
    with TestClient(app) as http:
        before = http.get("/ready")
        assert before.status_code == 503 and "background" not in before.json()  # nothing died: the body as ever
        store = app.state.jobs.store
        path, store.path = store.path, tmp_path  # a folder: every read of the job store now raises
        supervisor = app.state.supervisor
        wait_until(lambda: supervisor.report()["job-runner"]["restarts"] >= 1, what="the job runner's death")
        ready = http.get("/ready")
        assert ready.status_code == 503 and ready.json()["reason"] == before.json()["reason"]  # status code as ever
        loop = ready.json()["background"]["job-runner"]
        assert loop["restarts"] >= 1 and "OperationalError" in loop["last_error"]
        assert loop["state"] in ("restarting", "running")
        metrics = http.get("/metrics").text
        assert 'gateway_background_loop_restarts_total{loop="job-runner"}' in metrics
        restarts = [line for line in metrics.splitlines()
                    if line.startswith('gateway_background_loop_restarts_total{loop="job-runner"}')]
        assert float(restarts[0].split()[-1]) >= 1
        store.path = path  # the store is back: the restarted loop runs jobs again
        job = app.state.jobs.submit({"target": "y"}, "m")
        wait_until(lambda: store.get(job.id).status != "queued", timeout=30, what="a job taken after the restart")
        assert supervisor.report()["job-runner"]["state"] == "running"


def test_ready_names_the_model_servers_dead_loops_beside_the_gateways_and_only_those():
    from gateway.routes.health import troubled_loops
    from runtime.supervision import Supervisor

    gateway = Supervisor()
    gateway._died(gateway._started("inference-log"), RuntimeError("disk full"), 0)
    gateway._started("rollback-watcher")  # running, never died: not named
    died = {"state": "running", "restarts": 2, "items_failed": 0, "last_error": "KeyError: 'x'", "last_died_at": 1.0}
    fine = {**died, "restarts": 0, "last_error": None}
    status = {"status": "serving", "background": {"registry-follower": died, "other": fine}}
    named = troubled_loops(gateway, status)
    assert set(named) == {"inference-log", "model-server/registry-follower"}
    assert named["inference-log"]["last_error"] == "RuntimeError: disk full"
    assert troubled_loops(Supervisor(), "model server unreachable") is None  # nothing died: no field at all
