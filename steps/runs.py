"""How a step runs inside its MLflow run, runs other steps, and reports failures."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import mlflow
import mlflow.projects
from mlflow import ActiveRun
from mlflow.entities import Run
from mlflow.projects import ExecutionException

from contract.errors import ProjectError
from contract.names import (
    MLFLOW_ENTRY_POINT,
    MLFLOW_PARENT_RUN_ID,
    PROMOTION_TAG_PREFIX,
    TAG_ERROR,
    TAG_MODEL_NAME,
    TAG_MODEL_VERSION,
    TAG_PREPROCESS_RUN_ID,
    TAG_TRAIN_RUN_ID,
)

PROJECT_DIR = Path(__file__).resolve().parents[1]


@contextmanager
def step_run(run_name: str) -> Iterator[ActiveRun]:
    """Open (or, under ``mlflow run``, resume) the step's run.

    A :class:`ProjectError` marks the run failed, is recorded as the ``error`` tag
    and is printed as one ``error: ...`` line; the process exits with status 2.
    """
    try:
        with mlflow.start_run(run_name=run_name) as run:
            try:
                yield run
            except ProjectError as err:
                mlflow.set_tag(TAG_ERROR, str(err))
                raise
    except ProjectError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def log_params_once(params: dict[str, object]) -> None:
    """Log params the active run does not have yet.

    ``mlflow run`` already logs the entry point's parameters (shell-quoted:
    ``'?'``); MLflow refuses to log a key twice with another value.
    """
    run = mlflow.active_run()
    assert run is not None, "log_params_once needs an active run"
    logged = mlflow.get_run(run.info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})


def run_child(entry_point: str, parameters: Mapping[str, str], experiment_id: str) -> Run:
    """Run an entry point of this project as a child of the active run; return its finished run.

    Synchronous, so MLflow starts the step's command directly (no extra ``mlflow
    run`` process, seconds saved per step) and in our process group: a signal
    that stops the driver (Ctrl-C, a cancelled gateway job) stops the step too.
    A failed step's one-line reason (its ``error`` tag) becomes this step's error.
    """
    parent = mlflow.active_run()
    assert parent is not None, "run_child needs an active run"
    try:
        submitted = mlflow.projects.run(
            str(PROJECT_DIR), entry_point=entry_point, parameters=dict(parameters), experiment_id=experiment_id,
            env_manager="local",  # the driver already runs inside the project's environment
            synchronous=True,
        )
    except ExecutionException:
        # MLflow raises without the run; the child is the newest run of this entry point under ours
        children = mlflow.search_runs(
            [experiment_id], output_format="list", max_results=1, order_by=["attributes.start_time DESC"],
            filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}'"
                          f" AND tags.`{MLFLOW_ENTRY_POINT}` = '{entry_point}'")
        reason = children[0].data.tags.get(TAG_ERROR) if children else None
        raise ProjectError(f"{entry_point} failed: {reason or 'see the log above'}") from None
    return mlflow.get_run(submitted.run_id)


def record_outcome(prepared: Run, trained: Run, model_name: str) -> str:
    """Copy the train step's outcome onto the active driver run; return the registered version.

    The driver run (``main`` or ``tune``) carries metrics, version and promotion
    decision, so one run answers "what came out?" (the gateway's jobs read it).
    """
    mlflow.log_metrics(trained.data.metrics)
    version = trained.data.tags.get(TAG_MODEL_VERSION, "")
    mlflow.set_tags({
        **{k: v for k, v in trained.data.tags.items() if k.startswith(PROMOTION_TAG_PREFIX)},
        TAG_PREPROCESS_RUN_ID: prepared.info.run_id,
        TAG_TRAIN_RUN_ID: trained.info.run_id,
        TAG_MODEL_NAME: model_name,
        TAG_MODEL_VERSION: version,
    })
    return version


def next_steps(model_name: str, version: str) -> str:
    """What a person does next with a registered version: where it is, how to see it, how to serve it."""
    uri = mlflow.get_tracking_uri()
    page = f"/#/models/{model_name}/versions/{version}"
    # another port than the stack's tracking server (5000), which may be running
    see = (f"{uri.rstrip('/')}{page}" if uri.startswith(("http://", "https://")) else
           f"mlflow ui --backend-store-uri {uri} -p 5050, then http://127.0.0.1:5050{page}")
    return "\n".join([
        f"  model      models:/{model_name}/{version}  (tracking: {uri})",
        f"  see it     {see}",
        f"  serve it   MLFLOW_TRACKING_URI={uri} mlflow models serve -m models:/{model_name}/{version} "
        "--env-manager local -p 5002",
        f"  or with the stack: promote it (POST /models/{model_name}/versions/{version}/stage), then "
        f"POST /models/{model_name}/predict",
    ])
