"""How a step runs inside its MLflow run, runs other steps, and reports failures."""

from __future__ import annotations

import gc
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow import ActiveRun
from mlflow.entities import Run

from contract.errors import ProjectError, first_line
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
# What a child run takes from its driver's, as ``mlflow run`` would set it: where the code came from
# (source name and type, git commit, repository, branch), the backend and environment, the user.
INHERITED_TAG_PREFIXES = ("mlflow.source.", "mlflow.project.backend", "mlflow.project.env", "mlflow.user")
# A run tag holds 8,000 characters; an error's message may quote data (columns, values) of any size.
ERROR_TAG_LENGTH = 1000


@contextmanager
def step_run(run_name: str) -> Iterator[ActiveRun]:
    """Open (or, under ``mlflow run``, resume) the step's run.

    A :class:`ProjectError` marks the run failed, is recorded as the ``error`` tag
    and is printed as one ``error: ...`` line; the process exits with status 2.
    Any other exception is recorded as the ``error`` tag too (its type and first
    line: what a job shows instead of "exited with status 1"), its traceback printed.
    """
    try:
        with mlflow.start_run(run_name=run_name) as run:
            try:
                yield run
            except Exception as err:
                tag_error(err)
                raise
    except ProjectError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def error_text(err: BaseException) -> str:
    """A failure, bounded: a caller's error as its message; any other as its type and first line."""
    text = str(err).strip() if isinstance(err, ProjectError) else f"{type(err).__name__}: {first_line(err)}"
    return text[:ERROR_TAG_LENGTH]


def tag_error(err: BaseException) -> None:
    """Record the failure on the active run; a failure to record it must not hide the failure itself."""
    try:
        mlflow.set_tag(TAG_ERROR, error_text(err))
    except Exception as tagging:  # noqa: BLE001 (reported; the step's own error is raised on)
        print(f"warning: the error tag was not recorded: {first_line(tagging, 300)}", file=sys.stderr, flush=True)


def exit_when_done(main: Callable[[], None]) -> None:
    """Run a driver's ``main`` (``main``, ``tune``), then end the process without the interpreter's teardown.

    When the work is done, the run ended and the output flushed, freeing every
    module of MLflow, scikit-learn, numba and pandas one object at a time still
    costs a second or more, and ``mlflow run`` waits for it. Nothing is left to
    write then; an error (an exception, ``SystemExit``) ends the process the
    normal way.
    """
    main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def log_params_once(params: dict[str, object]) -> None:
    """Log params the active run does not have yet.

    ``mlflow run`` already logs the entry point's parameters (shell-quoted:
    ``'?'``); MLflow refuses to log a key twice with another value.
    """
    run = mlflow.active_run()
    assert run is not None, "log_params_once needs an active run"
    logged = mlflow.get_run(run.info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while modules are imported, and what they made frozen after.

    Importing scikit-learn, skops, matplotlib and numba makes millions of objects
    that live as long as the process; the collector would walk them again and
    again meanwhile (about a sixth of the import time) and in every full
    collection after. Frozen, later collections leave them out.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def run_child(entry_point: str, parameters: Mapping[str, str], experiment_id: str) -> Run:
    """Run an entry point of this project as a child of the active run, in this process; return its finished run.

    The child is the run ``mlflow run -e <entry_point>`` makes (the same parameters,
    the entry point, source and git tags, the driver as parent run), without a
    Python process of its own: a second and third start-up would import MLflow,
    scikit-learn and the step's code again, seconds each. The step is the module's
    :func:`step` (``steps/<entry_point>.py``), what its ``main`` runs under
    ``mlflow run``. A failed step's one-line reason (its ``error`` tag) becomes
    this step's error; the child is marked failed.
    """
    parent = mlflow.active_run()
    assert parent is not None, "run_child needs an active run"
    with collector_paused():
        step = importlib.import_module(f"steps.{entry_point}").step
    inherited = {key: value for key, value in mlflow.get_run(parent.info.run_id).data.tags.items()
                 if key.startswith(INHERITED_TAG_PREFIXES)}
    argv = [part for key, value in parameters.items() for part in (f"--{key}", str(value))]
    # created as MLflow's projects create them, without the tags start_run would guess (the git branch ...)
    created = mlflow.MlflowClient().create_run(experiment_id, run_name=entry_point, tags={
        **inherited, MLFLOW_ENTRY_POINT: entry_point, MLFLOW_PARENT_RUN_ID: parent.info.run_id})
    try:
        with mlflow.start_run(run_id=created.info.run_id, nested=True) as child:
            try:
                step(argv)
            except Exception as err:
                tag_error(err)
                raise
    except ProjectError as err:  # the child ended as failed on the way out
        raise ProjectError(f"{entry_point} failed: {err}") from None
    return mlflow.get_run(child.info.run_id)


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
