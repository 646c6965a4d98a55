"""The custom pyfunc model: raw rows in, label and class probabilities out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import repeat
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from pyfunc.calibration import Calibration, ConformalScores
from pyfunc.cleaning import FeatureSchema, InvalidInputError
from pyfunc.fast import CompiledPipeline, Explanation
from pyfunc.pipeline import load_pipeline

# Names of the artifacts logged with the model (see steps/train.py).
PIPELINE_ARTIFACT = "pipeline"
SCHEMA_ARTIFACT = "feature_schema"
DECISION_ARTIFACT = "decision"  # the label's rule (DecisionRule); a version without it: argmax
DECISION_FILE = "decision.json"
# The calibration of the probabilities and the conformal scores (pyfunc/calibration.py); a version without them
# serves its model's own probabilities and gives no prediction sets.
CALIBRATION_ARTIFACT = "calibration"
CALIBRATION_FILE = "calibration.json"
CONFORMAL_ARTIFACT = "conformal"
CONFORMAL_FILE = "conformal.npz"
# The file behind SCHEMA_ARTIFACT, in the model's artifacts/ folder: the input columns and their kinds.
FEATURE_SCHEMA_FILE = "feature_schema.json"
# predict(..., params={"on_invalid": "report"}): rows that cannot be scored get their reason in
# ERROR_COLUMN instead of failing the call ("raise", the default, as /predict does).
ON_INVALID_PARAM = "on_invalid"
ERROR_COLUMN = "error"
# predict(..., params={"explain": True}): each row's exact TreeSHAP explanation of the predicted class,
# BASE_VALUE_COLUMN plus one contrib_<column> a raw input column (flat columns: Spark and CSV readers take
# them as they are). With EXPLAIN_CLASSES_PARAM "all", EXPLANATIONS_COLUMN adds every class's, as an object
# {class: {"base_value": b, "contributions": {column: value}}}.
EXPLAIN_PARAM = "explain"
EXPLAIN_CLASSES_PARAM = "explain_classes"
EXPLAIN_CLASSES = ("predicted", "all")
BASE_VALUE_COLUMN = "base_value"
CONTRIB_PREFIX = "contrib_"
EXPLANATIONS_COLUMN = "explanations"
# what base_value + the contributions add up to: "probability" or "log_odds" of the served answer, or, where the
# calibration does not keep sums over trees (isotonic, or any map of a forest's probability), those of the model's
# own uncalibrated score, "uncalibrated_probability" or "uncalibrated_log_odds"
EXPLAINS_COLUMN = "explains"
UNCALIBRATED = "uncalibrated_"
# predict(..., params={CONFIDENCE_PARAM: 0.9}): each row adds PREDICTION_SET_COLUMN, the classes that together
# hold that coverage (split conformal), and CONFIDENCE_COLUMN, the level asked; SET_COVERAGE_PARAM "per_class"
# holds it for each true class (Mondrian) instead of on average. 0: no sets.
CONFIDENCE_PARAM = "confidence"
SET_COVERAGE_PARAM = "set_coverage"
SET_COVERAGES = ("marginal", "per_class")
PREDICTION_SET_COLUMN = "prediction_set"
CONFIDENCE_COLUMN = "confidence"


def proba_column(label: Any) -> str:
    return f"proba_{label}"


@dataclass(frozen=True)
class DecisionRule:
    """How the label is chosen from the probabilities: the most probable class (argmax) or, for a binary
    target with a threshold, the positive class once its probability reaches the threshold (chosen by the
    train step). The probabilities are returned as they are either way, for callers with their own cut-off."""

    positive_index: int | None = None  # the positive class's column in ``classes``
    threshold: float | None = None

    @staticmethod
    def to_json(positive: Any, threshold: float | None) -> str:
        return json.dumps({"positive_class": None if positive is None else str(positive), "threshold": threshold})

    @classmethod
    def from_json(cls, text: str, classes: np.ndarray) -> DecisionRule:
        data = json.loads(text)
        if data.get("threshold") is None:
            return cls()
        return cls([str(c) for c in classes].index(data["positive_class"]), float(data["threshold"]))

    def best(self, proba: np.ndarray) -> np.ndarray:
        """The label's column for each row."""
        if self.threshold is None:
            return proba.argmax(axis=1)
        positive = self.positive_index
        return np.where(proba[:, positive] >= self.threshold, positive, 1 - positive)


ARGMAX = DecisionRule()


def prediction_columns(classes: np.ndarray, proba: np.ndarray, rule: DecisionRule = ARGMAX) -> dict[str, np.ndarray]:
    """The answer column by column, one value per input row: ``label``, ``probability`` of it, and
    ``proba_<class>`` for each class."""
    best = rule.best(proba)
    columns = {"label": classes[best], "probability": proba[np.arange(len(best)), best]}
    columns.update({proba_column(label): proba[:, i] for i, label in enumerate(classes)})
    return columns


def answer_columns(classes: Sequence[Any], columns: Sequence[str]) -> list[str]:
    """Every column an answer may add beside a row's raw ``columns`` (the score step writes them side by side):
    what :func:`prediction_columns`, the explanations and ``on_invalid="report"`` name."""
    return ["label", "probability", *map(proba_column, classes), PREDICTION_SET_COLUMN, CONFIDENCE_COLUMN,
            ERROR_COLUMN, EXPLAINS_COLUMN, BASE_VALUE_COLUMN, EXPLANATIONS_COLUMN, *map(contrib_column, columns)]


def format_predictions(classes: np.ndarray, proba: np.ndarray, index: pd.Index,
                       rule: DecisionRule = ARGMAX) -> pd.DataFrame:
    """:func:`prediction_columns` as a DataFrame with the input's index."""
    return pd.DataFrame(prediction_columns(classes, proba, rule), index=index)


def contrib_column(column: str) -> str:
    return f"{CONTRIB_PREFIX}{column}"


def add_explanations(scored: pd.DataFrame, explanation: Explanation, columns: list[str], classes: np.ndarray,
                     every_class: bool, rule: DecisionRule = ARGMAX) -> pd.DataFrame:
    """``scored`` (:func:`format_predictions` of ``explanation.proba``) plus the explanation columns."""
    rows = np.arange(len(scored))
    best = rule.best(explanation.proba)
    extra = {EXPLAINS_COLUMN: explanation.explains, BASE_VALUE_COLUMN: explanation.base[best]}
    extra.update({contrib_column(c): explanation.contributions[rows, j, best] for j, c in enumerate(columns)})
    if every_class:
        labels = [str(c) for c in classes]
        base = explanation.base.tolist()
        extra[EXPLANATIONS_COLUMN] = [
            {label: {"base_value": base[k], "contributions": dict(zip(columns, row[:, k].tolist(), strict=True))}
             for k, label in enumerate(labels)}
            for row in explanation.contributions]
    return pd.concat([scored, pd.DataFrame(extra, index=scored.index)], axis=1)


def set_columns(classes: np.ndarray, in_set: np.ndarray, confidence: float) -> dict[str, list]:
    """``prediction_set`` (a list of classes a row, typed as ``label``) and ``confidence`` (the level asked)."""
    labels = classes.tolist()
    return {PREDICTION_SET_COLUMN: [[labels[k] for k in np.flatnonzero(row)] for row in in_set],
            CONFIDENCE_COLUMN: [confidence] * len(in_set)}


def set_request(params: dict[str, Any]) -> tuple[float, bool]:
    """(confidence, per class) a call asks for; confidence 0 when it asks for no sets. An InvalidInputError
    naming the parameter for a value out of range."""
    raw = params.get(CONFIDENCE_PARAM) or 0.0
    try:
        confidence = float(raw)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{CONFIDENCE_PARAM} must be a number between 0 and 1, not {raw!r}",
                                [CONFIDENCE_PARAM]) from None
    if not 0.0 <= confidence < 1.0:
        raise InvalidInputError(f"{CONFIDENCE_PARAM} must be at least 0 (no sets) and below 1, not {raw!r}",
                                [CONFIDENCE_PARAM])
    coverage = params.get(SET_COVERAGE_PARAM) or SET_COVERAGES[0]
    if coverage not in SET_COVERAGES:
        raise InvalidInputError(f"{SET_COVERAGE_PARAM} must be one of {', '.join(SET_COVERAGES)}, not {coverage!r}",
                                [SET_COVERAGE_PARAM])
    return confidence, coverage == SET_COVERAGES[1]


def prediction_records(classes: np.ndarray, proba: np.ndarray, rule: DecisionRule = ARGMAX) -> list[dict[str, Any]]:
    """:func:`prediction_columns` as one JSON-ready dict a row (what the scoring server returns)."""
    named = prediction_columns(classes, proba, rule)
    keys, columns = list(named), [column.tolist() for column in named.values()]
    # each row's dict made in C (zip and dict, mapped): a third less time on 1,000 rows than filling them one by one
    return list(map(dict, map(zip, repeat(keys), zip(*columns))))


class TabularClassifier(mlflow.pyfunc.PythonModel):
    """Cleans raw rows with the same code as training, then runs the compiled pipeline.

    The fitted scikit-learn pipeline is the reference; what runs per call is its
    compiled form (``pyfunc/fast.py``), bit-identical and much cheaper.
    """

    def __init__(self, pipeline: Pipeline | None = None, schema: FeatureSchema | None = None,
                 rule: DecisionRule = ARGMAX, calibration: Calibration = Calibration(),
                 conformal: ConformalScores | None = None):
        # Direct construction serves tests and in-process use; MLflow fills them in load_context.
        self._pipeline = pipeline
        self._schema = schema
        self._rule = rule
        self._calibration = calibration
        self._conformal = conformal
        self._compiled = (
            CompiledPipeline.from_pipeline(pipeline, schema) if pipeline is not None and schema else None
        )

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self._schema = FeatureSchema.from_json(
            Path(context.artifacts[SCHEMA_ARTIFACT]).read_text(encoding="utf-8")
        )
        self._pipeline = load_pipeline(context.artifacts[PIPELINE_ARTIFACT])
        # The reference path scores in the calling thread: joblib workers cost
        # more than a few rows, and servers scale with processes.
        estimator = self._pipeline.named_steps["forest"]
        if hasattr(estimator, "n_jobs"):  # a forest (gradient boosting has no joblib workers)
            estimator.n_jobs = 1
        self._compiled = CompiledPipeline.from_pipeline(self._pipeline, self._schema)
        decision = context.artifacts.get(DECISION_ARTIFACT)
        self._rule = (DecisionRule.from_json(Path(decision).read_text(encoding="utf-8"), self._compiled.classes)
                      if decision else ARGMAX)
        calibration, conformal = context.artifacts.get(CALIBRATION_ARTIFACT), context.artifacts.get(CONFORMAL_ARTIFACT)
        self._calibration = (Calibration.from_json(Path(calibration).read_text(encoding="utf-8")) if calibration
                             else Calibration())
        self._conformal = ConformalScores.from_bytes(Path(conformal).read_bytes()) if conformal else None

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        if self._compiled is None:
            raise RuntimeError("TabularClassifier has no pipeline: load it with mlflow.pyfunc")
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        params = params or {}
        explain = bool(params.get(EXPLAIN_PARAM, False))
        every_class = params.get(EXPLAIN_CLASSES_PARAM, "predicted")
        if every_class not in EXPLAIN_CLASSES:
            raise InvalidInputError(f"{EXPLAIN_CLASSES_PARAM} must be one of {', '.join(EXPLAIN_CLASSES)}, not "
                                    f"{every_class!r}", [EXPLAIN_CLASSES_PARAM])
        sets = set_request(params)
        if sets[0] and self._conformal is None:
            raise InvalidInputError(f"this version has no conformal scores, so no prediction sets: ask without "
                                    f"{CONFIDENCE_PARAM}, or train a new version", [CONFIDENCE_PARAM])
        if params.get(ON_INVALID_PARAM, "raise") == "report":
            return self._predict_reporting_errors(frame, explain, every_class == "all", sets)
        return self._scored(frame, explain, every_class == "all", sets)

    def _scored(self, frame: pd.DataFrame, explain: bool, every_class: bool,
                sets: tuple[float, bool] = (0.0, False)) -> pd.DataFrame:
        classes = self._compiled.classes
        if not explain:
            scored = format_predictions(classes, self._proba(self._compiled.predict_proba(frame)), frame.index,
                                        self._rule)
        else:
            explanation = self.calibrated(self._compiled.explain(frame))
            scored = format_predictions(classes, explanation.proba, frame.index, self._rule)
            scored = add_explanations(scored, explanation, self._schema.columns, classes, every_class, self._rule)
        confidence, per_class = sets
        if confidence:
            proba = scored[[proba_column(c) for c in classes]].to_numpy(dtype=float)
            for name, values in set_columns(classes, self._conformal.sets(proba, confidence, per_class),
                                            confidence).items():
                scored[name] = pd.Series(values, index=scored.index, dtype=object)
        return scored

    def _proba(self, raw: np.ndarray) -> np.ndarray:
        """The probabilities served: the model's own, calibrated."""
        return self._calibration.apply(raw)

    def calibrated(self, explanation: Explanation) -> Explanation:
        """An explanation of the model's own score as one of the served answer: its probabilities calibrated,
        and its sums too where the calibration keeps them (else it says it explains the uncalibrated score)."""
        proba = self._proba(explanation.proba)
        if not self._calibration.keeps_additivity(explanation.explains):
            return replace(explanation, proba=proba, explains=UNCALIBRATED + explanation.explains)
        base, contributions = self._calibration.scale_explanation(explanation.base, explanation.contributions)
        return replace(explanation, proba=proba, base=base, contributions=contributions)

    def _predict_reporting_errors(self, frame: pd.DataFrame, explain: bool, every_class: bool,
                                  sets: tuple[float, bool]) -> pd.DataFrame:
        """:meth:`predict` plus an ``error`` column: a row that cannot be scored gets its reason
        there and empty predictions, instead of failing the rows around it (batch scoring)."""
        try:
            scored = self._scored(frame, explain, every_class, sets)
        except InvalidInputError:
            if any(column not in frame.columns for column in self._schema.columns):
                raise  # a missing column fails every row alike: the caller's whole input is wrong
            return self._score_rows_one_by_one(frame, explain, every_class, sets)
        # a None per row: pandas 3 turns pd.Series(None, dtype=object) into NaN, a bare NaN in JSON
        scored[ERROR_COLUMN] = pd.Series([None] * len(scored), index=scored.index, dtype=object)
        return scored

    def _score_rows_one_by_one(self, frame: pd.DataFrame, explain: bool, every_class: bool,
                               sets: tuple[float, bool]) -> pd.DataFrame:
        """Each row checked on its own, then the valid ones scored together."""
        errors: list[str | None] = []
        for record in frame[self._schema.columns].to_dict(orient="records"):
            try:
                self._compiled.encode_records([record])
                errors.append(None)
            except InvalidInputError as err:
                errors.append(err.message.replace(" row 0:", ":"))
        valid = np.flatnonzero([e is None for e in errors])
        scored = self._scored(frame.iloc[valid].reset_index(drop=True), explain, every_class, sets)
        scored = scored.set_axis(valid).reindex(np.arange(len(frame)))  # missing, in each column's own type
        scored.index = frame.index
        scored[ERROR_COLUMN] = pd.Series(errors, index=scored.index, dtype=object)
        return scored

    def predict_records(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """:meth:`predict` for JSON-style records, returning JSON-ready rows; no pandas on the way.

        The project's model server calls this (``MODEL_SERVER_MODE=fast``).
        """
        if self._compiled is None:
            raise RuntimeError("TabularClassifier has no pipeline: load it with mlflow.pyfunc")
        return prediction_records(self._compiled.classes, self._proba(self._compiled.predict_proba_records(records)),
                                  self._rule)

    @property
    def input_columns(self) -> list[str]:
        """The raw columns the model reads, by their exact names; whatever else a row holds is ignored. A server
        may read only these of a body (the project's model server does: ``model_server/protocol.py``,
        :class:`RecordsReader`) and give them to :meth:`predict_table`."""
        return list(self._schema.columns) if self._schema is not None else []

    def predict_table(self, names: list[str], columns: list[Sequence[Any]]) -> list[dict[str, Any]]:
        """:meth:`predict_records` for a table given column by column (``names``, then each column's cells, as a
        CSV body is read): no dict a row on the way. The project's model server calls it for bodies that came so
        (CSV, MLflow's ``dataframe_split``, column-wise ``inputs``)."""
        if self._compiled is None:
            raise RuntimeError("TabularClassifier has no pipeline: load it with mlflow.pyfunc")
        return prediction_records(self._compiled.classes,
                                  self._proba(self._compiled.predict_proba_table(names, columns)), self._rule)
