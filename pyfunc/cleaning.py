"""The one place where raw tabular input is cleaned, shared by training and serving.

Raw input is what a CSV file or a JSON client gives us: text with stray
whitespace, missing-value markers such as ``?``, empty cells, numbers sent as
strings and strings sent as numbers. Every path applies the same cell rules
(:func:`clean_cell`, :func:`clean_category`, :func:`parse_number`): training fits
on :func:`clean_raw_frame` (``steps/train.py``), and the served model's compiled
path (``pyfunc/fast.py``) takes the raw cells of DataFrames
(:func:`frame_columns`), JSON rows (:func:`record_columns`) and tables given as columns
(:func:`table_columns`: a CSV body as read) column by column,
cleans the numbers with :func:`clean_values` and turns each categorical cell
straight into its one-hot column with :func:`category_codes`, so the model sees
the same values in training and serving. The one exception is
:func:`normalize_missing`, which the preprocess step runs on whole files before
any column kind is known (the same cell rule, :func:`clean_cell`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from operator import itemgetter
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


def _picker(columns: list[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    return itemgetter(*columns) if len(columns) > 1 else lambda row: (row[columns[0]],)


@dataclass(frozen=True)
class FeatureSchema:
    """What the model expects of raw input, inferred once from the training data."""

    numeric: list[str]
    categorical: list[str]
    na_values: list[str]  # markers of missing cells besides blank ones, as training was told

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @cached_property
    def pick(self) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
        """A row's cells in :attr:`columns` order, as a tuple (in C)."""
        return _picker(self.columns)

    def pick_like(self, row: dict[str, Any]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
        """:attr:`pick` looking the columns up by ``row``'s own key objects where they are equal.

        A JSON parser makes one text object per key and gives it to every row (orjson does); a lookup by
        that object is settled by identity, one by an equal text from the schema compares the text: on
        1,000 census rows, 3.0 ms against 6.6 ms."""
        own = {key: key for key in row}
        return _picker([own.get(column, column) for column in self.columns])

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
    values = column.to_numpy(dtype=object).tolist()
    out = _by_distinct_value(values, lambda value: clean_cell(value, markers))
    if out is None:  # a short column, or one holding other types (booleans, lists): cell by cell
        out = [clean_cell(value, markers) for value in values]
    return pd.Series(out, index=column.index, dtype=object)


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


def column_key(name: Any) -> str:
    """The column a header cell or a JSON key names: stray spaces around it are not part of the name.

    Training reads the CSV header with this rule (``steps/sources.py``), and every
    input is matched with it, so rows copied from a CSV whose header is
    ``age, city`` (a space after each comma) find their columns.
    """
    return str(name).strip()


# How many unrecognised column names an error lists (a client sending thousands learns enough from these).
_LISTED = 10


def _missing_columns_error(missing: list[str], sent: Sequence[Any], schema: FeatureSchema) -> InvalidInputError:
    known = set(schema.columns)
    unknown = [name for name in dict.fromkeys(map(str, sent)) if column_key(name) not in known]
    message = f"missing required column(s): {', '.join(map(repr, missing))}"
    if unknown:
        listed = ", ".join(map(repr, unknown[:_LISTED])) + (f" and {len(unknown) - _LISTED} more"
                                                            if len(unknown) > _LISTED else "")
        message += f"; sent column(s) the model does not know: {listed}"
    return InvalidInputError(message, missing)


def _positions(sent: Sequence[Any], schema: FeatureSchema) -> list[int]:
    """Where each of the schema's columns is among ``sent``: by exact name, else by :func:`column_key`."""
    exact = {name: i for i, name in enumerate(sent)}
    if all(name in exact for name in schema.columns):
        return [exact[name] for name in schema.columns]
    keyed: dict[str, int] = {}
    for i, name in enumerate(sent):
        key = column_key(name)
        if key not in keyed or name == key:  # an exact name wins over one that matches only once stripped
            keyed[key] = i
    missing = [name for name in schema.columns if name not in keyed]
    if missing:
        raise _missing_columns_error(missing, sent, schema)
    return [keyed[name] for name in schema.columns]


class _BadValue(ValueError):
    pass


# Columns whose cells are all of these types are cleaned one distinct value at a time (below). bool
# is not among them: True == 1 as a dict key, and the two clean differently.
_MEMO_TYPES = frozenset({str, int, float, type(None)})
_TEXT_TYPES = frozenset({str, type(None)})
_MEMO_MIN_ROWS = 16
_OWN_KEYS_MIN_ROWS = 8


class _NotMemoized(Exception):
    """A cell :class:`_Memo` does not take: the column is cleaned cell by cell."""


class _Memo(dict):
    """``clean(value)`` for each value looked up, computed on the value's first lookup: a column mapped
    through it is cleaned one distinct value at a time, in one pass looped in C (the first lookup of each
    value calls ``__missing__``)."""

    __slots__ = ("clean", "untyped")

    def __init__(self, clean: Callable[[Any], Any]):
        super().__init__()
        self.clean = clean
        self.untyped = False  # a key other than text or null: a bool may hide behind an equal number

    def __missing__(self, value: Any) -> Any:
        kind = type(value)
        if kind not in _TEXT_TYPES:
            if kind not in _MEMO_TYPES:
                raise _NotMemoized
            self.untyped = True
        cleaned = self[value] = self.clean(value)
        return cleaned


def _by_distinct_value(values: Sequence[Any], clean: Callable[[Any], Any]) -> list[Any] | None:
    """``[clean(v) for v in values]``, computing ``clean`` once per distinct value and mapping the column
    through the results in C: real columns repeat a few values (codes, categories, "0"), and this is the
    per-request hot loop. None when the column does not allow it (a bool, a list, a value ``clean``
    refuses): the caller then goes cell by cell, which also finds the row at fault; so does a short
    column, for which the memo costs more than it saves."""
    if len(values) < _MEMO_MIN_ROWS:
        return None
    memo = _Memo(clean)
    try:
        cleaned = list(map(memo.__getitem__, values))
    except (_NotMemoized, TypeError, ValueError, OverflowError):  # TypeError: a list or an object (unhashable)
        return None
    # A bool hides behind an equal number (True == 1 as a key) and would take its cleaned value: when a key
    # was a number, every cell's type is checked. Text and nulls alone (JSON rows copied from a CSV) cannot
    # hide one, and skip that pass.
    if memo.untyped and not set(map(type, values)) <= _MEMO_TYPES:
        return None
    return cleaned


def _number_cell(value: Any, markers: frozenset[str]) -> float:
    """:func:`parse_number` after :func:`clean_cell`, text and numbers inlined."""
    kind = type(value)
    if kind is str:
        text = value.strip()
        return _MISSING if not text or text in markers else float(text)
    if kind is float:
        return value
    if kind is int:
        return float(value)
    return parse_number(clean_cell(value, markers))


def _number_column(values: Sequence[Any], markers: frozenset[str]) -> list[float]:
    """Numbers of one column: :func:`_number_cell` of each cell; :class:`_BadValue` names the first bad row."""
    fast = _by_distinct_value(values, lambda value: _number_cell(value, markers))
    if fast is not None:
        return fast
    out = []
    for value in values:
        try:
            out.append(_number_cell(value, markers))
        except (ValueError, OverflowError, TypeError):
            raise _BadValue(len(out)) from None
    return out


def clean_category(value: Any, markers: frozenset[str]) -> Any:
    """One categorical cell: :func:`as_category` after :func:`clean_cell`, text inlined. A list or an object
    is not a single value: ValueError."""
    if type(value) is str:
        text = value.strip()
        return _MISSING if not text or text in markers else text
    if isinstance(value, (list, dict, tuple, set)):
        raise ValueError(value)
    return as_category(clean_cell(value, markers))


def _category_column(values: Sequence[Any], markers: frozenset[str]) -> np.ndarray:
    """Categories of one column: :func:`clean_category` of each cell; :class:`_BadValue` names the bad row."""
    fast = _by_distinct_value(values, lambda value: clean_category(value, markers))
    if fast is None:
        fast = []
        for value in values:
            try:
                fast.append(clean_category(value, markers))
            except ValueError:
                raise _BadValue(len(fast)) from None
    return np.array(fast, dtype=object)


def category_codes(values: Sequence[Any], markers: frozenset[str], codes: dict[Any, int]) -> list[int] | None:
    """``codes[clean_category(v)]`` (-1 for a category not in ``codes``) for each cell of a categorical column,
    cleaning and looking up each distinct value once: what the compiled model needs of a column, without the
    column of cleaned text between. None when the column must be cleaned cell by cell (see
    :func:`_by_distinct_value`): :func:`clean_values` then names the bad row, if any."""
    return _by_distinct_value(values, lambda value: codes.get(clean_category(value, markers), -1))


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


def frame_columns(frame: pd.DataFrame, schema: FeatureSchema) -> list[list[Any]]:
    """The raw cells of ``schema.columns`` in a DataFrame, column by column; extra columns are ignored."""
    positions = _positions(list(frame.columns), schema)
    # One conversion of the whole frame, then pick the columns: far cheaper than
    # a column at a time or a column subset first (pandas 3 keeps text in Arrow).
    raw = frame.to_numpy(dtype=object)[:, positions]
    return [raw[:, j].tolist() for j in range(raw.shape[1])]  # lists iterate faster


def table_columns(names: Sequence[Any], columns: Sequence[Sequence[Any]], schema: FeatureSchema) -> list[Sequence[Any]]:
    """The raw cells of ``schema.columns`` in a table given as column ``names`` and each column's cells (a CSV
    body read column by column); extra columns are ignored, columns matched as for a DataFrame."""
    return [columns[i] for i in _positions(list(names), schema)]


def clean_columns(frame: pd.DataFrame, schema: FeatureSchema) -> tuple[np.ndarray, list[np.ndarray]]:
    """:func:`clean_values` for a DataFrame of raw rows; extra columns are ignored."""
    return clean_values(frame_columns(frame, schema), schema)


def record_columns(records: Sequence[dict[str, Any]], schema: FeatureSchema) -> list[Sequence[Any]]:
    """The raw cells of ``schema.columns`` in JSON-style records (one dict per row), column by column,
    without pandas; columns are matched as :func:`column_key` says."""
    if not schema.columns or not records:
        return [[] for _ in schema.columns]
    # every row's cells in the schema's order, then the columns: both loops in C
    # by the body's own key objects from a few rows on (making that getter costs about four rows' lookups)
    pick = schema.pick_like(records[0]) if len(records) >= _OWN_KEYS_MIN_ROWS and isinstance(records[0], dict) \
        else schema.pick
    try:
        rows = list(map(pick, records))
    except KeyError:
        # keys that match only after column_key, or are missing: rows keyed by column_key, checked as one table
        sent = list(dict.fromkeys(key for r in records for key in r))
        _positions(sent, schema)
        keyed = [{column_key(k): v for k, v in r.items()} for r in records]
        absent = [name for name in schema.columns if not all(name in r for r in keyed)]
        if absent:  # some rows lack a column others have
            raise _missing_columns_error(absent, [], schema) from None
        rows = list(map(pick, keyed))
    return list(zip(*rows, strict=True))


def clean_raw_frame(frame: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """Raw rows as the scikit-learn pipeline's input: numeric columns as float64, categoricals as text.

    See :func:`clean_columns` for the rules and errors.
    """
    numeric, categorical = clean_columns(frame, schema)
    columns = {name: numeric[:, j] for j, name in enumerate(schema.numeric)}
    columns.update(zip(schema.categorical, categorical, strict=True))
    return pd.DataFrame(columns, index=frame.index, columns=schema.columns)
