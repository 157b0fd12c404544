"""Request bodies, encoded in one place so every server and client gets the same bytes.

- JSON, TF Serving's REST predict body: the one format every REST server of the kit answers.
- .npy, numpy's self-describing binary array file (dtype, shape, then raw little-endian
  float32): TorchServe's binary request body (Content-Type NPY_CONTENT_TYPE). A model with
  several inputs (token ids and a mask) gets an .npz instead: one .npy per input, named by it,
  in an uncompressed zip (numpy's own container; Content-Type NPZ_CONTENT_TYPE). A 224x224x3 image
  is 0.6 MB as .npy and 3 MB as JSON, whose decoding in TorchServe's Python worker costs about
  4x the model itself; the binary body is to TorchServe what gRPC's tensor_content is to TF
  Serving. Answers are JSON either way (1000 logits are small).
- TF Serving's gRPC PredictRequest, and the Open Inference Protocol's REST JSON, REST binary
  and gRPC requests (serving/oip.py).

Every encoder takes a Batch: its inputs by name, each with its own dtype (float32, or int32
token ids), as long as its longest row (a client pads a text batch, with its mask).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import numpy as np

from deploybench.batch import Batch
from deploybench.errors import DeploybenchError

ROW_FORM = "instances"  # {"instances": [row, ...]} -> {"predictions": [...]}
COLUMNAR_FORM = "inputs"  # {"inputs": [row, ...]} -> {"outputs": [...]}
ANSWER_KEYS = {ROW_FORM: "predictions", COLUMNAR_FORM: "outputs"}
JSON_CONTENT_TYPE = "application/json"
NPY_CONTENT_TYPE = "application/x-npy"  # the handler (serving/handler.py) says it once more
NPZ_CONTENT_TYPE = "application/x-npz"  # likewise


class PredictionError(DeploybenchError):
    """A server answered a predict request with an error, or with something unreadable."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def encode(batch: Batch, form: str = ROW_FORM) -> bytes:
    """A batch as a JSON predict body (float32 values print exactly and round-trip). One input:
    its rows as they are; several: TF Serving's named forms, each row an object of its inputs
    (`instances`), or one list per input (`inputs`)."""
    if form not in ANSWER_KEYS:
        raise ValueError(f"unknown request form {form!r}")
    if len(batch.arrays) == 1:
        return json.dumps({form: batch.only.tolist()}).encode()
    if form == COLUMNAR_FORM:
        return json.dumps({form: {n: a.tolist() for n, a in batch.arrays.items()}}).encode()
    columns = {name: array.tolist() for name, array in batch.arrays.items()}
    return json.dumps({form: [{name: column[row] for name, column in columns.items()}
                              for row in range(len(batch))]}).encode()


def encode_npy(batch: Batch) -> bytes:
    """A batch as TorchServe's binary body: an .npy file of the one input (little-endian, C
    order), or an uncompressed .npz of every input, each under its name."""
    buffer = io.BytesIO()
    if len(batch.arrays) == 1:
        array = batch.only
        np.save(buffer, np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")),
                allow_pickle=False)
    else:
        np.savez(buffer, **{name: np.ascontiguousarray(a) for name, a in batch.arrays.items()})
    return buffer.getvalue()


def binary_content_type(body: bytes) -> str:
    """The Content-Type of an encode_npy body: .npz files are zip archives."""
    return NPZ_CONTENT_TYPE if body[:2] == b"PK" else NPY_CONTENT_TYPE


@dataclass(frozen=True)
class Body:
    """One request encoding: how rows become a request, how the answer gives logits back, and
    what carries it (a REST content type, or a gRPC method)."""

    encode: Callable[[Batch, str], bytes]  # (rows, model) -> bytes
    answer: Callable[[bytes, str], np.ndarray]  # (answer bytes, output name) -> logits
    content_type: str = ""  # REST bodies
    grpc_method: str = ""  # gRPC bodies: the method's path
    # REST bodies whose request needs a header computed from the body itself
    headers: Callable[[bytes], dict[str, str]] | None = None

    def request_headers(self, body: bytes) -> dict[str, str]:
        return {"Content-Type": self.content_type, **(self.headers(body) if self.headers else {})}


def _tfserving_request(rows: Batch, model: str) -> bytes:
    from deploybench.serving import protos  # TF Serving's protos, loaded only when needed

    return protos.predict_request(rows, model)


def _tfserving_answer(answer: bytes, output_name: str) -> np.ndarray:
    from deploybench.serving import protos

    return protos.predict_outputs(answer, output_name)


def _oip(function: str) -> Callable[..., Any]:
    """A function of serving/oip.py, imported on first use (it imports this module)."""

    def call(*args: Any) -> Any:
        from deploybench.serving import oip

        return getattr(oip, function)(*args)

    call.__name__ = function
    return call


def _oip_binary_headers(body: bytes) -> dict[str, str]:
    from deploybench.serving import oip

    return {oip.HEADER_LENGTH: str(oip.binary_header_length(body))}


# Request bodies by name (a target's protocol declares which it sends): the same rows each way.
BODIES: dict[str, Body] = {
    # TF Serving's REST predict body, answered by every server speaking TF Serving's REST API
    "json": Body(lambda rows, model: encode(rows),
                 lambda answer, output_name: decode(answer), JSON_CONTENT_TYPE),
    "npy": Body(lambda rows, model: encode_npy(rows),
                lambda answer, output_name: decode(answer), NPY_CONTENT_TYPE,
                headers=lambda body: {"Content-Type": binary_content_type(body)}),
    "tfserving-grpc": Body(_tfserving_request, _tfserving_answer,  # a PredictRequest
                           grpc_method="/tensorflow.serving.PredictionService/Predict"),
    # the Open Inference Protocol (serving/oip.py): REST JSON, REST binary, gRPC
    "oip-json": Body(_oip("json_request"), _oip("rest_outputs"), JSON_CONTENT_TYPE),
    "oip-binary": Body(_oip("binary_request"), _oip("rest_outputs"), "application/octet-stream",
                       headers=_oip_binary_headers),
    "oip-grpc": Body(_oip("grpc_request"), _oip("grpc_outputs"),
                     grpc_method="/inference.GRPCInferenceService/ModelInfer"),
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
