"""``preprocess`` step: raw CSV -> cleaned, stratified train/test splits logged to MLflow.

The splits keep every cell as text (or missing): column kinds are decided by
the train step from the training split alone, so the test split cannot leak
into them.
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.types import ColSpec, DataType, Schema
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
import pandas as pd
from sklearn.model_selection import train_test_split

from contract.errors import DataError, ParameterError, first_line
from contract.params import DataParams, parse_cli, to_arguments
from contract.settings import get_settings
from contract.tables import check_column_names
from pyfunc.cleaning import as_category, column_key, normalize_missing
from pyfunc.model import answer_columns
from steps.profile import data_profile, profile_html
from steps.runs import log_params_once, step_run
from steps.splits import DATASETS_FILE, EXAMPLE_FILE, META_FILE, SPLITS_DIR, TEST_FILE, TRAIN_FILE, SplitMeta
from steps.sources import read_raw_csv

EXAMPLE_ROWS = 5
DATA_PROFILE_JSON = "data_profile.json"  # steps/profile.py, logged at the run's root
DATA_PROFILE_HTML = "data_profile.html"


def feature_columns(columns: Sequence[str], params: DataParams) -> list[str]:
    if params.target not in columns:
        shown = ", ".join(list(columns)[:20]) + (", ..." if len(columns) > 20 else "")
        raise ParameterError("target", params.target, f"no such column (columns: {shown})")
    dropped = set(params.drop_columns)
    features = [c for c in columns if c != params.target and c not in dropped]
    if not features:
        raise DataError(f"no feature columns left besides target {params.target!r}")
    return features


def check_classes(labels: pd.Series, params: DataParams) -> pd.Series:
    counts = labels.value_counts()
    if labels.empty:
        raise DataError(f"target {params.target!r} has no values")
    if len(counts) < 2:
        raise DataError(
            f"target {params.target!r} has one class only ({counts.index[0]!r}): need at least two"
        )
    rare = counts[counts < 2]
    if not rare.empty:
        raise DataError(
            f"target {params.target!r}: class {rare.index[0]!r} has only {rare.iloc[0]} row;"
            " a stratified split needs at least 2 rows per class"
        )
    n_test = round(len(labels) * params.test_size)
    if n_test < len(counts) or len(labels) - n_test < len(counts):
        raise DataError(
            f"{len(labels)} labelled rows are too few to give each of {len(counts)} classes"
            f" a row in both splits with test_size={params.test_size}"
        )
    return counts


def profile_of(raw_rows: int, frame: pd.DataFrame, counts: pd.Series, params: DataParams,
               train: pd.DataFrame, test: pd.DataFrame) -> dict[str, Any]:
    missing = frame.drop(columns=[params.target]).isna().sum()
    return {
        "rows_read": raw_rows,
        "rows_without_label": raw_rows - len(frame),
        "rows": len(frame),
        "feature_columns": frame.shape[1] - 1,
        "train_rows": len(train),
        "test_rows": len(test),
        "missing_cells": int(missing.sum()),
        "missing_by_column": {str(k): int(v) for k, v in missing.items() if v},
        "class_balance": {str(k): int(v) for k, v in counts.items()},
    }


def as_text(value: Any) -> str:
    """A logged JSON cell as the CSV would hold it (the model reads both alike)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(as_category(value))


def feedback_rows(params: DataParams, columns: list[str]) -> pd.DataFrame:
    """The logged rows of ``params.feedback_from`` that have a true label (POST /feedback), as raw text
    cells under the file's ``columns``, the label under the target."""
    # here, not at the top: SQLAlchemy and its dialects cost every other run a third of a second to import
    from contract.inference_log import logged_rows, open_log

    uri = params.inference_log or get_settings().inference_log
    if uri is None:
        raise ParameterError("feedback_from", params.feedback_from, "the inference log is off (INFERENCE_LOG_URI=off)")
    try:
        rows = logged_rows(open_log(uri), params.feedback_from, labelled_only=True, limit=10_000_000)
    except Exception as err:  # noqa: BLE001 (the store's failure, as the caller's one line)
        raise ParameterError("inference_log", uri, f"cannot read the inference log: {first_line(err, 300)}") from None
    frame = pd.DataFrame([{**{column_key(k): as_text(v) for k, v in row.inputs.items()},
                           params.target: as_text(row.true_label)} for row in rows], dtype=object)
    return frame.reindex(columns=columns, fill_value="").fillna("")


def preprocess(params: DataParams, out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Write the splits, their metadata and a raw input example to ``out_dir``.

    Returns the train and test splits and the data profile.
    """
    raw = read_raw_csv(params.data_path)
    from_feedback = 0
    if params.feedback_from:
        labelled = feedback_rows(params, list(raw.columns))
        from_feedback = len(labelled)
        raw = pd.concat([raw, labelled], ignore_index=True)
    features = feature_columns(list(raw.columns), params)
    absent = [c for c in params.drop_columns if c not in raw.columns]
    if absent:
        print(f"warning: drop_columns: not in the data, ignored: {', '.join(absent)}", file=sys.stderr)

    frame = normalize_missing(raw[[*features, params.target]], params.na_values)
    frame = frame[frame[params.target].notna()]
    counts = check_classes(frame[params.target], params)
    # a feature named like an answer column could not be scored beside it (the score step writes both)
    check_column_names(list(raw.columns), reserved=set(answer_columns(counts.index, features)).intersection(features))
    train, test = train_test_split(
        frame,
        test_size=params.test_size,
        stratify=frame[params.target],
        random_state=params.random_state,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    train.to_parquet(out_dir / TRAIN_FILE)
    test.to_parquet(out_dir / TEST_FILE)
    # Real rows exactly as the CSV had them ("?", blanks, numbers as text): the
    # model's input example shows users what raw input it takes.
    example = raw.loc[test.index[:EXAMPLE_ROWS], features]
    (out_dir / EXAMPLE_FILE).write_text(example.to_json(orient="records", indent=1), encoding="utf-8")
    meta = SplitMeta(params.target, list(params.na_values), features, params.data_path)
    (out_dir / META_FILE).write_text(json.dumps(asdict(meta), indent=2), encoding="utf-8")
    return train, test, {**profile_of(len(raw), frame, counts, params, train, test), "feedback_rows": from_feedback}


def describe_split_datasets(train: pd.DataFrame, test: pd.DataFrame, source: str, target: str) -> list[dict]:
    """The splits as MLflow dataset descriptions (name, digest, source, schema, profile) with their context.

    ``source`` is where the rows came from. MLflow 3.17 has no dataset source
    for ``runs:/``, ``mlflow-artifacts:/`` and a few other URIs; those are
    described without a source and keep the URI in the ``source_uri`` tag.
    Computing a description reads every cell, so it is done once, here, and
    stored with the splits for the train step to log again.
    """
    try:
        with warnings.catch_warnings():
            # MLflow registers its local-file source twice and warns that a path
            # "can be interpreted in multiple ways" (both the same class).
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            resolved = resolve_dataset_source(source)
    except MlflowException:
        resolved = None
    described = []
    for split, name, context in ((train, "train", "training"), (test, "test", "testing")):
        dataset = mlflow.data.from_pandas(split, source=resolved, targets=target, name=name)
        dataset.schema = dataset_schema(split)  # MLflow's cached property, filled in our faster way
        described.append({"dataset": dataset.to_dict(), "context": context, "source_uri": source})
    return described


def dataset_schema(frame: pd.DataFrame) -> Schema | None:
    """The schema MLflow's ``from_pandas`` infers, without its walk over every cell of a text column (it
    checks each value's type in Python: 12 of the 16 s this step took on the census sample). A column whose
    values are all text or missing (pandas tells in C) is ``string``, required when none is missing; any
    other column is inferred by MLflow itself (None if it cannot, as MLflow's dataset then has no schema)."""
    text = {name for name in frame.columns if pd.api.types.infer_dtype(frame[name], skipna=True) == "string"}
    others = [name for name in frame.columns if name not in text]
    inferred: dict[str, ColSpec] = {}
    if others:
        schema = mlflow.data.from_pandas(frame[others]).schema
        if schema is None:
            return None
        inferred = {spec.name: spec for spec in schema.inputs}
    return Schema([ColSpec(DataType.string, str(name), required=not frame[name].isna().any()) if name in text
                   else inferred[str(name)] for name in frame.columns])


def log_datasets(described: list[dict]) -> None:
    """Record described datasets as inputs of the active run."""
    run = mlflow.active_run()
    assert run is not None, "log_datasets needs an active run"
    inputs = [
        DatasetInput(Dataset(**entry["dataset"]),
                     tags=[InputTag(MLFLOW_DATASET_CONTEXT, entry["context"]),
                           InputTag("source_uri", entry["source_uri"])])
        for entry in described
    ]
    mlflow.MlflowClient().log_inputs(run.info.run_id, datasets=inputs)


def run_preprocess(params: DataParams) -> dict[str, Any]:
    """Preprocess into the active run: params, splits, datasets and profile. Returns the profile."""
    log_params_once(to_arguments(params))
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp) / SPLITS_DIR
        train, test, profile = preprocess(params, out_dir)
        described = describe_split_datasets(train, test, params.data_path, params.target)
        (out_dir / DATASETS_FILE).write_text(json.dumps(described), encoding="utf-8")
        log_datasets(described)
        mlflow.log_artifacts(str(out_dir), artifact_path=SPLITS_DIR)
    mlflow.log_dict(profile, "profile.json")
    # what a person looks at before modelling: per column its kind, missing share, distribution and
    # association with the target (steps/profile.py), on the training split
    detailed = data_profile(train, params.target, feature_columns(list(train.columns), params), list(params.na_values))
    mlflow.log_dict(detailed, DATA_PROFILE_JSON)
    if detailed["suspect_missing_markers"]:  # in data_profile.json only: a tag would grow with the columns
        for column, tokens in detailed["suspect_missing_markers"].items():
            print(f"warning: column {column!r} holds numbers except for {', '.join(map(repr, tokens))}: it is "
                  f"treated as categories; if these mean missing, add them to na_values", file=sys.stderr)
    mlflow.log_text(profile_html(detailed), DATA_PROFILE_HTML)
    mlflow.log_metrics({k: v for k, v in profile.items() if isinstance(v, int)})
    print(
        f"preprocess: {profile['rows']} rows ({profile['train_rows']} train,"
        f" {profile['test_rows']} test), {profile['feature_columns']} features,"
        f" classes {profile['class_balance']}"
    )
    return profile


def step(argv: Sequence[str] | None = None) -> None:
    """The step in the active run, from its command-line arguments (``main``, or a driver's ``run_child``)."""
    (params,) = parse_cli(argv, DataParams)
    run_preprocess(params)


def main(argv: Sequence[str] | None = None) -> None:
    with step_run("preprocess"):
        step(argv)


if __name__ == "__main__":
    main()
