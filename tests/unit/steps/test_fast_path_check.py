"""The train step's check of the compiled path against scikit-learn, and what a refusal leaves behind."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import scipy.sparse

from contract.errors import ProjectError
from contract.params import DataParams, ForestParams, ModelParams, SplitParams
from pyfunc.cleaning import clean_raw_frame, infer_feature_schema
from pyfunc.fast import CompiledPipeline
from pyfunc.pipeline import build_pipeline
from steps.preprocess import run_preprocess
from steps.train import check_fast_path, reference_proba, train_and_register
from tests.conftest import census_rows, fitted_mixed_pipeline, mixed_frame

FEATURES = ["age", "hours", "colour", "city"]


@pytest.fixture(scope="module")
def fitted():
    pipeline, schema, _ = fitted_mixed_pipeline()
    return pipeline, schema


def shifted(monkeypatch: pytest.MonkeyPatch, by: float) -> None:
    exact = CompiledPipeline.predict_proba
    monkeypatch.setattr(CompiledPipeline, "predict_proba", lambda self, frame: exact(self, frame) + by)


def test_an_exact_compiled_path_passes_with_zero_difference(fitted):
    pipeline, schema = fitted
    test = mixed_frame(n=50, seed=6)
    assert check_fast_path(pipeline, schema, test, reference_proba(pipeline, schema, test)) == 0.0


def test_a_compiled_path_off_by_twice_the_tolerance_is_refused(fitted, monkeypatch):
    # 2e-6 sits between the tolerance (1e-6) and ten times it: a looser check would let it through
    pipeline, schema = fitted
    test = mixed_frame(n=50, seed=6)
    reference = reference_proba(pipeline, schema, test)
    shifted(monkeypatch, 2e-6)
    with pytest.raises(ProjectError, match="fast inference path disagrees .* model not registered"):
        check_fast_path(pipeline, schema, test, reference)


def test_the_sparse_branch_on_census_data_is_bit_identical():
    """Census rows are one-hot heavy: the ColumnTransformer hands the forest a sparse matrix,
    which scikit-learn walks with other code than a dense one. The compiled path must still agree
    to the last bit."""
    raw = census_rows(4000)
    features = [c for c in raw.columns if c not in ("income", "instance_weight")]
    schema = infer_feature_schema(raw[features].head(3000), ["?"])
    pipeline = build_pipeline(schema, {"n_estimators": 30, "random_state": 0, "n_jobs": 1})
    pipeline.fit(clean_raw_frame(raw.head(3000), schema), raw["income"].head(3000).to_numpy())
    test = raw.tail(1000)
    assert scipy.sparse.issparse(pipeline.named_steps["preprocess"].transform(clean_raw_frame(test, schema)))
    np.testing.assert_array_equal(CompiledPipeline.from_pipeline(pipeline, schema).predict_proba(test),
                                  pipeline.predict_proba(clean_raw_frame(test, schema)))


def test_a_refused_model_leaves_the_registry_without_a_new_version(tracking, tmp_path, monkeypatch):
    csv = tmp_path / "mixed.csv"
    mixed_frame(seed=3).to_csv(csv, index=False)
    with mlflow.start_run() as prepared:
        run_preprocess(DataParams(data_path=str(csv), target="label", drop_columns=()))
    shifted(monkeypatch, 2e-6)
    with mlflow.start_run(), pytest.raises(ProjectError, match="model not registered"):
        train_and_register(SplitParams(splits_uri=f"{prepared.info.artifact_uri}/splits"),
                           ModelParams(model_name="refused"), ForestParams(n_estimators=5, n_jobs=1))
    client = mlflow.MlflowClient()
    assert client.search_registered_models() == []
    assert client.search_model_versions("name = 'refused'") == []
