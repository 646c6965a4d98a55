"""``main`` step: run ``preprocess`` then ``train`` as child runs of this one.

Each step's run is nested under the driver run, with the tags and parameters
``mlflow run -e <step>`` gives it, and runs in the driver's process
(``steps/runs.py``: ``run_child``); the preprocess run's ``splits`` artifact URI
is what the train step reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlparse

from contract.params import DataParams, ForestParams, ModelParams, parse_cli, to_arguments
from steps.runs import exit_when_done, log_params_once, next_steps, record_outcome, run_child, step_run
from steps.sources import fetch
from steps.splits import SPLITS_DIR


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
        print(next_steps(model.model_name, version), flush=True)


if __name__ == "__main__":
    exit_when_done(main)
