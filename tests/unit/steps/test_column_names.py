"""Training refuses up front, in one line naming the column and the rule, a header no version could serve
(contract/tables.py: check_column_names), and takes every other name as it is."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from contract.errors import DataError
from contract.params import DataParams
from steps.preprocess import preprocess
from tests.conftest import ODD_NAMES, mixed_frame


def prepared(tmp_path: Path, frame: pd.DataFrame | str, target: str = "label") -> tuple:
    source = tmp_path / "data.csv"
    if isinstance(frame, str):
        source.write_text(frame, encoding="utf-8")
    else:
        frame.to_csv(source, index=False)
    return preprocess(DataParams(data_path=str(source), target=target, drop_columns=()), tmp_path / "splits")


def test_odd_names_are_features_as_they_are(tmp_path):
    train, _, profile = prepared(tmp_path, mixed_frame().rename(columns=ODD_NAMES))
    assert list(train.columns) == [*ODD_NAMES.values(), "label"]
    assert profile["feature_columns"] == 4


@pytest.mark.parametrize(("rename", "expected"), [
    ({"city": "proba_yes"}, "column 4 ('proba_yes') is named like a column the model's answers add"),
    ({"city": "probability"}, "column 4 ('probability') is named like a column the model's answers add"),
    ({"city": "contrib_age"}, "column 4 ('contrib_age') is named like a column the model's answers add"),
    ({"city": "error"}, "column 4 ('error') is named like a column the model's answers add"),
])
def test_a_feature_named_like_an_answer_column_is_refused(tmp_path, rename, expected):
    with pytest.raises(DataError, match=r"^data_path: " + expected.replace("(", r"\(").replace(")", r"\)")):
        prepared(tmp_path, mixed_frame().rename(columns=rename))


def test_answer_names_are_fine_for_columns_that_are_not_features(tmp_path):
    """The target may be called ``label``; a column named like a class's probability of another model too."""
    frame = mixed_frame().rename(columns={"label": "probability"})
    train, _, _ = prepared(tmp_path, frame, target="probability")
    assert "probability" in train.columns


@pytest.mark.parametrize(("header", "expected"), [
    ("age,,city,label", "data_path: column 2 has an empty name"),
    ("age,city, age ,label", "data_path: column 3 ('age') names the same column as column 1"),
    ("age,city,age,label", "data_path: column 3 ('age') names the same column as column 1"),
    ("age,ci\x00ty,label", "data_path: column 2 ('ci\\x00ty'): a column name cannot hold a NUL character"),
])
def test_a_header_pandas_would_rename_or_no_store_could_hold_is_refused(tmp_path, header, expected):
    rows = "\n".join(",".join(["1"] * (header.count(",")) + [label]) for label in ["a", "b"] * 10)
    with pytest.raises(DataError) as refused:
        prepared(tmp_path, f"{header}\n{rows}\n")
    assert str(refused.value).startswith(expected), refused.value
