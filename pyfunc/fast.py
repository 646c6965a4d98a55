"""The fast inference path: the fitted pipeline compiled to flat arrays and one numba kernel.

scikit-learn spends ~10 ms on one row, nearly all of it in per-call overhead
(ColumnTransformer, input validation, joblib). Here the same computation runs
with that overhead stripped:

- preprocessing replays the fitted steps on numpy arrays: imputation with the
  fitted fill values, ``(x - center_) / scale_`` in float64 as RobustScaler does,
  one-hot positions from a dict per column;
- the features are cast to float32, as the forest casts them, and every tree is
  walked with the same ``x <= threshold`` test scikit-learn's Cython uses (its
  nodes packed one record each, see :data:`NODE`); leaf
  values are normalised and summed tree by tree in scikit-learn's order, then
  divided by the number of trees.

The results are therefore bit-identical to ``pipeline.predict_proba`` with
``n_jobs=1``; the train step checks that on the whole test split and refuses to
register a model where they differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain, repeat
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numba
import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from pyfunc.cleaning import MISSING, FeatureSchema, clean_columns, clean_records
from pyfunc.explain import TreeExplainer
from pyfunc.pipeline import feature_columns


# One node a 16-byte record: a path down a tree reads one record per level, and since a left child
# is the next node (scikit-learn builds trees depth first), often from the cache line just read.
NODE = np.dtype([("threshold", np.float64), ("feature", np.int32), ("right", np.int32)])  # right < 0: a leaf


@numba.njit(nogil=True, cache=False)
def _forest_proba(X, roots, nodes, value):  # noqa: ANN001, ANN202
    n_rows = X.shape[0]
    n_classes = value.shape[1]
    out = np.zeros((n_rows, n_classes))
    for root in roots:  # tree by tree, as scikit-learn accumulates
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
            for c in range(n_classes):
                out[i, c] += value[node, c]
    return out / roots.shape[0]


@dataclass(frozen=True)
class CompiledForest:
    roots: np.ndarray
    nodes: np.ndarray  # NODE records of every tree, one after the other
    value: np.ndarray  # class probabilities at each node (the leaves' are read)
    cover: np.ndarray  # the training weight through each node (explanations need it, predictions not)
    depths: np.ndarray  # each tree's depth

    @cached_property
    def explainer(self) -> TreeExplainer:
        """TreeSHAP of this forest, built on first use (a model never asked to explain never pays for it)."""
        nodes = self.nodes
        return TreeExplainer.build(self.roots, nodes["right"].copy(), nodes["feature"].copy(),
                                   nodes["threshold"].copy(), self.cover, self.value, self.depths, average=True,
                                   probabilities=True)

    @classmethod
    def from_estimators(cls, estimators: list) -> CompiledForest:
        trees = [e.tree_ for e in estimators]
        offsets = np.cumsum([0] + [t.node_count for t in trees[:-1]]).astype(np.int64)
        nodes = np.empty(sum(t.node_count for t in trees), dtype=NODE)
        values = []
        for tree, offset in zip(trees, offsets, strict=True):
            internal = tree.children_left >= 0
            if not np.array_equal(tree.children_left[internal], np.flatnonzero(internal) + 1):
                raise ValueError("a tree not built depth first: a left child is not the next node")
            part = nodes[offset:offset + tree.node_count]
            part["threshold"] = tree.threshold
            part["feature"] = np.maximum(tree.feature, 0)
            part["right"] = np.where(internal, tree.children_right + offset, -1)
            leaf = tree.value[:, 0, :].astype(np.float64)
            # DecisionTreeClassifier.predict_proba divides by the row sum (0 -> 1).
            total = leaf.sum(axis=1, keepdims=True)
            total[total == 0.0] = 1.0
            values.append(leaf / total)
        return cls(roots=offsets, nodes=nodes, value=np.concatenate(values),
                   cover=np.concatenate([t.weighted_n_node_samples for t in trees]).astype(np.float64),
                   depths=np.array([t.max_depth for t in trees], dtype=np.int64))

    def predict_proba(self, X32: np.ndarray) -> np.ndarray:
        return _forest_proba(X32, self.roots, self.nodes, self.value)


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
    forest: CompiledForest
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
                       lookups, position, CompiledForest.from_estimators(forest.estimators_), forest.classes_,
                       feature_columns(pipeline, schema))
        compiled.predict_proba(pd.DataFrame([{c: None for c in schema.columns}]))  # compile the kernel now
        return compiled

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw rows -> the float32 feature matrix the forest sees."""
        return self._encode(*clean_columns(frame, self.schema), len(frame))

    def encode_records(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        """:meth:`encode` for JSON-style records, without building a DataFrame."""
        return self._encode(*clean_records(records, self.schema), len(records))

    def _encode(self, numeric: np.ndarray, categorical: list[np.ndarray], n_rows: int) -> np.ndarray:
        # float32, as the forest casts its input; the scaling in float64 first, as RobustScaler does
        X = np.zeros((n_rows, self.n_features), dtype=np.float32)
        if numeric.shape[1]:
            numeric = np.where(np.isnan(numeric), self.numeric_fill, numeric)
            X[:, : numeric.shape[1]] = (numeric - self.center) / self.scale
        if categorical:
            # one dict lookup a cell, every column in one pass looped in C (cleaning marks every missing
            # value with the one MISSING object), then one assignment for the whole matrix
            columns = np.fromiter(chain.from_iterable(
                map(lookup.get, values, repeat(-1)) for values, lookup in zip(categorical, self.categorical_columns,
                                                                              strict=True)),
                dtype=np.int64, count=n_rows * len(categorical))
            rows = np.tile(np.arange(n_rows), len(categorical))
            hit = columns >= 0  # an unknown category sets no column, as handle_unknown="ignore"
            X[rows[hit], columns[hit]] = 1.0
        return X

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.forest.predict_proba(self.encode(frame))

    def predict_proba_records(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        return self.forest.predict_proba(self.encode_records(records))

    def explain(self, frame: pd.DataFrame) -> Explanation:
        """Probabilities and their exact TreeSHAP decomposition per input column (pyfunc/explain.py)."""
        X = self.encode(frame)
        phi = self.forest.explainer.contributions(X)  # rows x features x classes
        # a categorical column's share is the sum of its one-hot features' (SHAP values add up)
        by_column = np.einsum("rfc,fk->rkc", phi, self.feature_columns)
        return Explanation(self.forest.predict_proba(X), self.forest.explainer.base, by_column)


@dataclass(frozen=True)
class Explanation:
    """``base[c] + contributions[r, :, c].sum() == proba[r, c]`` for every row and class, to rounding."""

    proba: np.ndarray  # rows x classes
    base: np.ndarray  # classes: the forest's expected output over the training rows
    contributions: np.ndarray  # rows x input columns (FeatureSchema.columns order) x classes
