"""Request bodies, encoded in one place so every server and client gets the same bytes.

- JSON, TF Serving's REST predict body: the one format both REST servers answer.
- .npy, numpy's self-describing binary array file (dtype, shape, then raw little-endian
  float32): TorchServe's binary request body (Content-Type NPY_CONTENT_TYPE). A 224x224x3 image
  is 0.6 MB as .npy and 3 MB as JSON, whose decoding in TorchServe's Python worker costs about
  4x the model itself; the binary body is to TorchServe what gRPC's tensor_content is to TF
  Serving. Answers are JSON either way (1000 logits are small).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import numpy as np

from deploybench.errors import DeploybenchError

ROW_FORM = "instances"  # {"instances": [row, ...]} -> {"predictions": [...]}
COLUMNAR_FORM = "inputs"  # {"inputs": [row, ...]} -> {"outputs": [...]}
ANSWER_KEYS = {ROW_FORM: "predictions", COLUMNAR_FORM: "outputs"}
JSON_CONTENT_TYPE = "application/json"
NPY_CONTENT_TYPE = "application/x-npy"  # the handler (serving/handler.py) says it once more


class PredictionError(DeploybenchError):
    """A server answered a predict request with an error, or with something unreadable."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def encode(batch: np.ndarray, form: str = ROW_FORM) -> bytes:
    """A float32 batch as a JSON predict body (values as float32 prints exactly round-trip)."""
    if form not in ANSWER_KEYS:
        raise ValueError(f"unknown request form {form!r}")
    return json.dumps({form: np.asarray(batch, dtype=np.float32).tolist()}).encode()


def encode_npy(batch: np.ndarray) -> bytes:
    """A float32 batch as an .npy file (little-endian, C order): TorchServe's binary body."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(batch, dtype="<f4"), allow_pickle=False)
    return buffer.getvalue()


def _tfserving_predict(rows: np.ndarray, model: str, input_name: str) -> bytes:
    from deploybench.serving import protos  # TF Serving's protos, loaded only when needed

    return protos.predict_request(rows, model, input_name)


# Request bodies by name (a target's protocol declares which it sends): the same rows each way.
BODIES: dict[str, Callable[[np.ndarray, str, str], bytes]] = {
    "json": lambda rows, model, input_name: encode(rows),  # TF Serving's REST predict body
    "npy": lambda rows, model, input_name: encode_npy(rows),
    "tfserving-grpc": _tfserving_predict,  # a serialized PredictRequest
}


def decode(body: bytes | str | dict[str, Any]) -> np.ndarray:
    """The logits of a predict answer in either form, or a PredictionError naming why not."""
    if not isinstance(body, dict):
        try:
            body = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise PredictionError(f"answer is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise PredictionError("answer is not a JSON object")
    if "error" in body:
        raise PredictionError(str(body["error"]))
    for key in ANSWER_KEYS.values():
        if key in body:
            try:
                return np.asarray(body[key], dtype=np.float32)
            except (TypeError, ValueError) as error:
                raise PredictionError(f"answer {key!r} is not numeric: {error}") from None
    raise PredictionError(f"answer has neither 'predictions' nor 'outputs': {sorted(body)}")


# Said for an error answer that has no body: TorchServe's frontend answers an oversized request
# (over max_request_size) with a bare 413 before any worker reads it.
EMPTY_ERROR_HINTS = {
    413: "request body too large: the server refused it unread (TorchServe: over "
         "max_request_size, see serving/config/config.properties)",
}


def error_message(body: bytes | str, status: int | None = None) -> str:
    """The message of an error answer, on one line: {"error": ...} (the handler's and TF
    Serving's shape), TorchServe's frontend {"code", "type", "message"}, else the raw text; an
    empty body is described from the HTTP `status`."""
    try:
        data = json.loads(body)
        if isinstance(data, dict) and "error" in data:
            return str(data["error"])
        if isinstance(data, dict) and "message" in data:
            kind = data.get("type")
            return f"{kind}: {data['message']}" if kind else str(data["message"])
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        pass
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    text = " ".join(text.split())[:200]
    if not text and status is not None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "no message"
        return f"{phrase}: {EMPTY_ERROR_HINTS[status]}" if status in EMPTY_ERROR_HINTS else phrase
    return text


def matches_reference(
    outputs: np.ndarray, reference: np.ndarray, tolerance: float
) -> tuple[bool, str]:
    """Same argmax for every row and within `tolerance`: the check every answer gets."""
    if outputs.shape != reference.shape:
        return False, f"shape {outputs.shape} != expected {reference.shape}"
    if not np.array_equal(outputs.argmax(axis=1), reference.argmax(axis=1)):
        return False, "top-1 class differs from the reference"
    diff = float(np.max(np.abs(outputs - reference)))
    if not diff <= tolerance:
        return False, f"max abs diff {diff:.3g} > {tolerance:g}"
    return True, ""
