"""The decision threshold of binary targets: chosen on the training split only, stored, and applied."""

from __future__ import annotations

import dataclasses

import mlflow
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from contract.errors import ParameterError
from contract.params import DataParams, ForestParams, ModelParams
from steps import evaluate
from steps.preprocess import run_preprocess
from steps.splits import load_splits, prepare_labels
from steps.train import fit_and_report
from tests.conftest import census_rows, mixed_frame, temporary_tracking

FOREST = ForestParams(n_estimators=30, n_jobs=1)


def test_the_best_threshold_maximises_the_metric_and_prefers_the_one_nearest_half():
    is_positive = np.array([True, True, True, False, False, False, False, False])
    proba = np.array([0.9, 0.35, 0.3, 0.32, 0.1, 0.05, np.nan, 0.2])
    # f1 is best (0.857: 3 found, 1 wrong) for every cut-off from 0.21 to 0.30; the nearest to 0.5 wins
    assert evaluate.best_threshold(is_positive, proba, "f1") == 0.3
    assert evaluate.best_threshold(is_positive, proba, "roc_auc") == 0.3  # no threshold in roc_auc: f1's
    assert evaluate.best_threshold(is_positive, proba, "precision") == 0.5  # 1.0 from 0.36 to 0.9: nearest 0.5
    assert evaluate.best_threshold(is_positive, proba, "recall") == 0.3  # 1.0 up to 0.30; the nearest to 0.5


def test_the_scores_of_every_cut_off_are_scikit_learns():
    rng = np.random.default_rng(3)
    is_positive = rng.random(500) < 0.1
    proba = np.clip(rng.random(500) * 0.6 + is_positive * 0.3, 0, 1)  # no row above 0.9: precision 0/0 there
    scores = evaluate.scores_by_threshold(is_positive, proba)
    for name, scorer in (("accuracy", accuracy_score), ("precision", precision_score), ("recall", recall_score),
                         ("f1", f1_score)):
        options = {} if name == "accuracy" else {"zero_division": 0}
        expected = [scorer(is_positive, proba >= t, **options) for t in evaluate.THRESHOLDS]
        np.testing.assert_allclose(scores[name], expected, rtol=0, atol=1e-12, err_msg=name)


@pytest.fixture(scope="module")
def census_splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("threshold")
    with temporary_tracking(root):
        csv = root / "census.csv"
        census_rows(4000).to_csv(csv, index=False)
        with mlflow.start_run() as run:
            run_preprocess(DataParams(data_path=str(csv), target="income"))
        yield load_splits(f"{run.info.artifact_uri}/splits"), root


def fit(splits, root, name: str, model: ModelParams = ModelParams()):
    out = root / name
    out.mkdir()
    with mlflow.start_run():  # each fit logs its own params
        return fit_and_report(splits, prepare_labels(splits, "income", ""), FOREST, model, out)


def test_the_threshold_is_chosen_without_looking_at_the_test_split(census_splits):
    splits, root = census_splits
    fitted = fit(splits, root, "as-is")
    # the same training rows, a test split whose labels are all flipped: the metrics change, the threshold not
    flip = {"- 50000.": "50000+.", "50000+.": "- 50000."}
    flipped = dataclasses.replace(splits, test=splits.test.assign(income=splits.test["income"].map(flip)))
    other = fit(flipped, root, "flipped")
    assert fitted.rule == other.rule and fitted.rule.threshold < 0.5
    assert fitted.metrics["f1"] != other.metrics["f1"]
    assert fitted.metrics["decision_threshold"] == fitted.rule.threshold
    # the labels the metrics score are the ones the threshold gives, and the model returns
    positive = fitted.rule.positive_index
    expected = np.where(fitted.answers.proba[:, positive] >= fitted.rule.threshold, positive, 1 - positive)
    assert (fitted.answers.labels == fitted.pipeline.classes_[expected]).all()
    assert fitted.metrics["f1"] > fitted.metrics["f1_at_0.5"]  # the point of it, on a 6%-positive target
    assert (root / "as-is" / "threshold.png").stat().st_size > 10_000


def test_a_given_threshold_is_kept_and_refused_for_multiclass_targets(census_splits, tmp_path):
    splits, root = census_splits
    assert fit(splits, root, "given", ModelParams(threshold=0.3)).rule.threshold == 0.3
    frame = mixed_frame(n=300, seed=2, labels=(3, 7, 11))
    multi = dataclasses.replace(splits, train=frame.head(240), test=frame.tail(60),
                                meta=dataclasses.replace(splits.meta, features=["age", "hours", "colour", "city"]))
    labels = prepare_labels(multi, "label", "")
    with mlflow.start_run():
        fitted = fit_and_report(multi, labels, FOREST, ModelParams(), tmp_path)
    assert fitted.rule.threshold is None and "decision_threshold" not in fitted.metrics  # argmax
    with pytest.raises(ParameterError, match="threshold='0.3': a threshold applies to binary targets"), \
            mlflow.start_run():
        fit_and_report(multi, labels, FOREST, ModelParams(threshold=0.3), tmp_path)
