"""How a step runs inside its MLflow run and reports failures."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
from mlflow import ActiveRun

from steps.params import StepError

# Tag holding a failed step's one-line reason, for people and for the gateway.
ERROR_TAG = "error"


@contextmanager
def step_run(run_name: str) -> Iterator[ActiveRun]:
    """Open (or, under ``mlflow run``, resume) the step's run.

    A :class:`StepError` marks the run failed, is recorded as the ``error`` tag
    and is printed as one ``error: ...`` line; the process exits with status 2.
    """
    try:
        with mlflow.start_run(run_name=run_name) as run:
            try:
                yield run
            except StepError as err:
                mlflow.set_tag(ERROR_TAG, str(err))
                raise
    except StepError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def first_line(err: BaseException | str, limit: int | None = None) -> str:
    """The first line of an error's message (its type's name if it has none), for one-line reports."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line[:limit] if limit else line


def log_params_once(params: dict[str, object]) -> None:
    """Log params the active run does not have yet.

    ``mlflow run`` already logs the entry point's parameters (shell-quoted:
    ``'?'``); MLflow refuses to log a key twice with another value.
    """
    run = mlflow.active_run()
    assert run is not None, "log_params_once needs an active run"
    logged = mlflow.get_run(run.info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})
