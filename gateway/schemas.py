"""Request and response bodies of the gateway API."""

from __future__ import annotations

from dataclasses import Field as Field_
from dataclasses import fields
from typing import Annotated, Any, Literal

from fastapi import HTTPException, Query, status
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from contract.model_output import SET_COVERAGES
from contract.names import ALIAS_PATTERN, MODEL_NAME_PATTERN, VERSION_PATTERN, valid_alias
from contract.registry import Stage
from contract.errors import ParameterError
from contract.params import (
    DataParams,
    ForestParams,
    ModelParams,
    TuneParams,
    moment,
    parse_params,
    unknown_names_error,
)


def unprocessable(loc: list[Any], message: str, kind: str = "value_error") -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, for the checks the routes make by hand."""
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                         detail=[{"loc": loc, "msg": message, "type": kind}])


# --- path and query parameters -----------------------------------------------------------

ModelName = Annotated[str, PathParam(pattern=MODEL_NAME_PATTERN)]
VersionNumber = Annotated[str, PathParam(pattern=VERSION_PATTERN)]
# The pattern is documented in the schema and checked by hand, with a message that says it in words.
AliasName = Annotated[str, PathParam(min_length=1, max_length=255, json_schema_extra={"pattern": ALIAS_PATTERN})]
VersionQuery = Annotated[str | None, Query(pattern=VERSION_PATTERN, description="a version number instead of "
                                           "the served one")]
ExplainClassesQuery = Annotated[Literal["predicted", "all"], Query(
    description="explain the predicted class's probability, or every class's as well (by_class)")]
ConfidenceQuery = Annotated[float | None, Query(
    ge=0, lt=1, description="also give each row's prediction_set: the classes that together hold the true one with "
    "this probability (split conformal prediction, on held-out training rows); 0: no sets")]
SetCoverageQuery = Annotated[Literal[SET_COVERAGES], Query(
    description="with confidence: hold it over all rows (marginal) or for each true class (per_class, Mondrian)")]
AliasQuery = Annotated[str | None, Query(min_length=1, max_length=255, json_schema_extra={"pattern": ALIAS_PATTERN},
                                         description="the version holding this alias instead of the served one")]


def checked_alias(alias: str, where: str = "path") -> str:
    """``alias`` if MLflow would take it; a 422 in words otherwise (pydantic's regex engine has no
    look-ahead, which the reserved names need)."""
    if not valid_alias(alias):
        raise unprocessable([where, "alias"], "letters, digits, '_' and '-', starting with a letter or '_';"
                                              " 'latest' and 'v<number>' are reserved")
    return alias


# --- /predict ---------------------------------------------------------------------------

# A cell is one JSON scalar, as in a CSV; lists and objects are refused by name.
Cell = str | int | float | bool | None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    records: list[dict[str, Cell]] = Field(
        min_length=1,
        description="Raw rows, one object per row, values as they appear in the CSV "
        "('?' or blank for missing, numbers as numbers or text). Extra columns are ignored.",
        examples=[[{"age": "39", "education": "Bachelors", "capital_gains": "?"}]],
    )


class ModelRef(BaseModel):
    name: str
    version: str


class Prediction(BaseModel):
    id: str = Field(description="the prediction's id: send it back with the true label to POST /feedback")
    label: str | int | float
    probability: float
    probabilities: dict[str, float]
    prediction_set: list[str | int | float] | None = Field(
        None, description="with ?confidence=c: the classes that together hold the true one with probability c; "
                          "may be empty (no class is likely enough) or hold every class")
    confidence: float | None = Field(None, description="the confidence the prediction set was asked for")


class PredictResponse(BaseModel):
    model: ModelRef
    predictions: list[Prediction]


class ClassExplanation(BaseModel):
    base_value: float = Field(description="the model's expected output for the class over the training rows, in "
                                          "the units `explains` names")
    contributions: dict[str, float] = Field(
        description="each raw input column's share (a categorical column's one-hot features summed), largest "
                    "|value| first; base_value + their sum = the class's probability (forests) or log-odds "
                    "(gradient boosting)")


class Explanation(Prediction, ClassExplanation):
    """A prediction and the exact TreeSHAP explanation of its label's probability or log-odds."""

    explains: Literal["probability", "log_odds", "uncalibrated_probability", "uncalibrated_log_odds"] = Field(
        description="what base_value + contributions add up to: the probability (random forest, extra trees) or "
                    "the log-odds (gradient boosting, whose trees add up before the logistic function; with more "
                    "than two classes, the class's softmax score) of the answer; uncalibrated_...: of the model's "
                    "own score before calibration, where the calibration map does not keep sums over trees "
                    "(isotonic, or any map of a forest's probability)")

    by_class: dict[str, ClassExplanation] | None = Field(
        None, description="with ?classes=all: the explanation of every class's probability")


class ExplainResponse(BaseModel):
    model: ModelRef
    explanations: list[Explanation]


# --- /train -----------------------------------------------------------------------------

# Every parameter of these groups is a field of POST /train, typed and bounded as the group says
# (contract.params.Api) and checked by the same parser the step runs.
TRAIN_GROUPS = (DataParams, ModelParams, ForestParams, TuneParams)
_PARAMETERS = {f.name: f for group in TRAIN_GROUPS for f in fields(group) if f.metadata["api"] is not None}
FOREST_FIELDS = {f.name for f in fields(ForestParams)} - {"random_state"}
TUNE_FIELDS = {f.name for f in fields(TuneParams)}
REQUIRED = ("data_path", "target")
DESCRIPTIONS = {
    "data_path": "a file under GATEWAY_DATA_ROOTS (relative paths are looked up there) or a URI with an allowed "
                 "scheme",
    "model_name": "default: the gateway's MODEL_NAME",
    "max_depth": "null or omitted: unlimited",
}


def _train_field(name: str, spec: Field_) -> tuple[Any, Any]:
    api = spec.metadata["api"]
    description = DESCRIPTIONS.get(name, spec.metadata["help"])
    if name in TUNE_FIELDS:
        description = f"mode tune: {description}"
    elif name in FOREST_FIELDS:
        description = f"mode train: {description}"
    if name in REQUIRED:
        return api.type, Field(description=description, **api.bounds)
    return api.type | None, Field(None, description=description, **api.bounds)


class _TrainBase(BaseModel):
    """The MLproject's parameters; values are checked by the same parsers as the steps."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["train", "tune"] = Field(
        "train", description="tune: search the model's hyperparameters (max_trials, timeout_s, cv_folds) "
                             "instead of taking them")
    include_feedback: bool = Field(False, description="add the rows the inference log holds a true label for "
                                   "(POST /feedback) to the data: those of feedback_from, by default model_name")

    @model_validator(mode="before")
    @classmethod
    def _known_parameters(cls, body: Any) -> Any:
        """An unknown name gets the closest valid one and the list, not just "extra inputs are not permitted"."""
        if isinstance(body, dict):
            unknown = [str(name) for name in body if name not in cls.model_fields]
            if unknown:
                raise ValueError(unknown_names_error(unknown, list(cls.model_fields)))
        return body

    @model_validator(mode="after")
    def _parameters_of_the_mode(self) -> _TrainBase:
        wrong = sorted(self.model_fields_set & (FOREST_FIELDS if self.mode == "tune" else TUNE_FIELDS))
        if wrong and self.mode == "train":
            raise ValueError(f'{", ".join(wrong)}: parameters of mode "tune"; add "mode": "tune" to search the '
                             "hyperparameters")
        if wrong:
            raise ValueError(f'{", ".join(wrong)}: not parameters of mode "tune", which searches them; leave them '
                             'out, or use "mode": "train" to give them')
        return self

    @model_validator(mode="after")
    def _feedback_needs_the_switch(self) -> _TrainBase:
        if "feedback_from" in self.model_fields_set and not self.include_feedback:
            raise ValueError('feedback_from: only with "include_feedback": true')
        return self

    @model_validator(mode="after")
    def _parameters_agree(self) -> _TrainBase:
        """Rules between parameters (a fairness guard needs sensitive_columns, ...): each group's own check, a 422
        instead of a job that fails."""
        given = self.mlproject_parameters()
        for group in TRAIN_GROUPS:
            try:
                parse_params(group, {f.name: given[f.name] for f in fields(group) if f.name in given})
            except ParameterError as err:
                raise ValueError(str(err)) from None
        return self

    @field_validator("*", mode="before")
    @classmethod
    def _scalar_and_valid(cls, value: Any, info: Any) -> Any:
        if value is None or info.field_name in ("mode", "include_feedback"):
            return value
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError("expected a single text or number value")
        text = str(value)
        try:
            parsed = _PARAMETERS[info.field_name].metadata["parse"](text)
        except ValueError as err:
            raise ValueError(str(err)) from None
        # keep the caller's text for list-like parameters; the parsers check them
        return text if isinstance(parsed, tuple) else parsed

    def mlproject_parameters(self) -> dict[str, str]:
        """The set parameters in MLproject string form (``none`` for an explicit null)."""
        return {name: "none" if getattr(self, name) is None else str(getattr(self, name))
                for name in self.model_fields_set - {"mode", "include_feedback"}}


TrainRequest = create_model(
    "TrainRequest", __base__=_TrainBase,
    **{name: _train_field(name, spec) for name, spec in _PARAMETERS.items()},
)


class TrainAccepted(BaseModel):
    job_id: str
    status: str
    location: str


class JobRecord(BaseModel):
    """What every job (training, monitoring) says of itself."""

    job_id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    model_name: str
    parameters: dict[str, str]
    created_at: str
    started_at: str | None
    finished_at: str | None
    requested_by: str | None = Field(None, description="the MLflow user who asked (GATEWAY_AUTH=mlflow)")


class JobOut(JobRecord):
    run_id: str | None
    model_version: str | None
    metrics: dict[str, float] | None
    error: str | None
    log_tail: str | None
    mode: Literal["train", "tune"] = "train"
    promotion: dict[str, str] | None = Field(
        None, description="with promote=if_better: decision (promoted/kept), metric, new_score, champion_version, "
        "champion_score, reason")


# --- /monitor ---------------------------------------------------------------------------


class MonitorRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_name: str = Field(pattern=MODEL_NAME_PATTERN, description="the registered model whose logged predictions "
                            "are compared with its training data")
    version: str | None = Field(None, pattern=VERSION_PATTERN, description="one version; default: every version "
                                "with logged predictions in the window")
    since: str | None = Field(None, max_length=64, description="ISO 8601, UTC unless an offset is given; default: "
                              "the start of the log")
    until: str | None = Field(None, max_length=64, description="ISO 8601 (excluded); default: now")

    @field_validator("since", "until")
    @classmethod
    def _moment(cls, value: str | None) -> str | None:
        if value is not None:
            moment(value)  # ValueError in words
        return value


class SetCoverage(BaseModel):
    coverage: float
    rows: int


class MonitorSummary(BaseModel):
    status: Literal["ok", "drift", "insufficient_data"]
    rows: int
    drift_share: float
    drifted_features: list[str]
    live_metrics: dict[str, float] = Field(description="accuracy, precision, recall, f1, roc_auc of the rows "
                                           "with a true label (empty until there are enough)")
    feedback_rows: int = 0
    fairness: dict[str, Any] = Field(default_factory=dict, description="by the version's sensitive_columns, of "
                                     "the rows with a true label: sensitive_columns, groups, by_group (the largest "
                                     "100), demographic_parity_difference, equalized_odds_difference (binary "
                                     "targets); empty until there are enough")
    version: str | None = None
    reason: str | None = None
    estimated_metrics: dict[str, float] = Field(default_factory=dict, description="accuracy, precision, recall, "
                                                "f1, roc_auc estimated from the served probabilities alone (CBPE), "
                                                "every row of the window, labelled or not")
    estimated_uncertainty: dict[str, float] = Field(default_factory=dict, description="the standard deviation of "
                                                    "each estimate: how far the labels may still move it")
    estimated_rows: int = 0
    estimation_missing: dict[str, str] = Field(default_factory=dict, description="why a metric is not estimated")
    probabilities_calibrated: bool | None = Field(None, description="false: the version's probabilities are not "
                                                  "calibrated, and the estimates rest on them anyway")
    realised_coverage: dict[str, SetCoverage] = Field(default_factory=dict, description="by confidence asked "
                                                      "(\"0.9\"): the share of true labels inside the prediction "
                                                      "sets served, of the labelled rows with a set")
    live_calibration_error: float | None = Field(None, description="expected calibration error of the served "
                                                 "probabilities on the rows with a true label")


class MonitorJobOut(JobRecord):
    run_id: str | None = Field(description="the monitoring run (experiment 'monitoring/<model>'): report, figures, "
                                              "table, summary.json")
    summary: MonitorSummary | None
    error: str | None
    log_tail: str | None


# --- feedback ---------------------------------------------------------------------------


class TrueLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64, description="a prediction's id, as its answer gave it")
    label: str | int | float = Field(description="the true class, one of the model's classes")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: list[TrueLabel] = Field(min_length=1, max_length=10_000)


class FeedbackAccepted(BaseModel):
    accepted: int = Field(description="labels stored (sending one again replaces it)")


# --- registry ---------------------------------------------------------------------------

class StageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: Stage
    archive_existing: bool = Field(False, description="Staging: archive the version that leaves Staging instead "
                                   "of returning it to None. Production always archives the version it replaces.")


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(pattern=VERSION_PATTERN, description="the version number")

    @field_validator("version", mode="before")
    @classmethod
    def _int_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class TrafficRequest(BaseModel):
    """How the model's requests are shared: single (the default), canary or shadow (see contract/traffic.py)."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["single", "canary", "shadow"]
    alias: str | None = Field(None, min_length=1, max_length=255, json_schema_extra={"pattern": ALIAS_PATTERN},
                              description="canary, shadow: the alias of the version to try (e.g. challenger)")
    percent: float | None = Field(None, gt=0, lt=100, description="canary: the share of requests it answers")
    sticky_key: str | None = Field(None, min_length=1, max_length=256, description="canary: an input column; "
                                   "requests with the same value always go to the same version")


class TrafficOut(BaseModel):
    mode: Literal["single", "canary", "shadow"]
    alias: str | None
    percent: float | None
    sticky_key: str | None
    figures: dict[str, Any] = Field(description="canary and shadow: per version (served, canary or shadow) the "
                                    "requests in the window, error rate, p50 and p99 in ms, and its state on the "
                                    "model server (serving, or unavailable with the reason, such as loading); shadow: "
                                    "the agreement of labels, the mean absolute difference of probabilities and the "
                                    "requests it skipped (did not answer) with the last reason")


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alias: str = Field(min_length=1, max_length=255, json_schema_extra={"pattern": ALIAS_PATTERN},
                       description="the alias of the version to serve (e.g. challenger)")


class ModelVersionOut(BaseModel):
    name: str
    version: str
    stage: str
    aliases: list[str]
    status: str
    run_id: str | None
    metrics: dict[str, float]
    created_at: str
    threshold: float | None = Field(None, description="binary targets: the positive class is the label from this "
                                    "probability of it on; None: the most probable class")


class RegisteredModelSummary(BaseModel):
    name: str
    aliases: dict[str, str]
    latest_version: str | None
    description: str


class ServingOut(BaseModel):
    """What the model server follows for a model: the serving alias (``alias`` null) or another alias."""

    alias: str | None
    status: Literal["serving", "unavailable"]
    version: str | None
    reason: str | None


class RegisteredModelOut(BaseModel):
    name: str
    aliases: dict[str, str]
    description: str
    versions: list[ModelVersionOut]
    serving: list[ServingOut] = Field(default_factory=list, description="what the model server serves of this "
                                      "model (empty until its first prediction, for a model other than MODEL_NAME)")
    loaded_versions: list[str] = Field(default_factory=list, description="versions the model server has loaded")


class ColumnOut(BaseModel):
    name: str
    kind: Literal["number", "category"]


class ModelSchemaOut(BaseModel):
    """What to send to a model: its input columns and what it answers."""

    name: str
    version: str
    columns: list[ColumnOut] = Field(description="the input columns, in the model's order; others are ignored")
    missing_values: list[str] = Field(description="cells read as missing, besides blank ones, null and NaN")
    classes: list[str | int | float]
    outputs: list[str] = Field(description="what each prediction holds (label, probability, proba_<class>)")
    example: dict[str, Any] = Field(description="a valid body for /models/{name}/predict, from the logged "
                                    "input example")
    example_csv: str = Field(description="the same rows as a text/csv body")


class ImportanceOut(BaseModel):
    """A version's global feature importance, as its training run logged it."""

    name: str
    version: str
    method: str = Field(description="how it was computed")
    importance: dict[str, float] = Field(description="per raw input column (a categorical column's one-hot "
                                         "features summed), largest first; they sum to 1")


# --- health -----------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]


class BackgroundLoop(BaseModel):
    state: Literal["running", "restarting", "stopped"]
    restarts: int = Field(description="times the loop died (logged with its traceback) and was restarted")
    items_failed: int = Field(description="items the loop failed or set aside and went on")
    last_error: str | None = None
    last_died_at: float | None = Field(None, description="when it last died, in seconds since the epoch")


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    model: ModelRef | None = None
    follows: str | None = None
    reason: str | None = None
    background: dict[str, BackgroundLoop] | None = Field(
        None, description="only when a background loop has died: each such loop (the model server's prefixed "
        "'model-server/') with its state, restarts and last error; it does not change the status")
