"""From rows to answered predictions: the model server called as the traffic policy says, every answer
counted, logged and given its ids. One object for every route that predicts (/predict, /models/{name}/predict,
the V2 infer), so they answer alike."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, status

from contract import inference_log as log_tables
from contract.model_output import (
    BASE_VALUE_COLUMN,
    CONFIDENCE_PARAM,
    EXPLAIN_CLASSES,
    EXPLAIN_CLASSES_PARAM,
    EXPLAIN_PARAM,
    PREDICTION_SET_COLUMN,
)
from contract.predict_body import BodyRefused
from contract.settings import Settings
from contract.traffic import TrafficPolicy, to_canary
from gateway.batching import Answer
from gateway.inference_log import InferenceLog
from gateway.model_client import CSV, ModelServerClient, Rows, Target, Unreachable
from gateway.observability import Metrics, unique_id
from gateway.rollouts import Rollouts, request_key
from gateway.schemas import unprocessable
from runtime.logs import request_id_var


@dataclass(frozen=True)
class Predicted:
    version: str
    rows: list[dict[str, Any]]  # as the model server answered: label, probability, proba_<class>
    ids: list[str]  # one prediction id a row
    key: str  # the request's key in the inference log (the ids are <key>-<row>)


def model_error_message(body: Any) -> str:
    """Our model's own message from an MLflow scoring-server error.

    MLflow wraps it as "Failed to predict data '<the whole input>'. \\nError: <message>";
    the input is the caller's own data, so only the message goes back.
    """
    message = str(body.get("message", "")) if isinstance(body, dict) else str(body)
    return message.rsplit("\nError: ", 1)[-1].strip()


# what the model server answers a body it cannot read or refuses: the gateway's own reading then says why
REFUSAL_STATUSES = (400, 413, 415, 422)


def the_callers_fault(answer: Answer) -> bool:
    """A refusal of the caller's rows (the model names the column, or the body breaks the gateway's contract),
    not a failure of the version."""
    return BodyRefused.from_answer(answer.status, answer.body) is not None or (
        answer.status == 400 and isinstance(answer.body, dict)
        and answer.body.get("error_code") == "INVALID_PARAMETER_VALUE")


def as_http_error(refused: BodyRefused) -> HTTPException:
    """The gateway's answer to a body its contract refuses, whichever side read it: the same status and words."""
    if refused.status == status.HTTP_413_CONTENT_TOO_LARGE:
        return HTTPException(refused.status, detail=refused.message)
    return unprocessable(list(refused.loc), refused.message, refused.kind)


def too_old(target: Target, answer: Answer, what: str) -> HTTPException:
    """A 409 for a version whose model code predates a feature the caller asked for."""
    return HTTPException(status.HTTP_409_CONFLICT, detail=f"version {answer.version} of '{target.name}' was trained "
                                                          f"before models {what}; train a new version")


class Predictor:
    def __init__(self, settings: Settings, model: ModelServerClient, metrics: Metrics,
                 inference_log: InferenceLog | None, rollouts: Rollouts):
        self.settings = settings
        self.model = model
        self.metrics = metrics
        self.inference_log = inference_log
        self.rollouts = rollouts

    async def predict(self, rows: Rows, target: Target, params: dict[str, Any] | None = None) -> Predicted:
        """Predictions for ``rows``, each with its id and logged; the errors as HTTP errors. ``params``: the
        model's, asking for prediction sets (the canary answers with them too; a shadow without)."""
        started = time.perf_counter()
        served = target.alias is None and target.version is None  # the served version, under the policy
        policy = self.rollouts.policy(target.name) if served else TrafficPolicy()
        answer = None
        if policy.mode == "canary":
            records = rows.parsed() if policy.sticky_key else []  # routed by a column's value, or the request id
            if to_canary(policy, request_key(policy, records, request_id_var.get())):
                tried = await self._call(rows, Target(target.name, alias=policy.alias), params)
                if tried is not None and (tried.status == 200 or the_callers_fault(tried)):
                    answer = tried  # else the served version answers below: the caller sees no canary failure
        if answer is None:
            answer = await self._call(rows, target, params)
        answer = self._checked(self._read_as_sent(rows, answer))
        asked = params and params.get(CONFIDENCE_PARAM)  # 0: no sets, as the model reads it
        if asked and answer.body["predictions"] and PREDICTION_SET_COLUMN not in answer.body["predictions"][0]:
            raise too_old(target, answer, "gave prediction sets")  # MLflow drops params a signature lacks
        predicted = self._answered(rows, target, answer, started)
        if policy.mode == "shadow" and policy.alias:
            self.rollouts.run_later(self._shadow(rows, Target(target.name, alias=policy.alias), predicted))
        return predicted

    def _read_as_sent(self, rows: Rows, answer: Answer | None) -> Answer | None:
        """A body passed on unread that the model server refused, or that held too many rows, is read here:
        the caller gets the gateway's own 4xx naming the field, as if it had been read first."""
        if rows.records is not None or answer is None:
            return answer
        if BodyRefused.from_answer(answer.status, answer.body) is not None:
            return answer  # refused while the model server read it, before scoring, in the gateway's words
        if answer.status in REFUSAL_STATUSES or (
                answer.status == 200 and len(answer.body["predictions"]) > self.settings.max_predict_rows):
            rows.parsed()  # raises the caller's error; else the model's own refusal stands
        return answer

    async def explain(self, records: list[dict[str, Any]], target: Target, every_class: bool) -> Predicted:
        """Predictions with their explanations (``base_value``, ``contrib_<column>``, and ``explanations`` when
        ``every_class``), from the served version or the one ``target`` names: never a canary or a shadow,
        whose answers the caller would not see explained."""
        started = time.perf_counter()
        params = {EXPLAIN_PARAM: True, EXPLAIN_CLASSES_PARAM: EXPLAIN_CLASSES[1 if every_class else 0]}
        rows = Rows(records)
        answer = self._checked(await self._call(rows, target, params))
        predictions = answer.body["predictions"]
        if predictions and BASE_VALUE_COLUMN not in predictions[0]:  # MLflow drops params a version's signature lacks
            raise too_old(target, answer, "could explain their predictions")
        return self._answered(rows, target, answer, started)

    def _answered(self, rows: Rows, target: Target, answer: Answer, started: float,
                  role: str = log_tables.ANSWER, key: str | None = None) -> Predicted:
        """A successful answer's predictions with their ids, logged."""
        version, predictions, key = answer.version or "unknown", answer.body["predictions"], key or unique_id()
        if self.inference_log is not None:
            # the body as it came when there is one (nothing re-encoded on the request path), else the records
            if rows.body is not None:
                fmt, inputs = (log_tables.CSV_ROWS if rows.media == CSV else log_tables.JSON_ROWS), rows.body
            else:
                fmt, inputs = log_tables.JSON_ROWS, rows.parsed()
            latency = (time.perf_counter() - started) * 1000 if role == log_tables.ANSWER else 0.0
            self.inference_log.record(key, request_id_var.get(), target.name, version, fmt, inputs, predictions,
                                      latency, role, packed=rows.packed)
        return Predicted(version, predictions, log_tables.prediction_ids(key, len(predictions)), key)

    async def _call(self, rows: Rows, target: Target, params: dict[str, Any] | None = None) -> Answer | None:
        """One call, counted for its version (None when the model server did not answer)."""
        started = time.perf_counter()
        try:
            answer = await self.model.predict(rows, target, params)
        except Unreachable:
            self.metrics.model_server_errors.labels("unreachable").inc()
            return None
        seconds = time.perf_counter() - started
        predictions = answer.body.get("predictions", []) if answer.status == 200 else []
        self.metrics.observe_prediction(target.name, answer.version, answer.status, len(predictions), seconds,
                                        (row.get("label") for row in predictions))
        failed = answer.status != 200 and not the_callers_fault(answer) and not (
            answer.status in REFUSAL_STATUSES and self._unreadable(rows))
        self.rollouts.observe(target.name, answer.version, failed, seconds)
        return answer

    @staticmethod
    def _unreadable(rows: Rows) -> bool:
        """A body passed on unread that the gateway's own reading refuses (not JSON, say): the model server's
        refusal of it is the caller's fault, never a canary's failure that malformed bodies could pile up."""
        if rows.records is not None:
            return False
        try:
            rows.parsed()
        except HTTPException:
            return True
        return False

    def _checked(self, answer: Answer | None) -> Answer:
        """``answer`` if it is a success; else the HTTP error the caller gets."""
        if answer is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                detail=f"model server unreachable at {self.settings.model_server}")
        if answer.status == 200:
            return answer
        if (refused := BodyRefused.from_answer(answer.status, answer.body)) is not None:
            raise as_http_error(refused)
        if answer.status == 503:
            self.metrics.model_server_errors.labels("unavailable").inc()
            headers = {"Retry-After": answer.retry_after} if answer.retry_after else None
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=model_error_message(answer.body),
                                headers=headers)
        if answer.status == 404:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=model_error_message(answer.body))
        if the_callers_fault(answer):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=model_error_message(answer.body))
        self.metrics.model_server_errors.labels("bad_gateway").inc()
        raise HTTPException(status.HTTP_502_BAD_GATEWAY,
                            detail=f"model server answered {answer.status}: {model_error_message(answer.body)}")

    async def _shadow(self, rows: Rows, target: Target, served: Predicted) -> None:
        """After the answer: the shadow version's answers for the same rows, logged and compared."""
        answer = await self._call(rows, target)
        if answer is None or answer.status != 200:
            self.rollouts.skip_shadow(target.name, "the model server did not answer" if answer is None
                                      else f"{answer.status}: {model_error_message(answer.body)[:200]}")
            return
        self.rollouts.compare_shadow(target.name, served.rows, answer.body["predictions"])
        self._answered(rows, target, answer, 0.0, role=log_tables.SHADOW, key=served.key)
