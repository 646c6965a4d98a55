"""The one place where raw tabular input is cleaned, shared by training and serving.

Raw input is what a CSV file or a JSON client gives us: text with stray
whitespace, missing-value markers such as ``?``, empty cells, numbers sent as
strings and strings sent as numbers. Every path goes through :func:`clean_values`:
training fits on :func:`clean_raw_frame` (``steps/train.py``), and the served
model's compiled path (``pyfunc/fast.py``) cleans DataFrames with
:func:`clean_columns` and JSON rows with :func:`clean_records`, so the model sees
the same values in training and serving. The one exception is
:func:`normalize_missing`, which the preprocess step runs on whole files before
any column kind is known (the same text rules, vectorised).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

# float32 is what the forest compares features in; a larger magnitude would
# overflow inside scikit-learn instead of failing here with a clear message.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# The one object every missing value is cleaned to (identity checks are cheap).
MISSING = _MISSING = np.nan


class InvalidInputError(MlflowException):
    """Raw input the model cannot score: the message names the column(s).

    It is an ``MlflowException`` with ``INVALID_PARAMETER_VALUE`` so that
    ``mlflow models serve`` answers 400 with this message instead of 500.
    """

    def __init__(self, message: str, columns: Sequence[str]):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)
        self.columns = list(columns)


@dataclass(frozen=True)
class FeatureSchema:
    """What the model expects of raw input, inferred once from the training data."""

    numeric: list[str]
    categorical: list[str]
    na_values: list[str]  # markers of missing cells besides blank ones, as training was told

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> FeatureSchema:
        return cls(**json.loads(text))


def clean_cell(value: Any, na_values: frozenset[str]) -> Any:
    """Strip text and map blanks, missing markers, None and NaN to NaN."""
    if isinstance(value, str):
        value = value.strip()
        return _MISSING if value == "" or value in na_values else value
    if value is None or value is pd.NA or value is pd.NaT:
        return _MISSING
    if isinstance(value, float) and math.isnan(value):
        return _MISSING
    return value


def normalize_missing(frame: pd.DataFrame, na_values: Iterable[str]) -> pd.DataFrame:
    """Return ``frame`` as text-or-NaN cells: stripped, with every missing marker as NaN.

    Used on whole files before any column kind is known (the preprocess step).
    """
    markers = frozenset(na_values)
    return pd.DataFrame(
        {name: _normalize_column(column, markers) for name, column in frame.items()}, index=frame.index
    )


def _normalize_column(column: pd.Series, markers: frozenset[str]) -> pd.Series:
    values = column.to_numpy(dtype=object)
    if pd.api.types.is_string_dtype(column.dtype) and not column.isna().any():
        # All text (a CSV read as text): the same rules as clean_cell, vectorised.
        stripped = np.char.strip(values.astype(str))
        missing = (stripped == "") | np.isin(stripped, list(markers))
        out = stripped.astype(object)
        out[missing] = _MISSING
        return pd.Series(out, index=column.index, dtype=object)
    return pd.Series([clean_cell(v, markers) for v in values], index=column.index, dtype=object)


def parse_number(value: Any) -> float:
    """Read a cleaned cell as a finite float; raise ValueError if it is not one."""
    if value is _MISSING or (isinstance(value, float) and math.isnan(value)):
        return _MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float, str, np.number)):
        raise ValueError(value)
    number = float(value)
    if math.isnan(number):  # the strings "nan" / "NaN" are missing values, as in pandas
        return _MISSING
    if not abs(number) <= _FLOAT32_MAX:
        raise ValueError(value)
    return number


def as_category(value: Any) -> Any:
    """Text form of a categorical cell, so JSON ``5`` and ``5.0`` both match a CSV's ``5``."""
    if isinstance(value, str) or value is _MISSING:
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


def _all_numbers(values: np.ndarray) -> bool:
    """Whether :func:`parse_number` accepts every value (vectorised for text; exact otherwise)."""
    if all(type(v) is str for v in values):
        try:
            numbers = values.astype(np.float64)  # float() on each string, in C
        except ValueError:
            return False
        finite = numbers[~np.isnan(numbers)]
        return bool(np.all(np.abs(finite) <= _FLOAT32_MAX))
    try:
        for value in values:
            parse_number(value)
    except (ValueError, OverflowError, TypeError):
        return False
    return True


def infer_feature_schema(frame: pd.DataFrame, na_values: Iterable[str]) -> FeatureSchema:
    """Decide which columns are numeric and which categorical from the training rows.

    A column is numeric when every present value reads as a finite number, and
    categorical otherwise. Columns with no value at all carry no information and
    are left out (the model then does not require them).
    """
    cleaned = normalize_missing(frame, na_values)
    numeric: list[str] = []
    categorical: list[str] = []
    for name, column in cleaned.items():
        present = column.dropna().to_numpy(dtype=object)
        if not len(present):
            continue
        (numeric if _all_numbers(present) else categorical).append(str(name))
    return FeatureSchema(numeric=numeric, categorical=categorical, na_values=list(na_values))


def _missing_columns_error(missing: list[str]) -> InvalidInputError:
    return InvalidInputError(f"missing required column(s): {', '.join(map(repr, missing))}", missing)


class _BadValue(ValueError):
    pass


def _number_column(values: Sequence[Any], markers: frozenset[str]) -> list[float]:
    """Numbers of one column: :func:`parse_number` after :func:`clean_cell`, with the
    common cases (text, int, float) inlined because this loop runs once per cell."""
    out = []
    for value in values:
        kind = type(value)
        if kind is str:
            text = value.strip()
            if not text or text in markers:
                out.append(_MISSING)
                continue
            try:
                out.append(float(text))
            except ValueError:
                raise _BadValue(len(out)) from None
        elif kind is float:
            out.append(value)
        elif kind is int:
            try:
                out.append(float(value))
            except OverflowError:  # an int beyond any float
                raise _BadValue(len(out)) from None
        else:
            try:
                out.append(parse_number(clean_cell(value, markers)))
            except (ValueError, OverflowError, TypeError):
                raise _BadValue(len(out)) from None
    return out


def _category_column(values: Sequence[Any], markers: frozenset[str]) -> np.ndarray:
    """Categories of one column: :func:`as_category` after :func:`clean_cell`, text inlined."""
    out = []
    for value in values:
        if type(value) is str:
            text = value.strip()
            out.append(_MISSING if not text or text in markers else text)
        elif isinstance(value, (list, dict, tuple, set)):
            raise _BadValue(len(out))
        else:
            out.append(as_category(clean_cell(value, markers)))
    return np.array(out, dtype=object)


def clean_values(columns: Sequence[Sequence[Any]], schema: FeatureSchema) -> tuple[np.ndarray, list[np.ndarray]]:
    """Clean raw values given column by column, in ``schema.columns`` order.

    Returns the numeric columns as one float64 matrix (NaN = missing) and each
    categorical column as an object array of text (NaN = missing). Raises
    :class:`InvalidInputError` naming the columns when a numeric column holds a
    value that is not a finite number (within float32, what the forest compares
    in), or any column holds a list or an object.
    """
    markers = frozenset(schema.na_values)
    n_rows = len(columns[0]) if columns else 0
    numeric = np.empty((n_rows, len(schema.numeric)), dtype=np.float64)
    problems: list[str] = []
    bad_columns: list[str] = []

    def bad(name: str, row: int, value: Any, why: str) -> None:
        bad_columns.append(name)
        problems.append(f"column {name!r} row {row}: {value!r} {why}")

    for j, name in enumerate(schema.numeric):
        try:
            numeric[:, j] = _number_column(columns[j], markers)
        except _BadValue as err:
            row = err.args[0]
            bad(name, row, columns[j][row], "is not a number")
            continue
        # inf, -inf and magnitudes beyond float32 (NaN is missing: it passes)
        out_of_range = np.flatnonzero(np.abs(numeric[:, j]) > _FLOAT32_MAX)
        if len(out_of_range):
            row = int(out_of_range[0])
            bad(name, row, columns[j][row], "is not a finite number")
    first = len(schema.numeric)
    categorical = []
    for j, name in enumerate(schema.categorical):
        try:
            categorical.append(_category_column(columns[first + j], markers))
        except _BadValue as err:
            row = err.args[0]
            bad(name, row, columns[first + j][row], "is not a single value")
    if problems:
        raise InvalidInputError("invalid value(s): " + "; ".join(problems), bad_columns)
    return numeric, categorical


def clean_columns(frame: pd.DataFrame, schema: FeatureSchema) -> tuple[np.ndarray, list[np.ndarray]]:
    """:func:`clean_values` for a DataFrame of raw rows; extra columns are ignored."""
    missing = [name for name in schema.columns if name not in frame.columns]
    if missing:
        raise _missing_columns_error(missing)
    # One conversion of the whole frame, then pick the columns: far cheaper than
    # a column at a time or a column subset first (pandas 3 keeps text in Arrow).
    raw = frame.to_numpy(dtype=object)[:, frame.columns.get_indexer(schema.columns)]
    return clean_values([raw[:, j].tolist() for j in range(raw.shape[1])], schema)  # lists iterate faster


def clean_records(records: Sequence[dict[str, Any]], schema: FeatureSchema) -> tuple[np.ndarray, list[np.ndarray]]:
    """:func:`clean_values` for JSON-style records (one dict per row), without pandas."""
    missing = [name for name in schema.columns if not all(name in r for r in records)]
    if missing:
        raise _missing_columns_error(missing)
    return clean_values([[r[name] for r in records] for name in schema.columns], schema)


def clean_raw_frame(frame: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """Raw rows as the scikit-learn pipeline's input: numeric columns as float64, categoricals as text.

    See :func:`clean_columns` for the rules and errors.
    """
    numeric, categorical = clean_columns(frame, schema)
    columns = {name: numeric[:, j] for j, name in enumerate(schema.numeric)}
    columns.update(zip(schema.categorical, categorical, strict=True))
    return pd.DataFrame(columns, index=frame.index, columns=schema.columns)
