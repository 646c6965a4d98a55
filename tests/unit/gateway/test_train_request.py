"""POST /train's body: a wrong name gets the closest valid one, a parameter of the other mode says which mode."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fastapi import HTTPException

from contract.params import unknown_names_error
from contract.settings import Settings
from gateway.routes.train import resolve_data_path
from gateway.schemas import TrainRequest

BASE = {"data_path": "census.csv", "target": "income"}


def message(body: dict) -> str:
    with pytest.raises(ValidationError) as raised:
        TrainRequest.model_validate({**BASE, **body})
    return raised.value.errors()[0]["msg"]


@pytest.mark.parametrize(("wrong", "meant"), [
    ("n_trees", "n_estimators"),      # what people call it
    ("n_estimator", "n_estimators"),  # a typo
    ("max_dept", "max_depth"),
    ("label", "target"),
])
def test_an_unknown_parameter_gets_the_closest_valid_name_and_the_list(wrong, meant):
    text = message({wrong: 5})
    assert f"unknown parameter {wrong!r} (did you mean {meant!r}?)" in text
    assert "the parameters are: " in text and "n_estimators" in text and "max_trials" in text


def test_a_name_nothing_resembles_gets_the_list_only():
    assert unknown_names_error(["zzz"], ["n_estimators", "target"]) == \
        "unknown parameter 'zzz'; the parameters are: n_estimators, target"


def test_a_parameter_of_the_other_mode_says_which_mode():
    assert 'add "mode": "tune"' in message({"max_trials": 5})
    assert 'use "mode": "train"' in message({"mode": "tune", "n_estimators": 5})
    assert TrainRequest.model_validate({**BASE, "mode": "tune", "max_trials": 5}).max_trials == 5


def test_parameters_that_disagree_are_refused_naming_the_parameter():
    # a fairness guard compares the groups of sensitive_columns: without them, a 422 rather than a failed job
    assert "guard_metrics='demographic_parity_difference': demographic_parity_difference needs sensitive_columns" \
        in message({"guard_metrics": "demographic_parity_difference"})
    assert "class_weight='balanced_subsample': balanced_subsample is for forests" in message(
        {"model_type": "hist_gradient_boosting", "class_weight": "balanced_subsample"})
    body = TrainRequest.model_validate({**BASE, "guard_metrics": "accuracy,equalized_odds_difference",
                                        "sensitive_columns": 'sex,"race, group"'})
    assert body.mlproject_parameters()["sensitive_columns"] == 'sex,"race, group"'


def test_a_path_error_names_the_data_roots_and_the_closest_file_in_them(tmp_path):
    root = tmp_path / "data"
    (root / "customers").mkdir(parents=True)
    (root / "customers" / "churn-2026.csv").write_text("a,b\n1,2\n")
    (tmp_path / "secret.csv").write_text("a,b\n1,2\n")
    settings = Settings(data_roots=[root])
    assert resolve_data_path("customers/churn-2026.csv", settings) == str(root / "customers" / "churn-2026.csv")

    def detail(raw: str) -> str:
        with pytest.raises(HTTPException) as raised:
            resolve_data_path(raw, settings)
        return str(raised.value.detail)

    assert f"no file 'customers/churn-2025.csv' under the data roots (GATEWAY_DATA_ROOTS: {root}); " \
           "did you mean 'customers/churn-2026.csv'?" in detail("customers/churn-2025.csv")
    # outside the roots: the same answer whether the file exists or not, and nothing out there is suggested
    assert detail(str(tmp_path / "secret.csv")) == detail(str(tmp_path / "nothing.csv"))
    assert "outside the data roots" in detail("../secret.csv") and "secret" not in detail("../secret.csv").split(":")[-1]
