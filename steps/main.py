"""``main`` step: run ``preprocess`` then ``train`` as child runs of this one.

Each step is a real MLflow Project run nested under the driver run; the
preprocess run's ``splits`` artifact URI is what the train step reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import mlflow.projects
from mlflow.entities import Run
from mlflow.projects import ExecutionException

from steps.params import DataParams, ForestParams, ModelParams, StepError, parse_cli, to_arguments
from steps.preprocess import SPLITS_DIR
from steps.promotion import TAG_PREFIX as PROMOTION_TAG_PREFIX
from steps.runs import ERROR_TAG, log_params_once, step_run
from steps.sources import fetch

PROJECT_DIR = Path(__file__).resolve().parents[1]


def run_child(entry_point: str, parameters: Mapping[str, str], experiment_id: str) -> Run:
    """Run an entry point of this project in the current environment; return its finished run.

    Synchronous, so MLflow starts the step's command directly (no extra ``mlflow
    run`` process, seconds saved per step) and in our process group: a signal
    that stops the driver (Ctrl-C, a cancelled gateway job) stops the step too.
    """
    try:
        submitted = mlflow.projects.run(
            str(PROJECT_DIR),
            entry_point=entry_point,
            parameters=dict(parameters),
            experiment_id=experiment_id,
            # The driver already runs inside the project's environment.
            env_manager="local",
            synchronous=True,
        )
    except ExecutionException as err:
        match = re.search(r"Run \(ID '(\w+)'\)", str(err))
        tags = mlflow.get_run(match.group(1)).data.tags if match else {}
        reason = tags.get(ERROR_TAG, f"see the log above ({err})")
        raise StepError(f"{entry_point} failed: {reason}") from None
    return mlflow.get_run(submitted.run_id)


def record_outcome(prepared: Run, trained: Run, model_name: str) -> str:
    """Copy the train step's outcome onto the active driver run; return the registered version.

    The driver run (``main`` or ``tune``) carries metrics, version and promotion
    decision, so one run answers "what came out?" (the gateway's jobs read it).
    """
    mlflow.log_metrics(trained.data.metrics)
    version = trained.data.tags.get("model_version", "")
    mlflow.set_tags({
        **{k: v for k, v in trained.data.tags.items() if k.startswith(PROMOTION_TAG_PREFIX)},
        "preprocess_run_id": prepared.info.run_id,
        "train_run_id": trained.info.run_id,
        "model_name": model_name,
        "model_version": version,
    })
    return version


def main(argv: Sequence[str] | None = None) -> None:
    with step_run("main") as driver:
        data, forest, model = parse_cli(argv, DataParams, ForestParams, ModelParams)
        if not urlparse(data.data_path).scheme:  # local file: fail before starting any child
            fetch(data.data_path, "data_path")
        log_params_once(to_arguments(data, forest, model))
        experiment_id = driver.info.experiment_id

        prepared = run_child("preprocess", to_arguments(data), experiment_id)
        splits_uri = f"{prepared.info.artifact_uri}/{SPLITS_DIR}"
        trained = run_child(
            "train",
            {**to_arguments(forest, model), "splits_uri": splits_uri, "target": data.target},
            experiment_id,
        )

        version = record_outcome(prepared, trained, model.model_name)
        print(
            f"main: {model.model_name} version {version} registered by run {trained.info.run_id}"
            f" (f1={trained.data.metrics.get('f1', float('nan')):.4f},"
            f" roc_auc={trained.data.metrics.get('roc_auc', float('nan')):.4f})"
        )


if __name__ == "__main__":
    main()
