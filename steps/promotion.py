"""The champion/challenger rule: a new version is served only if it beats the served one.

Both are scored on the new version's test split, on the metric the run was
asked to compare. The served version is scored with the code logged with it,
in a process of its own (``mlflow models predict``), never with this
checkout's ``pyfunc``. :func:`decide` is the rule as a pure function; the
decision and both scores become tags on the new version and on the run, so
``GET /train/{job_id}`` and the MLflow UI show them. A promotion goes through
the registry policy (``contract.registry``): serving alias and Production
together, the version it replaces Archived.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd

from contract.errors import ProjectError, first_line
from contract.names import PROMOTION_TAG_PREFIX
from contract.registry import Registry
from contract.settings import get_settings
from pyfunc.model import proba_column
from steps import evaluate
from steps.splits import Labels

MLFLOW = Path(sys.executable).parent / "mlflow"


@dataclass(frozen=True)
class Decision:
    promoted: bool
    metric: str
    new_score: float
    champion_version: str | None
    champion_score: float | None
    reason: str

    def tags(self) -> dict[str, str]:
        values = {"decision": "promoted" if self.promoted else "kept", "metric": self.metric,
                  "new_score": f"{self.new_score:.6f}", "reason": self.reason,
                  "champion_version": self.champion_version or "",
                  "champion_score": "" if self.champion_score is None else f"{self.champion_score:.6f}"}
        return {PROMOTION_TAG_PREFIX + k: v for k, v in values.items()}


def decide(metric: str, new_score: float, champion_version: str | None, champion_score: float | None,
           unscored_reason: str = "") -> Decision:
    """Promote when there is no champion, or when the new score is strictly higher (a tie is no win)."""
    if champion_version is None:
        return Decision(True, metric, new_score, None, None, "no champion yet")
    if champion_score is None:
        return Decision(False, metric, new_score, champion_version, None, unscored_reason)
    if new_score > champion_score:
        return Decision(True, metric, new_score, champion_version, champion_score,
                        f"{metric} {new_score:.4f} > champion's {champion_score:.4f}")
    return Decision(False, metric, new_score, champion_version, champion_score,
                    f"{metric} {new_score:.4f} <= champion's {champion_score:.4f}")


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


def champion_score(model_name: str, serving_alias: str, metric: str, test: pd.DataFrame,
                   labels: Labels) -> tuple[str | None, float | None, str]:
    """(version, score, why not scored) of the served version on these rows."""
    client = mlflow.MlflowClient()
    try:
        version = str(client.get_model_version_by_alias(model_name, serving_alias).version)
    except mlflow.exceptions.MlflowException:
        return None, None, "no champion yet"
    try:
        predicted = predict_with_own_code(f"models:/{model_name}/{version}", test)
    except ProjectError as err:  # the champion stays: a version that cannot be compared is not promoted
        return version, None, f"champion version {version} could not be scored: {err}"
    columns = [proba_column(c) for c in labels.classes]
    if not set(columns) <= set(predicted.columns):
        return version, None, f"champion version {version} predicts other classes"
    proba = predicted[columns].to_numpy(dtype=float)
    score = evaluate.classification_metrics(labels.test, proba, labels.classes, labels.positive)[metric]
    return version, score, ""


def promote_if_better(model_name: str, version: str, metric: str, new_metrics: dict[str, float],
                      test: pd.DataFrame, labels: Labels) -> Decision:
    registry = Registry(mlflow.MlflowClient(), get_settings().serve_alias)
    champion, score, why = champion_score(model_name, registry.pairs.serving_alias, metric, test, labels)
    decision = decide(metric, new_metrics[metric], champion, score, why)
    if decision.promoted:
        registry.serve(model_name, version)
    for key, value in decision.tags().items():
        registry.client.set_model_version_tag(model_name, version, key, value)
    mlflow.set_tags(decision.tags())
    print(f"promotion: version {version} {'promoted' if decision.promoted else 'kept out'}: {decision.reason}")
    return decision
