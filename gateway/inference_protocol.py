"""The Open Inference Protocol (KServe V2) as tensors of columns: requests to rows, predictions to tensors.

One input tensor per column (shape ``[n]`` or ``[n, 1]``): ``BYTES`` for raw text
cells, numbers (``FP64``, ``INT64``, ...) accepted too; the outputs are
``label``, ``probability`` and one ``proba_<class>`` per class (with the request parameter ``confidence``,
also ``prediction_set``, each row's set as JSON text, and ``confidence``). Tensor data comes
as JSON or, with Triton's binary tensor data extension (what ``tritonclient``
sends by default), as raw bytes after the JSON header, whose length is in the
``Inference-Header-Content-Length`` header. Answers are JSON. Pure functions,
no I/O: the routes are in ``gateway/routes/inference_protocol.py``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from contract.model_output import CONFIDENCE_COLUMN, CONFIDENCE_PARAM, PREDICTION_SET_COLUMN, SET_COVERAGE_PARAM

NUMERIC = {"BOOL": "<?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
           "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
DATATYPES = ("BYTES", *NUMERIC)
LABEL_DATATYPES = {"string": "BYTES", "long": "INT64", "double": "FP64"}
MODEL_PARAMETERS = (CONFIDENCE_PARAM, SET_COVERAGE_PARAM)  # request parameters passed to the model
SET_OUTPUTS = [(PREDICTION_SET_COLUMN, "string"), (CONFIDENCE_COLUMN, "double")]  # with a confidence


class ProtocolError(ValueError):
    """A request the protocol refuses; answered ``{"error": message}`` with ``status``."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InferRequest:
    records: list[dict[str, Any]]
    id: str | None
    outputs: list[str] | None  # the outputs asked for; None: all
    params: dict[str, Any] | None = None  # the model's, from the request's parameters (prediction sets)


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    json_part, binary = body, b""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise ProtocolError(f"Inference-Header-Content-Length is not a number: {header_length!r}", 400) from None
        if not 0 <= size <= len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {size} does not fit a body of {len(body)} bytes",
                                400)
        json_part, binary = body[:size], body[size:]
    try:
        request = orjson.loads(json_part)
    except orjson.JSONDecodeError as err:
        raise ProtocolError(f"body is not valid JSON: {err}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise ProtocolError("expected an inference request: an object with a non-empty 'inputs' list")
    columns: dict[str, list[Any]] = {}
    offset = 0
    for i, tensor in enumerate(request["inputs"]):
        name, values, offset = input_tensor(tensor, i, binary, offset)
        if name in columns:
            raise ProtocolError(f"input '{name}' is given twice")
        columns[name] = values
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary tensor data belong to no input")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ProtocolError("every input must hold one value per row: the inputs' lengths differ ("
                            + ", ".join(f"{name}: {len(v)}" for name, v in columns.items()) + ")")
    rows = lengths.pop()
    if not rows:
        raise ProtocolError("the inputs hold no row")
    outputs = request.get("outputs")
    if outputs is not None and (not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)):
        raise ProtocolError("'outputs' must be a list of objects with a 'name'")
    request_id = request.get("id")
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError("'parameters' must be an object")
    # the model checks the values and names the one it refuses; other parameters are the protocol's
    params = {key: parameters[key] for key in MODEL_PARAMETERS if key in parameters}
    return InferRequest([{name: values[r] for name, values in columns.items()} for r in range(rows)],
                        None if request_id is None else str(request_id),
                        None if outputs is None else [o["name"] for o in outputs], params or None)


def input_tensor(tensor: Any, index: int, binary: bytes, offset: int) -> tuple[str, list[Any], int]:
    """(column name, its values, where the next binary tensor starts) of one input."""
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise ProtocolError(f"inputs[{index}] must be an object with a 'name'")
    name, datatype, shape = tensor["name"], tensor.get("datatype"), tensor.get("shape")
    if datatype not in DATATYPES:
        raise ProtocolError(f"input '{name}': datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                            for d in shape) and len(shape) in (1, 2) and shape[1:] in ([], [1])):
        raise ProtocolError(f"input '{name}': shape must be [rows] or [rows, 1], not {shape!r}")
    rows = shape[0]
    size = ((tensor.get("parameters") or {}).get("binary_data_size"))
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise ProtocolError(f"input '{name}': binary_data_size {size!r} does not fit the binary data sent")
        values = binary_values(name, datatype, binary[offset:offset + size])
        offset += size
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise ProtocolError(f"input '{name}': 'data' must be a list")
        values = [v[0] if isinstance(v, list) and len(v) == 1 else v for v in data]  # [[x], [y]] as [x, y]
        if any(isinstance(v, (list, dict)) for v in values):
            raise ProtocolError(f"input '{name}': one value per row expected, got a list or object")
    if len(values) != rows:
        raise ProtocolError(f"input '{name}': shape says {rows} rows, the data holds {len(values)}")
    return name, values, offset


def binary_values(name: str, datatype: str, raw: bytes) -> list[Any]:
    if datatype != "BYTES":
        dtype = np.dtype(NUMERIC[datatype])
        if len(raw) % dtype.itemsize:
            raise ProtocolError(f"input '{name}': {len(raw)} bytes is not a whole number of {datatype} values")
        return np.frombuffer(raw, dtype=dtype).tolist()
    values, at = [], 0
    while at < len(raw):  # each element: a 4-byte little-endian length, then its bytes
        if at + 4 > len(raw):
            raise ProtocolError(f"input '{name}': BYTES data ends inside an element's length")
        (length,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + length > len(raw):
            raise ProtocolError(f"input '{name}': BYTES data ends inside an element")
        try:
            values.append(raw[at:at + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError(f"input '{name}': element {len(values)} is not UTF-8 text") from None
        at += length
    return values


def infer_response(model_name: str, version: str, request: InferRequest, predictions: list[dict[str, Any]],
                   outputs: list[tuple[str, str]]) -> bytes:
    """The response of ``predictions``: one tensor per output (``outputs``: name and signature type)."""
    wanted = [name for name, _ in outputs] if request.outputs is None else request.outputs
    types = dict(outputs)
    unknown = [name for name in wanted if name not in types]
    if unknown:
        raise ProtocolError(f"unknown output(s) {', '.join(map(repr, unknown))}; the model gives "
                            + ", ".join(name for name, _ in outputs), 400)
    tensors = [{"name": name, "datatype": LABEL_DATATYPES.get(types[name], "FP64"), "shape": [len(predictions)],
                "data": [cell(row.get(name)) for row in predictions]} for name in wanted]
    response: dict[str, Any] = {"model_name": model_name, "model_version": version, "outputs": tensors}
    if request.id is not None:
        response["id"] = request.id
    return orjson.dumps(response)


def cell(value: Any) -> Any:
    """A value of a flat tensor: a list (a prediction set) as its JSON text."""
    return orjson.dumps(value).decode() if isinstance(value, list) else value


def metadata(name: str, versions: list[str], columns: list[tuple[str, str]], outputs: list[tuple[str, str]]
             ) -> dict[str, Any]:
    """The model metadata response: the columns as inputs (text cells, ``BYTES``) and the outputs."""
    return {"name": name, "versions": versions, "platform": "mlflow_pyfunc",
            "inputs": [{"name": column, "datatype": "BYTES", "shape": [-1]} for column, _ in columns],
            "outputs": [{"name": output, "datatype": LABEL_DATATYPES.get(kind, "FP64"), "shape": [-1]}
                        for output, kind in outputs]}
