"""The Open Inference Protocol (KServe's V2; Triton, MLServer, OpenVINO Model Server and KServe
speak it): request bodies and answers in one place, for clients and the load generator.

- REST JSON: `POST /v2/models/<model>/infer`, {"inputs": [{"name", "shape", "datatype",
  "data"}]} -> {"outputs": [{"name", "shape", "datatype", "data"}]}.
- REST binary (the binary tensor extension): the same JSON header, the tensor's raw
  little-endian bytes after it, the header's length in `Inference-Header-Content-Length`.
- gRPC: `inference.GRPCInferenceService/ModelInfer`, the tensor in `raw_input_contents`.

The gRPC messages are KServe's generated ones, imported without running `kserve/__init__.py`
(its model server, a second and more of imports; package_stubs.py), so the load generator
stays light.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from deploybench.batch import Batch
from deploybench.serving.package_stubs import empty_packages
from deploybench.serving.payload import PredictionError

with empty_packages("kserve", "kserve.protocol", "kserve.protocol.grpc"):
    from kserve.protocol.grpc import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc

__all__ = ["grpc_predict_v2_pb2", "grpc_predict_v2_pb2_grpc"]

INFER_PATH = "/v2/models/{model}/infer"
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
DATATYPE = "FP32"  # the answer's (logits)
# numpy dtype -> the protocol's datatype name, for the dtypes a public input may have
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32"}


def _tensors(rows: Batch) -> list[tuple[str, np.ndarray, str]]:
    """(name, little-endian contiguous array, datatype) of each input of the batch."""
    tensors = []
    for name, array in rows.arrays.items():
        if array.dtype not in DATATYPES:
            array = array.astype(np.float32)
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        tensors.append((name, array, DATATYPES[array.dtype.newbyteorder("=")]))
    return tensors


def json_request(rows: Batch, model: str) -> bytes:
    """A V2 REST JSON request: each input a tensor, its data a flat list of numbers."""
    return json.dumps({"inputs": [
        {"name": name, "shape": list(array.shape), "datatype": datatype,
         "data": array.ravel().tolist()}
        for name, array, datatype in _tensors(rows)]}).encode()


def binary_request(rows: Batch, model: str) -> bytes:
    """A V2 REST request with the binary tensor extension: JSON header, then each input's raw
    bytes in order. The header's length goes in Inference-Header-Content-Length
    (binary_header_length)."""
    tensors = _tensors(rows)
    header = json.dumps({"inputs": [
        {"name": name, "shape": list(array.shape), "datatype": datatype,
         "parameters": {"binary_data_size": array.nbytes}}
        for name, array, datatype in tensors]})
    return header.encode() + b"".join(array.tobytes() for _, array, _ in tensors)


def binary_header_length(body: bytes) -> int:
    """The length of a binary request's JSON header (what precedes the raw tensor bytes)."""
    try:
        return json.JSONDecoder().raw_decode(body.decode("latin-1"))[1]
    except json.JSONDecodeError as error:
        raise PredictionError(f"not a binary V2 request: {error}") from None


def grpc_request(rows: Batch, model: str) -> bytes:
    """A serialized ModelInferRequest, each input's bytes in raw_input_contents."""
    request = grpc_predict_v2_pb2.ModelInferRequest(model_name=model)
    for name, array, datatype in _tensors(rows):
        tensor = request.inputs.add(name=name, datatype=datatype)
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(array.tobytes())
    return request.SerializeToString()


def rest_outputs(body: bytes | str, output_name: str) -> np.ndarray:
    """The named output of a V2 REST JSON answer (an error answer raises with its message)."""
    try:
        answer = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PredictionError(f"answer is not JSON: {error}") from None
    if not isinstance(answer, dict):
        raise PredictionError("answer is not a JSON object")
    if "error" in answer:
        raise PredictionError(str(answer["error"]))
    for output in answer.get("outputs") or []:
        if isinstance(output, dict) and output.get("name") == output_name:
            return _tensor(output.get("data"), output.get("shape"), output.get("datatype"))
    names = [o.get("name") for o in answer.get("outputs") or [] if isinstance(o, dict)]
    raise PredictionError(f"answer has no output {output_name!r} (has {names})")


def binary_rest_outputs(body: bytes, header_length: int, output_name: str) -> np.ndarray:
    """The named output of a V2 REST answer in the binary tensor extension: a JSON header of
    `header_length` bytes, then each output that declares `binary_data_size` as raw bytes, in
    order (Triton answers so a request sent with a header length of 0, the extension's raw
    body)."""
    try:
        header = json.loads(body[:header_length])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PredictionError(f"answer's header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise PredictionError("answer's header is not a JSON object")
    start = header_length
    for output in header.get("outputs") or []:
        if not isinstance(output, dict):
            continue
        size = (output.get("parameters") or {}).get("binary_data_size")
        raw, start = (body[start:start + size], start + size) if isinstance(size, int) else (
            None, start)
        if output.get("name") != output_name:
            continue
        if raw is None:
            return _tensor(output.get("data"), output.get("shape"), output.get("datatype"))
        if output.get("datatype") != DATATYPE or len(raw) != size or size % 4:
            raise PredictionError(f"output {output_name!r} is not {size} bytes of {DATATYPE}")
        try:
            return np.frombuffer(raw, dtype="<f4").reshape(output.get("shape")).copy()
        except (TypeError, ValueError) as error:
            raise PredictionError(f"output is not a tensor of its shape: {error}") from None
    raise PredictionError(f"answer has no output {output_name!r}")


def grpc_outputs(response: bytes, output_name: str) -> np.ndarray:
    """The named output of a serialized ModelInferResponse (raw contents or typed ones)."""
    message = grpc_predict_v2_pb2.ModelInferResponse.FromString(response)
    for index, output in enumerate(message.outputs):
        if output.name != output_name:
            continue
        shape = list(output.shape)
        if index < len(message.raw_output_contents):
            if output.datatype != DATATYPE:
                raise PredictionError(f"output {output_name!r} is {output.datatype}, "
                                      f"expected {DATATYPE}")
            return np.frombuffer(message.raw_output_contents[index],
                                 dtype="<f4").reshape(shape).copy()
        return _tensor(list(output.contents.fp32_contents), shape, output.datatype)
    names = [o.name for o in message.outputs]
    raise PredictionError(f"answer has no output {output_name!r} (has {names})")


def _tensor(data: Any, shape: Any, datatype: Any) -> np.ndarray:
    if datatype != DATATYPE:
        raise PredictionError(f"output is {datatype}, expected {DATATYPE}")
    try:
        return np.asarray(data, dtype=np.float32).reshape(shape)
    except (TypeError, ValueError) as error:
        raise PredictionError(f"output is not a {shape} tensor: {error}") from None


def metadata_inputs(metadata: dict[str, Any]) -> list[tuple[str, list[int], str]]:
    """(name, shape, datatype) of every input a V2 model metadata answer declares."""
    return [(declared.get("name"), [int(d) for d in declared.get("shape") or []],
             declared.get("datatype"))
            for declared in metadata.get("inputs") or [] if isinstance(declared, dict)]


def metadata_signature(metadata: dict[str, Any]) -> tuple[str, list[int], str]:
    """(name, shape, datatype) of the one input a V2 model metadata answer declares."""
    inputs = metadata.get("inputs") or []
    if len(inputs) != 1:
        raise PredictionError(f"model {metadata.get('name')!r} declares {len(inputs)} inputs; "
                              "the kit sends one")
    declared = inputs[0]
    return declared.get("name"), list(declared.get("shape") or []), declared.get("datatype")
