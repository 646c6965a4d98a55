"""The champion/challenger rule: promote a new version only if it beats the champion.

Both are scored on the new version's test split (the champion is loaded from
the registry and runs on exactly those rows), on the metric the run was asked
to compare. The decision and both scores are tags on the new version and on
the run, so ``GET /train/{job_id}`` and the MLflow UI show them.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from gateway.registry import Registry
from pyfunc.model import proba_column
from steps import evaluate

CHAMPION = "champion"
TAG_PREFIX = "promotion_"


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
        return {TAG_PREFIX + k: v for k, v in values.items()}


def champion_score(model_name: str, metric: str, test: pd.DataFrame, y_test: np.ndarray,
                   classes: np.ndarray, positive: object) -> tuple[str | None, float | None, str]:
    """(version, score, why not scored) of the current champion on these rows."""
    client = mlflow.MlflowClient()
    try:
        version = str(client.get_model_version_by_alias(model_name, CHAMPION).version)
    except MlflowException:
        return None, None, "no champion yet"
    champion = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
    predicted = champion.unwrap_python_model().predict(None, test)
    columns = [proba_column(c) for c in classes]
    if not set(columns) <= set(predicted.columns):
        return version, None, f"champion version {version} predicts other classes"
    proba = predicted[columns].to_numpy(dtype=float)
    return version, evaluate.classification_metrics(y_test, proba, classes, positive)[metric], ""


def decide_and_promote(model_name: str, version: str, metric: str, new_metrics: dict[str, float],
                       test: pd.DataFrame, y_test: np.ndarray, classes: np.ndarray, positive: object) -> Decision:
    new_score = new_metrics[metric]
    champion_version, old_score, why = champion_score(model_name, metric, test, y_test, classes, positive)
    if champion_version is None:
        promoted, reason = True, "no champion yet"
    elif old_score is None:
        promoted, reason = False, why
    elif new_score > old_score:
        promoted, reason = True, f"{metric} {new_score:.4f} > champion's {old_score:.4f}"
    else:
        promoted, reason = False, f"{metric} {new_score:.4f} <= champion's {old_score:.4f}"
    decision = Decision(promoted, metric, new_score, champion_version, old_score, reason)
    client = mlflow.MlflowClient()
    if promoted:
        # as POST /models/.../stage does: Production, and the champion alias with it
        Registry(client).transition(model_name, version, "Production", archive_existing=False)
    for key, value in decision.tags().items():
        client.set_model_version_tag(model_name, version, key, value)
    mlflow.set_tags(decision.tags())
    print(f"promotion: version {version} {'promoted' if promoted else 'kept out'}: {reason}")
    return decision
