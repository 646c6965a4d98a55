"""The splits' dataset schema: what MLflow's own inference gives, computed without its per-cell walk."""

from __future__ import annotations

import mlflow.data
import numpy as np
import pandas as pd

from steps.preprocess import dataset_schema


def test_the_schema_is_mlflows_own_for_text_numbers_and_missing_values():
    frame = pd.DataFrame({
        "text": pd.array(["a", "b", "c", "d"], dtype="str"),
        "text_missing": pd.array(["a", None, "c", "?"], dtype="str"),
        "python_strings": pd.array(["x", "y", None, "z"], dtype=pd.StringDtype("python")),
        "whole": [1, 2, 3, 4],
        "real": [0.5, np.nan, 1.5, 2.0],
        "objects": pd.Series(["p", None, "q", "r"], dtype=object),
        "objects_nan": pd.Series(["p", np.nan, "q", "r"], dtype=object),
        "empty": pd.Series([None, None, None, None], dtype=object),
    })
    expected = mlflow.data.from_pandas(frame).schema  # MLflow's inference, cell by cell
    assert dataset_schema(frame) == expected
    assert [spec.required for spec in expected.inputs][:2] == [True, False]  # not a comparison of defaults
    # a column MLflow cannot type leaves the whole dataset without a schema, ours too
    mixed = frame.assign(mixed=pd.Series(["p", 1, "q", None], dtype=object))
    assert mlflow.data.from_pandas(mixed).schema is None and dataset_schema(mixed) is None
