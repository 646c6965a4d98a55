"""The scikit-learn pipeline: its shape, importances per input column, and skops storage."""

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, RobustScaler

from pyfunc.cleaning import clean_raw_frame, infer_feature_schema
from pyfunc.fast import CompiledPipeline, CompiledTrees
from pyfunc.pipeline import build_pipeline, input_column_importance, load_pipeline, save_pipeline
from tests.conftest import fitted_mixed_pipeline, mixed_frame

FEATURES = ["age", "hours", "colour", "city"]


@pytest.fixture(scope="module")
def fitted():
    return fitted_mixed_pipeline()


def test_pipeline_has_the_classic_preprocessing(fitted):
    pipeline, schema, _ = fitted
    assert schema.numeric == ["age", "hours"] and schema.categorical == ["colour", "city"]
    pre = pipeline.named_steps["preprocess"]
    assert isinstance(pre, ColumnTransformer)
    numeric = pre.named_transformers_["numeric"]
    categorical = pre.named_transformers_["categorical"]
    assert isinstance(numeric.named_steps["impute"], SimpleImputer)
    assert numeric.named_steps["impute"].strategy == "most_frequent"
    assert isinstance(numeric.named_steps["scale"], RobustScaler)
    assert categorical.named_steps["impute"].strategy == "most_frequent"
    onehot = categorical.named_steps["onehot"]
    assert isinstance(onehot, OneHotEncoder) and onehot.handle_unknown == "ignore"
    assert isinstance(pipeline.named_steps["forest"], RandomForestClassifier)


def test_importance_is_reported_per_input_column(fitted):
    pipeline, schema, _ = fitted
    importance = input_column_importance(pipeline, schema)
    assert set(importance) == set(schema.columns)
    assert sum(importance.values()) == pytest.approx(1.0)
    values = list(importance.values())
    assert values == sorted(values, reverse=True)
    # colour drives the synthetic label; the city is noise
    assert importance["colour"] > importance["city"]


def test_skops_round_trip_predicts_the_same(fitted, tmp_path):
    pipeline, _, X = fitted
    save_pipeline(pipeline, tmp_path / "p.skops")
    loaded = load_pipeline(tmp_path / "p.skops")
    np.testing.assert_array_equal(loaded.predict_proba(X), pipeline.predict_proba(X))


def shift(x):
    return x + 1


def test_saving_refuses_types_outside_the_trusted_list(tmp_path):
    # A function of ours is code skops would have to import and run at load time.
    untrusted = make_pipeline(FunctionTransformer(shift), RandomForestClassifier(n_estimators=2))
    untrusted.fit(np.ones((4, 1)), [0, 1, 0, 1])
    with pytest.raises(TypeError, match="not in TRUSTED_TYPES"):
        save_pipeline(untrusted, tmp_path / "p.skops")
    assert not (tmp_path / "p.skops").exists()


def test_only_non_empty_kinds_get_a_transformer():
    frame = mixed_frame()
    schema = infer_feature_schema(frame[["age", "hours"]], ["?"])
    pipeline = build_pipeline(schema, {"n_estimators": 5})
    assert isinstance(pipeline, Pipeline)
    assert [name for name, *_ in pipeline.named_steps["preprocess"].transformers] == ["numeric"]


def test_compiled_path_is_bit_identical_to_the_pipeline_on_raw_rows(fitted):
    pipeline, schema, _ = fitted
    raw = mixed_frame(n=300, seed=5)[FEATURES].astype(object)
    raw.loc[raw.index[:5], "colour"] = "never-seen"  # unknown category
    raw.loc[raw.index[5:10], "age"] = "?"  # missing number
    raw.loc[raw.index[10], "hours"] = 12  # typed JSON number
    compiled = CompiledPipeline.from_pipeline(pipeline, schema)
    pipeline.set_params(forest__n_jobs=1)
    expected = pipeline.predict_proba(clean_raw_frame(raw, schema))
    np.testing.assert_array_equal(compiled.predict_proba(raw), expected)
    np.testing.assert_array_equal(compiled.classes, pipeline.classes_)


def test_a_forest_compares_in_float32_on_the_same_side_of_every_threshold_as_scikit_learn():
    # Two adjacent float32 values whose float64 midpoint (the threshold scikit-learn learns) rounds to nearest
    # upwards, onto the larger one: a kernel comparing with that rounded threshold would send the larger
    # value left; the compiled one keeps the largest float32 below the threshold and sends it right.
    # (apart by more than scikit-learn's 1e-7, under which it takes a feature for constant)
    low = np.nextafter(np.float32(10_000), np.float32(20_000))  # odd last bit: the midpoint rounds up
    high = np.nextafter(low, np.float32(2))
    X = np.array([[low], [high]] * 4, dtype=np.float32)
    y = np.array([0, 1] * 4)
    forest = RandomForestClassifier(n_estimators=3, bootstrap=False, random_state=0).fit(X, y)
    threshold = forest.estimators_[0].tree_.threshold[0]
    assert np.float32(threshold) == high  # the case this test is about: to nearest lands on a value
    compiled = CompiledTrees.from_estimators(forest.estimators_)
    assert compiled.nodes["threshold"].dtype == np.float32
    np.testing.assert_array_equal(compiled.predict_proba(X), forest.predict_proba(X))
    np.testing.assert_array_equal(compiled.predict_proba(X)[:2], [[1.0, 0.0], [0.0, 1.0]])


def test_every_model_type_is_built_saved_loaded_and_compiled_bit_identically(tmp_path):
    from sklearn.ensemble import ExtraTreesClassifier

    from contract.params import MODEL_TYPES
    from pyfunc.pipeline import ESTIMATORS

    assert set(ESTIMATORS) == set(MODEL_TYPES)  # every family the parameters accept is one the model builds
    frame = mixed_frame(n=400, seed=3)
    schema = infer_feature_schema(frame[FEATURES], ["?"])
    pipeline = build_pipeline(schema, {"n_estimators": 20, "random_state": 0, "n_jobs": 1}, "extra_trees")
    assert isinstance(pipeline.named_steps["forest"], ExtraTreesClassifier)
    pipeline.fit(clean_raw_frame(frame, schema), frame["label"].to_numpy())
    save_pipeline(pipeline, tmp_path / "p.skops")  # nothing outside TRUSTED_TYPES
    loaded = load_pipeline(tmp_path / "p.skops")
    raw = mixed_frame(n=300, seed=6)[FEATURES].astype(object)
    raw.loc[raw.index[:5], "colour"] = "never-seen"
    compiled = CompiledPipeline.from_pipeline(loaded, schema)
    np.testing.assert_array_equal(compiled.predict_proba(raw), loaded.predict_proba(clean_raw_frame(raw, schema)))
    importance = input_column_importance(loaded, schema)
    assert set(importance) == set(FEATURES) and abs(sum(importance.values()) - 1) < 1e-9


@pytest.mark.parametrize("labels", [("no", "yes"), ("low", "mid", "high")], ids=["binary", "multiclass"])
def test_gradient_boosting_is_built_saved_loaded_and_compiled_to_scikit_learns_probabilities(tmp_path, labels):
    from sklearn.ensemble import HistGradientBoostingClassifier

    frame = mixed_frame(n=600, seed=3, labels=labels)
    schema = infer_feature_schema(frame[FEATURES], ["?"])
    params = {"max_iter": 40, "learning_rate": 0.2, "max_leaf_nodes": 15, "early_stopping": True, "random_state": 0}
    pipeline = build_pipeline(schema, params, "hist_gradient_boosting")
    pipeline.fit(clean_raw_frame(frame, schema), frame["label"].to_numpy())
    estimator = pipeline.named_steps["forest"]
    assert isinstance(estimator, HistGradientBoostingClassifier) and estimator.n_iter_ > 1
    save_pipeline(pipeline, tmp_path / "p.skops")  # nothing outside TRUSTED_TYPES
    loaded = load_pipeline(tmp_path / "p.skops")
    raw = mixed_frame(n=300, seed=6, labels=labels)[FEATURES].astype(object)
    raw.loc[raw.index[:5], "colour"] = "never-seen"
    raw.loc[raw.index[5:10], "hours"] = "?"
    compiled = CompiledPipeline.from_pipeline(loaded, schema)
    reference = loaded.predict_proba(clean_raw_frame(raw, schema))
    ours = compiled.predict_proba(raw)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12)  # the train step's check allows 1e-6
    assert np.ptp(ours[:, 0]) > 0.3  # the rows are told apart: not a comparison of constant outputs
    np.testing.assert_array_equal(compiled.classes, loaded.classes_)
    assert input_column_importance(loaded, schema) is None  # no impurity importances: the train step permutes


@pytest.mark.parametrize("model_type", ["random_forest", "extra_trees"])
def test_a_dense_training_matrix_grows_the_same_forest_as_a_sparse_one(model_type):
    def with_codes(n: int, seed: int):  # a column of many categories: a one-hot matrix sparse enough to stay so
        frame = mixed_frame(n=n, seed=seed)
        frame["code"] = [f"c{i}" for i in np.random.default_rng(seed).integers(0, 40, n)]
        return frame

    frame, columns = with_codes(600, 11), [*FEATURES, "code"]
    schema = infer_feature_schema(frame[columns], ["?"])
    x, y = clean_raw_frame(frame, schema), frame["label"].to_numpy()
    params = {"n_estimators": 15, "random_state": 0, "n_jobs": 1}
    sparse, dense = (build_pipeline(schema, params, model_type, dense=d).fit(x, y) for d in (False, True))
    assert hasattr(sparse.named_steps["preprocess"].transform(x), "toarray")  # the one-hot matrix, sparse
    assert isinstance(dense.named_steps["preprocess"].transform(x), np.ndarray)
    raw = with_codes(300, 12)[columns]
    np.testing.assert_array_equal(dense.predict_proba(clean_raw_frame(raw, schema)),
                                  sparse.predict_proba(clean_raw_frame(raw, schema)))


def test_the_training_matrix_is_dense_while_it_fits_the_budget(monkeypatch):
    import pyfunc.pipeline as pipeline_module

    frame = mixed_frame(n=500, seed=13)
    schema = infer_feature_schema(frame[FEATURES], ["?"])
    x = clean_raw_frame(frame, schema)
    width = len(schema.numeric) + sum(x[c].nunique() for c in schema.categorical)
    monkeypatch.setattr(pipeline_module, "DENSE_MAX_BYTES", len(x) * width * 8)
    assert pipeline_module.fits_dense(x, schema)
    monkeypatch.setattr(pipeline_module, "DENSE_MAX_BYTES", len(x) * width * 8 - 1)
    assert not pipeline_module.fits_dense(x, schema)
