"""The scikit-learn pipeline the model carries, and how it is stored.

Storage format: skops, not pickle. A pickle runs arbitrary code when it is
loaded, so anyone who can write to the artifact store could run code in the
model server. skops loads only the types we list below; a pipeline that needs
any other type fails loudly at save time (in the train step), not at serving.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import skops.io as sio
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, RobustScaler

from pyfunc.cleaning import FeatureSchema

# Types skops does not trust by default and our pipeline contains: the fitted
# trees' C structure, gradient boosting's trees (node arrays) and numpy dtypes.
# All are plain data in skops' format.
TRUSTED_TYPES: tuple[str, ...] = ("numpy.dtype", "sklearn.tree._tree.Tree",
                                  "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor")

# model_type (contract/params.py: MODEL_TYPES) -> the estimator. The forests average fully grown decision
# trees, gradient boosting sums small ones; the compiled path (pyfunc/fast.py) and TreeSHAP read all three.
ESTIMATORS = {"random_forest": RandomForestClassifier, "extra_trees": ExtraTreesClassifier,
              "hist_gradient_boosting": HistGradientBoostingClassifier}
DENSE_INPUT = frozenset({"hist_gradient_boosting"})  # refuses a sparse one-hot matrix
# The training matrix is made dense up to this size (float64, as ColumnTransformer stacks it): scikit-learn's
# trees split a dense matrix two to three times faster than a sparse one and grow the same trees (the census
# sample's forest: 4.0 s -> 1.6 s, predictions equal to the last bit). Beyond it, sparse as before: a
# one-hot matrix of many categories would not fit in memory dense.
DENSE_MAX_BYTES = 512 * 2**20


def fits_dense(frame: pd.DataFrame, schema: FeatureSchema) -> bool:
    """Whether the feature matrix of ``frame`` (cleaned training rows) stays within DENSE_MAX_BYTES dense:
    one column per number, one per category seen."""
    width = len(schema.numeric) + sum(int(frame[c].nunique(dropna=True)) for c in schema.categorical)
    return len(frame) * width * 8 <= DENSE_MAX_BYTES


def build_pipeline(schema: FeatureSchema, forest_params: Mapping[str, Any],
                   model_type: str = "random_forest", dense: bool = False) -> Pipeline:
    """Imputation + RobustScaler for numbers, imputation + one-hot for categories, then the tree ensemble
    (the step keeps the name ``forest`` whichever it is). ``dense``: the ensemble gets a dense matrix
    (:func:`fits_dense`); gradient boosting always does."""
    transformers = []
    if schema.numeric:
        numeric = Pipeline(
            [("impute", SimpleImputer(strategy="most_frequent")), ("scale", RobustScaler())]
        )
        transformers.append(("numeric", numeric, schema.numeric))
    if schema.categorical:
        categorical = Pipeline(
            [
                ("impute", SimpleImputer(strategy="most_frequent")),
                ("onehot", OneHotEncoder(handle_unknown="ignore")),
            ]
        )
        transformers.append(("categorical", categorical, schema.categorical))
    return Pipeline(
        [
            ("preprocess", ColumnTransformer(transformers, remainder="drop",
                                             sparse_threshold=0.0 if dense or model_type in DENSE_INPUT else 0.3)),
            ("forest", ESTIMATORS[model_type](**forest_params)),
        ]
    )


def feature_columns(pipeline: Pipeline, schema: FeatureSchema) -> np.ndarray:
    """features x input columns, 1 where a feature of the forest comes from a column.

    A numeric column gives one feature; one-hot encoding turns a categorical column into a block of
    features, one a category. Anything additive over features (importances, SHAP values) sums back
    onto the columns a user asks about (``education``, not ``education_Bachelors``) as ``x @ this``.
    """
    widths = [1] * len(schema.numeric)
    if schema.categorical:
        encoder = pipeline.named_steps["preprocess"].named_transformers_["categorical"]
        widths += [len(c) for c in encoder.named_steps["onehot"].categories_]
    n_features = pipeline.named_steps["forest"].n_features_in_
    if sum(widths) != n_features:
        raise RuntimeError(f"pipeline has {n_features} features, schema accounts for {sum(widths)}")
    return np.repeat(np.eye(len(widths)), widths, axis=0)


def input_column_importance(pipeline: Pipeline, schema: FeatureSchema) -> dict[str, float] | None:
    """The forest's impurity importances summed back onto the raw input columns; None for a model without
    them (gradient boosting: the train step measures permutation importance instead)."""
    importances = getattr(pipeline.named_steps["forest"], "feature_importances_", None)
    if importances is None:
        return None
    totals = importances @ feature_columns(pipeline, schema)
    return dict(sorted(zip(schema.columns, totals.tolist(), strict=True), key=lambda item: item[1], reverse=True))


def save_pipeline(pipeline: Pipeline, path: Path) -> None:
    """Write ``pipeline`` with skops; refuse if it holds a type we do not trust."""
    data = sio.dumps(pipeline)
    untrusted = sorted(set(sio.get_untrusted_types(data=data)) - set(TRUSTED_TYPES))
    if untrusted:
        raise TypeError(f"pipeline holds types not in TRUSTED_TYPES: {', '.join(untrusted)}")
    path.write_bytes(data)


def load_pipeline(path: Path | str) -> Pipeline:
    return sio.load(path, trusted=list(TRUSTED_TYPES))
