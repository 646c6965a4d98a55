"""Step parameters: each bad value fails naming the parameter; MLproject agrees with the code."""

from dataclasses import fields

import pytest
import yaml

from contract.errors import ParameterError
from contract.params import (
    DataParams,
    ForestParams,
    ModelParams,
    MonitorParams,
    ScoreParams,
    SplitParams,
    TuneParams,
    parse_cli,
    parse_params,
    to_arguments,
)
from tests.conftest import PROJECT_DIR

ENTRY_POINT_GROUPS = {
    "main": (DataParams, ForestParams, ModelParams),
    "preprocess": (DataParams,),
    "train": (SplitParams, ModelParams, ForestParams),
    "score": (ScoreParams,),
    "tune": (DataParams, ModelParams, TuneParams),
    "monitor": (MonitorParams,),
}


def mlproject() -> dict:
    return yaml.safe_load((PROJECT_DIR / "MLproject").read_text())


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINT_GROUPS))
def test_mlproject_declares_exactly_the_parameters_the_step_parses(entry_point):
    spec = mlproject()["entry_points"][entry_point]
    declared = set(spec["parameters"])
    parsed = {f.name for group in ENTRY_POINT_GROUPS[entry_point] for f in fields(group)}
    assert declared == parsed
    for name in declared:
        assert f"--{name} {{{name}}}" in spec["command"]


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINT_GROUPS))
def test_mlproject_defaults_parse_to_the_code_defaults(entry_point):
    parameters = mlproject()["entry_points"][entry_point]["parameters"]
    raw = {k: str(v["default"]) for k, v in parameters.items() if isinstance(v, dict)}
    for group in ENTRY_POINT_GROUPS[entry_point]:
        assert parse_params(group, raw) == group()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n_estimators", "abc"),
        ("n_estimators", "0"),
        ("n_estimators", "2.5"),
        ("max_depth", "-3"),
        ("min_samples_leaf", "0"),
        ("max_features", "cube"),
        ("max_features", "1.5"),
        ("class_weight", "heavy"),
        ("n_jobs", "0"),
        ("random_state", "seed"),
    ],
)
def test_bad_forest_values_name_the_parameter(name, value):
    with pytest.raises(ParameterError) as err:
        parse_params(ForestParams, {name: value})
    assert str(err.value).startswith(f"{name}={value!r}: ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("test_size", "0"), ("test_size", "1"), ("test_size", "half"), ("target", "  "), ("data_path", "")],
)
def test_bad_data_values_name_the_parameter(name, value):
    with pytest.raises(ParameterError, match=f"^{name}="):
        parse_params(DataParams, {name: value})


@pytest.mark.parametrize("value", ["", "a/b", "has space", "-lead", "x" * 129, "name;rm -rf"])
def test_bad_model_names_are_refused(value):
    with pytest.raises(ParameterError, match="^model_name="):
        parse_params(ModelParams, {"model_name": value})


def test_good_values_parse_to_their_types():
    forest = parse_params(
        ForestParams,
        {"max_depth": "None", "max_features": "0.5", "class_weight": "Balanced", "n_jobs": "-1"},
    )
    assert forest.max_depth is None and forest.max_features == 0.5
    assert forest.class_weight == "balanced" and forest.n_jobs == -1
    assert parse_params(ForestParams, {"max_features": "7"}).max_features == 7
    data = parse_params(DataParams, {"na_values": "?, NA ,", "drop_columns": ""})
    assert data.na_values == ("?", "NA") and data.drop_columns == ()


def test_arguments_round_trip_through_their_string_form():
    forest = ForestParams(max_depth=None, max_features=0.3, class_weight="balanced")
    data = DataParams(na_values=("?", "NA"), drop_columns=())
    assert parse_params(ForestParams, to_arguments(forest)) == forest
    assert parse_params(DataParams, to_arguments(data)) == data


def test_parse_cli_shares_a_parameter_between_groups():
    data, forest = parse_cli(["--random_state", "7", "--n_estimators", "3"], DataParams, ForestParams)
    assert data.random_state == forest.random_state == 7
    assert forest.n_estimators == 3


@pytest.mark.parametrize("value", ["local", "local[*]", "local[4]", "local[2,3]", "spark://host:7077", "yarn",
                                   "k8s://https://10.0.0.1:6443"])
def test_good_spark_masters_parse(value):
    assert parse_params(ScoreParams, {"spark_master": value}).spark_master == value


@pytest.mark.parametrize("value", ["", "nonsense", "local[0]", "local[x]", "spark://", "http://host"])
def test_bad_spark_masters_are_refused_by_name(value):
    with pytest.raises(ParameterError, match="spark_master"):
        parse_params(ScoreParams, {"spark_master": value})


def test_first_line_of_an_error_is_one_bounded_line_or_its_type():
    from contract.errors import first_line

    assert first_line(ValueError("  bad thing\ntraceback-ish detail")) == "bad thing"
    assert first_line(RuntimeError("")) == "RuntimeError"
    assert first_line(OSError("x" * 500), 300) == "x" * 300


def test_each_model_family_gets_its_own_parameters_and_the_shared_ones():
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    boosting = parse_params(ForestParams, {"model_type": "hist_gradient_boosting", "learning_rate": "0.05",
                                           "max_iter": "300", "max_leaf_nodes": "none", "l2_regularization": "1.5",
                                           "early_stopping": "false", "max_depth": "6", "class_weight": "balanced"})
    kwargs = boosting.sklearn_kwargs()
    assert kwargs == {"learning_rate": 0.05, "max_iter": 300, "max_leaf_nodes": None, "l2_regularization": 1.5,
                      "early_stopping": False, "max_depth": 6, "min_samples_leaf": 1, "class_weight": "balanced",
                      "random_state": 42}
    HistGradientBoostingClassifier(**kwargs)  # every one is the estimator's own
    forest = ForestParams().sklearn_kwargs()
    assert "learning_rate" not in forest and forest["n_estimators"] == 100
    RandomForestClassifier(**forest)
    assert ForestParams(model_type="hist_gradient_boosting").early_stopping is True  # on by default


@pytest.mark.parametrize(("raw", "says"), [
    ({"learning_rate": "0"}, "learning_rate='0'"),
    ({"learning_rate": "1.5"}, "learning_rate='1.5'"),
    ({"max_iter": "0"}, "max_iter='0'"),
    ({"max_leaf_nodes": "1"}, "max_leaf_nodes='1'"),
    ({"l2_regularization": "-1"}, "l2_regularization='-1'"),
    ({"early_stopping": "maybe"}, "early_stopping='maybe'"),
    ({"class_weight": "balanced_subsample"}, "class_weight='balanced_subsample': balanced_subsample is for forests"),
])
def test_bad_gradient_boosting_parameters_are_refused_naming_them(raw, says):
    with pytest.raises(ParameterError) as refused:
        parse_params(ForestParams, {"model_type": "hist_gradient_boosting", **raw})
    assert str(refused.value).startswith(says), refused.value
