"""The one error body of the gateway's API.

Every refused or failed request (4xx, 5xx) answers::

    {"detail": "<what went wrong, in one line, naming the field or column>",
     "errors": [{"loc": ["body", "n_estimators"], "msg": "...", "type": "..."}, ...]}

``detail`` is always one string, so a client (or a person reading a log) needs no second case;
``errors`` is there when particular fields are at fault (FastAPI's validation list, kept as it is so
clients that walk it still can). A few answers add fields of their own (``request_id`` on a 500,
``accepted`` on a partly accepted feedback batch). The Open Inference Protocol's routes (``/v2``)
answer that protocol's ``{"error": "..."}`` with the same words instead: its clients expect it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from runtime.docs import amend_openapi

PARAMETER_PLACES = ("query", "path", "header", "cookie")
FIELD_ERROR_KEYS = ("loc", "msg", "type", "ctx")
PROTOCOL_PREFIX = "/v2"
PYDANTIC_PREFIX = "Value error, "  # pydantic's words before a validator's own message


def where(loc: Sequence[Any]) -> str:
    """A field's location in words: ``n_estimators``, ``labels.2.label``, ``query parameter version``."""
    parts = [str(part) for part in loc]
    if len(parts) > 1 and parts[0] == "body":
        parts = parts[1:]
    if len(parts) > 1 and parts[0] in PARAMETER_PLACES:
        return f"{parts[0]} parameter {'.'.join(parts[1:])}"
    return ".".join(parts)


def message_of(detail: Any) -> str:
    """One line for any detail: a string as it is, a list of field errors as ``field: message; ...``."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, Sequence):
        return "; ".join(f"{where(item.get('loc', ()))}: {str(item.get('msg', '')).removeprefix(PYDANTIC_PREFIX)}"
                         .lstrip(": ")
                         if isinstance(item, Mapping) else str(item) for item in detail)
    return str(detail)


def field_error(item: Mapping[str, Any]) -> dict[str, Any]:
    kept = {key: value for key, value in item.items() if key in FIELD_ERROR_KEYS}
    if isinstance(kept.get("ctx"), Mapping):  # pydantic puts the raised exception itself there
        kept["ctx"] = {key: str(value) if isinstance(value, BaseException) else value
                       for key, value in kept["ctx"].items()}
    return kept


def error_body(detail: Any, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"detail": message_of(detail)}
    if isinstance(detail, Sequence) and not isinstance(detail, str):
        # without pydantic's ``input``: an error never pastes the caller's data back
        body["errors"] = jsonable_encoder([field_error(item) if isinstance(item, Mapping) else item
                                           for item in detail])
    return {**body, **extra}


def error_response(status_code: int, detail: Any, headers: Mapping[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(detail, **extra), status_code=status_code,
                        headers=dict(headers) if headers else None)


def protocol_error(status_code: int, detail: Any, headers: Mapping[str, str] | None = None,
                   **_extra: Any) -> JSONResponse:
    """The same error in the Open Inference Protocol's form."""
    return JSONResponse({"error": message_of(detail)}, status_code=status_code,
                        headers=dict(headers) if headers else None)


def error_for(path: str):  # noqa: ANN201 (one of the two functions above)
    """The form of error the route at ``path`` answers."""
    return protocol_error if path == PROTOCOL_PREFIX or path.startswith(PROTOCOL_PREFIX + "/") else error_response


ERROR_SCHEMA = {
    "title": "Error", "type": "object", "required": ["detail"],
    "description": "Every error of the gateway's API (the /v2 routes answer the Open Inference Protocol's "
                   "{\"error\": \"...\"}).",
    "properties": {
        "detail": {"title": "Detail", "type": "string",
                   "description": "what went wrong, in one line, naming the field or column"},
        "errors": {"title": "Errors", "type": "array", "items": {"$ref": "#/components/schemas/ValidationError"},
                   "description": "the fields at fault, when there are"}},
}
PROTOCOL_ERROR_SCHEMA = {"title": "InferenceProtocolError", "type": "object", "required": ["error"],
                         "properties": {"error": {"title": "Error", "type": "string"}}}


def document_error_body(app: FastAPI) -> None:
    """The OpenAPI document says the body above for every error a route declares (FastAPI's default
    for a 422 is its own list, which the gateway does not answer)."""
    def amend(schema: dict[str, Any]) -> None:
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas["Error"], schemas["InferenceProtocolError"] = ERROR_SCHEMA, PROTOCOL_ERROR_SCHEMA
        for path, operations in schema.get("paths", {}).items():
            protocol = error_for(path) is protocol_error
            error = "InferenceProtocolError" if protocol else "Error"
            for operation in operations.values():
                for code, response in operation.get("responses", {}).items():
                    content = response.get("content", {}).get("application/json", {})
                    fastapis = content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError")
                    # the protocol's "not ready" is a 400 with an empty body
                    if code[0] in "45" and (fastapis or not (content or (protocol and code == "400"))):
                        response["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{error}"}}}

    amend_openapi(app, amend)
