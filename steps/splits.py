"""What the ``train`` and ``tune`` steps read: the splits ``preprocess`` made, and their labels."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from contract.errors import DataError, ParameterError
from steps.sources import fetch

# The splits artifact: written by preprocess, read by train, tune and the promotion rule
SPLITS_DIR = "splits"
TRAIN_FILE = "train.parquet"
TEST_FILE = "test.parquet"
META_FILE = "preprocess.json"
EXAMPLE_FILE = "input_example.json"
DATASETS_FILE = "datasets.json"


@dataclass(frozen=True)
class SplitMeta:
    """What the train step needs to know about how the splits were made."""

    target: str
    na_values: list[str]
    features: list[str]
    source: str


@dataclass(frozen=True)
class Splits:
    train: pd.DataFrame
    test: pd.DataFrame
    meta: SplitMeta
    example: pd.DataFrame
    datasets: list[dict]  # as the preprocess step described and logged them


def load_splits(splits_uri: str) -> Splits:
    folder = fetch(splits_uri, "splits_uri")
    missing = [f for f in (TRAIN_FILE, TEST_FILE, META_FILE, EXAMPLE_FILE, DATASETS_FILE)
               if not (folder / f).is_file()]
    if missing:
        raise ParameterError("splits_uri", splits_uri, f"missing {', '.join(missing)}: run preprocess first")
    meta = SplitMeta(**json.loads((folder / META_FILE).read_text(encoding="utf-8")))
    return Splits(
        train=pd.read_parquet(folder / TRAIN_FILE),
        test=pd.read_parquet(folder / TEST_FILE),
        meta=meta,
        example=pd.DataFrame(json.loads((folder / EXAMPLE_FILE).read_text(encoding="utf-8")), dtype=object),
        datasets=json.loads((folder / DATASETS_FILE).read_text(encoding="utf-8")),
    )


def typed_labels(labels: pd.Series) -> np.ndarray:
    """Labels in their natural type: integers, else floats, else text.

    CSV labels arrive as text; a data set labelled 0/1 should get 0/1 back from
    the model, not "0"/"1".
    """
    text = labels.astype(str).to_numpy(dtype=object)
    for kind in (int, float):
        try:
            return np.array([kind(v) for v in text])
        except ValueError:
            continue
    return text


def choose_positive(classes: np.ndarray, y_train: np.ndarray, requested: str) -> Any:
    """The class binary metrics score: the one asked for, else the rarest in training."""
    if len(classes) != 2:
        if requested:
            raise ParameterError("positive_class", requested,
                                 f"only for binary targets; this one has {len(classes)} classes")
        return None
    if requested:
        matches = [c for c in classes if str(c) == requested]
        if not matches:
            raise ParameterError("positive_class", requested, f"not a class (classes: {', '.join(map(str, classes))})")
        return matches[0]
    counts = {c: int(np.sum(y_train == c)) for c in classes}
    return min(reversed(classes), key=lambda c: counts[c])


@dataclass(frozen=True)
class Labels:
    """The labels of both splits in one type, the classes, and the class binary metrics score."""

    train: np.ndarray
    test: np.ndarray
    classes: np.ndarray
    positive: Any  # None for a multiclass target (macro averages)


def prepare_labels(splits: Splits, target: str, positive_class: str) -> Labels:
    y_train = typed_labels(splits.train[target])
    y_test = typed_labels(splits.test[target]).astype(y_train.dtype)
    classes = np.unique(y_train)
    if len(classes) < 2:
        raise DataError(f"target {target!r} has one class only in the training split")
    return Labels(y_train, y_test, classes, choose_positive(classes, y_train, positive_class))
