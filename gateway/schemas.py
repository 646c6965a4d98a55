"""Request and response bodies of the gateway API."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Literal

from fastapi import HTTPException, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from steps.params import METRICS, PROMOTE, DataParams, ForestParams, ModelParams, TuneParams

def unprocessable(loc: list[Any], message: str, kind: str = "value_error") -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, for the checks the routes make by hand."""
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                         detail=[{"loc": loc, "msg": message, "type": kind}])


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
    label: str | int | float
    probability: float
    probabilities: dict[str, float]


class PredictResponse(BaseModel):
    model: ModelRef
    predictions: list[Prediction]


# --- /train -----------------------------------------------------------------------------

_PARSERS = {f.name: f.metadata["parse"] for g in (DataParams, ForestParams, ModelParams, TuneParams)
            for f in fields(g)}
FOREST_FIELDS = {f.name for f in fields(ForestParams)} - {"random_state"}
TUNE_FIELDS = {f.name for f in fields(TuneParams)}


class TrainRequest(BaseModel):
    """The MLproject's parameters; values are checked by the same parsers as the steps."""

    model_config = ConfigDict(extra="forbid")

    data_path: str = Field(min_length=1, max_length=4096, description="a file under GATEWAY_DATA_ROOTS (relative paths are "
                           "looked up there) or a URI with an allowed scheme")
    target: str = Field(min_length=1, max_length=256, description="the label column")
    model_name: str | None = Field(None, description="default: the gateway's MODEL_NAME")
    na_values: str | None = None
    drop_columns: str | None = Field(None, description="comma-separated")
    test_size: float | None = Field(None, gt=0, lt=1)
    random_state: int | None = Field(None, ge=0, le=2**32 - 1)
    positive_class: str | None = None
    n_estimators: int | None = Field(None, ge=1, le=2000)
    max_depth: int | None = Field(None, ge=1, le=1000, description="omit for unlimited")
    min_samples_leaf: int | None = Field(None, ge=1, le=100_000)
    max_features: str | int | float | None = Field(None, description="sqrt, log2, none, N or a fraction")
    class_weight: Literal["balanced", "balanced_subsample", "none"] | None = None
    n_jobs: int | None = Field(None, ge=-1, le=64)
    mode: Literal["train", "tune"] = Field("train", description="tune: search the forest's hyperparameters "
                                           "(max_trials, timeout_s, cv_folds) instead of taking them")
    max_trials: int | None = Field(None, ge=1, le=500, description="mode tune: candidates to try")
    timeout_s: int | None = Field(None, ge=0, le=86_400, description="mode tune: no new trial after this")
    cv_folds: int | None = Field(None, ge=2, le=20, description="mode tune: cross-validation folds")
    metric: Literal[METRICS] | None = Field(None, description="what tuning maximises and promotion compares")
    promote: Literal[PROMOTE] | None = Field(
        None, description="if_better: the new version becomes champion only if it beats the champion "
        "on its test split (default never)")

    @model_validator(mode="after")
    def _parameters_of_the_mode(self) -> TrainRequest:
        wrong = sorted((self.model_fields_set & (FOREST_FIELDS if self.mode == "tune" else TUNE_FIELDS)))
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: not a parameter of mode {self.mode!r}")
        return self

    @field_validator("*", mode="before")
    @classmethod
    def _scalar_and_valid(cls, value: Any, info: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError("expected a single text or number value")
        parse = _PARSERS.get(info.field_name)
        if parse is None:
            return value
        text = str(value)
        try:
            parsed = parse(text)
        except ValueError as err:
            raise ValueError(str(err)) from None
        # keep the caller's text for list-like parameters; the parsers check them
        return text if isinstance(parsed, tuple) else parsed

    def mlproject_parameters(self) -> dict[str, str]:
        """The set parameters in MLproject string form (``none`` for an explicit null)."""
        out = {}
        for name in self.model_fields_set - {"mode"}:
            value = getattr(self, name)
            out[name] = "none" if value is None else str(value)
        return out


class TrainAccepted(BaseModel):
    job_id: str
    status: str
    location: str


class JobOut(BaseModel):
    job_id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    model_name: str
    parameters: dict[str, str]
    created_at: str
    started_at: str | None
    finished_at: str | None
    run_id: str | None
    model_version: str | None
    metrics: dict[str, float] | None
    error: str | None
    log_tail: str | None
    mode: Literal["train", "tune"] = "train"
    promotion: dict[str, str] | None = Field(
        None, description="with promote=if_better: decision (promoted/kept), metric, new_score, champion_version, "
        "champion_score, reason")


# --- registry ---------------------------------------------------------------------------

Stage = Literal["Staging", "Production", "Archived", "None"]


class StageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: Stage
    archive_existing: bool = Field(False, description="archive the other versions in the target stage "
                                   "(Staging or Production; ignored for Archived and None)")


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(pattern=r"^[1-9][0-9]{0,9}$", description="the version number")

    @field_validator("version", mode="before")
    @classmethod
    def _int_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class ModelVersionOut(BaseModel):
    name: str
    version: str
    stage: str
    aliases: list[str]
    status: str
    run_id: str | None
    metrics: dict[str, float]
    created_at: str


class RegisteredModelSummary(BaseModel):
    name: str
    aliases: dict[str, str]
    latest_version: str | None
    description: str


class RegisteredModelOut(BaseModel):
    name: str
    aliases: dict[str, str]
    description: str
    versions: list[ModelVersionOut]


# --- health -----------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    model: ModelRef | None = None
    follows: str | None = None
    reason: str | None = None
