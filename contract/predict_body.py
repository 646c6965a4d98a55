"""The gateway's prediction body (``/predict``): what it accepts, checked by whoever reads the body first.

The gateway reads a small body itself; a big one it passes to the model server unread, and tells it the
contract in one header (:data:`MAX_ROWS_HEADER`): the body is the gateway's (``{"records": [...]}`` and
nothing beside, or CSV; no MLflow format, no ``params``) and holds at most that many rows. The model server
then refuses what the gateway would refuse while reading the body, before any scoring, with
:class:`BodyRefused`'s words, which the gateway answers as its own. Without the header (a caller of the model
server as of ``mlflow models serve``) the body is read by MLflow's protocol as before.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from contract.errors import ProjectError

RECORDS_KEY = "records"
MAX_ROWS_HEADER = "X-Gateway-Max-Rows"
MAX_ROWS_SETTING = "GATEWAY_MAX_PREDICT_ROWS"
# The model server's error_code for a body the contract refuses: the gateway passes those on as they are.
REFUSED_CODE = "GATEWAY_CONTRACT"
REFUSED_STATUSES = (413, 422)


class BodyRefused(ProjectError):
    """A body the gateway's contract refuses: a 413 (too many rows) or a 422 naming the field (``loc``)."""

    def __init__(self, status: int, loc: tuple[str | int, ...], message: str, kind: str):
        super().__init__(message)
        self.status, self.loc, self.message, self.kind = status, loc, message, kind

    def as_answer(self) -> dict[str, Any]:
        """The model server's error body (MLflow's ``error_code`` and ``message``, with the field)."""
        return {"error_code": REFUSED_CODE, "message": self.message, "loc": list(self.loc), "type": self.kind}

    @classmethod
    def from_answer(cls, status: int, body: Any) -> BodyRefused | None:
        """The refusal a model server's answer holds, if it is one (:meth:`as_answer`)."""
        if status not in REFUSED_STATUSES or not isinstance(body, dict) or body.get("error_code") != REFUSED_CODE:
            return None
        loc = body.get("loc")
        return cls(status, tuple(loc) if isinstance(loc, list) else ("body",), str(body.get("message", "")),
                   str(body.get("type", "value_error")))


def max_rows_of(header: str | None) -> int | None:
    """The row limit a request's :data:`MAX_ROWS_HEADER` gives; None without one (MLflow's protocol applies)."""
    if header is None:
        return None
    value = header.strip()
    if not value.isascii() or not value.isdigit() or int(value) < 1:
        raise ValueError(f"{MAX_ROWS_HEADER} must be a positive whole number of rows, not {header[:40]!r}")
    return int(value)


def check_fields(fields: Collection[str]) -> None:
    """A JSON body's fields: ``records`` and nothing beside it (no MLflow format, no ``params``)."""
    extra = sorted(set(fields) - {RECORDS_KEY})
    if extra:  # each named: the one that costs (``params``) is rarely alone
        raise BodyRefused(422, ("body", extra[0]), f"unknown field{'s' if len(extra) > 1 else ''} "
                          f"{', '.join(map(repr, extra))}; the body holds only {RECORDS_KEY!r}", "extra_forbidden")
    if RECORDS_KEY not in fields:
        raise BodyRefused(422, ("body", RECORDS_KEY), "field required: a list of row objects", "missing")


def check_has_rows(rows: int, csv: bool) -> None:
    if rows == 0:
        if csv:
            raise BodyRefused(422, ("body",), "the CSV body has a header but no rows", "too_short")
        raise BodyRefused(422, ("body", RECORDS_KEY), "records must hold at least one row", "too_short")


def check_row_count(rows: int, max_rows: int, limit: str = MAX_ROWS_SETTING) -> None:
    """At most ``max_rows`` rows (the setting ``limit`` names) in one request."""
    if rows > max_rows:
        raise BodyRefused(413, ("body", RECORDS_KEY), f"records: {rows} rows, at most {max_rows} per request "
                          f"({limit})", "too_long")
