"""Fairness by group (steps/fairness.py) and its promotion guard, in process.

The differences are fairlearn's own (compared with its functions); the groups are the sensitive columns' values as
the model cleans them, a missing value its own group, a numeric column with many values cut at its training rows'
quartiles. Column names and values are the user's data: any of them gets a table, never a file or a metric key.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.errors import ParameterError
from contract.names import TAG_MONITORING_DEMOGRAPHIC_PARITY, TAG_MONITORING_EQUALIZED_ODDS
from contract.params import FAIRNESS_METRICS, ModelParams, parse_params
from pyfunc.cleaning import FeatureSchema
from steps import fairness
from steps.promotion import Rule, Scores, decide

DP, EO = FAIRNESS_METRICS
CLASSES = np.array(["<=50K", ">50K"])
POSITIVE = ">50K"
FILES = {"fairness_by_group.csv", "fairness_by_group.json", "fairness_by_group.png"}
# the characters that broke other steps (a `/` made a folder, a `$` mathtext, a `"` a CSV cell), and any others
NAME = st.text(st.sampled_from(list("/.()\"':#\\ ,$é日本-_aA0")), min_size=1, max_size=30) | st.text(
    st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=60)
VALUE = st.none() | st.sampled_from(["?", "", " "]) | st.text(st.characters(exclude_categories=["Cs", "Cc"]),
                                                              min_size=1, max_size=12)


def census_like(n: int, seed: int) -> tuple[FeatureSchema, pd.DataFrame, np.ndarray, np.ndarray]:
    """Raw rows (text cells, "?" for missing) of a numeric and a categorical sensitive column, true labels and
    answers whose selection rate depends on the group."""
    rng = np.random.default_rng(seed)
    sex = rng.choice(["Female", "Male", "?"], n, p=[0.45, 0.5, 0.05])
    age = rng.integers(17, 90, n)
    rows = pd.DataFrame({"age": age.astype(str), "sex": sex, "hours": rng.integers(1, 99, n).astype(str)})
    y_true = np.where(rng.random(n) < 0.3, POSITIVE, "<=50K")
    bias = np.where(sex == "Male", 0.2, 0.0)
    y_pred = np.where(rng.random(n) < 0.2 + bias + (y_true == POSITIVE) * 0.4, POSITIVE, "<=50K")
    return FeatureSchema(["age", "hours"], ["sex"], ["?"]), rows, y_true, y_pred


@pytest.mark.parametrize("sensitive", [("sex",), ("age",), ("sex", "age")])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_differences_are_fairlearns_own_over_the_same_groups(sensitive, seed):
    schema, rows, y_true, y_pred = census_like(600, seed)
    grouping = fairness.Grouping.of(sensitive, schema, rows)
    result = fairness.report(rows, y_true, y_pred, POSITIVE, grouping)
    groups = pd.DataFrame(grouping.labels(rows), columns=list(sensitive))
    truth, answered = (y_true == POSITIVE).astype(int), (y_pred == POSITIVE).astype(int)
    # compared: the groups of at least MIN_GROUP_ROWS rows (each has positives and negatives here)
    size = groups.groupby(list(sensitive))[list(sensitive)[0]].transform("size")
    big = (size >= fairness.MIN_GROUP_ROWS).to_numpy()
    assert result.differences[DP] == pytest.approx(
        demographic_parity_difference(truth[big], answered[big], sensitive_features=groups[big]))
    assert result.differences[EO] == pytest.approx(
        equalized_odds_difference(truth[big], answered[big], sensitive_features=groups[big]))
    if "sex" in sensitive:  # the answers favour one sex: a real gap is found, not a zero
        assert result.differences[DP] > 0.1
    assert sum(g["rows"] for g in result.by_group) == len(rows)


def test_each_groups_figures_are_the_rates_of_its_own_rows():
    schema = FeatureSchema([], ["g"], [])
    rows = pd.DataFrame({"g": (["a"] * 4 + ["b"] * 4) * 5})  # groups of 20 rows: compared
    y_true = np.array(["1", "1", "0", "0", "1", "0", "0", "0"] * 5)
    y_pred = np.array(["1", "0", "1", "0", "1", "1", "1", "0"] * 5)
    result = fairness.report(rows, y_true, y_pred, "1", fairness.Grouping.of(("g",), schema, rows))
    a, b = (next(g for g in result.by_group if g["group"] == {"g": name}) for name in "ab")
    assert a == {"group": {"g": "a"}, "selection_rate": 0.5, "accuracy": 0.5, "true_positive_rate": 0.5,
                 "false_positive_rate": 0.5, "rows": 20, "positives": 10}
    assert b["selection_rate"] == 0.75 and b["true_positive_rate"] == 1.0 and b["false_positive_rate"] == 2 / 3
    assert result.differences == {DP: 0.25, EO: pytest.approx(0.5)}  # TPR 0.5 vs 1.0
    # a group below MIN_GROUP_ROWS is listed but not compared: its rates are chance
    tiny = pd.concat([rows, pd.DataFrame({"g": ["c"]})], ignore_index=True)
    result = fairness.report(tiny, [*y_true, "1"], [*y_pred, "0"], "1", fairness.Grouping.of(("g",), schema, tiny))
    assert {g["group"]["g"] for g in result.by_group} == {"a", "b", "c"}
    assert result.differences == {DP: 0.25, EO: pytest.approx(0.5)}  # not c's selection rate 0 nor TPR 0


def test_a_missing_value_is_its_own_group_and_a_numeric_column_with_many_values_is_cut_at_training_quartiles():
    schema = FeatureSchema(["age", "children"], ["sex"], ["?"])
    reference = pd.DataFrame({"age": [str(a) for a in range(20, 60)], "children": ["0", "1", "2", "3"] * 10,
                              "sex": ["F", "M"] * 20})
    grouping = fairness.Grouping.of(("age", "children", "sex"), schema, reference)
    assert grouping.edges == {"age": (29.75, 39.5, 49.25)}  # children: 4 values, kept as they are
    rows = pd.DataFrame({"age": ["20", "?", "45", "70", None], "children": ["2", "1.0", "?", "", "3"],
                         "sex": [" F", "?", None, "M", "x"]})
    assert grouping.labels(rows) == [("< 29.75", "2", "F"), ("missing", "1", "missing"),
                                     ("[39.5, 49.25)", "missing", "missing"), (">= 49.25", "missing", "M"),
                                     ("missing", "3", "x")]


def test_a_multiclass_target_gets_per_group_accuracy_and_no_difference(tmp_path):
    schema = FeatureSchema([], ["g"], [])
    rows = pd.DataFrame({"g": ["a", "a", "b", "b"]})
    metrics = fairness.training_report(rows, [1, 2, 3, 1], ["1", 2, 1, 1], [1, 2, 3], None, ("g",), tmp_path,
                                       schema=schema, reference=rows)
    assert metrics == {}
    table = json.loads((tmp_path / "fairness_by_group.json").read_text("utf-8"))
    assert table["by_group"] == [{"group": {"g": "a"}, "accuracy": 1.0, "rows": 2},
                                 {"group": {"g": "b"}, "accuracy": 0.5, "rows": 2}]


def test_without_sensitive_columns_training_writes_nothing(tmp_path):
    schema, rows, y_true, y_pred = census_like(50, 0)
    assert fairness.training_report(rows, y_true, y_pred, CLASSES, POSITIVE, (), tmp_path, schema=schema,
                                    reference=rows) == {}
    assert not list(tmp_path.iterdir())


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(names=st.lists(NAME, min_size=1, max_size=3, unique_by=str.strip).filter(
           lambda ns: all(n.strip() for n in ns)),
       values=st.lists(VALUE, min_size=1, max_size=4), data=st.data())
def test_any_names_and_values_get_a_table_under_fixed_file_names_and_metric_keys(tmp_path_factory, names, values,
                                                                                 data):
    names = [n.strip() for n in names]  # a column name as training reads a header
    n = data.draw(st.integers(1, 25))
    rows = pd.DataFrame({c: data.draw(st.lists(st.sampled_from(values), min_size=n, max_size=n)) for c in names},
                        dtype=object)
    # any mix of labels: one class only (groups without positives, or without negatives), a single group ...
    y_true = data.draw(st.lists(st.sampled_from(list(CLASSES)), min_size=n, max_size=n))
    y_pred = data.draw(st.lists(st.sampled_from(list(CLASSES)), min_size=n, max_size=n))
    schema = FeatureSchema([], names, ["?"])
    out = tmp_path_factory.mktemp("fairness")
    metrics = fairness.training_report(rows, y_true, y_pred, CLASSES, POSITIVE, tuple(names), out, schema=schema,
                                       reference=rows)
    # both differences, or none where fewer than two groups are big enough to compare
    assert set(metrics) in (set(FAIRNESS_METRICS), set()) and all(0 <= v <= 1 for v in metrics.values())
    assert {p.name for p in out.iterdir()} == FILES
    table = pd.read_csv(out / "fairness_by_group.csv", dtype=str, keep_default_na=False)
    assert list(table.columns[:len(names)]) == names  # the names as they are, in the order given
    assert int(table["rows"].astype(int).sum()) == n
    written = json.loads((out / "fairness_by_group.json").read_text("utf-8"))
    assert written["sensitive_columns"] == names
    expected = {tuple(fairness.MISSING_GROUP if v is None or v.strip() in ("", "?") else v.strip()
                      for v in row) for row in rows[names].itertuples(index=False)}
    assert {tuple(g["group"][c] for c in names) for g in written["by_group"]} == expected
    # the same rows give the same table: the mapping is deterministic
    again = tmp_path_factory.mktemp("again")
    fairness.training_report(rows, y_true, y_pred, CLASSES, POSITIVE, tuple(names), again, schema=schema,
                             reference=rows)
    assert (again / "fairness_by_group.json").read_text("utf-8") == (out / "fairness_by_group.json").read_text("utf-8")


def test_a_dollar_sign_in_a_name_or_a_value_is_text_in_the_figure(tmp_path):
    names = ["$\\frac{$", "a $x^$ b"]  # broken TeX that matplotlib's mathtext parser refuses
    rows = pd.DataFrame({names[0]: ["$a$", "$\\b{$"] * 3, names[1]: ["$", "x"] * 3})
    fairness.training_report(rows, ["<=50K", ">50K"] * 3, [">50K"] * 6, CLASSES, POSITIVE, tuple(names), tmp_path,
                             schema=FeatureSchema([], names, []), reference=rows)
    assert {p.name for p in tmp_path.iterdir()} == FILES


def test_an_unknown_sensitive_column_fails_with_one_line_naming_the_parameter_and_the_closest_column():
    schema = FeatureSchema(["age"], ["sex", "race"], [])
    with pytest.raises(ParameterError) as err:
        fairness.Grouping.of(("sexx", "race", "zzz"), schema, pd.DataFrame())
    text = str(err.value)
    assert text.startswith("sensitive_columns='sexx,race,zzz': not an input column of the model: 'sexx' (did you "
                           "mean 'sex'?), 'zzz';")
    assert "\n" not in text and "'age', 'sex', 'race'" in text


def test_a_fairness_guard_needs_sensitive_columns_and_a_binary_target():
    with pytest.raises(ParameterError, match="^guard_metrics='accuracy,equalized_odds_difference': "
                                             "equalized_odds_difference needs sensitive_columns"):
        parse_params(ModelParams, {"guard_metrics": "accuracy,equalized_odds_difference"})
    model = parse_params(ModelParams, {"guard_metrics": DP, "sensitive_columns": "sex"})
    assert model.sensitive_columns == ("sex",) and model.guard_metrics == (DP,)
    fairness.check_params(model, ["sex", "age"], POSITIVE)
    with pytest.raises(ParameterError, match="^guard_metrics='demographic_parity_difference': .* binary targets"):
        fairness.check_params(model, ["sex", "age"], None)
    with pytest.raises(ParameterError, match="^metric='demographic_parity_difference'"):  # a guard, never the metric
        parse_params(ModelParams, {"metric": DP})


def test_the_live_figures_become_run_metrics_and_version_tags_only_when_they_exist():
    summary = {"fairness": {"sensitive_columns": ["sex"], "by_group": [], DP: 0.125, EO: 0.5}}
    assert fairness.run_metrics(summary) == {"live_demographic_parity_difference": 0.125,
                                             "live_equalized_odds_difference": 0.5}
    assert fairness.version_tags(summary) == {TAG_MONITORING_DEMOGRAPHIC_PARITY: "0.125000",
                                              TAG_MONITORING_EQUALIZED_ODDS: "0.500000"}
    for empty in ({"fairness": {}}, {"fairness": {"sensitive_columns": ["g"], "by_group": []}}, {}):
        assert fairness.run_metrics(empty) == {} and fairness.version_tags(empty) == {}


def test_a_window_needs_sensitive_columns_and_enough_labelled_rows(tmp_path):
    schema, rows, y_true, y_pred = census_like(120, 3)
    args = (rows, y_true, y_pred, POSITIVE)
    assert fairness.window_report(*args, (), schema, rows, 30, tmp_path) == {}
    assert fairness.window_report(*args, ("sex",), schema, rows, 121, tmp_path) == {}
    section = fairness.window_report(*args, ("sex",), schema, rows, 120, tmp_path)
    assert section["sensitive_columns"] == ["sex"] and section["groups"] == 3 and DP in section and EO in section
    assert {p.name for p in tmp_path.iterdir()} == {"fairness_by_group.csv", "fairness_by_group.json"}


# --- the promotion guard (steps.promotion.decide) ------------------------------------------------------------

RULE = Rule("f1", min_delta=0.01, guards=("accuracy", DP), guard_tolerance=0.02)
CHAMPION = {"f1": 0.50, "accuracy": 0.90, "roc_auc": 0.90, "precision": 0.5, "recall": 0.5, DP: 0.10, EO: 0.2}


def scores(**new: float) -> Scores:
    return Scores({**CHAMPION, **new}, CHAMPION, (0.01, 0.05))


def test_a_fairness_guard_blocks_a_better_version_whose_difference_rises_beyond_the_tolerance():
    decision = decide(RULE, 0.55, "4", scores(f1=0.55, **{DP: 0.15}))
    assert not decision.promoted and decision.decided_by == f"guard:{DP}"
    assert decision.reason == f"guard {DP} rises by 0.0500 (0.1000 -> 0.1500), more than guard_tolerance 0.02"
    assert decision.guards[DP] == {"new": 0.15, "champion": 0.10}


@pytest.mark.parametrize("value", [0.0, 0.10, 0.119])
def test_a_fairness_guard_passes_a_version_that_is_fairer_or_within_the_tolerance(value):
    decision = decide(RULE, 0.55, "4", scores(f1=0.55, **{DP: value}))
    assert decision.promoted and decision.decided_by == "every_condition"


def test_a_fairness_guard_without_a_figure_keeps_the_champion():
    figures = {k: v for k, v in CHAMPION.items() if k not in FAIRNESS_METRICS}
    decision = decide(RULE, 0.55, "4", Scores({**figures, "f1": 0.55}, figures, (0.01, 0.05)))
    assert not decision.promoted and decision.decided_by == f"guard:{DP}" and "no figure" in decision.reason


def test_a_training_report_with_a_fairness_guard_feeds_the_guard(tmp_path):
    # the rule end to end in process: both versions' differences on the same rows, the fairer one kept
    schema, rows, y_true, fair = census_like(800, 4)
    biased = np.where(rows["sex"] == "Male", POSITIVE, fair)
    grouping = fairness.Grouping.of(("sex",), schema, rows)
    champion = {**CHAMPION, **fairness.report(rows, y_true, fair, POSITIVE, grouping).differences}
    new = {**CHAMPION, "f1": 0.6, **fairness.training_report(rows, y_true, biased, CLASSES, POSITIVE, ("sex",),
                                                             tmp_path, schema=schema, reference=rows)}
    decision = decide(RULE, 0.6, "4", Scores(new, champion, (0.01, 0.05)))
    assert not decision.promoted and decision.decided_by == f"guard:{DP}"
