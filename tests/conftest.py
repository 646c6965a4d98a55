"""Fixtures shared by unit and integration tests: real MLflow stores in temporary folders."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from hypothesis import settings

from runtime.processes import lane_port

# The property tests draw the same examples on every run (each test its own fixed seed), so CI fails on a change
# of the code, never on a new draw; HYPOTHESIS_PROFILE=explore draws anew each run, to look for new failures.
settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

PROJECT_DIR = Path(__file__).resolve().parents[1]
CENSUS_SAMPLE = PROJECT_DIR / "data" / "census-income-sample.csv.gz"


def listen_port() -> int:
    """A port on 127.0.0.1 for a server a test starts: from its pytest-xdist worker's own lane, which no other
    worker, benchmark (lane 0) or ``bind(0)`` hands out."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    return lane_port("127.0.0.1", 1 + int(worker or 0))


@dataclass(frozen=True)
class Tracking:
    uri: str
    experiment_name: str
    experiment_id: str
    root: Path


@contextmanager
def temporary_tracking(root: Path) -> Iterator[Tracking]:
    """Point MLflow (this process and its children) at a new SQLite store under ``root``."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        name = f"test-{uuid.uuid4().hex[:8]}"
        experiment_id = mlflow.create_experiment(name, artifact_location=str(root / "artifacts"))
        patch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
        try:
            yield Tracking(uri, name, experiment_id, root)
        finally:
            while mlflow.active_run():
                mlflow.end_run()
            mlflow.set_tracking_uri(previous)


@pytest.fixture
def tracking(tmp_path: Path) -> Iterator[Tracking]:
    """A fresh SQLite tracking store and registry, with artifacts under ``tmp_path``."""
    with temporary_tracking(tmp_path) as store:
        yield store


def census_rows(n: int) -> pd.DataFrame:
    """The first ``n`` rows of the embedded census sample, every cell as raw text."""
    return pd.read_csv(CENSUS_SAMPLE, dtype=str, keep_default_na=False, nrows=n)


def mixed_frame(n: int = 240, seed: int = 0, labels: tuple = ("no", "yes")) -> pd.DataFrame:
    """A small raw data set with numeric and text columns, '?' markers, blanks and stray spaces."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n)
    hours = rng.normal(40, 10, n).round(1)
    colour = rng.choice(["red", "green", "blue"], n)
    city = rng.choice(["Oslo", "Lima", "Pune", "Kobe"], n)
    score = age / 80 + (colour == "red") * 0.6 + rng.normal(0, 0.2, n)
    edges = np.quantile(score, np.linspace(0, 1, len(labels) + 1)[1:-1])
    frame = pd.DataFrame(
        {
            "age": age.astype(str),
            "hours": hours.astype(str),
            "colour": colour,
            "city": [f" {c} " for c in city],  # stray whitespace, as in real exports
            "label": [labels[i] for i in np.searchsorted(edges, score)],
        }
    )
    frame.loc[::7, "hours"] = "?"
    frame.loc[3::11, "colour"] = ""
    frame.loc[5::13, "city"] = "?"
    return frame


MIXED_FEATURES = ["age", "hours", "colour", "city"]
# mixed_frame's features renamed as public CSV headers name columns (issue 33): every path takes names as data.
ODD_NAMES = {"age": "debt/income (%)", "hours": 'rate.per "hour"', "colour": "colour: #1 `tone` \\ it's",
             "city": "ville é 城市 " + "x" * 189}


def fitted_mixed_pipeline() -> tuple:
    """The project's pipeline (20 trees) fitted on :func:`mixed_frame`: pipeline, schema, cleaned features."""
    from pyfunc.cleaning import clean_raw_frame, infer_feature_schema
    from pyfunc.pipeline import build_pipeline

    frame = mixed_frame()
    schema = infer_feature_schema(frame[MIXED_FEATURES], ["?"])
    pipeline = build_pipeline(schema, {"n_estimators": 20, "random_state": 0})
    X = clean_raw_frame(frame, schema)
    pipeline.fit(X, frame["label"].to_numpy())
    return pipeline, schema, X


def registered_versions(client: mlflow.MlflowClient, name: str, count: int) -> None:
    """A registered model ``name`` with ``count`` versions of one small artifact, in the active store."""
    client.create_registered_model(name)
    with mlflow.start_run() as run:
        mlflow.log_text("x", "model.txt")
    for _ in range(count):
        client.create_model_version(name, f"runs:/{run.info.run_id}/model.txt", run.info.run_id)
