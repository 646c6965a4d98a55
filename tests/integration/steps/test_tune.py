"""The ``tune`` entry point and the champion/challenger rule, through the real ``mlflow run``."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from steps.tune import defaults
from tests.conftest import Tracking, census_rows
from tests.integration.helpers import assert_succeeded, mlflow_run, run_step

pytestmark = pytest.mark.integration

WEAK = ("n_estimators=1", "max_depth=1")  # one stump: predicts the majority class, F1 0 on the rare one


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tune-data") / "census.csv"
    census_rows(2000).to_csv(path, index=False)
    return path


def version_tags(name: str, version: str) -> dict[str, str]:
    return mlflow.MlflowClient().get_model_version(name, version).tags


def champion(name: str) -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(name, "champion").version)


def test_promotion_if_better_promotes_a_better_version_and_keeps_a_worse_one_out(tracking: Tracking, data):
    name = "promo"
    common = (f"data_path={data}", f"model_name={name}", "promote=if_better", "metric=f1")
    assert_succeeded(mlflow_run(tracking, *common, *WEAK))
    first = version_tags(name, "1")
    assert first["promotion_decision"] == "promoted" and first["promotion_reason"] == "no champion yet"
    assert champion(name) == "1"

    assert_succeeded(mlflow_run(tracking, *common, "n_estimators=30"))
    second = version_tags(name, "2")
    assert second["promotion_decision"] == "promoted", second
    assert float(second["promotion_new_score"]) > float(second["promotion_champion_score"])
    assert second["promotion_champion_version"] == "1"
    assert champion(name) == "2"
    client = mlflow.MlflowClient()
    # the automatic promotion goes through the registry policy: one version in Production
    assert client.get_model_version(name, "2").current_stage == "Production"
    assert client.get_model_version(name, "1").current_stage == "Archived"

    assert_succeeded(mlflow_run(tracking, *common, *WEAK))
    third = version_tags(name, "3")
    assert third["promotion_decision"] == "kept", third
    assert float(third["promotion_new_score"]) <= float(third["promotion_champion_score"])
    assert champion(name) == "2" and client.get_model_version(name, "3").current_stage == "None"
    # the driver run of `main` carries the decision too (the gateway's job record reads it there)
    drivers = client.search_runs([tracking.experiment_id], "tags.mlflow.project.entryPoint = 'main'",
                                 order_by=["attributes.start_time DESC"])
    assert drivers[0].data.tags["promotion_decision"] == "kept"


def test_a_fairness_guard_keeps_a_better_but_less_fair_version_out(tracking: Tracking, data):
    name = "fair"
    common = (f"data_path={data}", f"model_name={name}", "promote=if_better", "metric=f1", "sensitive_columns=sex",
              "guard_metrics=demographic_parity_difference")
    # a stump that never answers the positive class: the same selection rate, 0, in every group
    assert_succeeded(mlflow_run(tracking, *common, *WEAK, "threshold=0.99"))
    assert champion(name) == "1"
    assert_succeeded(mlflow_run(tracking, *common, "n_estimators=30"))
    tags = version_tags(name, "2")
    assert tags["promotion_decision"] == "kept", tags
    assert tags["promotion_decided_by"] == "guard:demographic_parity_difference", tags
    assert float(tags["promotion_new_score"]) > float(tags["promotion_champion_score"])  # better, but less fair
    parity = json.loads(tags["promotion_guards"])["demographic_parity_difference"]
    assert parity["champion"] == 0 and parity["new"] > 0.01
    assert champion(name) == "1"


def test_tune_logs_trials_as_child_runs_and_registers_the_best_like_train(tracking: Tracking, data):
    name = "tuned"
    result = mlflow_run(tracking, f"data_path={data}", f"model_name={name}", "max_trials=3", "cv_folds=2",
                        "metric=roc_auc", "model_types=hist_gradient_boosting,extra_trees", entry_point="tune")
    assert_succeeded(result)
    client = mlflow.MlflowClient()
    (tuning,) = client.search_runs([tracking.experiment_id], "tags.mlflow.project.entryPoint = 'tune'")
    children = client.search_runs([tracking.experiment_id], f"tags.mlflow.parentRunId = '{tuning.info.run_id}'")
    trials = sorted((r for r in children if "trial" in r.data.tags), key=lambda r: int(r.data.tags["trial"]))
    steps = sorted(r.data.tags.get("mlflow.project.entryPoint") for r in children if "trial" not in r.data.tags)
    assert len(trials) == 3 and steps == ["preprocess", "train"]
    # starts from train's defaults, in the first family asked for; every trial records its family
    assert {k: str(v) for k, v in defaults("hist_gradient_boosting").items()} == trials[0].data.params
    assert {t.data.params["model_type"] for t in trials} <= {"hist_gradient_boosting", "extra_trees"}
    scores = [t.data.metrics["cv_roc_auc"] for t in trials]
    assert all(0.5 < s <= 1 for s in scores) and all("cv_roc_auc_std" in t.data.metrics for t in trials)
    assert tuning.data.metrics["best_cv_roc_auc"] == max(scores)

    version = tuning.data.tags["model_version"]
    tags = version_tags(name, version)
    assert tags["tuning_run_id"] == tuning.info.run_id
    best = json.loads(tags["tuned_params"])
    trained = client.get_run(tuning.data.tags["train_run_id"])
    for key, value in best.items():  # the registered version was trained with the winner's parameters
        assert trained.data.params[key] == str(value), key
    assert trained.data.params["model_type"] == best["model_type"] and trained.data.metrics["fast_path_max_abs_diff"] <= 1e-6
    # registered exactly like `train`: the same artifacts and test metrics
    assert {"accuracy", "f1", "roc_auc", "fast_path_max_abs_diff"} <= set(trained.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(trained.info.run_id)}
    assert {"confusion_matrix.png", "roc_curve.png", "feature_importance.csv"} <= artifacts


@pytest.mark.parametrize(("args", "expected"), [
    (["--cv_folds", "1"], "cv_folds='1'"),
    (["--max_trials", "0"], "max_trials='0'"),
    (["--metric", "auc"], "metric='auc'"),
    (["--promote", "always"], "promote='always'"),
    (["--model_types", "boosting"], "model_types='boosting'"),
])
def test_bad_tune_parameters_fail_with_one_line_naming_them(tracking, args, expected):
    result = run_step(tracking, "steps.tune", *args)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, result.stderr[-2000:]
