"""A registered version as the steps read it: its columns and classes, its training data, and its answers
computed with the code logged with it (never with this checkout's ``pyfunc``)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException

from contract.errors import ParameterError, ProjectError, first_line
from contract.params import column_list
from pyfunc.cleaning import FeatureSchema
from pyfunc.model import FEATURE_SCHEMA_FILE
from steps.splits import TRAIN_FILE

MLFLOW = Path(sys.executable).parent / "mlflow"
PROBA_PREFIX = "proba_"


def predict_with_own_code(model_uri: str, rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` scored by ``model_uri`` in a process that loads the model with its logged code."""
    with tempfile.TemporaryDirectory() as tmp:
        source, answer = Path(tmp) / "input.json", Path(tmp) / "predictions.json"
        source.write_text(json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split"))}))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run(
            [str(MLFLOW), "models", "predict", "-m", model_uri, "-i", str(source), "-o", str(answer),
             "-t", "json", "--env-manager", "local"],
            cwd=tmp, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise ProjectError(f"scoring {model_uri} failed: {first_line(last, 300)}")
        predictions = json.loads(answer.read_text())["predictions"]
    return pd.DataFrame(predictions)


@dataclass(frozen=True)
class Version:
    name: str
    version: str
    run_id: str  # the train step's run
    schema: FeatureSchema
    classes: list[Any]  # typed as the labels (int, float or text)
    positive: Any  # the class binary metrics score; None for a multiclass target
    test_metrics: dict[str, float]
    sensitive_columns: tuple[str, ...] = ()  # the groups its fairness is reported by (steps/fairness.py)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def training_split(self) -> pd.DataFrame:
        """The rows the version was trained on, as the preprocess step kept them (text cells, NaN missing)."""
        client = mlflow.MlflowClient()
        splits_uri = run_param(client.get_run(self.run_id).data.params, "splits_uri")
        if not splits_uri:
            raise ProjectError(f"the training run {self.run_id} of {self.uri} names no splits_uri")
        return pd.read_parquet(mlflow.artifacts.download_artifacts(artifact_uri=f"{splits_uri}/{TRAIN_FILE}"))


def read_version(name: str, version: str) -> Version:
    client = mlflow.MlflowClient()
    try:
        found = client.get_model_version(name, version)
    except MlflowException as err:
        raise ParameterError("version", version, f"no version {version} of '{name}': {first_line(err, 200)}") from None
    base = client.get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory() as tmp:
        schema = FeatureSchema.from_json(Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"{base}/artifacts/{FEATURE_SCHEMA_FILE}", dst_path=tmp)).read_text(encoding="utf-8"))
        mlmodel = yaml.safe_load(Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"{base}/MLmodel", dst_path=tmp)).read_text(encoding="utf-8"))
    outputs = json.loads((mlmodel.get("signature") or {}).get("outputs") or "[]")
    cast = {"long": int, "double": float}.get(next((o["type"] for o in outputs if o["name"] == "label"), "string"), str)
    classes = [cast(o["name"].removeprefix(PROBA_PREFIX)) for o in outputs if o["name"].startswith(PROBA_PREFIX)]
    run = client.get_run(found.run_id)
    positive = run.data.params.get("positive_class_used", "")
    return Version(name, str(found.version), found.run_id, schema, classes,
                   next((c for c in classes if str(c) == positive), None) if positive else None, run.data.metrics,
                   column_list(run_param(run.data.params, "sensitive_columns")))


def run_param(params: dict[str, str], name: str) -> str:
    """A parameter of a step's run as the step was given it: ``mlflow run`` logs its parameters shell-quoted
    (``'a b'``), a step run by a driver (``run_child``) logs them as they are. Only a value that is exactly the
    quoted form of another text is unquoted (a name that starts and ends with ``'`` is read as quoted)."""
    raw = params.get(name, "")
    try:
        words = shlex.split(raw)
    except ValueError:  # unbalanced quotes: not a quoted form
        return raw
    return words[0] if len(words) == 1 and words[0] != raw and shlex.quote(words[0]) == raw else raw
