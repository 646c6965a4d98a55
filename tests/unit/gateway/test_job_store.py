"""The training job store (gateway.jobs.JobStore): records, guarded updates, counts, migration."""

from __future__ import annotations

import sqlite3

import pytest

from gateway.jobs import JobStore


def test_a_job_is_added_queued_and_read_back(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    job = store.add({"data_path": "x.csv", "target": "y"}, "m", entry_point="tune")
    assert job.status == "queued" and job.entry_point == "tune" and job.model_name == "m"
    assert job.parameters == {"data_path": "x.csv", "target": "y"}
    assert store.get(job.id) == job and store.get("nope") is None


def test_updates_can_be_guarded_by_status(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    job = store.add({}, "m")
    assert not store.update(job.id, only_if=("running",), status="succeeded")  # not running: refused
    assert store.get(job.id).status == "queued"
    assert store.update(job.id, only_if=("queued",), status="running", pid=42)
    assert store.update(job.id, status="succeeded", metrics={"f1": 0.5}, promotion={"decision": "kept"})
    done = store.get(job.id)
    assert (done.status, done.pid, done.metrics, done.promotion) == ("succeeded", 42, {"f1": 0.5},
                                                                      {"decision": "kept"})


def test_lists_newest_first_and_counts_by_status(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    ids = [store.add({}, "m").id for _ in range(3)]
    monitoring = store.add({}, "m", entry_point="monitor").id
    store.update(ids[0], status="failed")
    assert [j.id for j in store.list(("main", "tune"))] == ids[::-1]  # the jobs of these entry points only
    assert [j.id for j in store.list(("monitor",))] == [monitoring]
    store.update(monitoring, status="succeeded")
    assert [j.id for j in store.with_status("queued")] == ids[1:]
    assert store.count_by_status() == {"queued": 2, "failed": 1, "succeeded": 1}


def test_a_store_from_the_first_release_is_migrated_in_place(tmp_path):
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as db:  # the table before entry_point and promotion existed
        db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at TEXT NOT NULL,"
                   " started_at TEXT, finished_at TEXT, parameters TEXT NOT NULL, model_name TEXT NOT NULL,"
                   " run_id TEXT, model_version TEXT, metrics TEXT, error TEXT, log_tail TEXT, pid INTEGER)")
        db.execute("INSERT INTO jobs (id, status, created_at, parameters, model_name)"
                   " VALUES ('old', 'succeeded', '2026-01-01T00:00:00+00:00', '{}', 'm')")
    store = JobStore(path)
    old = store.get("old")
    assert old.entry_point == "main" and old.promotion is None and old.summary is None and old.status == "succeeded"


def test_bootstrap_trains_the_model_once_and_only_while_the_registry_has_no_version(tmp_path):
    from mlflow import MlflowClient

    from contract.settings import Settings
    from gateway.jobs import TrainingJobRunner

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runner = TrainingJobRunner(JobStore(tmp_path / "jobs.db"), Settings(stack_dir=tmp_path), client)  # not started
    job = runner.bootstrap("census")
    assert job is not None and job.status == "queued" and job.model_name == "census"
    assert job.parameters["promote"] == "if_better" and job.parameters["target"] == "income"
    assert job.parameters["data_path"].endswith("data/census-income-sample.csv.gz")
    assert runner.bootstrap("census") is None  # a job is already training it
    runner.store.update(job.id, status="failed")
    assert runner.bootstrap("census") is not None  # it failed and nothing is registered: the next start tries again
    client.create_registered_model("other")
    client.create_model_version("other", source=str(tmp_path))
    assert runner.bootstrap("other") is None  # a version exists


def test_a_callers_credentials_are_kept_before_the_runner_can_see_the_job(tmp_path):
    """GATEWAY_AUTH=mlflow: the runner's thread polls the store and may take a job up the moment it is
    added; had the credentials come after, the job failed as one queued before a restart (seen in CI)."""
    from mlflow import MlflowClient

    from contract.settings import Settings
    from gateway.auth import Caller
    from gateway.jobs import TrainingJobRunner

    store = JobStore(tmp_path / "jobs.db")
    runner = TrainingJobRunner(store, Settings(stack_dir=tmp_path), MlflowClient(f"sqlite:///{tmp_path / 'm.db'}"))
    known_when_added = []
    add = store.add

    def add_then_look(*args, **kwargs):  # what the runner's thread would find right after the insert
        job = add(*args, **kwargs)
        known_when_added.append(runner._callers.get(job.id))
        return job

    store.add = add_then_look
    caller = Caller("editor", "secret")
    job = runner.submit({"target": "y"}, "m", caller=caller)
    assert known_when_added == [caller] and job.requested_by == "editor"

    def refused(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    store.add = refused  # a job that never made it to the store leaves no credentials behind
    with pytest.raises(sqlite3.OperationalError):
        runner.submit({"target": "y"}, "m", caller=caller)
    assert list(runner._callers) == [job.id]
    assert runner.cancel(job.id).status == "cancelled" and runner._callers == {}  # nor does one cancelled queued


def test_a_stranger_holding_a_jobs_stored_pid_is_neither_waited_on_nor_signalled(tmp_path):
    """After a restart the gateway follows jobs left running by their stored process; a PID reused by
    another process since must not be waited on (the queue would stall) nor signalled on cancel."""
    import subprocess
    import threading

    from mlflow import MlflowClient

    from contract.settings import Settings
    from gateway.jobs import TrainingJobRunner
    from runtime.processes import start_ticks

    store = JobStore(tmp_path / "jobs.db")
    runner = TrainingJobRunner(store, Settings(stack_dir=tmp_path), MlflowClient(f"sqlite:///{tmp_path / 'm.db'}"))
    with subprocess.Popen(["sleep", "60"], start_new_session=True) as stranger:
        try:
            def left_running(**recorded) -> str:
                job = store.add({}, "m")
                store.update(job.id, status="running", pid=stranger.pid, **recorded)
                return job.id

            reused = {"process": f"{stranger.pid}:{start_ticks(stranger.pid) + 1}"}  # same PID, other start
            legacy = {"run_id": "0123456789abcdef0123456789abcdef"}  # stored before start times: PID alone
            cancelled = [left_running(**reused), left_running(**legacy)]
            for job_id in cancelled:
                assert runner.cancel(job_id).status == "cancelled"
            followed = [left_running(**reused), left_running(**legacy)]
            recovering = threading.Thread(target=runner._recover, daemon=True)
            recovering.start()
            recovering.join(timeout=10)
            assert not recovering.is_alive(), "the restarted gateway waits on a stranger"
            assert [store.get(j).status for j in followed] == ["failed", "failed"]
            assert stranger.poll() is None, "a stranger was signalled"
        finally:
            stranger.kill()


def test_grants_are_taken_back_once_their_job_no_longer_runs_and_experiments_are_one_a_model(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    running, queued, ended = (store.add({}, "m") for _ in range(3))
    store.update(running.id, status="running")
    store.update(ended.id, status="failed")
    for job in (running, queued, ended):
        store.add_grant(job.id, "alice", "7", "NO_PERMISSIONS")
    store.add_grant("gone", "bob", "8", "READ")  # its job record is gone: taken back too
    assert sorted(store.grants_to_take_back()) == [(ended.id, "alice", "7", "NO_PERMISSIONS"), ("gone", "bob", "8",
                                                                                                  "READ")]
    store.drop_grant(ended.id, "alice", "7")
    assert store.grants_to_take_back() == [("gone", "bob", "8", "READ")]
    assert {j.id for j in store.active("m")} == {running.id, queued.id} and store.active("n") == []
    assert store.experiment("m", "training") is None
    store.set_experiment("m", "training", "7")
    store.set_experiment("m", "monitoring", "9")
    assert (store.experiment("m", "training"), store.experiment("m", "monitoring"), store.experiment("n", "training")) \
        == ("7", "9", None)


def test_each_model_has_an_experiment_the_gateway_made_and_a_new_one_once_not_registered(tmp_path):
    """EDIT on an experiment reaches every run in it: a model's jobs never share one with another model,
    nor use one somebody else made, nor one of an earlier model of the same name."""
    from mlflow import MlflowClient

    from contract.settings import Settings
    from gateway.jobs import TrainingJobRunner

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    store = JobStore(tmp_path / "jobs.db")
    runner = TrainingJobRunner(store, Settings(stack_dir=tmp_path, experiment_name="proj"), client)

    def experiment(model: str, registered: bool, entry_point: str = "main") -> str:
        return runner._experiment(store.add({}, model, entry_point), registered)

    first = experiment("m", registered=False)
    assert client.get_experiment(first).name == "proj/m"
    assert experiment("m", registered=True) == first  # registered since: its own, again
    assert experiment("n", registered=True) not in (first,)
    monitoring = experiment("m", True, "monitor")
    assert client.get_experiment(monitoring).name == "monitoring/m" and monitoring != first
    theirs = client.create_experiment("proj/x")  # made by someone else before the model's first job
    assert experiment("x", registered=False) != theirs
    renamed = experiment("m", registered=False)  # deleted and named again: not the earlier model's runs
    assert renamed != first and client.get_experiment(renamed).name.startswith("proj/m (")
    client.delete_experiment(renamed)
    assert experiment("m", registered=True) not in (first, renamed)
