"""``train`` step: fit the pipeline on the training split, evaluate, log and register the pyfunc."""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema
from sklearn.base import clone
from sklearn.inspection import permutation_importance
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline

from contract.errors import DataError, ParameterError, ProjectError
from contract.names import (
    TAG_CALIBRATION,
    TAG_DECISION_THRESHOLD,
    TAG_MODEL_NAME,
    TAG_MODEL_VERSION,
    TAG_TARGET,
    TAG_TEST_ACCURACY,
    TAG_TEST_CALIBRATION_ERROR,
    TAG_TRAIN_RUN_ID,
)
from contract.params import FORESTS, ForestParams, ModelParams, SplitParams, parse_cli, to_arguments
from pyfunc.calibration import BINARY_MAPS, CLIP, Calibration, ConformalScores, candidates, fit_calibration
from pyfunc.cleaning import FeatureSchema, clean_raw_frame, infer_feature_schema
from pyfunc.fast import CompiledPipeline
from pyfunc.model import (
    ARGMAX,
    CALIBRATION_ARTIFACT,
    CALIBRATION_FILE,
    CONFORMAL_ARTIFACT,
    CONFIDENCE_PARAM,
    CONFORMAL_FILE,
    DECISION_ARTIFACT,
    DECISION_FILE,
    EXPLAIN_CLASSES,
    EXPLAIN_CLASSES_PARAM,
    EXPLAIN_PARAM,
    FEATURE_SCHEMA_FILE,
    ON_INVALID_PARAM,
    PIPELINE_ARTIFACT,
    SCHEMA_ARTIFACT,
    SET_COVERAGE_PARAM,
    SET_COVERAGES,
    DecisionRule,
    proba_column,
)
from pyfunc.pipeline import build_pipeline, fits_dense, input_column_importance, save_pipeline
from steps import evaluate, fairness
from steps.preprocess import log_datasets
from steps.promotion import Answers, promote_if_better
from steps.runs import PROJECT_DIR, log_params_once, step_run
from steps.splits import Labels, Splits, load_splits, prepare_labels

MODEL_ARTIFACT_PATH = "model"
# Packages the served model imports, pinned as in requirements.txt.
MODEL_PACKAGES = ("mlflow", "scikit-learn", "pandas", "numpy", "scipy", "skops", "numba", "llvmlite")
FEATURE_COLUMNS_ARTIFACT = "feature_columns.json"  # the columns by kind, and the classes


def model_signature(classes: np.ndarray) -> ModelSignature:
    """The outputs and the ``on_invalid`` parameter; no input schema, on purpose.

    Raw rows carry numbers as text and "?" in any column, and CSV headers carry
    stray spaces. With any input schema MLflow gets in the way: a typed one
    refuses "39" for a number (or 39 for a string), ``Any`` makes ``mlflow models
    serve`` fail on CSV bodies ("Failed to get pandas types"), and either drops
    columns it does not know by their exact name (``" age"``) and pastes the
    whole input into its errors. Without one, MLflow hands the rows over as sent
    and the model's cleaning checks them, naming the columns at fault. The
    columns are in the model's ``feature_schema.json`` and its input example.
    """
    label_type = {"i": "long", "f": "double"}.get(classes.dtype.kind, "string")
    outputs = [ColSpec(label_type, "label"), ColSpec("double", "probability")]
    outputs += [ColSpec("double", proba_column(c)) for c in classes]
    return ModelSignature(
        outputs=Schema(outputs),
        # "report": rows that cannot be scored get an `error` column instead of failing the batch;
        # explain: the exact TreeSHAP contributions of each input column (pyfunc/model.py)
        params=ParamSchema([ParamSpec(ON_INVALID_PARAM, "string", "raise"), ParamSpec(EXPLAIN_PARAM, "boolean", False),
                            ParamSpec(EXPLAIN_CLASSES_PARAM, "string", EXPLAIN_CLASSES[0]),
                            # confidence: each row's conformal prediction set at that coverage (0: none)
                            ParamSpec(CONFIDENCE_PARAM, "double", 0.0),
                            ParamSpec(SET_COVERAGE_PARAM, "string", SET_COVERAGES[0])]),
    )


def model_requirements() -> list[str]:
    pins = {}
    for line in (PROJECT_DIR / "requirements.txt").read_text(encoding="utf-8").splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==", line.strip())
        if match:
            pins[match.group(1).lower()] = line.strip()
    return [pins[name] for name in MODEL_PACKAGES]


@dataclass(frozen=True)
class Fitted:
    pipeline: Pipeline
    schema: FeatureSchema
    rule: DecisionRule  # how the model picks its label (a binary target's threshold)
    metrics: dict[str, float]
    answers: Answers  # on the test split: probabilities and the labels the model returns
    calibration: Calibration
    conformal: ConformalScores


def fit_and_report(splits: Splits, labels: Labels, forest: ForestParams, model: ModelParams,
                   out_dir: Path) -> Fitted:
    """Fit the pipeline, choose its threshold on the training split, score the test split once (metrics,
    figures, the compiled-path check), write report artifacts to ``out_dir``."""
    features = splits.meta.features
    schema = infer_feature_schema(splits.train[features], splits.meta.na_values)
    if not schema.columns:
        raise DataError("every feature column is empty in the training split")
    classes, positive, y_test = labels.classes, labels.positive, labels.test
    if positive is None and model.threshold != "auto":
        raise ParameterError("threshold", str(model.threshold),
                             f"a threshold applies to binary targets; this one has {len(classes)} classes")
    fairness.check_params(model, schema.columns, positive)
    if positive is None and model.calibration in BINARY_MAPS:
        raise ParameterError("calibration", model.calibration, f"{model.calibration} maps one class's probability: "
                             f"for {len(classes)} classes use temperature, auto or none")
    mlflow.log_params(
        {
            "n_numeric_columns": len(schema.numeric),
            "n_categorical_columns": len(schema.categorical),
            "n_classes": len(classes),
            "metric_average": "binary" if positive is not None else "macro",
            "positive_class_used": "" if positive is None else str(positive),
        }
    )
    # the lists grow with the data: an artifact, never a param (6,000 characters)
    mlflow.log_dict({"numeric_columns": schema.numeric, "categorical_columns": schema.categorical,
                     "classes": [str(c) for c in classes]}, FEATURE_COLUMNS_ARTIFACT)

    kwargs = forest.sklearn_kwargs()
    if forest.model_type == "random_forest" and forest.n_estimators >= OOB_MIN_TREES:
        # out-of-bag probabilities: out-of-fold predictions of the training rows, no refit (extra trees do
        # not bootstrap, so they have none: out_of_fold_proba cross-validates them)
        kwargs["oob_score"] = True
    train = clean_raw_frame(splits.train, schema)
    pipeline = build_pipeline(schema, kwargs, forest.model_type, dense=fits_dense(train, schema))
    started = time.perf_counter()
    pipeline.fit(train, labels.train)
    fit_seconds = time.perf_counter() - started
    held_out = HeldOut.of(out_of_fold_proba(pipeline, train, labels, forest.random_state), labels)
    calibration = calibrate(model.calibration, held_out, forest, forest.random_state)
    calibrated = calibration.apply(held_out.proba)
    rule = decision_rule(labels, model, calibrated, held_out)
    conformal = ConformalScores.fit(calibrated, held_out.true_index)

    uncalibrated = reference_proba(pipeline, schema, splits.test)
    proba = calibration.apply(uncalibrated)
    y_pred = classes[rule.best(proba)]
    metrics = evaluate.classification_metrics(y_test, proba, pipeline.classes_, positive, y_pred)
    metrics.update(fairness.training_report(splits.test, y_test, y_pred, classes, positive, model.sensitive_columns,
                                            out_dir, schema=schema, reference=splits.train))
    metrics.update(calibration_metrics(y_test, uncalibrated, proba, classes, positive, conformal))
    evaluate.plot_reliability(y_test, uncalibrated, proba, classes, positive, out_dir / "reliability_diagram.png")
    if rule.threshold is not None:
        at_half = classes[DecisionRule(rule.positive_index, 0.5).best(proba)]
        metrics.update({f"{name}_at_0.5": value for name, value in evaluate.classification_metrics(
            y_test, proba, classes, positive, at_half).items() if name != "roc_auc"})
        metrics["decision_threshold"] = rule.threshold
        evaluate.plot_threshold(y_test == positive, proba[:, rule.positive_index], rule.threshold,
                                out_dir / "threshold.png")
    metrics["training_time_seconds"] = fit_seconds
    metrics["fast_path_max_abs_diff"] = check_fast_path(pipeline, schema, splits.test, uncalibrated)

    evaluate.plot_confusion_matrix(y_test, y_pred, pipeline.classes_, out_dir / "confusion_matrix.png")
    evaluate.plot_roc(y_test, proba, pipeline.classes_, positive, out_dir / "roc_curve.png")
    by_impurity = input_column_importance(pipeline, schema)
    if by_impurity is not None:
        importance, measure = by_impurity, "impurity decrease, summed over one-hot columns"
    else:
        importance = permutation_column_importance(pipeline, schema, splits.test, y_test, forest.random_state)
        measure = "test split log-loss increase when the column is shuffled"
    importance = pd.Series(importance, name="importance")
    importance.rename_axis("column").to_csv(out_dir / "feature_importance.csv")
    evaluate.plot_importance(importance, out_dir / "feature_importance.png", measure)
    return Fitted(pipeline, schema, rule, metrics, Answers(proba, y_pred), calibration, conformal)


def permutation_column_importance(pipeline: Pipeline, schema: FeatureSchema, test: pd.DataFrame, y_test: np.ndarray,
                                  seed: int, repeats: int = 5) -> dict[str, float]:
    """Per raw input column, how much the test split's log-loss worsens when that column's values are shuffled
    (mean of ``repeats``): the importance of a model without impurity importances (gradient boosting)."""
    result = permutation_importance(pipeline, clean_raw_frame(test, schema), y_test, scoring="neg_log_loss",
                                    n_repeats=repeats, random_state=seed)
    return dict(sorted(zip(schema.columns, result.importances_mean.tolist(), strict=True),
                       key=lambda item: item[1], reverse=True))


# A row is out of bag for about 37% of a forest's trees: with fewer than this many trees its out-of-bag probability
# averages a handful of them, much coarser than the whole forest's, and a calibration fitted on it misleads
OOB_MIN_TREES = 50


def out_of_fold_proba(pipeline: Pipeline, train: pd.DataFrame, labels: Labels, seed: int) -> np.ndarray:
    """Probabilities of the training rows from trees that did not see them: a forest's out-of-bag ones from
    ``OOB_MIN_TREES`` trees on, else 3-fold cross-validated predictions."""
    out_of_fold = getattr(pipeline.named_steps["forest"], "oob_decision_function_", None)
    if out_of_fold is None:
        out_of_fold = cross_val_predict(clone(pipeline), train, labels.train, method="predict_proba",
                                        cv=StratifiedKFold(3, shuffle=True, random_state=seed))
    return np.asarray(out_of_fold, dtype=float)


@dataclass(frozen=True)
class HeldOut:
    """The training rows that have out-of-fold probabilities: what the calibration, the threshold and the
    conformal scores are fitted on."""

    proba: np.ndarray
    true_index: np.ndarray  # each row's true class, as its column in ``labels.classes``
    positive_index: int | None

    @classmethod
    def of(cls, out_of_fold: np.ndarray, labels: Labels) -> HeldOut:
        # scikit-learn gives a row in every tree's sample zeros (or NaN): no out-of-fold probability
        known = np.isfinite(out_of_fold).all(axis=1) & (out_of_fold.sum(axis=1) > 0)
        classes = list(labels.classes)
        true_index = pd.Index(classes).get_indexer(pd.Index(labels.train[known]))
        positive = None if labels.positive is None else classes.index(labels.positive)
        return cls(out_of_fold[known], true_index, positive)


def decision_rule(labels: Labels, model: ModelParams, calibrated: np.ndarray, held_out: HeldOut) -> DecisionRule:
    """Argmax for a multiclass target; for a binary one, the given threshold or (auto) the one that maximises
    ``metric`` on the calibrated out-of-fold probabilities of the training rows (the served ones). The test split
    is not looked at: the metrics it gives stay an honest estimate."""
    if labels.positive is None:
        return ARGMAX
    positive = held_out.positive_index
    if model.threshold != "auto":
        return DecisionRule(positive, float(model.threshold))
    return DecisionRule(positive, evaluate.best_threshold(held_out.true_index == positive, calibrated[:, positive],
                                                          model.metric))


def calibrate(requested: str, held_out: HeldOut, forest: ForestParams, seed: int) -> Calibration:
    """The calibration map of the served probabilities, fitted on the held-out rows. Of the methods ``requested``
    leaves (:func:`pyfunc.calibration.candidates`), the one whose map, fitted on one half of the rows, gives the
    other half the lowest Brier score (both ways round, averaged): "none" when no map beats the model's own."""
    forest_votes = forest.model_type in FORESTS
    # a forest's probabilities move in steps of one tree's vote: its 0s and 1s are read as half a vote
    floor = 0.5 / forest.n_estimators if forest_votes else CLIP
    proba, true, positive = held_out.proba, held_out.true_index, held_out.positive_index
    options = candidates(requested, len(true), proba.shape[1], "probability" if forest_votes else "log_odds")
    if len(options) > 1:
        halves = np.array_split(np.random.default_rng(seed).permutation(len(true)), 2)
        classes = np.arange(proba.shape[1])

        def held_out_brier(method: str) -> float:
            return float(np.mean([evaluate.brier_score(true[b], fit_calibration(
                method, proba[a], true[a], positive, floor).apply(proba[b]), classes)
                for a, b in (halves, halves[::-1])]))

        options = (min(options, key=held_out_brier),)  # of equal scores the first: none
    return fit_calibration(options[0], proba, true, positive, floor)


SET_CONFIDENCES = (0.8, 0.9, 0.95)  # the prediction sets' coverage and size on the test split, logged at these


def calibration_metrics(y_test: np.ndarray, uncalibrated: np.ndarray, proba: np.ndarray, classes: np.ndarray,
                        positive: object | None, conformal: ConformalScores) -> dict[str, float]:
    """The calibration error and Brier score before and after calibration, and the prediction sets' coverage
    (share of test rows whose set holds the true class) and mean size, on the test split."""
    metrics = {"calibration_error_before": evaluate.expected_calibration_error(y_test, uncalibrated, classes, positive),
               "calibration_error": evaluate.expected_calibration_error(y_test, proba, classes, positive),
               "brier_score_before": evaluate.brier_score(y_test, uncalibrated, classes),
               "brier_score": evaluate.brier_score(y_test, proba, classes)}
    true_index = pd.Index(list(classes)).get_indexer(pd.Index(y_test))
    known = true_index >= 0  # a class the training split did not hold is in no set
    for confidence in SET_CONFIDENCES:
        for per_class, suffix in ((False, ""), (True, "_per_class")):
            sets = conformal.sets(proba, confidence, per_class)
            covered = np.zeros(len(sets), dtype=bool)
            covered[known] = sets[np.flatnonzero(known), true_index[known]]
            metrics[f"set_coverage{suffix}_{confidence:g}"] = float(covered.mean())
            metrics[f"set_size{suffix}_{confidence:g}"] = float(sets.sum(axis=1).mean())
    return metrics


PARITY_TOLERANCE = 1e-6


def reference_proba(pipeline: Pipeline, schema: FeatureSchema, raw: pd.DataFrame) -> np.ndarray:
    """``pipeline.predict_proba`` on raw rows, single-threaded.

    With several jobs scikit-learn adds the trees' votes in whatever order the
    threads finish; one thread gives the order the compiled path reproduces.
    """
    n_jobs = pipeline.named_steps["forest"].get_params().get("n_jobs")
    if n_jobs is None:  # gradient boosting: each row's trees are added in order by any thread
        return pipeline.predict_proba(clean_raw_frame(raw, schema))
    pipeline.set_params(forest__n_jobs=1)
    try:
        return pipeline.predict_proba(clean_raw_frame(raw, schema))
    finally:
        pipeline.set_params(forest__n_jobs=n_jobs)


def check_fast_path(pipeline: Pipeline, schema: FeatureSchema, test: pd.DataFrame,
                    reference: np.ndarray) -> float:
    """The compiled path must agree with ``reference`` (:func:`reference_proba` of ``test``); returns max |dp|."""
    fast = CompiledPipeline.from_pipeline(pipeline, schema).predict_proba(test)
    labels_differ = int(np.sum(fast.argmax(axis=1) != reference.argmax(axis=1)))
    largest = float(np.max(np.abs(fast - reference)))
    if labels_differ or not largest <= PARITY_TOLERANCE:
        raise ProjectError(
            f"fast inference path disagrees with the scikit-learn pipeline on the test split"
            f" ({labels_differ} labels differ, max |dp| = {largest:.3g}); model not registered"
        )
    return largest


def log_model(fitted: Fitted, splits: Splits, labels: Labels, model_name: str,
              out_dir: Path) -> mlflow.models.model.ModelInfo:
    pipeline, schema = fitted.pipeline, fitted.schema
    pipeline_path = out_dir / "pipeline.skops"
    schema_path = out_dir / FEATURE_SCHEMA_FILE
    decision_path = out_dir / DECISION_FILE
    save_pipeline(pipeline, pipeline_path)
    schema_path.write_text(schema.to_json(), encoding="utf-8")
    decision_path.write_text(DecisionRule.to_json(labels.positive, fitted.rule.threshold), encoding="utf-8")
    calibration_path, conformal_path = out_dir / CALIBRATION_FILE, out_dir / CONFORMAL_FILE
    calibration_path.write_text(fitted.calibration.to_json(), encoding="utf-8")
    conformal_path.write_bytes(fitted.conformal.to_bytes())
    return mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT_PATH,
        python_model=str(PROJECT_DIR / "pyfunc" / "model_code.py"),
        artifacts={PIPELINE_ARTIFACT: str(pipeline_path), SCHEMA_ARTIFACT: str(schema_path),
                   DECISION_ARTIFACT: str(decision_path), CALIBRATION_ARTIFACT: str(calibration_path),
                   CONFORMAL_ARTIFACT: str(conformal_path)},
        code_paths=[str(PROJECT_DIR / "pyfunc")],
        signature=model_signature(pipeline.classes_),
        input_example=splits.example[schema.columns],
        pip_requirements=model_requirements(),
        registered_model_name=model_name,
    )


def train_and_register(split_params: SplitParams, model: ModelParams, forest: ForestParams) -> str:
    """Train into the active run and register the model; return the new version number."""
    run = mlflow.active_run()
    assert run is not None, "train_and_register needs an active run"
    splits = load_splits(split_params.splits_uri)
    target = splits.meta.target
    if split_params.target not in ("", target):
        raise ParameterError("target", split_params.target, f"the splits were made for target {target!r}")
    log_params_once({**to_arguments(split_params, model, forest), "target": target})
    log_datasets(splits.datasets)
    labels = prepare_labels(splits, target, model.positive_class)
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        reports = out_dir / "reports"
        reports.mkdir()
        fitted = fit_and_report(splits, labels, forest, model, reports)
        metrics = fitted.metrics
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(reports))
        info = log_model(fitted, splits, labels, model.model_name, out_dir)
    version = str(info.registered_model_version)
    mlflow.set_tags({TAG_MODEL_NAME: model.model_name, TAG_MODEL_VERSION: version})
    client = mlflow.MlflowClient()
    client.set_model_version_tag(model.model_name, version, TAG_TARGET, target)
    client.set_model_version_tag(model.model_name, version, TAG_TRAIN_RUN_ID, run.info.run_id)
    threshold = fitted.rule.threshold
    client.set_model_version_tag(model.model_name, version, TAG_DECISION_THRESHOLD,
                                 "argmax" if threshold is None else f"{threshold:g}")
    for tag, value in ((TAG_CALIBRATION, fitted.calibration.method), (TAG_TEST_ACCURACY, f"{metrics['accuracy']:.6f}"),
                       (TAG_TEST_CALIBRATION_ERROR, f"{metrics['calibration_error']:.6f}")):
        client.set_model_version_tag(model.model_name, version, tag, value)
    if model.promote != "never":
        promote_if_better(model, version, metrics, fitted.answers, splits.test, labels, forest.random_state)
    summary = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    print(f"train: registered {model.model_name} version {version} ({summary})")
    return version


def step(argv: Sequence[str] | None = None) -> None:
    """The step in the active run, from its command-line arguments (``main``, or a driver's ``run_child``)."""
    split_params, model, forest = parse_cli(argv, SplitParams, ModelParams, ForestParams)
    train_and_register(split_params, model, forest)


def main(argv: Sequence[str] | None = None) -> None:
    with step_run("train"):
        step(argv)


if __name__ == "__main__":
    main()
