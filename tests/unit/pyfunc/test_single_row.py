"""The compiled path on a few rows (what one /predict sends), against scikit-learn's own pipeline.

tests/unit/pyfunc/test_pipeline.py compares the compiled path with the pipeline on hundreds of rows, where
every column is cleaned and looked up once per distinct value. A column shorter than that memo's minimum
takes the other road: cleaned cell by cell, then looked up (pyfunc/fast.py: CompiledPipeline._encode_columns).
Here random rows of every kind of cell go that road and must score as the fitted pipeline scores them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.pipeline import Pipeline

from pyfunc.cleaning import (
    FeatureSchema,
    category_codes,
    clean_raw_frame,
    infer_feature_schema,
)
from pyfunc.fast import CompiledPipeline
from pyfunc.pipeline import build_pipeline
from tests.conftest import MIXED_FEATURES, fitted_mixed_pipeline, mixed_frame

MEMO_ROWS = 32  # enough rows for the reference's cleaning to take the per-distinct-value road


def spaced(text: str) -> st.SearchStrategy[str]:
    return st.sampled_from([text, f" {text}", f"{text}  ", f"\t{text} "])


missing = st.sampled_from([None, "", "  ", "?", " ? ", float("nan")])
number_cell = st.one_of(
    st.integers(-1000, 1000), st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False),
    st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False).flatmap(lambda x: spaced(repr(x))),
    st.integers(-1000, 1000).flatmap(lambda x: spaced(str(x))), missing)


def category_cell(known: list[str]) -> st.SearchStrategy:
    # known categories (with stray spaces), ones training never saw (no one-hot column), numbers, missing
    return st.one_of(st.sampled_from(known).flatmap(spaced), st.text(min_size=1, max_size=12), st.integers(0, 9),
                     missing)


def rows_for(frame: pd.DataFrame) -> st.SearchStrategy[list[dict]]:
    cells = {"age": number_cell, "hours": number_cell,
             "colour": category_cell(sorted(set(frame["colour"]))), "city": category_cell(sorted(set(frame["city"])))}
    return st.lists(st.fixed_dictionaries(cells), min_size=1, max_size=3)


def gradient_boosting() -> tuple:
    frame = mixed_frame(n=600, seed=3, labels=("low", "mid", "high"))
    schema = infer_feature_schema(frame[MIXED_FEATURES], ["?"])
    params = {"max_iter": 30, "learning_rate": 0.2, "max_leaf_nodes": 15, "random_state": 0}
    pipeline = build_pipeline(schema, params, "hist_gradient_boosting")
    pipeline.fit(clean_raw_frame(frame, schema), frame["label"].to_numpy())
    return pipeline, schema


def forest() -> tuple:
    pipeline, schema, _ = fitted_mixed_pipeline()
    pipeline.set_params(forest__n_jobs=1)  # its sums in one order, as the compiled path adds them
    return pipeline, schema


MODELS = {"forest": forest, "gradient_boosting": gradient_boosting}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request: pytest.FixtureRequest) -> tuple:
    pipeline, schema = MODELS[request.param]()
    return pipeline, schema, CompiledPipeline.from_pipeline(pipeline, schema)


def scikit_learn(pipeline: Pipeline, schema: FeatureSchema, rows: list[dict]) -> np.ndarray:
    """The fitted pipeline's probabilities, its input cleaned as training cleans a whole column."""
    repeated = pd.DataFrame((rows * MEMO_ROWS)[:max(MEMO_ROWS, len(rows))], dtype=object)
    return pipeline.predict_proba(clean_raw_frame(repeated, schema))[: len(rows)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_few_raw_rows_score_as_scikit_learns_pipeline_scores_them(model, data):
    pipeline, schema, compiled = model
    rows = data.draw(rows_for(mixed_frame()), label="rows")
    for name, lookup in zip(schema.categorical, compiled.categorical_columns, strict=True):
        column = [row[name] for row in rows]  # the road under test: no per-distinct-value lookup for so few
        assert category_codes(column, frozenset(schema.na_values), lookup) is None
    expected = scikit_learn(pipeline, schema, rows)
    np.testing.assert_allclose(compiled.predict_proba_records(rows), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(compiled.predict_proba(pd.DataFrame(rows, dtype=object)), expected,
                               rtol=0, atol=1e-12)


def test_rows_the_cells_of_which_decide_differ_so_the_comparison_can_fail(model):
    """Not a comparison of constant outputs: the rows are told apart."""
    pipeline, schema, compiled = model
    rows = mixed_frame(n=40, seed=9)[MIXED_FEATURES].to_dict("records")
    scores = np.vstack([compiled.predict_proba_records([row]) for row in rows])
    assert np.ptp(scores[:, 0]) > 0.3
    np.testing.assert_allclose(scores, scikit_learn(pipeline, schema, rows), rtol=0, atol=1e-12)
