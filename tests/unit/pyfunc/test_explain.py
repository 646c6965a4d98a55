"""Explanations: the compiled TreeSHAP against the ``shap`` package, the reference implementation.

Every check is per raw input column: shap's values on the preprocessed features, summed over each
column's features (a categorical column's one-hot block), must equal ours within 1e-6, and the base
value plus the contributions must give back the predicted probability (local accuracy).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import shap
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfunc.cleaning import FeatureSchema, clean_raw_frame, infer_feature_schema
from pyfunc.explain import TreeExplainer, quadrature
from pyfunc.fast import CompiledPipeline, CompiledTrees
from pyfunc.pipeline import build_pipeline
from tests.conftest import census_rows, mixed_frame

TOLERANCE = 1e-6


def fit(frame: pd.DataFrame, target: str, forest: dict,
        model_type: str = "random_forest") -> tuple[CompiledPipeline, object, FeatureSchema]:
    features = [c for c in frame.columns if c != target]
    schema = infer_feature_schema(frame[features], ["?"])
    jobs = {} if model_type == "hist_gradient_boosting" else {"n_jobs": 1}
    pipeline = build_pipeline(schema, {"random_state": 0, **jobs, **forest}, model_type)
    pipeline.fit(clean_raw_frame(frame, schema), frame[target].to_numpy())
    return CompiledPipeline.from_pipeline(pipeline, schema), pipeline, schema


def shap_by_column(pipeline, schema: FeatureSchema, compiled: CompiledPipeline, rows: pd.DataFrame) -> tuple:
    """shap's values (rows x columns x classes) and expected values, on the features the forest sees."""
    X = compiled.encode(rows).astype(np.float64)  # the float32 features the forest compares, exactly
    explainer = shap.TreeExplainer(pipeline.named_steps["forest"], feature_perturbation="tree_path_dependent")
    values = explainer.shap_values(X, check_additivity=False)  # rows x features x classes
    return np.einsum("rfc,fk->rkc", values, compiled.feature_columns), np.asarray(explainer.expected_value)


def assert_matches_shap_and_adds_up(compiled, pipeline, schema, rows: pd.DataFrame) -> None:
    ours = compiled.explain(rows)
    reference, expected = shap_by_column(pipeline, schema, compiled, rows)
    assert ours.contributions.shape == (len(rows), len(schema.columns), len(compiled.classes))
    np.testing.assert_allclose(ours.contributions, reference, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(ours.base, expected, rtol=0, atol=TOLERANCE)
    # local accuracy, on every row and class, against the probabilities the model returns
    np.testing.assert_allclose(ours.base + ours.contributions.sum(axis=1), compiled.predict_proba(rows),
                               rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(ours.proba, compiled.predict_proba(rows))
    assert np.abs(ours.contributions).max() > 0.01  # not a vacuous comparison of zeros


@pytest.fixture(scope="module")
def census():
    frame = census_rows(3000)
    # unlimited depth, as the default model: deep paths with features split on again and again
    compiled, pipeline, schema = fit(frame.head(2800), "income", {"n_estimators": 12})
    return compiled, pipeline, schema, frame.tail(200).drop(columns=["income"])


def test_census_slice_matches_shap_per_column_and_adds_up(census):
    compiled, pipeline, schema, rows = census
    assert compiled.forest.depths.max() > 20  # the deep trees that make shap slow
    assert_matches_shap_and_adds_up(compiled, pipeline, schema, rows)


def test_a_row_explained_alone_equals_the_same_row_in_a_batch(census):
    compiled, _, _, rows = census
    batch = compiled.explain(rows.head(40)).contributions
    for i in (0, 17, 39):  # rows in the first and the third batch of the kernel (16 rows a batch)
        alone = compiled.explain(rows.iloc[[i]]).contributions[0]
        np.testing.assert_allclose(alone, batch[i], rtol=0, atol=1e-12)


def test_multiclass_matches_shap_per_column_and_adds_up():
    frame = mixed_frame(n=600, seed=4, labels=(3, 7, 11))
    compiled, pipeline, schema = fit(frame, "label", {"n_estimators": 15})
    assert len(compiled.classes) == 3
    assert_matches_shap_and_adds_up(compiled, pipeline, schema, frame.drop(columns="label").head(80))


def shops_frame(n: int = 1500) -> pd.DataFrame:
    """A categorical column of 60 levels that decides the label, beside a noise column."""
    rng = np.random.default_rng(7)
    level = rng.integers(0, 60, n)
    return pd.DataFrame({"amount": rng.normal(0, 1, n).round(3).astype(str),
                         "shop": [f"shop-{k}" for k in level],
                         "label": np.where((level % 5 == 0) | (rng.random(n) < 0.1), "fraud", "ok")})


def test_a_categorical_of_many_levels_is_summed_back_onto_its_column():
    frame = shops_frame()
    # depth-limited: on paths through ~60 distinct features shap's own values lose local accuracy
    # (docs/explanations.md), so they could not serve as the reference there
    compiled, pipeline, schema = fit(frame, "label", {"n_estimators": 10, "max_depth": 14})
    assert compiled.feature_columns[:, schema.columns.index("shop")].sum() == 60  # one feature a level
    rows = frame.drop(columns="label").head(60)
    assert_matches_shap_and_adds_up(compiled, pipeline, schema, rows)
    ours = compiled.explain(rows).contributions
    # the level decides the label: its column carries most of each prediction's explanation
    shop, amount = schema.columns.index("shop"), schema.columns.index("amount")
    assert np.mean(np.abs(ours[:, shop, 0]) > np.abs(ours[:, amount, 0])) > 0.8


def test_quadrature_is_exact_for_the_degree_it_is_chosen_for():
    nodes, weights = quadrature(4)  # exact up to degree 7 on [0, 1]
    for degree in range(8):
        assert float(np.sum(weights * nodes**degree)) == pytest.approx(1 / (degree + 1), abs=1e-14)
    assert float(np.sum(weights * nodes**8)) != pytest.approx(1 / 9, abs=1e-9)


def test_a_summed_ensemble_and_zero_cover_are_handled():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    compiled = CompiledTrees.from_estimators(forest.estimators_)
    nodes = compiled.nodes
    summed = TreeExplainer.build(compiled.roots, nodes["right"].copy(), nodes["feature"].copy(),
                                 nodes["threshold"].copy(), compiled.cover, compiled.value, compiled.depths,
                                 average=False, probabilities=False)
    phi = summed.contributions(X[:20])
    np.testing.assert_allclose(summed.base + phi.sum(axis=1), compiled.predict_proba(X[:20]) * 5, atol=1e-9)
    with pytest.raises(ValueError, match="no training weight"):
        TreeExplainer.build(compiled.roots, nodes["right"].copy(), nodes["feature"].copy(), nodes["threshold"].copy(),
                            np.zeros_like(compiled.cover), compiled.value, compiled.depths, average=True,
                            probabilities=True)


def test_local_accuracy_holds_on_paths_through_dozens_of_distinct_features():
    frame = shops_frame()
    compiled, _, _ = fit(frame, "label", {"n_estimators": 10})
    assert compiled.forest.explainer.points.max() >= 20  # paths through 40 and more distinct features
    rows = frame.drop(columns="label").head(100)
    ours = compiled.explain(rows)
    np.testing.assert_allclose(ours.base + ours.contributions.sum(axis=1), ours.proba, rtol=0, atol=1e-9)


def test_extra_trees_match_shap_per_column_and_add_up():
    frame = census_rows(1500)
    compiled, pipeline, schema = fit(frame.head(1400), "income", {"n_estimators": 10}, model_type="extra_trees")
    assert type(pipeline.named_steps["forest"]).__name__ == "ExtraTreesClassifier"
    assert_matches_shap_and_adds_up(compiled, pipeline, schema, frame.tail(100).drop(columns=["income"]))



@pytest.mark.parametrize("labels", [None, ("low", "mid", "high")], ids=["census-binary", "multiclass"])
def test_gradient_boosting_matches_shap_in_log_odds_and_adds_up_to_them(labels):
    """shap explains gradient boosting's raw output (log-odds; softmax scores for several classes): so do we,
    for every class (a binary model's first class has the negated log-odds of the second)."""
    if labels is None:
        frame, target = census_rows(1500), "income"
    else:
        frame, target = mixed_frame(n=600, seed=4, labels=labels), "label"
    compiled, pipeline, schema = fit(frame.head(len(frame) - 100), target,
                                     {"max_iter": 30, "max_leaf_nodes": 31, "learning_rate": 0.2},
                                     model_type="hist_gradient_boosting")
    rows = frame.tail(100).drop(columns=[target])
    ours = compiled.explain(rows)
    assert ours.explains == "log_odds" and compiled.forest.explains == "log_odds"
    explainer = shap.TreeExplainer(pipeline.named_steps["forest"], feature_perturbation="tree_path_dependent")
    values = np.asarray(explainer.shap_values(compiled.encode(rows), check_additivity=False))
    expected = np.atleast_1d(np.asarray(explainer.expected_value, dtype=np.float64))
    if values.ndim == 2:  # binary: one raw output, the second class's log-odds
        values, expected = np.stack([-values, values], axis=2), np.concatenate([-expected, expected])
    reference = np.einsum("rfc,fk->rkc", values, compiled.feature_columns)
    np.testing.assert_allclose(ours.contributions, reference, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(ours.base, expected, rtol=0, atol=TOLERANCE)
    raw = pipeline.named_steps["forest"].decision_function(pipeline.named_steps["preprocess"].transform(
        clean_raw_frame(rows, schema)))
    raw = np.stack([-raw, raw], axis=1) if raw.ndim == 1 else raw
    np.testing.assert_allclose(ours.base + ours.contributions.sum(axis=1), raw, rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(ours.proba, compiled.predict_proba(rows))
    assert np.abs(ours.contributions).max() > 0.05  # not a vacuous comparison of zeros


def deep_forest() -> tuple[CompiledTrees, np.ndarray]:
    """Unlimited-depth trees on 5 features: every path splits on each feature again and again, so rows that
    follow, leave and had left a feature meet at the same nodes. Also its thresholds, to draw rows on them."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 5)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] + np.sin(3 * X[:, 2]) + 0.3 * rng.normal(size=400) > 0).astype(int)
    forest = RandomForestClassifier(n_estimators=4, random_state=0).fit(X, y)
    compiled = CompiledTrees.from_estimators(forest.estimators_)
    internal = compiled.nodes["right"] >= 0
    return compiled, np.unique(compiled.nodes["threshold"][internal])


DEEP_FOREST = deep_forest()
cell = st.one_of(st.sampled_from(DEEP_FOREST[1].tolist()), st.floats(-3, 3, width=32))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(cell, min_size=5, max_size=5), min_size=1, max_size=40))
def test_a_row_explained_alone_equals_it_in_any_batch_and_adds_up(rows):
    """The kernel works out each edge's factors only for the kinds of edge the rows of a batch take there (a row
    alone takes one): whichever rows share a batch, each row's explanation is the one it has alone."""
    compiled, _ = DEEP_FOREST
    X = np.asarray(rows, dtype=np.float32)
    base, together = compiled.explain(X)
    for i in range(len(X)):
        np.testing.assert_allclose(compiled.explain(X[i:i + 1])[1][0], together[i], rtol=0, atol=1e-12)
    np.testing.assert_allclose(base + together.sum(axis=1), compiled.predict_proba(X), rtol=0, atol=1e-9)


def test_the_points_padding_the_quadrature_add_nothing():
    """Each tree's quadrature is padded to a multiple of 4 points (the kernel's vectors) with points of weight 0:
    the contributions are those of the exact quadrature alone."""
    compiled, _ = DEEP_FOREST
    padded = compiled.explainer
    exact = (padded.t_weights > 0).sum(axis=1)
    assert np.all(padded.points % 4 == 0) and np.any(exact < padded.points)  # some tree is padded
    unpadded = replace(padded, points=exact, t_nodes=padded.t_nodes[:, :exact.max()].copy(),
                       t_weights=padded.t_weights[:, :exact.max()].copy())
    X = np.random.default_rng(5).normal(size=(30, 5)).astype(np.float32)
    np.testing.assert_allclose(padded.contributions(X), unpadded.contributions(X), rtol=0, atol=1e-12)
