"""Inference requests from untrusted clients: parsed strictly, bounded, and refused with a 4xx that names the problem.

Any client of a model Service can send anything, and a 5xx counts as a server error in a
canary's ``errorRate`` check: a client that could provoke one could fail another team's canary.
So every property of a request is checked here, before the model sees it, and each failure is a
:class:`RequestError` with a 4xx status:

- **400**: malformed (not JSON, a missing field, a wrong type, a shape its data does not fill,
  a number out of its datatype's range, NaN or infinity, a duplicate tensor name);
- **413**: a bound exceeded (:class:`Limits`: body size, rows, features, values, BYTES value
  length, number of inputs).

Messages never repeat what the client sent beyond a short, truncated excerpt (:func:`shown`),
so an answer stays small whatever the request held.

The accepted request is one numeric tensor (``FP32``/``FP64``/``INT32``/``INT64``, shape
``[rows, features]``, or ``[features]`` for one row) and optional ``BYTES`` tensors of shape
``[rows]`` (or ``[rows, 1]``). ``data`` is flat in row-major order, or nested exactly as the
shape (both are allowed by the Open Inference Protocol).
"""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

NUMERIC_TYPES: dict[str, type[np.number[Any]]] = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
DATATYPES = (*sorted(NUMERIC_TYPES), "BYTES")


@dataclass(frozen=True)
class Limits:
    """Bounds on one inference request; exceeding one answers 413 naming it.

    The body bound caps what the server reads and parses (aiohttp refuses larger bodies before
    reading them); the others cap what one accepted request can make the server hold.
    """

    body_bytes: int = 16 * 1024 * 1024
    inputs: int = 16  # tensors in one request
    rows: int = 10_000
    columns: int = 4_096  # features per row
    values: int = 1_000_000  # rows × features of the numeric tensor
    bytes_value: int = 256  # UTF-8 bytes of one BYTES value (a group name, a category)
    name_length: int = 128  # a tensor's name
    id_length: int = 256  # the request's "id", echoed in the answer


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP status of the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InferRequest:
    features: np.ndarray  # float64, [rows, features], all finite
    named: dict[str, list[str]]  # BYTES tensors by name, one value per row
    request_id: str | None


def shown(value: Any, limit: int = 40) -> str:
    """A short excerpt of a client's value for an error message.

    >>> shown("x" * 100)
    "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…'"
    >>> shown([1, 2])
    '[1, 2]'
    """
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)[: limit + 1]
    return text if len(text) <= limit else text[:limit] + "…"


def decode_json(raw: bytes) -> Any:
    """The JSON document in ``raw``; 400 when it is not UTF-8 JSON or nests too deeply to parse."""
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise RequestError(400, "the body is not JSON: it is not valid UTF-8") from None
    except json.JSONDecodeError as error:
        raise RequestError(400, f"the body is not JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except RecursionError:
        raise RequestError(400, "the body is not JSON this server accepts: it nests too deeply") from None
    except ValueError as error:  # e.g. an integer with more digits than Python converts
        raise RequestError(400, f"the body is not JSON this server accepts: {str(error)[:120]}") from None


def parse_request(body: Any, n_features: int, limits: Limits) -> InferRequest:
    """The numeric feature matrix and the named BYTES columns of an OIP infer request.

    ``n_features`` is what the model expects per row (0: unknown, not checked).
    """
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise RequestError(400, 'the request needs "inputs": a non-empty list of tensors')
    tensors = body["inputs"]
    if len(tensors) > limits.inputs:
        raise RequestError(413, f"{len(tensors)} input tensors; at most {limits.inputs}")
    request_id = _request_id(body.get("id"), limits)
    named: dict[str, list[str]] = {}
    features: np.ndarray | None = None
    seen: set[str] = set()
    for index, spec in enumerate(tensors):
        name, datatype, shape, data = _fields(spec, index, limits)
        where = f"inputs[{index}] ({shown(name)})"
        if name in seen:
            raise RequestError(400, f"{where}: two inputs are named {shown(name)}")
        seen.add(name)
        if datatype == "BYTES":
            named[name] = _byte_values(_flat(data, _bytes_shape(shape, where, limits), where), where, limits)
            continue
        if features is not None:
            raise RequestError(400, f"{where}: only one numeric input tensor is accepted")
        rows, columns = _numeric_shape(shape, where, limits)
        values = _numbers(_flat(data, shape, where), datatype, where)
        features = values.reshape(rows, columns)
    if features is None:
        raise RequestError(400, "the request has no numeric input tensor")
    rows, columns = features.shape
    if n_features and columns != n_features:
        raise RequestError(400, f"the model expects {n_features} features per row, got {columns}")
    for name, values in named.items():
        if len(values) != rows:
            raise RequestError(400, f"input {shown(name)} has {len(values)} values for {rows} rows")
    return InferRequest(features, named, request_id)


def _request_id(value: Any, limits: Limits) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limits.id_length:
        raise RequestError(400, f'"id" must be a string of at most {limits.id_length} characters')
    return value


def _fields(spec: Any, index: int, limits: Limits) -> tuple[str, str, list[int], Any]:
    if not isinstance(spec, dict):
        raise RequestError(400, f"inputs[{index}] must be an object with name, shape, datatype and data")
    for key in ("name", "shape", "datatype", "data"):
        if key not in spec:
            raise RequestError(400, f"inputs[{index}] has no {key}")
    name, datatype, shape = spec["name"], spec["datatype"], spec["shape"]
    if not isinstance(name, str) or not 1 <= len(name) <= limits.name_length:
        raise RequestError(400, f"inputs[{index}]: name must be a string of 1 to {limits.name_length} characters")
    where = f"inputs[{index}] ({shown(name)})"
    if datatype not in DATATYPES:
        raise RequestError(400, f"{where}: datatype {shown(datatype)} is not one of {list(DATATYPES)}")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 2 or not all(_is_size(d) for d in shape):
        raise RequestError(400, f"{where}: shape must be [rows] or [rows, features] of non-negative integers, got {shown(shape)}")
    return name, datatype, shape, spec["data"]


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _numeric_shape(shape: list[int], where: str, limits: Limits) -> tuple[int, int]:
    rows, columns = (shape[0], shape[1]) if len(shape) == 2 else (1, shape[0])
    if rows > limits.rows:
        raise RequestError(413, f"{where}: {rows} rows in one request; at most {limits.rows}")
    if columns > limits.columns:
        raise RequestError(413, f"{where}: {columns} features per row; at most {limits.columns}")
    if rows * columns > limits.values:
        raise RequestError(413, f"{where}: {rows * columns} values in one tensor; at most {limits.values}")
    if rows == 0 or columns == 0:
        raise RequestError(400, f"{where}: shape {shape} holds no values; a request needs at least one row and one feature")
    return rows, columns


def _bytes_shape(shape: list[int], where: str, limits: Limits) -> list[int]:
    if len(shape) == 2 and shape[1] != 1:
        raise RequestError(400, f"{where}: a BYTES tensor has one value per row: shape [rows] or [rows, 1], got {shown(shape)}")
    if shape[0] > limits.rows:
        raise RequestError(413, f"{where}: {shape[0]} rows in one request; at most {limits.rows}")
    return shape


def _flat(data: Any, shape: Sequence[int], where: str) -> list[Any]:
    """``data`` as a flat row-major list: given flat, or nested exactly as ``shape``."""
    if not isinstance(data, list):
        raise RequestError(400, f"{where}: data must be a list")
    if len(shape) == 2 and data and isinstance(data[0], list):
        if len(data) != shape[0] or not all(isinstance(row, list) and len(row) == shape[1] for row in data):
            raise RequestError(400, f"{where}: nested data must be {shape[0]} lists of {shape[1]} values each, as its shape {list(shape)}")
        data = [value for row in data for value in row]
    expected = math.prod(shape)
    if len(data) != expected:
        raise RequestError(400, f"{where}: shape {list(shape)} needs {expected} values, got {len(data)}")
    return data


def _numbers(values: list[Any], datatype: str, where: str) -> np.ndarray:
    """``values`` as float64, refusing anything that is not a number of ``datatype``'s kind and range."""
    try:
        array = np.array(values)
    except (ValueError, TypeError, OverflowError):  # ragged nesting
        raise RequestError(400, f"{where}: data is not {datatype}: it holds nested lists where numbers belong") from None
    if array.ndim != 1:
        raise RequestError(400, f"{where}: data is not {datatype}: it holds nested lists where numbers belong")
    if array.dtype.kind == "b":
        raise RequestError(400, f"{where}: data is not {datatype}: it holds booleans")
    if array.dtype.kind not in "iufO" or (array.dtype.kind == "O" and not all(_is_integer(v) for v in values)):
        raise RequestError(400, f"{where}: data is not {datatype}: it holds strings, nulls or objects")
    if datatype.startswith("INT"):
        return _integers(array, values, datatype, where)
    if array.dtype.kind == "O":  # integers beyond 64 bits
        try:
            array = np.array(values, dtype=np.float64)
        except OverflowError:
            raise RequestError(400, f"{where}: a value is out of range for {datatype}") from None
    if not np.all(np.isfinite(array)):
        raise RequestError(400, f"{where}: the input contains NaN or infinite values")
    if datatype == "FP32" and np.any(np.abs(array) > np.finfo(np.float32).max):
        raise RequestError(400, f"{where}: a value is out of range for FP32")
    return array.astype(NUMERIC_TYPES[datatype]).astype(np.float64)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integers(array: np.ndarray, values: list[Any], datatype: str, where: str) -> np.ndarray:
    """Integer data, range-checked.

    When numpy inferred int64 every value is an integer that fits; otherwise (a value beyond
    int64, which numpy turns into uint64, object or even float when mixed with small ones)
    the client's own values are checked one by one.
    """
    bounds = np.iinfo(NUMERIC_TYPES[datatype])
    if array.dtype.kind != "i":
        if not all(_is_integer(v) for v in values):
            raise RequestError(400, f"{where}: data is not {datatype}: it holds non-integer numbers")
        low, high = min(values), max(values)
    else:
        low, high = int(array.min()), int(array.max())
    if low < bounds.min or high > bounds.max:
        raise RequestError(400, f"{where}: a value is out of range for {datatype} [{bounds.min}, {bounds.max}]")
    return array.astype(np.float64)


def _byte_values(values: list[Any], where: str, limits: Limits) -> list[str]:
    """BYTES values as strings: each a string (or a number), valid Unicode, at most ``limits.bytes_value`` bytes."""
    texts: list[str] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise RequestError(400, f"{where}: BYTES values must be strings, got {shown(value)}")
        text = value if isinstance(value, str) else str(value)
        if len(text) > limits.bytes_value:
            raise RequestError(413, f"{where}: a BYTES value of {len(text)} characters; at most {limits.bytes_value} bytes")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise RequestError(400, f"{where}: a BYTES value is not valid Unicode (a lone surrogate)") from None
        if size > limits.bytes_value:
            raise RequestError(413, f"{where}: a BYTES value of {size} bytes; at most {limits.bytes_value}")
        texts.append(text)
    return texts
