"""How the job runner settles a finished monitoring job: the summary is the run's artifact ``summary.json``.

It once came from a run tag cut at 7,900 characters, and ``json.loads`` of the cut text killed the job
thread, so every later job stayed queued. A missing or unreadable summary fails that job, with its reason.
"""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from contract.names import MONITORING_SUMMARY_ARTIFACT
from contract.settings import Settings
from gateway.jobs import MONITOR_ENTRY_POINT, JobStore, TrainingJobRunner

WIDE = {"status": "drift", "rows": 300, "drift_share": 1.0, "live_metrics": {}, "feedback_rows": 0,
        "drifted_features": [f"measurement_{i:03d}_of_the_sensor" for i in range(320)]}


@pytest.fixture
def runner(tmp_path) -> TrainingJobRunner:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_experiment("monitoring", artifact_location=str(tmp_path / "artifacts"))
    return TrainingJobRunner(JobStore(tmp_path / "jobs.db"), Settings(stack_dir=tmp_path), client)  # not started


def settled(runner: TrainingJobRunner, summary_text: str | None) -> dict:
    """A monitoring job whose run finished with this ``summary.json`` (None: none), once settled."""
    client = runner.client
    run_id = client.create_run(client.get_experiment_by_name("monitoring").experiment_id).info.run_id
    if summary_text is not None:
        client.log_text(run_id, summary_text, MONITORING_SUMMARY_ARTIFACT)
    client.set_terminated(run_id)
    job = runner.store.add({"model_name": "wide"}, "wide", entry_point=MONITOR_ENTRY_POINT)
    runner.store.update(job.id, status="running", run_id=run_id)
    runner._settle(runner.store.get(job.id), exit_code=0)
    return vars(runner.store.get(job.id))


def test_a_wide_summary_is_read_whole_from_the_artifact(runner):
    text = json.dumps(WIDE)
    assert len(text) > 7900  # what the cut tag could not hold
    job = settled(runner, text)
    assert job["status"] == "succeeded" and job["summary"] == WIDE


@pytest.mark.parametrize(("text", "why"), [(None, "missing"), (json.dumps(WIDE)[:7900], "cut"),
                                           ("[1, 2]", "not an object")])
def test_a_missing_or_unreadable_summary_fails_that_job_with_a_reason_and_the_runner_goes_on(runner, text, why):
    job = settled(runner, text)
    assert job["status"] == "failed", why
    assert f"{MONITORING_SUMMARY_ARTIFACT} is missing or unreadable" in job["error"], job["error"]
    assert settled(runner, json.dumps(WIDE))["status"] == "succeeded"  # the next job is settled as ever
