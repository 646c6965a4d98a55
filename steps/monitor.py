"""``monitor`` step: drift and live quality of a model's logged predictions, as an MLflow run.

Reads the predictions the gateway logged for the model (one version, or every
version) in a time window, and compares their inputs with the reference: the
training split of the version's own training run (found from the version,
never configured by hand). Per input column a drift score and decision
(:mod:`steps.drift`), the missing-value shares and the categories never seen in
training; the drift of the predicted labels (against the version's own
predictions on its training rows, computed with its logged code); and, once
enough true labels came back through ``POST /feedback``, the classification
metrics of the live rows beside the version's test-split figures.

The run (experiment ``monitoring`` when started by the gateway) holds the
metrics (a drift score per column), the summary (``summary.json``, what the
gateway shows), a drift table (CSV and JSON), a figure per drifted column, the
map from store keys back to column names (``columns.json``) and one
self-contained HTML report; the version gets the tags ``monitoring_run_id``,
``monitoring_drift_share``, ``monitoring_status`` (``ok``, ``drift``,
``insufficient_data``) and, with feedback, ``monitoring_live_accuracy``. A
column is stored (figure file, metric key) under :func:`contract.names.store_key`
of its name; people read its name.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from contract.errors import ParameterError, first_line
from contract.inference_log import LoggedRow, logged_rows, open_log
from contract.names import (
    MONITORING_COLUMNS_ARTIFACT,
    MONITORING_SUMMARY_ARTIFACT,
    TAG_CALIBRATION,
    TAG_MODEL_NAME,
    TAG_MODEL_VERSION,
    TAG_MONITORING_AT,
    TAG_MONITORING_DRIFT_SHARE,
    TAG_MONITORING_FEEDBACK_ROWS,
    TAG_MONITORING_LIVE_ACCURACY,
    TAG_MONITORING_RUN_ID,
    TAG_MONITORING_STATUS,
    store_key,
)
from contract.params import MonitorParams, parse_cli
from contract.settings import get_settings
from pyfunc.cleaning import MISSING, FeatureSchema, clean_raw_frame, column_key
from steps import estimate, evaluate, fairness, report
from steps.drift import ColumnDrift, Rules, categorical_drift, numeric_drift
from steps.runs import log_params_once, step_run
from steps.versions import Version, predict_with_own_code, read_version

REFERENCE_PREDICTIONS = 5000  # training rows scored for the predicted-label drift, at most
OK, DRIFT, INSUFFICIENT = "ok", "drift", "insufficient_data"
FIGURES_DIR = "figures"
DRIFT_SCORE_PREFIX = "drift_score/"  # + the column's store key: one metric per column
# Figures of the first drifted columns only: one takes a fifth of a second, and a few hundred would make the
# report tens of MB; the drift table and the metrics hold every column
MAX_FIGURES = 40


def figure_path(column: str) -> str:
    return f"{FIGURES_DIR}/{store_key(column)}.png"


def drift_metrics(drifts: Sequence[ColumnDrift], predicted: ColumnDrift | None) -> dict[str, float]:
    """Each column's drift score (the p-value or the distance its method gives), under its store key."""
    metrics = {f"{DRIFT_SCORE_PREFIX}{store_key(d.column)}": d.score for d in drifts}
    if predicted is not None:
        metrics["prediction_drift_score"] = predicted.score
    return metrics


def current_frame(rows: Sequence[LoggedRow], columns: list[str]) -> pd.DataFrame:
    """The logged inputs under the model's columns (matched by the rule training applied to its header)."""
    frame = pd.DataFrame([{column_key(k): v for k, v in row.inputs.items()} for row in rows], dtype=object)
    return frame.reindex(columns=columns)


def cleaned(frame: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """The columns of ``schema`` that ``frame`` holds, cleaned as the model cleans them."""
    present = FeatureSchema([c for c in schema.numeric if frame[c].notna().any()],
                            [c for c in schema.categorical if frame[c].notna().any()], schema.na_values)
    return clean_raw_frame(frame[present.columns], present)


def categories(values: pd.Series) -> list[Any]:
    return [None if v is MISSING or (isinstance(v, float) and math.isnan(v)) else v for v in values]


def column_drift(schema: FeatureSchema, reference: pd.DataFrame, current: pd.DataFrame,
                 rules: Rules) -> tuple[list[ColumnDrift], list[str]]:
    """Drift of every column both samples hold; and the columns the log does not hold (excluded)."""
    results, absent = [], []
    for column in schema.columns:
        if column not in current.columns or column not in reference.columns:
            absent.append(column)
        elif column in schema.numeric:
            results.append(numeric_drift(column, reference[column].to_numpy(float), current[column].to_numpy(float),
                                         rules))
        else:
            results.append(categorical_drift(column, categories(reference[column]), categories(current[column]),
                                             rules))
    return results, absent


def live_quality(rows: Sequence[LoggedRow], version: Version, minimum: int) -> tuple[int, dict[str, float]]:
    """(rows with a true label, their metrics when there are at least ``minimum``)."""
    labelled = [r for r in rows if r.true_label is not None]
    if len(labelled) < minimum or len(version.classes) < 2:
        return len(labelled), {}
    proba = estimate.probabilities(labelled, version.classes)
    scored = np.isfinite(proba).all(axis=1)  # a labelled row the model refused has no probabilities
    rows_scored, proba = [r for r, ok in zip(labelled, scored, strict=True) if ok], proba[scored]
    if len(rows_scored) < minimum:
        return len(labelled), {}
    y_true = estimate.as_classes([r.true_label for r in rows_scored], version.classes)
    y_pred = estimate.as_classes([r.label for r in rows_scored], version.classes)  # what the version answered
    metrics = evaluate.classification_metrics(y_true, proba, np.array(version.classes), version.positive, y_pred)
    return len(labelled), metrics


def prediction_drift(version: Version, reference: pd.DataFrame, rows: Sequence[LoggedRow],
                     rules: Rules) -> ColumnDrift | None:
    """The predicted labels' drift: the live answers against the version's answers on its training rows."""
    sample = reference.sample(min(len(reference), REFERENCE_PREDICTIONS), random_state=0)
    try:
        answers = predict_with_own_code(version.uri, sample[version.schema.columns])
    except Exception as err:  # noqa: BLE001 (reported, the rest of the monitoring stands)
        print(f"warning: predicted-label drift skipped: {first_line(err, 300)}")
        return None
    return categorical_drift("predicted label", [str(v) for v in answers["label"]],
                             [str(r.label) for r in rows], rules)


def monitor(params: MonitorParams, out_dir: Path) -> tuple[dict[str, Any], dict[str, float]]:
    """Compare, write the artifacts to ``out_dir``; return the summary (what the gateway shows) and the
    per-column metrics."""
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(params.model_name)
    except Exception as err:  # noqa: BLE001
        raise ParameterError("model_name", params.model_name, f"no such registered model ({first_line(err, 120)})"
                             ) from None
    if params.version:
        read_version(params.model_name, params.version)  # a one-line error for an unknown version
    uri = params.inference_log or get_settings().inference_log
    if uri is None:
        raise ParameterError("inference_log", "off", "the inference log is off (INFERENCE_LOG_URI=off)")
    try:
        rows = logged_rows(open_log(uri), params.model_name, params.version or None, params.since, params.until,
                           params.max_rows)
    except Exception as err:  # noqa: BLE001
        raise ParameterError("inference_log", uri, f"cannot read the inference log: {first_line(err, 300)}") from None
    summary: dict[str, Any] = {"model_name": params.model_name, "rows": len(rows), "drift_share": 0.0,
                               "drifted_features": [], "live_metrics": {}, "feedback_rows": 0, "fairness": {},
                               "since": params.since, "until": params.until or time.time()}
    if not rows:
        served = params.version or newest_version(client, params.model_name)
        summary.update({"version": served, "status": INSUFFICIENT,
                        "reason": "no logged prediction of this model in the window"})
        write_summary(out_dir, summary, [])
        return summary, {}
    version = read_version(params.model_name, params.version or max((r.model_version for r in rows), key=int))
    rules = Rules(params.p_value, params.distance, params.small_sample)
    reference_raw = version.training_split()
    reference = cleaned(reference_raw.reindex(columns=version.schema.columns), version.schema)
    current = cleaned(current_frame(rows, version.schema.columns), version.schema)
    drifts, absent = column_drift(version.schema, reference, current, rules)
    predicted = prediction_drift(version, reference_raw, rows, rules)
    feedback_rows, live = live_quality(rows, version, params.min_feedback)
    calibration = mlflow.MlflowClient().get_model_version(version.name, version.version).tags.get(TAG_CALIBRATION)
    summary.update(estimate.window_figures(rows, version.classes, version.positive, calibration, params.min_feedback))
    summary["fairness"] = live_fairness(rows, version, reference_raw, params.min_feedback, out_dir)
    drifted = [d.column for d in drifts if d.drifted]
    share = len(drifted) / len(drifts) if drifts else 0.0
    summary.update({
        "version": version.version, "versions_in_window": sorted({r.model_version for r in rows}, key=int),
        "status": DRIFT if drifted or (predicted and predicted.drifted) else OK, "drift_share": share,
        "drifted_features": drifted, "prediction_drift": predicted.drifted if predicted else None,
        "live_metrics": live, "feedback_rows": feedback_rows, "reference_rows": len(reference_raw),
        "columns_not_logged": absent})
    write_artifacts(out_dir, summary, drifts, predicted, live, version, reference, current)
    return summary, drift_metrics(drifts, predicted)


def newest_version(client: mlflow.MlflowClient, name: str) -> str:
    versions = client.search_model_versions(f"name = '{name}'", max_results=1000)
    return str(max((int(v.version) for v in versions), default=0)) or ""


def live_fairness(rows: Sequence[LoggedRow], version: Version, reference: pd.DataFrame, minimum: int,
                  out_dir: Path) -> dict[str, Any]:
    """Fairness by the version's sensitive columns of the rows with a true label: the labels served against the
    true ones (steps/fairness.py); empty without sensitive columns or with fewer than ``minimum`` such rows."""
    labelled = [r for r in rows if r.true_label is not None]
    return fairness.window_report(current_frame(labelled, version.schema.columns), [r.true_label for r in labelled],
                                  [r.label for r in labelled], version.positive, version.sensitive_columns,
                                  version.schema, reference, minimum, out_dir)


def write_artifacts(out_dir: Path, summary: dict[str, Any], drifts: list[ColumnDrift], predicted: ColumnDrift | None,
                    live: dict[str, float], version: Version, reference: pd.DataFrame, current: pd.DataFrame) -> None:
    rows = [{**d.as_dict(), "store_key": store_key(d.column)} for d in drifts]
    pd.DataFrame(rows).to_csv(out_dir / "drift_table.csv", index=False)
    (out_dir / "drift.json").write_text(json.dumps({"columns": rows,
                                                    "predicted_label": predicted.as_dict() if predicted else None},
                                                   default=str, indent=1, ensure_ascii=False), encoding="utf-8")
    write_summary(out_dir, summary, [d.column for d in drifts] + summary.get("columns_not_logged", []))
    figures: dict[str, bytes] = {}
    for drift in [d for d in drifts if d.drifted][:MAX_FIGURES]:
        if drift.kind == "number":
            png = report.numeric_figure(drift.column, reference[drift.column].to_numpy(float),
                                        current[drift.column].to_numpy(float))
        else:
            png = report.categorical_figure(drift.column, categories(reference[drift.column]),
                                            categories(current[drift.column]))
        figures[drift.column] = png
        (out_dir / FIGURES_DIR).mkdir(exist_ok=True)
        (out_dir / figure_path(drift.column)).write_bytes(png)
    test = {k: v for k, v in version.test_metrics.items() if k in live or k in summary.get("estimated_metrics", {})}
    (out_dir / "report.html").write_text(report.html_report(summary, drifts, predicted, live, test, figures),
                                         encoding="utf-8")


def write_summary(out_dir: Path, summary: dict[str, Any], columns: Sequence[str]) -> None:
    """The summary and the map from store keys to column names: artifacts, as both grow with the columns."""
    (out_dir / MONITORING_SUMMARY_ARTIFACT).write_text(json.dumps(summary, default=str, indent=1, ensure_ascii=False),
                                                       encoding="utf-8")
    (out_dir / MONITORING_COLUMNS_ARTIFACT).write_text(
        json.dumps({store_key(c): c for c in columns}, indent=1, ensure_ascii=False), encoding="utf-8")


def record(summary: dict[str, Any], column_metrics: dict[str, float], run_id: str) -> None:
    """The summary's figures as the run's metrics and short tags, and as tags on the version (the summary
    itself is the artifact ``summary.json``: a tag holds 8,000 characters)."""
    metrics = {"rows": summary["rows"], "drift_share": summary["drift_share"],
               "drifted_columns": len(summary["drifted_features"]), "feedback_rows": summary["feedback_rows"],
               **{f"live_{k}": v for k, v in summary["live_metrics"].items()}, **column_metrics,
               **estimate.run_metrics(summary), **fairness.run_metrics(summary)}
    mlflow.log_metrics(metrics)
    mlflow.set_tags({TAG_MODEL_NAME: summary["model_name"], TAG_MODEL_VERSION: summary.get("version") or "",
                     TAG_MONITORING_STATUS: summary["status"],
                     TAG_MONITORING_DRIFT_SHARE: f"{summary['drift_share']:.6f}"})
    if summary.get("version"):
        client = mlflow.MlflowClient()
        tags = {TAG_MONITORING_RUN_ID: run_id, TAG_MONITORING_STATUS: summary["status"],
                TAG_MONITORING_DRIFT_SHARE: f"{summary['drift_share']:.6f}",
                TAG_MONITORING_AT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if "accuracy" in summary["live_metrics"]:
            tags[TAG_MONITORING_LIVE_ACCURACY] = f"{summary['live_metrics']['accuracy']:.6f}"
            tags[TAG_MONITORING_FEEDBACK_ROWS] = f"{summary['feedback_rows']:.6f}"
        tags.update(estimate.version_tags(summary))
        tags.update(fairness.version_tags(summary))
        for key, value in tags.items():
            client.set_model_version_tag(summary["model_name"], summary["version"], key, value)


def main(argv: Sequence[str] | None = None) -> None:
    with step_run("monitor") as run:
        (params,) = parse_cli(argv, MonitorParams)
        log_params_once({"model_name": params.model_name, "version": params.version,
                         "since": params.since or "", "until": params.until or ""})
        with tempfile.TemporaryDirectory() as tmp:
            summary, column_metrics = monitor(params, Path(tmp))
            mlflow.log_artifacts(tmp)
        record(summary, column_metrics, run.info.run_id)
        live = ", ".join(f"{k}={v:.4f}" for k, v in summary["live_metrics"].items()) or "no live metrics"
        print(f"monitor: {summary['model_name']} version {summary.get('version')}: {summary['rows']} rows, status "
              f"{summary['status']}, drifted: {', '.join(summary['drifted_features']) or 'none'}; {live}")


if __name__ == "__main__":
    main()
