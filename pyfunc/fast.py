"""The fast inference path: the fitted pipeline compiled to flat arrays and one numba kernel.

scikit-learn spends ~10 ms on one row, nearly all of it in per-call overhead
(ColumnTransformer, input validation, joblib). Here the same computation runs
with that overhead stripped:

- preprocessing replays the fitted steps on numpy arrays: imputation with the
  fitted fill values, ``(x - center_) / scale_`` in float64 as RobustScaler does,
  one-hot positions from a dict per column;
- the features are cast to float32 as a forest casts them (float64 for gradient
  boosting, as it does), and every tree is walked with the same ``x <= threshold``
  test scikit-learn's Cython uses (its nodes packed one record each, see
  :func:`node_dtype`); a forest's leaf values are normalised and summed tree by tree in
  scikit-learn's order, then divided by the number of trees; gradient boosting's
  raw scores are added to its baseline in its order, then go through its link
  (the logistic function, or softmax for several classes).

The results are therefore bit-identical to ``pipeline.predict_proba`` with
``n_jobs=1`` for a forest, and equal to rounding for gradient boosting (the link
functions may round differently); the train step checks agreement within 1e-6 on
the whole test split and refuses to register a model where they differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import chain, repeat
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.pipeline import Pipeline
from sklearn.utils.extmath import softmax

from pyfunc.cleaning import (MISSING, FeatureSchema, category_codes, clean_values, frame_columns, record_columns,
                             table_columns)
from pyfunc.explain import TreeExplainer
from pyfunc.jit import njit
from pyfunc.pipeline import feature_columns


def node_dtype(dtype: type) -> np.dtype:
    """One node a record (12 bytes for a forest, 16 for boosting): a path down a tree reads one record per
    level, and since a left child is the next node (scikit-learn builds trees depth first), often from the
    cache line just read. The threshold is in the dtype the trees compare in (see :func:`thresholds_in`)."""
    return np.dtype([("threshold", dtype), ("feature", np.int32), ("right", np.int32)])  # right < 0: a leaf


def thresholds_in(threshold: np.ndarray, dtype: type) -> np.ndarray:
    """Float64 thresholds as ``dtype`` with every ``x <= t`` test unchanged for ``x`` of that dtype.

    A forest compares float32 features with float64 thresholds. For a float32 ``x``, ``x <= t`` holds exactly
    when ``x <=`` the largest float32 not above ``t``: that is the threshold kept, so the kernel compares in
    float32 and reads 12-byte nodes with the same answers (the benchmark's forest on 1,000 rows: median 21.2
    -> 18.7 ms over 40 alternated calls). Rounding to nearest instead would send an ``x`` equal to ``t``
    rounded up to the wrong side."""
    wide = np.asarray(threshold, np.float64)
    if np.dtype(dtype) == np.float64:
        return wide
    narrow = wide.astype(dtype)
    above = narrow.astype(np.float64) > wide
    narrow[above] = np.nextafter(narrow[above], np.array(-np.inf, dtype=dtype))
    return narrow


@njit(nogil=True)
def _tree_sum(X, roots, nodes, value, init):  # noqa: ANN001, ANN202
    """``init`` plus the leaf values each row reaches, tree by tree in the order scikit-learn adds them."""
    n_rows = X.shape[0]
    n_outputs = value.shape[1]
    out = np.empty((n_rows, n_outputs))
    for i in range(n_rows):
        for c in range(n_outputs):
            out[i, c] = init[c]
    for root in roots:
        for i in range(n_rows):
            node = root
            while True:
                right = nodes[node].right
                if right < 0:
                    break
                if X[i, nodes[node].feature] <= nodes[node].threshold:
                    node = node + 1
                else:
                    node = right
            for c in range(n_outputs):
                out[i, c] += value[node, c]
    return out


@dataclass(frozen=True)
class CompiledTrees:
    """A tree ensemble as flat arrays: a forest (the mean of its trees' class probabilities) or gradient
    boosting (a baseline plus the sum of its trees' raw scores, through the logistic or softmax link)."""

    roots: np.ndarray
    nodes: np.ndarray  # node_dtype(dtype) records of every tree, one after the other
    value: np.ndarray  # per node and output: class probabilities (forest) or raw scores (boosting)
    cover: np.ndarray  # the training weight through each node (explanations need it, predictions not)
    depths: np.ndarray  # each tree's depth
    init: np.ndarray  # per output: what the sum starts from (0 for a forest, the baseline for boosting)
    link: str  # "mean" (forest), "logit" (binary boosting) or "softmax" (multiclass boosting)
    dtype: type  # what the estimator casts its input to: float32 (forests) or float64 (boosting)

    @property
    def explains(self) -> str:
        """What the explanations add up to: the probability (forests) or the log-odds (boosting, where
        probabilities are not additive over the trees)."""
        return "probability" if self.link == "mean" else "log_odds"

    @cached_property
    def explainer(self) -> TreeExplainer:
        """TreeSHAP of these trees, built on first use (a model never asked to explain never pays for it)."""
        nodes = self.nodes
        return TreeExplainer.build(self.roots, nodes["right"].copy(), nodes["feature"].copy(),
                                   nodes["threshold"].copy(), self.cover, self.value, self.depths,
                                   average=self.link == "mean", probabilities=self.link == "mean")

    def explain(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Base value per class and contributions (rows x features x classes) in :attr:`explains`' units."""
        phi = self.explainer.contributions(X)
        base = self.explainer.base + self.init
        if self.link == "logit":  # one score for two classes: the first class's log-odds are its negation
            return np.concatenate([-base, base]), np.concatenate([-phi, phi], axis=2)
        return base, phi

    @staticmethod
    def _pack(trees: list[tuple[np.ndarray, ...]], dtype: type) -> tuple[np.ndarray, np.ndarray]:
        """(threshold, feature, left child, right child, is_leaf) of each tree -> roots and node records
        comparing in ``dtype``."""
        offsets = np.cumsum([0] + [len(t[0]) for t in trees[:-1]]).astype(np.int64)
        nodes = np.empty(sum(len(t[0]) for t in trees), dtype=node_dtype(dtype))
        for (threshold, feature, left, right, leaf), offset in zip(trees, offsets, strict=True):
            internal = ~leaf
            if not np.array_equal(left[internal], np.flatnonzero(internal) + 1):
                raise ValueError("a tree not built depth first: a left child is not the next node")
            part = nodes[offset:offset + len(threshold)]
            part["threshold"] = thresholds_in(threshold, dtype)
            part["feature"] = np.maximum(feature, 0)
            part["right"] = np.where(internal, right + offset, -1)
        return offsets, nodes

    @classmethod
    def from_estimators(cls, estimators: list) -> CompiledTrees:
        """A random forest's or extra trees' fitted trees."""
        trees = [e.tree_ for e in estimators]
        packed, values = [], []
        for tree in trees:
            leaf = tree.children_left < 0
            packed.append((tree.threshold, tree.feature, tree.children_left, tree.children_right, leaf))
            value = tree.value[:, 0, :].astype(np.float64)
            # DecisionTreeClassifier.predict_proba divides by the row sum (0 -> 1).
            total = value.sum(axis=1, keepdims=True)
            total[total == 0.0] = 1.0
            values.append(value / total)
        dtype = np.float32  # what a forest casts its input to, and so what its trees compare in
        roots, nodes = cls._pack(packed, dtype)
        value = np.concatenate(values)
        return cls(roots=roots, nodes=nodes, value=value,
                   cover=np.concatenate([t.weighted_n_node_samples for t in trees]).astype(np.float64),
                   depths=np.array([t.max_depth for t in trees], dtype=np.int64),
                   init=np.zeros(value.shape[1]), link="mean", dtype=dtype)

    @classmethod
    def from_boosting(cls, estimator) -> CompiledTrees:  # noqa: ANN001 (HistGradientBoostingClassifier)
        """A fitted ``HistGradientBoostingClassifier``: per iteration one tree a class (one for two classes),
        laid out in the order its prediction adds them; tree ``j`` scores output ``j % n_outputs``."""
        n_outputs = estimator.n_trees_per_iteration_
        trees = [predictor.nodes for iteration in estimator._predictors for predictor in iteration]
        packed, values = [], []
        for j, tree in enumerate(trees):
            leaf = tree["is_leaf"].astype(bool)
            if tree["is_categorical"].any():
                raise ValueError("a tree splits on a native categorical feature; the pipeline one-hot encodes them")
            packed.append((tree["num_threshold"], tree["feature_idx"].astype(np.int64), tree["left"].astype(np.int64),
                           tree["right"].astype(np.int64), leaf))
            value = np.zeros((len(tree), n_outputs))
            value[:, j % n_outputs] = tree["value"]
            values.append(value)
        dtype = np.float64  # gradient boosting compares its input as float64
        roots, nodes = cls._pack(packed, dtype)
        return cls(roots=roots, nodes=nodes, value=np.concatenate(values),
                   cover=np.concatenate([t["count"] for t in trees]).astype(np.float64),
                   depths=np.array([t["depth"].max() for t in trees], dtype=np.int64),
                   init=np.asarray(estimator._baseline_prediction, np.float64).reshape(-1),
                   link="logit" if n_outputs == 1 else "softmax", dtype=dtype)

    @classmethod
    def from_estimator(cls, estimator) -> CompiledTrees:  # noqa: ANN001
        return cls.from_estimators(estimator.estimators_) if hasattr(estimator, "estimators_") \
            else cls.from_boosting(estimator)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raw = _tree_sum(X, self.roots, self.nodes, self.value, self.init)
        if self.link == "mean":
            return raw / self.roots.shape[0]
        if self.link == "logit":  # as HalfBinomialLoss.predict_proba
            positive = expit(raw[:, 0])
            return np.column_stack([1 - positive, positive])
        return softmax(raw)  # as HalfMultinomialLoss.predict_proba


@dataclass(frozen=True)
class CompiledPipeline:
    """``Pipeline.predict_proba`` on raw rows, without scikit-learn's per-call overhead."""

    schema: FeatureSchema
    numeric_fill: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    # per categorical column: category -> its one-hot column in the feature matrix; the missing value
    # (cleaning's one MISSING object) -> the column of the imputed category
    categorical_columns: list[dict[Any, int]]
    n_features: int
    forest: CompiledTrees
    classes: np.ndarray
    feature_columns: np.ndarray  # features x input columns (pyfunc/pipeline.py: feature_columns)

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline, schema: FeatureSchema) -> CompiledPipeline:
        pre = pipeline.named_steps["preprocess"]
        n_numeric = len(schema.numeric)
        numeric_fill = center = scale = np.zeros(0)
        if schema.numeric:
            numeric = pre.named_transformers_["numeric"]
            numeric_fill = numeric.named_steps["impute"].statistics_.astype(np.float64)
            scaler = numeric.named_steps["scale"]
            center = scaler.center_ if scaler.with_centering else np.zeros(n_numeric)
            scale = scaler.scale_ if scaler.with_scaling else np.ones(n_numeric)
        lookups: list[dict[Any, int]] = []
        position = n_numeric
        if schema.categorical:
            categorical = pre.named_transformers_["categorical"]
            fills = categorical.named_steps["impute"].statistics_
            for fill, categories in zip(fills, categorical.named_steps["onehot"].categories_, strict=True):
                lookup: dict[Any, int] = {str(c): position + i for i, c in enumerate(categories)}
                if str(fill) in lookup:  # imputed, then encoded like any present value
                    lookup[MISSING] = lookup[str(fill)]
                lookups.append(lookup)
                position += len(categories)
        forest = pipeline.named_steps["forest"]
        if forest.n_features_in_ != position:
            raise ValueError(f"forest expects {forest.n_features_in_} features, preprocessing gives {position}")
        compiled = cls(schema, numeric_fill, np.asarray(center, np.float64), np.asarray(scale, np.float64),
                       lookups, position, CompiledTrees.from_estimator(forest), forest.classes_,
                       feature_columns(pipeline, schema))
        compiled.predict_proba(pd.DataFrame([{c: None for c in schema.columns}]))  # compile the kernel now
        return compiled

    @cached_property
    def _numbers_only(self) -> FeatureSchema:
        return FeatureSchema(self.schema.numeric, [], self.schema.na_values)

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw rows -> the feature matrix the trees see (in the dtype the estimator casts to)."""
        return self._encode_columns(frame_columns(frame, self.schema), len(frame))

    def encode_records(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        """:meth:`encode` for JSON-style records, without building a DataFrame."""
        return self._encode_columns(record_columns(records, self.schema), len(records))

    def encode_table(self, names: Sequence[Any], columns: Sequence[Sequence[Any]]) -> np.ndarray:
        """:meth:`encode` for a table given column by column (``names``, then each column's cells)."""
        return self._encode_columns(table_columns(names, columns, self.schema), len(columns[0]) if columns else 0)

    def _encode_columns(self, columns: list[Sequence[Any]], n_rows: int) -> np.ndarray:
        """Raw cells, column by column in the schema's order -> the feature matrix."""
        first = len(self.schema.numeric)
        markers = frozenset(self.schema.na_values)
        codes = []
        for values, lookup in zip(columns[first:], self.categorical_columns, strict=True):
            coded = category_codes(values, markers, lookup)  # one lookup a distinct value
            if coded is None:  # cleaned cell by cell (which names a bad row), then looked up
                numeric, categorical = clean_values(columns, self.schema)
                return self._encode(numeric, [map(lookup.get, values, repeat(-1)) for values, lookup
                                              in zip(categorical, self.categorical_columns, strict=True)], n_rows)
            codes.append(coded)
        numeric, _ = clean_values(columns[:first], self._numbers_only)
        return self._encode(numeric, codes, n_rows)

    def _encode(self, numeric: np.ndarray, codes: list[Iterable[int]], n_rows: int) -> np.ndarray:
        """The matrix from the numbers and, per categorical column, each row's one-hot column (-1: none)."""
        # float32 for a forest, as it casts its input; the scaling in float64 first, as RobustScaler does
        X = np.zeros((n_rows, self.n_features), dtype=self.forest.dtype)
        if numeric.shape[1]:
            numeric = np.where(np.isnan(numeric), self.numeric_fill, numeric)
            X[:, : numeric.shape[1]] = (numeric - self.center) / self.scale
        if codes:
            # every column in one pass looped in C, then one assignment for the whole matrix
            columns = np.fromiter(chain.from_iterable(codes), dtype=np.int64,
                                  count=n_rows * len(codes)).reshape(len(codes), n_rows)
            hit = columns >= 0  # an unknown category sets no column, as handle_unknown="ignore"
            X.reshape(-1)[(np.arange(n_rows) * self.n_features + columns)[hit]] = 1.0
        return X

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.forest.predict_proba(self.encode(frame))

    def predict_proba_records(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        return self.forest.predict_proba(self.encode_records(records))

    def predict_proba_table(self, names: Sequence[Any], columns: Sequence[Sequence[Any]]) -> np.ndarray:
        return self.forest.predict_proba(self.encode_table(names, columns))

    def explain(self, frame: pd.DataFrame) -> Explanation:
        """Probabilities and their exact TreeSHAP decomposition per input column (pyfunc/explain.py)."""
        X = self.encode(frame)
        base, phi = self.forest.explain(X)  # rows x features x classes
        # a categorical column's share is the sum of its one-hot features' (SHAP values add up)
        by_column = np.einsum("rfc,fk->rkc", phi, self.feature_columns)
        return Explanation(self.forest.predict_proba(X), base, by_column, self.forest.explains)


@dataclass(frozen=True)
class Explanation:
    """``base[c] + contributions[r, :, c].sum()`` is, to rounding, ``proba[r, c]`` (``explains`` "probability": a
    forest) or the class's log-odds (``explains`` "log_odds": gradient boosting; multiclass: its softmax score)."""

    proba: np.ndarray  # rows x classes
    base: np.ndarray  # classes: the model's expected output over the training rows
    contributions: np.ndarray  # rows x input columns (FeatureSchema.columns order) x classes
    explains: str = "probability"
