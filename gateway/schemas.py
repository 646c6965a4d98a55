"""Request and response bodies of the gateway API."""

from __future__ import annotations

from dataclasses import Field as Field_
from dataclasses import fields
from typing import Any, Literal

from fastapi import HTTPException, status
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from contract.names import VERSION_PATTERN
from contract.registry import Stage
from contract.params import DataParams, ForestParams, ModelParams, TuneParams


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

# Every parameter of these groups is a field of POST /train, typed and bounded as the group says
# (contract.params.Api) and checked by the same parser the step runs.
TRAIN_GROUPS = (DataParams, ModelParams, ForestParams, TuneParams)
_PARAMETERS = {f.name: f for group in TRAIN_GROUPS for f in fields(group)}
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

    @model_validator(mode="after")
    def _parameters_of_the_mode(self) -> _TrainBase:
        wrong = sorted(self.model_fields_set & (FOREST_FIELDS if self.mode == "tune" else TUNE_FIELDS))
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: not a parameter of mode {self.mode!r}")
        return self

    @field_validator("*", mode="before")
    @classmethod
    def _scalar_and_valid(cls, value: Any, info: Any) -> Any:
        if value is None or info.field_name == "mode":
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
                for name in self.model_fields_set - {"mode"}}


TrainRequest = create_model(
    "TrainRequest", __base__=_TrainBase,
    **{name: _train_field(name, spec) for name, spec in _PARAMETERS.items()},
)


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
