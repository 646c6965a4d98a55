"""MLflow's scoring protocol, as ``mlflow models serve`` speaks it on ``/invocations``.

Request bodies: JSON with exactly one of ``dataframe_split``, ``dataframe_records``,
``instances`` or ``inputs`` (plus ``params``), CSV (``text/csv``, a header row)
or Parquet; and, beyond MLflow's, the gateway's own body ``{"records": [...]}``
(nothing else beside it), read as ``dataframe_records``: the gateway passes a
big request's body on as the caller sent it instead of reading and re-encoding
it (:func:`as_mlflow_body` turns it into MLflow's for ``mlflow models serve``,
and reads CSV bodies by this module's rule, so that CSV means the same in both
modes). Answers: ``{"predictions": [...]}``; errors
``{"error_code": ..., "message": ...}`` with MLflow's status codes (415 as text,
like MLflow). One difference on purpose: an error never pastes the caller's
input back (MLflow's does, whole), only what is wrong with it.

Modelled on ``mlflow.pyfunc.scoring_server`` (``infer_and_parse_data``,
``parse_tf_serving_input``) and checked against it by
``tests/integration/model_server/test_scoring_protocol.py``, which sends the same
requests with MLflow's own client to both modes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from contract import packing, predict_body, tables

CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_CSV = "text/csv"
CONTENT_TYPE_PARQUET = "application/vnd.apache.parquet"
CONTENT_TYPES = (CONTENT_TYPE_CSV, CONTENT_TYPE_JSON, CONTENT_TYPE_PARQUET)
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
PARAMS_KEY = "params"
GATEWAY_KEY = "records"  # the gateway's body: {"records": [...]}


class ProtocolError(Exception):
    """A request the protocol refuses: answered with ``status`` and MLflow's error body."""

    def __init__(self, message: str, status: int = 400, error_code: str = "BAD_REQUEST",
                 content_type: str = CONTENT_TYPE_JSON, answer: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code
        self.content_type = content_type
        self.answer = answer  # a whole JSON error body of its own (the gateway's contract's)

    def body(self) -> bytes:
        if self.content_type != CONTENT_TYPE_JSON:
            return self.message.encode()
        return orjson.dumps(self.answer) if self.answer else error_body(self.error_code, self.message)


def error_body(error_code: str, message: str) -> bytes:
    return orjson.dumps({"error_code": error_code, "message": message})


def invalid(message: str) -> ProtocolError:
    # as MLflow's MlflowInvalidInputException, its answer to input it cannot read
    return ProtocolError(f"Invalid input. {message}", 400, "BAD_REQUEST")


@dataclass
class ScoringInput:
    """A request's rows and params: ``records`` (a dict per row), or ``columns`` (a body that came column by
    column or as a table: CSV, ``dataframe_split``, column-wise ``inputs``; the names and each column's cells),
    or ``table`` (a Parquet body's DataFrame)."""

    records: list[dict[str, Any]] | None
    params: dict[str, Any] | None = None
    table: Any = None  # a pandas DataFrame, for Parquet bodies
    columns: tuple[list[str], list[Sequence[Any]]] | None = None

    @property
    def rows(self) -> int:
        if self.columns is not None:
            names, cells = self.columns
            return len(cells[0]) if cells else 0
        return len(self.records) if self.records is not None else len(self.table)

    def as_records(self) -> list[dict[str, Any]] | None:
        """The rows as dicts (None for a table): for a model that reads nothing else."""
        if self.columns is not None:
            names, cells = self.columns
            return [dict(zip(names, row, strict=True)) for row in zip(*cells, strict=True)]
        return self.records

    def as_frame(self) -> Any:
        import pandas as pd

        if self.table is not None:
            return self.table
        records = self.as_records()
        return pd.DataFrame.from_records(records) if records else pd.DataFrame()


def media_type(content_type: str) -> str:
    """The media type of a Content-Type header; refuses a charset other than UTF-8 and unknown
    parameters, with MLflow's 415s."""
    parts = [part.strip() for part in content_type.split(";")]
    options = {key.strip().lower(): value.strip() for key, _, value in (p.partition("=") for p in parts[1:] if p)}
    if options.get("charset", "utf-8").lower() != "utf-8":
        raise ProtocolError("The scoring server only supports UTF-8", 415, content_type="text/plain")
    unexpected = set(options) - {"charset"}
    if unexpected:
        raise ProtocolError(f"Unrecognized content type parameters: {', '.join(sorted(unexpected))}.", 415,
                            content_type="text/plain")
    mime = parts[0].lower()
    if mime not in CONTENT_TYPES:
        raise ProtocolError(f"This predictor only supports the following content types: Types: {list(CONTENT_TYPES)}."
                            f" Got '{content_type}'.", 415, content_type="text/plain")
    return mime


def check_encoding(content_encoding: str) -> str:
    """The body's content coding: none, or Zstandard (``zstd``, as the gateway sends big bodies); a 415
    for others."""
    coding = content_encoding.strip().lower()
    if coding in ("", "identity"):
        return ""
    if coding != packing.ENCODING:
        raise ProtocolError(f"Content-Encoding {content_encoding!r} is not supported; send the body as it is, or "
                            f"{packing.ENCODING}", 415, content_type="text/plain")
    return coding


def decoded(body: bytes, content_encoding: str) -> bytes:
    """The body as sent before its content coding (``check_encoding``'s answer)."""
    if not content_encoding:
        return body
    try:
        return packing.unpack(body)
    except ValueError as err:
        raise invalid(f"The body is not valid {content_encoding}: {err}") from None


def parse_request(body: bytes, content_type: str, reader: RecordsReader | None = None,
                  max_rows: int | None = None) -> ScoringInput:
    """A request's rows and params; a JSON records body through ``reader`` first, when the model gives one.

    With ``max_rows`` (the gateway's contract, :mod:`contract.predict_body`) a body the gateway would refuse
    is refused here, as it is read and before anything is scored: MLflow's formats and ``params`` (checked
    on the body's top-level fields before its rows are read), no rows, more than ``max_rows``."""
    mime = media_type(content_type or CONTENT_TYPE_JSON)
    if max_rows is None:
        return read_request(body, mime, reader)
    try:
        if mime == CONTENT_TYPE_JSON and (fields := top_level_fields(body)) is not None:
            predict_body.check_fields(fields)
        read = read_request(body, mime, reader)
        if mime != CONTENT_TYPE_PARQUET:  # (an empty table is answered with no predictions, as by MLflow)
            predict_body.check_has_rows(read.rows, csv=mime == CONTENT_TYPE_CSV)
        predict_body.check_row_count(read.rows, max_rows)
    except predict_body.BodyRefused as err:
        raise ProtocolError(err.message, err.status, predict_body.REFUSED_CODE, answer=err.as_answer()) from None
    return read


def contract_rows(header: str | None) -> int | None:
    """The gateway's row limit a request carries (:data:`contract.predict_body.MAX_ROWS_HEADER`), if any."""
    try:
        return predict_body.max_rows_of(header)
    except ValueError as err:
        raise invalid(str(err)) from None


def top_level_fields(body: bytes) -> list[str] | None:
    """A JSON object's field names, its values skipped over unread; None if the body is not one (the reading
    that follows says why)."""
    try:
        return list(_FIELDS.decode(body))
    except msgspec.DecodeError:
        return None


_FIELDS = msgspec.json.Decoder(dict[str, msgspec.Raw])


def read_request(body: bytes, mime: str, reader: RecordsReader | None) -> ScoringInput:
    if mime == CONTENT_TYPE_CSV:
        return ScoringInput(None, columns=csv_columns(body))
    if mime == CONTENT_TYPE_PARQUET:
        return ScoringInput(None, table=parquet_table(body))
    if reader is not None and (read := reader.read(body)) is not None:
        return read
    return json_input(body)


class RecordsReader:
    """The rows of a records body (the gateway's ``{"records": [...]}`` or ``{"dataframe_records": [...]}``,
    nothing beside) read straight into the columns a model reads, given by their exact names.

    Each row is decoded into a struct of those columns (msgspec): no dict a row, and the cells of the other
    columns are never made. On 1,000 census rows (1.6 MB of JSON) that took 6.0 ms against orjson's 8.3 ms for
    the dicts, before the same turn of the rows into columns. Any other body, or one row that is not an object
    or lacks one of the columns (say a key that matches only once stripped, :func:`pyfunc.cleaning.column_key`),
    is not read here: :func:`json_input` reads it and says what is wrong, as for a model without a reader.

    Column names are data: msgspec refuses some as JSON keys of a struct (``"``, ``\\`` and control characters,
    which JSON escapes), so a model with such a column gets no struct and every body goes the generic way
    (:attr:`fast` is False) - slower, never refused.
    """

    def __init__(self, columns: Sequence[str]):
        self.columns = list(columns)
        fields = [f"c{i}" for i in range(len(self.columns))]  # the names as struct fields; any text as JSON keys
        try:
            row = msgspec.defstruct("Row", [(field, Any) for field in fields], rename=dict(zip(fields, self.columns)))
        except ValueError:  # a name msgspec cannot match unescaped: read by json_input (see above)
            self._decoder = None
            return
        rows = list[row] | None  # type: ignore[valid-type]
        self._decoder = msgspec.json.Decoder(msgspec.defstruct(
            "Body", [(GATEWAY_KEY, rows, None), ("dataframe_records", rows, None)], forbid_unknown_fields=True))

    @property
    def fast(self) -> bool:
        """Whether bodies are read here (False: every body goes to :func:`json_input`)."""
        return self._decoder is not None

    def read(self, body: bytes) -> ScoringInput | None:
        if self._decoder is None:
            return None
        try:
            payload = self._decoder.decode(body)
        except msgspec.DecodeError:  # (its ValidationError too) the generic reading answers
            return None
        records, dataframe_records = getattr(payload, GATEWAY_KEY), payload.dataframe_records
        rows = records if dataframe_records is None else dataframe_records if records is None else None
        if not rows:  # neither, both, or no row
            return None
        cells = list(zip(*map(msgspec.structs.astuple, rows), strict=True))  # a tuple a row, then the columns: in C
        return ScoringInput(None, columns=(self.columns, cells))


def json_input(body: bytes) -> ScoringInput:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise invalid(f"Ensure that input is a valid JSON formatted string. Error: '{err}'") from None
    required = f"The input must be a JSON dictionary with exactly one of the input fields {set(FORMATS)}"
    if isinstance(payload, list):
        raise invalid(f"{required}. Received a list.")
    if not isinstance(payload, dict):
        raise invalid(f"{required}. Received unexpected input type '{type(payload).__name__}'.")
    if GATEWAY_KEY in payload and not any(key in payload for key in FORMATS):
        if len(payload) != 1:
            raise invalid(f"a '{GATEWAY_KEY}' body holds nothing else; got {sorted(payload)}")
        return ScoringInput(row_records(payload[GATEWAY_KEY], GATEWAY_KEY))
    keys = [key for key in FORMATS if key in payload]
    if len(keys) != 1:
        raise ProtocolError(f"{required}. Received dictionary with input fields: {list(payload)}.")
    params = payload.get(PARAMS_KEY)
    if params is not None and not isinstance(params, dict):
        raise invalid(f"'{PARAMS_KEY}' must be a JSON object of name: value")
    key = keys[0]
    rows = {"dataframe_split": split_columns, "dataframe_records": row_records,
            "instances": tensor_rows, "inputs": tensor_rows}[key](payload[key], key)
    if isinstance(rows, tuple):  # given column by column: kept so (see ScoringInput)
        return ScoringInput(None, params or None, columns=rows)
    return ScoringInput(rows, params or None)


def as_mlflow_body(body: bytes, content_type: str) -> tuple[bytes, str]:
    """``body`` as MLflow's scoring server should read it, and its content type: the gateway's
    ``{"records": [...]}`` becomes ``{"dataframe_records": [...]}``, and CSV becomes records by the project's
    one CSV rule (``contract.tables.csv_records``: cells as text, a line with the wrong number of cells
    refused), so a CSV body means the same in both modes; any other body is left as it is (MLflow answers it)."""
    if content_type.lower().startswith(CONTENT_TYPE_CSV):
        return orjson.dumps({"dataframe_records": csv_records(body)}), CONTENT_TYPE_JSON
    if not content_type.lower().startswith(CONTENT_TYPE_JSON) or f'"{GATEWAY_KEY}"'.encode() not in body:
        return body, content_type
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body, content_type
    if isinstance(payload, dict) and list(payload) == [GATEWAY_KEY]:
        return orjson.dumps({"dataframe_records": payload[GATEWAY_KEY]}), content_type
    return body, content_type


def row_records(data: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(data, list):
        raise invalid(f"Dataframe records format must be a list of records. Got {type(data).__name__}.")
    if not all(isinstance(row, dict) for row in data):
        raise invalid(f"Provided {key} field is not a valid dataframe representation in 'records' format:"
                      " every record must be an object of column: value")
    return data


def split_columns(data: Any, key: str) -> tuple[list[Any], list[tuple[Any, ...]]]:
    if not isinstance(data, dict):
        raise invalid(f"Dataframe split format must be a dictionary. Got {type(data).__name__}.")
    if "data" not in data or set(data) - {"columns", "data", "index"}:
        raise invalid(f"Dataframe split format must have 'data' field and optionally 'columns' and 'index'"
                      f" fields. Got {sorted(data)}.")
    rows, columns = data["data"], data.get("columns")
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise invalid(f"Provided {key} field is not a valid dataframe representation in 'split' format:"
                      " 'data' must be a list of rows")
    if columns is None:
        columns = list(range(max((len(row) for row in rows), default=0)))
    if not isinstance(columns, list):
        raise invalid(f"Provided {key} field is not a valid dataframe representation in 'split' format:"
                      " 'columns' must be a list")
    for i, row in enumerate(rows):
        if len(row) != len(columns):
            raise invalid(f"Provided {key} field is not a valid dataframe representation in 'split' format:"
                          f" row {i} has {len(row)} values for {len(columns)} columns")
    return columns, tables.columns_of(rows, len(columns))


def tensor_rows(data: Any, key: str) -> list[dict[str, Any]] | tuple[list[str], list[list[Any]]]:
    """``instances``/``inputs`` for a model with named columns: rows (a list of objects) or
    columns (an object of equally long lists, kept column by column), as MLflow accepts both."""
    if isinstance(data, list) and all(isinstance(row, dict) for row in data):
        return data
    if isinstance(data, dict):
        columns = {name: values if isinstance(values, list) else [values] for name, values in data.items()}
        lengths = {len(values) for values in columns.values()}
        if len(lengths) > 1:
            raise invalid(f"The length of values for each input/column name are not the same in '{key}'")
        return list(columns), list(columns.values())
    raise invalid(f"'{key}' must be a list of row objects or an object of columns for a model with named"
                  " input columns")


def csv_records(body: bytes) -> list[dict[str, str]]:
    """A CSV body's rows as text cells, exactly as the file holds them (the model reads numbers)."""
    try:
        return tables.csv_records(body)
    except ValueError as err:
        raise invalid(f"Failed to parse input as CSV: {err}") from None


def csv_columns(body: bytes) -> tuple[list[str], list[tuple[str, ...]]]:
    """:func:`csv_records` column by column: the header and each column's cells."""
    try:
        return tables.csv_columns(body)
    except ValueError as err:
        raise invalid(f"Failed to parse input as CSV: {err}") from None


def parquet_table(body: bytes) -> Any:
    import pandas as pd

    try:
        return pd.read_parquet(io.BytesIO(body))
    except Exception as err:  # pyarrow raises many kinds for a body that is not Parquet
        raise invalid(f"Failed to parse input as Parquet: {err}") from None


def predictions_body(predictions: Any) -> bytes:
    """``{"predictions": ...}`` as strict JSON: NaN and infinities are ``null``, numpy values plain."""
    return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain)


def _plain(value: Any) -> Any:
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing values
        return None
    if hasattr(value, "item"):  # numpy and pandas scalars
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
