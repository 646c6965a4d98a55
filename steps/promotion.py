"""The champion/challenger rule: a new version is served only if it clearly beats the served one.

Both are scored on the new version's test split, the served one (the
champion) with the code logged with it, in a process of its own (``mlflow
models predict``), never with this checkout's ``pyfunc``. The new version
wins only when all three hold:

1. its ``metric`` is higher by at least ``min_delta`` (a tie is never a win);
2. the gain is significant on that split: a paired bootstrap of the metric's
   difference (``BOOTSTRAP_RESAMPLES`` resamples of the test rows, the same rows
   for both models, seeded with ``random_state``) gives a 95% interval whose
   lower end is above 0;
3. no guard metric (``guard_metrics``, accuracy and ROC-AUC by default) drops by
   more than ``guard_tolerance``; a fairness difference (``steps/fairness.py``:
   lower is better, both versions' on the same rows and groups) must not rise
   by more.

:func:`decide` is the rule as a pure function. The decision, both scores, the
difference with its interval and the condition that decided are tags on the
new version and on the run (``GET /train/{job_id}`` shows them). A promotion
goes through the registry policy (``contract.registry``): the serving alias and
Production together, the version it replaces Archived and held by the alias
``previous``. With ``promote=canary`` a winner becomes the challenger and a
canary of it starts instead (``contract.traffic``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd

from contract.errors import ProjectError
from contract.names import PROMOTION_TAG_PREFIX
from contract.params import FAIRNESS_METRICS, ModelParams
from contract.registry import Registry
from contract.settings import get_settings
from contract.traffic import TrafficPolicy
from pyfunc.model import proba_column
from steps import evaluate, fairness
from steps.splits import Labels
from steps.versions import predict_with_own_code, read_version

BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95
RESAMPLED_CELLS = 2_000_000  # rows of all the resamples scored at once (~16 MB an array)


@dataclass(frozen=True)
class Rule:
    metric: str
    min_delta: float = 0.005
    guards: tuple[str, ...] = ("accuracy", "roc_auc")
    guard_tolerance: float = 0.01


@dataclass(frozen=True)
class Scores:
    """Both versions scored on the same test rows: every metric, and the bootstrap interval of the gain."""

    new: dict[str, float]
    champion: dict[str, float]
    interval: tuple[float, float]  # of new - champion on ``metric``


@dataclass(frozen=True)
class Decision:
    promoted: bool
    metric: str
    new_score: float
    champion_version: str | None
    champion_score: float | None
    reason: str
    decided_by: str  # no_champion, unscored, min_delta, significance, guard:<metric>, every_condition
    difference: float | None = None
    interval: tuple[float, float] | None = None
    guards: dict[str, dict[str, float]] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        values = {"decision": "promoted" if self.promoted else "kept", "metric": self.metric,
                  "new_score": f"{self.new_score:.6f}", "reason": self.reason, "decided_by": self.decided_by,
                  "champion_version": self.champion_version or "",
                  "champion_score": "" if self.champion_score is None else f"{self.champion_score:.6f}",
                  "difference": "" if self.difference is None else f"{self.difference:.6f}",
                  "interval": "" if self.interval is None else f"[{self.interval[0]:.6f}, {self.interval[1]:.6f}]",
                  "guards": json.dumps(self.guards, sort_keys=True)}
        return {PROMOTION_TAG_PREFIX + k: v for k, v in values.items()}


def decide(rule: Rule, new_score: float, champion_version: str | None, scores: Scores | None,
           unscored_reason: str = "") -> Decision:
    """The rule: no champion, or a gain of at least ``min_delta`` that is significant and costs no guard."""
    metric = rule.metric
    if champion_version is None:
        return Decision(True, metric, new_score, None, None, "no champion yet", "no_champion")
    if scores is None:
        return Decision(False, metric, new_score, champion_version, None, unscored_reason, "unscored")
    old = scores.champion[metric]
    difference = scores.new[metric] - old
    guards = {g: {"new": scores.new[g], "champion": scores.champion[g]} for g in rule.guards
              if g in scores.new and g in scores.champion}
    common = {"difference": difference, "interval": scores.interval, "guards": guards}
    if not difference > 0 or difference < rule.min_delta:
        return Decision(False, metric, new_score, champion_version, old,
                        f"{metric} {scores.new[metric]:.4f} vs champion's {old:.4f}: a gain of {difference:+.4f}, "
                        f"less than min_delta {rule.min_delta}", "min_delta", **common)
    low, high = scores.interval
    if not low > 0:
        return Decision(False, metric, new_score, champion_version, old,
                        f"{metric} gain {difference:+.4f} is not significant: its {CONFIDENCE:.0%} bootstrap "
                        f"interval [{low:+.4f}, {high:+.4f}] does not exclude 0", "significance", **common)
    unscored = [g for g in rule.guards if g not in guards]
    if unscored:  # a fairness difference of a multiclass target: a guard asked for is never skipped
        return Decision(False, metric, new_score, champion_version, old, f"guard {unscored[0]} has no figure for "
                        "both versions (fairness guards need a binary target)", f"guard:{unscored[0]}", **common)
    for guard, values in guards.items():
        lower_is_better = guard in FAIRNESS_METRICS
        loss = values["new"] - values["champion"] if lower_is_better else values["champion"] - values["new"]
        if loss > rule.guard_tolerance:
            return Decision(False, metric, new_score, champion_version, old,
                            f"guard {guard} {'rises' if lower_is_better else 'drops'} by {loss:.4f} "
                            f"({values['champion']:.4f} -> {values['new']:.4f}), more than guard_tolerance "
                            f"{rule.guard_tolerance}", f"guard:{guard}", **common)
    return Decision(True, metric, new_score, champion_version, old,
                    f"{metric} {scores.new[metric]:.4f} > champion's {old:.4f} by {difference:+.4f} "
                    f"({CONFIDENCE:.0%} interval [{low:+.4f}, {high:+.4f}]), no guard dropped", "every_condition",
                    **common)


@dataclass(frozen=True)
class Answers:
    """A version's answers on the test rows: probabilities, and the labels it returns (its own cut-off)."""

    proba: np.ndarray
    labels: np.ndarray

    def scores(self, metric: str, labels: Labels, rows: np.ndarray) -> np.ndarray:
        """``metric`` on each resample (a row of ``rows``); NaN where undefined."""
        return evaluate.resampled_scores(metric, labels.test, self.proba, labels.classes, labels.positive,
                                         self.labels, rows)


def paired_bootstrap(metric: str, labels: Labels, new: Answers, old: Answers, seed: int,
                     resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """The ``CONFIDENCE`` interval of ``metric(new) - metric(old)`` over resamples of the test rows."""
    rng = np.random.default_rng(seed)
    size = len(labels.test)
    at_once = max(1, RESAMPLED_CELLS // max(size, 1))  # resamples scored together: bounded memory
    differences = []
    for start in range(0, resamples, at_once):
        rows = rng.integers(0, size, (min(at_once, resamples - start), size))
        differences.append(new.scores(metric, labels, rows) - old.scores(metric, labels, rows))
    gains = np.concatenate(differences)
    gains = gains[~np.isnan(gains)]  # a resample with one class only has no ROC-AUC: skipped
    if not len(gains):
        return (float("nan"), float("nan"))
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(gains, [tail, 100 - tail])
    return float(low), float(high)


def champion_answers(model_name: str, serving_alias: str, test: pd.DataFrame,
                     labels: Labels) -> tuple[str | None, Answers | None, str]:
    """(version, its answers on these rows, why not scored) of the served version."""
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
    by_text = {str(c): c for c in labels.classes}
    returned = np.array([by_text.get(str(label), label) for label in predicted["label"]])
    return version, Answers(predicted[columns].to_numpy(dtype=float), returned), ""


def fairness_guards(model: ModelParams, version: str, test: pd.DataFrame, labels: Labels, new: Answers, old: Answers,
                    new_metrics: dict[str, float], old_metrics: dict[str, float]
                    ) -> tuple[dict[str, float], dict[str, float]]:
    """Both versions' fairness differences on the test rows, in the groups of the new version's sensitive
    columns (cut where its training rows are): the same groups for both, whatever the champion was trained with."""
    registered = read_version(model.model_name, version)
    grouping = fairness.Grouping.of(model.sensitive_columns, registered.schema, registered.training_split())

    def differences(answers: Answers) -> dict[str, float]:
        return fairness.report(test, labels.test, answers.labels, labels.positive, grouping).differences

    return {**new_metrics, **differences(new)}, {**old_metrics, **differences(old)}


def promote_if_better(model: ModelParams, version: str, new_metrics: dict[str, float], new: Answers,
                      test: pd.DataFrame, labels: Labels, seed: int) -> Decision:
    registry = Registry(mlflow.MlflowClient(), get_settings().serve_alias)
    rule = Rule(model.metric, model.min_delta, model.guard_metrics, model.guard_tolerance)
    champion, old, why = champion_answers(model.model_name, registry.pairs.serving_alias, test, labels)
    scores = None
    if old is not None:
        old_metrics = evaluate.classification_metrics(labels.test, old.proba, labels.classes, labels.positive,
                                                      old.labels)
        interval = paired_bootstrap(model.metric, labels, new, old, seed)
        if any(guard in FAIRNESS_METRICS for guard in rule.guards):
            new_metrics, old_metrics = fairness_guards(model, version, test, labels, new, old, new_metrics,
                                                       old_metrics)
        scores = Scores(new_metrics, old_metrics, interval)
    decision = decide(rule, new_metrics[model.metric], champion, scores, why)
    if decision.promoted and model.promote == "canary" and champion is not None:
        registry.start_canary(model.model_name, version, TrafficPolicy.canary_default())
        print(f"promotion: version {version} is the challenger; a canary of it starts: {decision.reason}")
    elif decision.promoted:
        registry.promote(model.model_name, version)
        print(f"promotion: version {version} promoted: {decision.reason}")
    else:
        print(f"promotion: version {version} kept out: {decision.reason}")
    for key, value in decision.tags().items():
        registry.client.set_model_version_tag(model.model_name, version, key, value)
    mlflow.set_tags(decision.tags())
    return decision
