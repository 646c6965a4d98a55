"""The fast inference path: the fitted pipeline compiled to flat arrays and one numba kernel.

scikit-learn spends ~10 ms on one row, nearly all of it in per-call overhead
(ColumnTransformer, input validation, joblib). Here the same computation runs
with that overhead stripped:

- preprocessing replays the fitted steps on numpy arrays: imputation with the
  fitted fill values, ``(x - center_) / scale_`` in float64 as RobustScaler does,
  one-hot positions from a dict per column;
- the features are cast to float32, as the forest casts them, and every tree is
  walked with the same ``x <= threshold`` test scikit-learn's Cython uses; leaf
  values are normalised and summed tree by tree in scikit-learn's order, then
  divided by the number of trees.

The results are therefore bit-identical to ``pipeline.predict_proba`` with
``n_jobs=1``; the train step checks that on the whole test split and refuses to
register a model where they differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from pyfunc.cleaning import MISSING, FeatureSchema, clean_columns, clean_records


@numba.njit(nogil=True, cache=False)
def _forest_proba(X, roots, feature, threshold, left, right, value):  # noqa: ANN001, ANN202
    n_rows = X.shape[0]
    n_classes = value.shape[1]
    out = np.zeros((n_rows, n_classes))
    for root in roots:  # tree by tree, as scikit-learn accumulates
        for i in range(n_rows):
            node = root
            while left[node] != -1:
                if X[i, feature[node]] <= threshold[node]:
                    node = left[node]
                else:
                    node = right[node]
            for c in range(n_classes):
                out[i, c] += value[node, c]
    return out / roots.shape[0]


@dataclass(frozen=True)
class CompiledForest:
    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray

    @classmethod
    def from_estimators(cls, estimators: list) -> CompiledForest:
        trees = [e.tree_ for e in estimators]
        offsets = np.cumsum([0] + [t.node_count for t in trees[:-1]]).astype(np.int64)

        def child(ids: np.ndarray, offset: int) -> np.ndarray:
            return np.where(ids >= 0, ids + offset, -1)

        values = []
        for tree in trees:
            leaf = tree.value[:, 0, :].astype(np.float64)
            # DecisionTreeClassifier.predict_proba divides by the row sum (0 -> 1).
            total = leaf.sum(axis=1, keepdims=True)
            total[total == 0.0] = 1.0
            values.append(leaf / total)
        return cls(
            roots=offsets,
            # int32 indices: a third less memory to walk than int64
            feature=np.concatenate([np.maximum(t.feature, 0) for t in trees]).astype(np.int32),
            threshold=np.concatenate([t.threshold for t in trees]).astype(np.float64),
            left=np.concatenate([child(t.children_left, o) for t, o in zip(trees, offsets, strict=True)]).astype(np.int32),
            right=np.concatenate([child(t.children_right, o) for t, o in zip(trees, offsets, strict=True)]).astype(np.int32),
            value=np.concatenate(values),
        )

    def predict_proba(self, X32: np.ndarray) -> np.ndarray:
        return _forest_proba(X32, self.roots, self.feature, self.threshold, self.left, self.right, self.value)


@dataclass(frozen=True)
class CompiledPipeline:
    """``Pipeline.predict_proba`` on raw rows, without scikit-learn's per-call overhead."""

    schema: FeatureSchema
    numeric_fill: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    categorical_fill: list[str]
    categorical_index: list[dict[str, int]]
    categorical_offset: list[int]
    n_features: int
    forest: CompiledForest
    classes: np.ndarray

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
        fills: list[str] = []
        indexes: list[dict[str, int]] = []
        offsets: list[int] = []
        position = n_numeric
        if schema.categorical:
            categorical = pre.named_transformers_["categorical"]
            fills = list(categorical.named_steps["impute"].statistics_)
            for categories in categorical.named_steps["onehot"].categories_:
                indexes.append({str(c): i for i, c in enumerate(categories)})
                offsets.append(position)
                position += len(categories)
        forest = pipeline.named_steps["forest"]
        if forest.n_features_in_ != position:
            raise ValueError(f"forest expects {forest.n_features_in_} features, preprocessing gives {position}")
        compiled = cls(schema, numeric_fill, np.asarray(center, np.float64), np.asarray(scale, np.float64),
                       fills, indexes, offsets, position, CompiledForest.from_estimators(forest.estimators_),
                       forest.classes_)
        compiled.predict_proba(pd.DataFrame([{c: None for c in schema.columns}]))  # compile the kernel now
        return compiled

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw rows -> the float32 feature matrix the forest sees."""
        return self._encode(*clean_columns(frame, self.schema), len(frame))

    def encode_records(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        """:meth:`encode` for JSON-style records, without building a DataFrame."""
        return self._encode(*clean_records(records, self.schema), len(records))

    def _encode(self, numeric: np.ndarray, categorical: list[np.ndarray], n_rows: int) -> np.ndarray:
        X = np.zeros((n_rows, self.n_features), dtype=np.float64)
        if numeric.shape[1]:
            numeric = np.where(np.isnan(numeric), self.numeric_fill, numeric)
            X[:, : numeric.shape[1]] = (numeric - self.center) / self.scale
        hit_rows: list[int] = []
        hit_columns: list[int] = []
        for values, fill, index, offset in zip(categorical, self.categorical_fill, self.categorical_index,
                                               self.categorical_offset, strict=True):
            lookup = index.get
            filled = lookup(fill, -1)
            for row, value in enumerate(values):
                # cleaning marks every missing value with the one MISSING object
                column = filled if value is MISSING else lookup(value, -1)
                if column >= 0:  # an unknown category sets no column, as handle_unknown="ignore"
                    hit_rows.append(row)
                    hit_columns.append(offset + column)
        X[hit_rows, hit_columns] = 1.0
        return X.astype(np.float32)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.forest.predict_proba(self.encode(frame))

    def predict_proba_records(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        return self.forest.predict_proba(self.encode_records(records))
