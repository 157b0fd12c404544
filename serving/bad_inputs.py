"""One bad-input matrix for every server and protocol: each case an abstract defect of a
request, defined once; each request body of payload.BODIES an encoder that writes the case in
its protocol's bytes, or names why the protocol cannot express it (a skip, never silent).

`probe` sends the whole matrix to one target speaking one protocol, on one keep-alive
connection (one channel for gRPC), and judges every answer: a refusal (4xx, or gRPC's
INVALID_ARGUMENT) whose message names the problem passes; a 200, a 5xx, a dropped connection
or no answer fails, unless the protocol's declaration says the server answers that case by
design (a server the kit does not build, TF Serving: `Protocol.by_design`). Afterwards the same
connection must get a good request answered correctly.

A protocol added later gets the matrix by declaring its body: an encoder here per body.
"""

from __future__ import annotations

import http.client
import io
import json
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from deploybench.batch import Batch
from deploybench.serving import payload
from deploybench.serving.input_validation import DATATYPES, inputs_of
from deploybench.serving.payload import PredictionError

GOOD_VALUE = 0.5  # a good float32 value
GOOD_ID = 1  # a good integer value: a token id in every vocabulary, an attention mask's 1
GOOD_LENGTH = 8  # a good row's length along a dynamic axis (a text row's tokens)
HUGE = 2**40  # a size no request can have: rows, or bytes


@dataclass(frozen=True)
class Tensor:
    """One input of a request as a client would send it. `values` are numpy values of any
    dtype (their bytes in binary protocols), or nested lists (ragged rows); `shape` is the
    shape the request declares where it is not the values' own; `datatype` the dtype it
    declares (the Open Inference Protocol's names)."""

    name: str
    values: Any
    shape: tuple[int, ...] | None = None
    datatype: str = "FP32"

    @property
    def declared_shape(self) -> list[int]:
        return list(self.shape if self.shape is not None else np.shape(self.values))


@dataclass(frozen=True)
class Draft:
    """A request before encoding: its inputs, and a defect of the body itself (not-format,
    truncated, length-beyond, negative-size, huge-size), "" for none."""

    tensors: tuple[Tensor, ...]
    defect: str = ""


@dataclass(frozen=True)
class Case:
    name: str
    words: tuple[str, ...]  # any of them in the error message names the problem
    draft: Callable[[dict[str, Any]], Draft]
    # which models' signatures the defect exists for (float values, token ids, ...)
    applies: Callable[[dict[str, Any]], bool] = lambda signature: True


@dataclass(frozen=True)
class Skip:
    """A case the protocol cannot express, and why."""

    reason: str


@dataclass(frozen=True)
class Encoded:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def first(signature: dict[str, Any]) -> dict[str, Any]:
    """The model's first input (the one every case is about)."""
    return inputs_of(signature)[0]


def row_shape(spec: dict[str, Any], length: int | None = None) -> tuple[int, ...]:
    """A good row's shape: each dynamic axis GOOD_LENGTH long (at most its size), or
    `length`."""
    if length is None:
        length = min([GOOD_LENGTH, *(spec["shape"][axis] for axis in spec["dynamic"])])
    return tuple(length if axis in spec["dynamic"] else size
                 for axis, size in enumerate(spec["shape"]))


def good_values(spec: dict[str, Any], count: int, dtype: Any = None,
                length: int | None = None) -> np.ndarray:
    good = GOOD_VALUE if spec["dtype"] == "float32" else GOOD_ID
    return np.full((count, *row_shape(spec, length)), good, dtype=dtype or spec["dtype"])


def rows(signature: dict[str, Any], count: int, dtype: Any = None) -> np.ndarray:
    """`count` good rows of the first input (as `dtype`, default the input's own)."""
    return good_values(first(signature), count, dtype)


def datatype(spec: dict[str, Any]) -> str:
    return DATATYPES[spec["dtype"]]


def _one(signature: dict[str, Any], values: Any, **declared: Any) -> Draft:
    declared.setdefault("datatype", datatype(first(signature)))
    return Draft((Tensor(first(signature)["name"], values, **declared),))


def complete(draft: Draft, signature: dict[str, Any]) -> Draft:
    """A case's draft (about the first input, or about another named input: the id cases)
    with a good tensor for each other input of a model that takes several, as many rows and as
    long as the draft's, in the signature's order: the defect stays the only one. A draft with
    no tensors (the missing-input case) stays empty; one about the first input under another
    name (an unknown name) is not given the first input as well."""
    specs = inputs_of(signature)
    names = {t.name for t in draft.tensors}
    about = next((spec for spec in specs if draft.tensors and spec["name"] ==
                  draft.tensors[0].name), None)
    skip_first = about is None or about is specs[0]
    others = [spec for spec in specs[1 if skip_first else 0:] if spec["name"] not in names]
    if not draft.tensors or not others:
        return draft
    about = about or specs[0]
    values = draft.tensors[0].values
    count, length = 1, None
    if isinstance(values, np.ndarray) and values.ndim == len(about["shape"]) + 1:
        count = values.shape[0]
        length = values.shape[1] if about["dynamic"] else None
    tensors = {t.name: t for t in draft.tensors}
    tensors.update({spec["name"]: Tensor(spec["name"], good_values(spec, count, length=length),
                                         datatype=datatype(spec)) for spec in others})
    order = [spec["name"] for spec in specs if spec["name"] in tensors]
    return replace(draft, tensors=tuple(
        [tensors[name] for name in order] + [t for t in draft.tensors if t.name not in order]))


def _floats(signature: dict[str, Any]) -> bool:
    return first(signature)["dtype"] == "float32"


def _ranged(signature: dict[str, Any]) -> dict[str, Any] | None:
    """The first integer input with a declared range (token ids; any input of a user's model
    imported with --range): the id cases are about it, wherever it is in the signature."""
    return next((spec for spec in inputs_of(signature)
                 if spec["dtype"] == "int32" and spec.get("high") is not None), None)


def _ids(signature: dict[str, Any]) -> bool:
    return _ranged(signature) is not None


def _id_case(values: Callable[[dict[str, Any]], np.ndarray], **declared: Any
             ) -> Callable[[dict[str, Any]], Draft]:
    """A draft of `values(spec)` for the ranged integer input (completed by good others)."""
    def draft(signature: dict[str, Any]) -> Draft:
        spec = _ranged(signature)
        declared.setdefault("datatype", datatype(spec))
        return Draft((Tensor(spec["name"], values(spec), **declared),))

    return draft


def _dynamic(signature: dict[str, Any]) -> bool:
    return bool(first(signature)["dynamic"])


def _shares_length(signature: dict[str, Any]) -> bool:
    """Whether a second input is as long as the first (token ids and their mask)."""
    specs = inputs_of(signature)
    return len(specs) > 1 and bool(set(specs[0]["dynamic"]) & set(specs[1]["dynamic"]))


def _mask_shorter(signature: dict[str, Any]) -> Draft:
    ids, mask = inputs_of(signature)[:2]
    return Draft((Tensor(ids["name"], good_values(ids, 1), datatype=datatype(ids)),
                  Tensor(mask["name"], good_values(mask, 1, length=GOOD_LENGTH - 1),
                         datatype=datatype(mask))))


def _too_long(signature: dict[str, Any]) -> Draft:
    longest = max(first(signature)["shape"][axis] for axis in first(signature)["dynamic"])
    return Draft(tuple(Tensor(spec["name"], good_values(spec, 1, length=longest + 1),
                              datatype=datatype(spec))
                       for spec in inputs_of(signature) if spec["dynamic"]))


def _with(values: np.ndarray, value: float) -> np.ndarray:
    values = values.copy()
    values.flat[0] = value
    return values


def _ragged(signature: dict[str, Any]) -> list[Any]:
    row = rows(signature, 1)[0].tolist()
    return [row, np.asarray(row).ravel()[:1].tolist()]


def _body_defect(defect: str) -> Callable[[dict[str, Any]], Draft]:
    return lambda signature: replace(_one(signature, rows(signature, 1)), defect=defect)


# The defects, defined once. Words: the kit's servers' (serving/input_validation.py), TF
# Serving's own (json_tensor.cc, predict_util.cc; the test double speaks them) and Triton's
# front ends' (infer_request.cc, http_server.cc: "unexpected shape", "data-type is", ...).
CASES: tuple[Case, ...] = (
    Case("non-finite value", ("non-finite", "nan"),
         lambda s: _one(s, _with(rows(s, 1), np.nan)), _floats),
    Case("value beyond float32", ("float32 range", "without loss of precision"),
         lambda s: _one(s, _with(rows(s, 1, np.float64), 1e39)), _floats),
    Case("wrong rank", ("wrong shape", "expects [", "incorrect level", "unexpected level",
                        "unexpected shape", "batch size does not match"),
         lambda s: _one(s, rows(s, 1).ravel())),
    Case("wrong size for the declared shape",
         ("wrong size", "declares", "reshape", "tensor size", "parsing error",
          "byte size mismatch", "batch size does not match"),
         lambda s: _one(s, rows(s, 1), shape=(2, *row_shape(first(s))))),
    Case("wrong dtype", ("wrong dtype", "not of expected type", "expects arg", "data-type is"),
         lambda s: _one(s, rows(s, 1, np.bool_), datatype="BOOL")),
    Case("ragged rows", ("ragged", "tensor size", "unexpected size"),
         lambda s: _one(s, _ragged(s))),
    Case("empty batch", ("empty", "no values", "got 0"),
         lambda s: _one(s, rows(s, 0))),
    Case("more rows than max_rows", ("too many rows", "batch-size must be"),
         lambda s: _one(s, rows(s, s["max_rows"] + 1))),
    Case("missing input", ("missing input", "missing named input", "does not match signature",
                           "missing required input"),
         lambda s: Draft(())),
    Case("unknown input name", ("unknown input name", "not found in signature",
                                "does not have named input", "keys must be equal",
                                "unexpected inference input"),
         lambda s: Draft((Tensor(first(s)["name"] + "_unknown", rows(s, 1),
                                 datatype=datatype(first(s))),))),
    Case("extra input", ("extra input", "does not match signature", "does not have named input",
                         "inputs but got"),
         lambda s: Draft((Tensor(first(s)["name"], rows(s, 1), datatype=datatype(first(s))),
                          Tensor(first(s)["name"] + "_extra", rows(s, 1),
                                 datatype=datatype(first(s)))))),
    Case("strings where numbers go", ("wrong dtype", "not of expected type", "expects arg",
                                      "data-type is"),
         lambda s: _one(s, rows(s, 1).astype(str), datatype="BYTES")),
    Case("not the protocol's format", ("malformed", "json", "parse", "not a", "unrecognized"),
         _body_defect("not-format")),
    Case("truncated body", ("malformed", "truncated", "declares", "json", "parse", "follow",
                            "unrecognized", "additional bytes"),
         _body_defect("truncated")),
    Case("header length beyond the body", ("malformed", "beyond", "header", "declares"),
         _body_defect("length-beyond")),
    Case("negative size in a header", ("negative", "wrong shape", "not a size", "not a list",
                                       "malformed", "parsing error", "byte size mismatch",
                                       "batch size does not match"),
         _body_defect("negative-size")),
    Case("huge size in a header", ("too many rows", "declares", "reshape", "malformed",
                                   "not a size", "parsing error", "additional bytes",
                                   "wrong shape", "byte size mismatch"),
         _body_defect("huge-size")),
    # token ids and their mask (a text model)
    Case("id beyond the vocabulary", ("out of range", "indices"),
         _id_case(lambda spec: _with(good_values(spec, 1), spec["high"])), _ids),
    Case("negative id", ("out of range", "negative"),
         _id_case(lambda spec: _with(good_values(spec, 1), -1)), _ids),
    Case("float ids", ("wrong dtype", "not of expected type", "expects arg", "data-type is"),
         _id_case(lambda spec: good_values(spec, 1, np.float32) + np.float32(0.5),
                  datatype="FP32"), _ids),
    Case("longer than the model's maximum", ("too long", "wrong shape", "expects ["),
         _too_long, _dynamic),
    Case("mask shorter than the ids", ("shape mismatch", "as long as", "incompatible"),
         _mask_shorter, _shares_length),
)
CASE_NAMES = tuple(case.name for case in CASES)
# the verdict of a case that brings the server down by a known bug (Protocol.crashes): not sent,
# and a failure
KNOWN_CRASH = "crashes the server"

_DATATYPE_DTYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "BOOL": np.dtype("?"),
                    "INT32": np.dtype("<i4")}


def _consistent(tensor: Tensor) -> bool:
    """Whether the values can be sent as raw bytes of the declared datatype: a float64 value
    beyond float32 declared FP32 cannot (only a JSON number can carry it)."""
    values = tensor.values
    if not isinstance(values, np.ndarray):
        return False
    if tensor.datatype == "BYTES":
        return values.dtype.kind == "U"
    expected = _DATATYPE_DTYPES.get(tensor.datatype)
    return expected is not None and values.dtype == expected


def _raw(tensor: Tensor) -> bytes:
    """The values as the binary extension and gRPC's raw contents carry them; BYTES elements
    each with a 4-byte little-endian length first."""
    if tensor.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(item.encode())) + item.encode()
                        for item in tensor.values.ravel().tolist())
    return np.ascontiguousarray(tensor.values, dtype=_DATATYPE_DTYPES[tensor.datatype]).tobytes()


def _json_ready(values: Any) -> Any:
    return values.tolist() if isinstance(values, np.ndarray) else values


def _json(data: Any) -> bytes:
    return json.dumps(data, allow_nan=True).encode()  # NaN as a client's json.dumps writes it


def _good(encoder: Callable[[Draft, dict[str, Any], str], Encoded | Skip],
          draft: Draft, signature: dict[str, Any], model: str) -> Encoded:
    encoded = encoder(replace(draft, defect=""), signature, model)
    assert isinstance(encoded, Encoded)
    return encoded


NO_SIZES = "its tensors carry no declared sizes or lengths"


# --- TF Serving's REST predict body (TF Serving, TorchServe's JSON, KServe's V1) ---------------

def encode_rest_json(draft: Draft, signature: dict[str, Any], model: str) -> Encoded | Skip:
    if draft.defect == "not-format":
        return Encoded(b"<predict>not JSON</predict>")
    if draft.defect == "truncated":
        body = _good(encode_rest_json, draft, signature, model).body
        return Encoded(body[: len(body) // 2])
    if draft.defect:
        return Skip(f"JSON rows: {NO_SIZES}")
    if any(tensor.shape is not None for tensor in draft.tensors):
        return Skip("JSON rows carry their own shape: nothing is declared to differ from")
    name = first(signature)["name"]
    if len(draft.tensors) == 1 and draft.tensors[0].name == name:
        (tensor,) = draft.tensors
        return Encoded(_json({"instances": _json_ready(tensor.values)}))
    # named inputs: the columnar form ({"inputs": {name: rows}}) names each one
    return Encoded(_json({"inputs": {t.name: _json_ready(t.values) for t in draft.tensors}}))


# --- TorchServe's .npy body -------------------------------------------------------------------

def npy_file(array: np.ndarray, shape: tuple[int, ...] | None = None,
             header_length: int | None = None) -> bytes:
    """An .npy file of `array`, its header declaring `shape` (default: the array's) and, with
    `header_length`, a header length that is not the header's."""
    header = repr({"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False,
                   "shape": tuple(array.shape if shape is None else shape)})
    text = header + " " * ((-(len(header) + 11)) % 64) + "\n"
    length = len(text) if header_length is None else header_length
    return (b"\x93NUMPY\x01\x00" + struct.pack("<H", length) + text.encode("latin-1")
            + np.ascontiguousarray(array).tobytes())


def encode_npy(draft: Draft, signature: dict[str, Any], model: str) -> Encoded | Skip:
    """TorchServe's binary body: an .npy of the one input, an .npz of a model's several."""
    several = len(inputs_of(signature)) > 1
    tensors = draft.tensors
    if not several and (len(tensors) != 1 or tensors[0].name != first(signature)["name"]):
        return Skip(".npy is one unnamed array: it names no input")
    if any(not isinstance(t.values, np.ndarray) for t in tensors):
        return Skip(".npy holds one rectangular array: its rows cannot be ragged")
    if any(not _consistent(t) for t in tensors):
        return Skip(f"an .npy array of {datatype(first(signature))} cannot hold a value of "
                    "another type")

    def member(tensor: Tensor, defect: str) -> bytes:
        values, shape = tensor.values, row_shape(first(signature))
        return {
            "length-beyond": lambda: npy_file(values, header_length=65_000),
            "negative-size": lambda: npy_file(values, shape=(-1, *shape)),
            "huge-size": lambda: npy_file(values, shape=(HUGE, *shape)),
        }.get(defect, lambda: npy_file(values, shape=tensor.shape))()

    if not several:
        (tensor,) = tensors
        defects = {"not-format": lambda: b"\x00" * 128,
                   "truncated": lambda: npy_file(tensor.values)[:-10]}
        body = defects.get(draft.defect, lambda: member(tensor, draft.defect))()
        return Encoded(body, {"Content-Type": payload.NPY_CONTENT_TYPE})
    headers = {"Content-Type": payload.NPZ_CONTENT_TYPE}
    if draft.defect == "not-format":
        return Encoded(b"\x00" * 128, headers)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as npz:
        for index, tensor in enumerate(tensors):  # a header defect in the first member
            npz.writestr(f"{tensor.name}.npy",
                         member(tensor, draft.defect if index == 0 else ""))
    body = archive.getvalue()
    return Encoded(body[:-10] if draft.defect == "truncated" else body, headers)


# --- TF Serving's gRPC PredictRequest ---------------------------------------------------------

def encode_tfserving_grpc(draft: Draft, signature: dict[str, Any], model: str) -> Encoded | Skip:
    from deploybench.serving import protos

    if draft.defect == "length-beyond":
        return Skip("gRPC frames its messages itself: a length beyond the message is the "
                    "truncated body")
    request = protos.predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = protos.SIGNATURE
    for tensor in draft.tensors:
        if not isinstance(tensor.values, np.ndarray):
            return Skip("a TensorProto is one rectangular array: its rows cannot be ragged")
        if not _consistent(tensor):
            return Skip("a float TensorProto cannot hold a value beyond float32")
        proto = request.inputs[tensor.name]
        for size in _header_shape(tensor, draft.defect):
            proto.tensor_shape.dim.add(size=size)
        if tensor.datatype == "BYTES":
            proto.dtype = protos.types_pb2.DT_STRING
            proto.string_val.extend(item.encode() for item in tensor.values.ravel().tolist())
        else:
            proto.dtype = {"FP32": protos.types_pb2.DT_FLOAT,
                           "INT32": protos.types_pb2.DT_INT32,
                           "BOOL": protos.types_pb2.DT_BOOL}[tensor.datatype]
            proto.tensor_content = _raw(tensor)
    body = request.SerializeToString()
    return _grpc_body_defect(draft.defect, body)


def _header_shape(tensor: Tensor, defect: str) -> list[int]:
    """The shape a request declares for `tensor`: its batch size negative or huge where the
    defect says so."""
    shape = tensor.declared_shape
    if defect in ("negative-size", "huge-size"):
        return [-1 if defect == "negative-size" else HUGE, *shape[1:]]
    return shape


def _grpc_body_defect(defect: str, body: bytes) -> Encoded:
    if defect == "not-format":
        return Encoded(b"\x0a\xff\xff\xff\xff\x0f")  # field 1, a length beyond any message
    if defect == "truncated":
        return Encoded(body[: len(body) - 10])
    return Encoded(body)


# --- the Open Inference Protocol: REST JSON, REST binary, gRPC --------------------------------

def encode_oip_json(draft: Draft, signature: dict[str, Any], model: str) -> Encoded | Skip:
    if draft.defect == "not-format":
        return Encoded(b"<infer>not JSON</infer>", {"Content-Type": payload.JSON_CONTENT_TYPE})
    if draft.defect == "truncated":
        body = _good(encode_oip_json, draft, signature, model).body
        return Encoded(body[: len(body) // 2], {"Content-Type": payload.JSON_CONTENT_TYPE})
    if draft.defect == "length-beyond":
        return Skip("a JSON body declares no lengths")
    inputs = []
    for tensor in draft.tensors:
        values = tensor.values
        data = (values.ravel().tolist() if isinstance(values, np.ndarray) else values)
        if tensor.shape is None and not isinstance(values, np.ndarray):
            shape = [len(values), *row_shape(first(signature))]  # ragged: good rows' shape
        else:
            shape = _header_shape(tensor, draft.defect)
        inputs.append({"name": tensor.name, "shape": shape, "datatype": tensor.datatype,
                       "data": data})
    return Encoded(_json({"inputs": inputs}), {"Content-Type": payload.JSON_CONTENT_TYPE})


def encode_oip_binary(draft: Draft, signature: dict[str, Any], model: str) -> Encoded | Skip:
    from deploybench.serving import oip

    inputs, raw = [], b""
    for tensor in draft.tensors:
        if not isinstance(tensor.values, np.ndarray):
            return Skip("raw tensor bytes carry no rows: they cannot be ragged")
        if not _consistent(tensor):
            return Skip("raw FP32 bytes cannot hold a value beyond float32")
        data = _raw(tensor)
        size = {"negative-size": -len(data), "huge-size": HUGE}.get(draft.defect, len(data))
        inputs.append({"name": tensor.name, "shape": tensor.declared_shape,
                       "datatype": tensor.datatype, "parameters": {"binary_data_size": size}})
        raw += data
    header = json.dumps({"inputs": inputs}).encode()
    body = header + raw
    length = len(header)
    if draft.defect == "not-format":
        body, length = b"\x00\x01not a JSON header" + raw, 18
    elif draft.defect == "truncated":
        body = body[:-10]
    elif draft.defect == "length-beyond":
        length = len(body) + 100
    return Encoded(body, {"Content-Type": oip.BINARY_CONTENT_TYPE, oip.HEADER_LENGTH: str(length)})


def encode_oip_grpc(draft: Draft, signature: dict[str, Any], model: str) -> Encoded | Skip:
    from deploybench.serving import oip

    if draft.defect == "length-beyond":
        return Skip("gRPC frames its messages itself: a length beyond the message is the "
                    "truncated body")
    request = oip.grpc_predict_v2_pb2.ModelInferRequest(model_name=model)
    for tensor in draft.tensors:
        if not isinstance(tensor.values, np.ndarray):
            return Skip("raw tensor contents carry no rows: they cannot be ragged")
        if not _consistent(tensor):
            return Skip("raw FP32 contents cannot hold a value beyond float32")
        declared = request.inputs.add(name=tensor.name, datatype=tensor.datatype)
        declared.shape.extend(_header_shape(tensor, draft.defect))
        request.raw_input_contents.append(_raw(tensor))
    return _grpc_body_defect(draft.defect, request.SerializeToString())


# One encoder per request body (payload.BODIES): a protocol gets the matrix through its body.
ENCODERS: dict[str, Callable[[Draft, dict[str, Any], str], Encoded | Skip]] = {
    "json": encode_rest_json,
    "npy": encode_npy,
    "tfserving-grpc": encode_tfserving_grpc,
    "oip-json": encode_oip_json,
    "oip-binary": encode_oip_binary,
    "oip-grpc": encode_oip_grpc,
}


def encode(case: Case, body: str, signature: dict[str, Any], model: str) -> Encoded | Skip:
    """`case` in the bytes of request body `body`, or why that body cannot carry it."""
    if body not in ENCODERS:
        return Skip(f"no bad-input encoder for request body {body!r}")
    return ENCODERS[body](complete(case.draft(signature), signature), signature, model)


def cases_for(signature: dict[str, Any], cases: tuple[Case, ...] = CASES) -> tuple[Case, ...]:
    """The cases that are defects for this model's inputs (no NaN in token ids)."""
    return tuple(case for case in cases if case.applies(signature))


# --- sending the matrix -----------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """What one case got: `status` the HTTP status or gRPC code ("skipped", "no answer",
    "connection dropped"), `verdict` refused | by design | skipped | FAILED, `why` the reason
    of a failure, a skip or a declared deviation, `message` the server's error message."""

    case: str
    status: str
    verdict: str
    why: str = ""
    message: str = ""
    closed: bool = False  # REST: the server closed the connection after answering

    @property
    def ok(self) -> bool:
        return self.verdict not in ("FAILED", KNOWN_CRASH)


@dataclass
class Probe:
    target: str
    protocol: str
    outcomes: list[Outcome]
    good_answer: str  # "correct", or why not
    connection_kept: bool  # REST: one connection from first case to last
    closes_by_design: str = ""  # why the server closes the connection after a refusal

    @property
    def ok(self) -> bool:
        return (all(o.ok for o in self.outcomes) and self.good_answer == "correct"
                and (self.connection_kept or bool(self.closes_by_design)))

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "protocol": self.protocol, "ok": self.ok,
                "good_answer": self.good_answer, "connection_kept": self.connection_kept,
                "closes_by_design": self.closes_by_design,
                "cases": [o.__dict__ for o in self.outcomes]}


@dataclass(frozen=True)
class Reply:
    status: int | str  # an HTTP status, or a gRPC status code's name
    body: bytes
    refused: bool  # a 4xx, or a gRPC client-error code (GRPC_CLIENT_ERRORS)
    message: str
    closed: bool = False
    # an answer in the OIP binary extension: its JSON header's length (the response header)
    header_length: int | None = None


class RESTSender:
    """Requests to one predict path on one keep-alive connection, noting when the server
    closes it (the next request then opens a new one)."""

    def __init__(self, url: str, path: str, timeout: float) -> None:
        from deploybench.serving.targets import host_port

        host, port = host_port(url)
        self.path = path
        self.connection = http.client.HTTPConnection(host, port, timeout=timeout)
        self.first_socket: Any = None
        self.kept = True

    def send(self, encoded: Encoded) -> Reply:
        headers = {"Content-Type": payload.JSON_CONTENT_TYPE, **encoded.headers}
        self.connection.request("POST", self.path, body=encoded.body, headers=headers)
        response = self.connection.getresponse()
        body = response.read()
        name = self.connection.sock.getsockname() if self.connection.sock else None
        self.first_socket = self.first_socket or name
        closed = response.will_close or name != self.first_socket
        if closed:
            self.kept = False
            self.connection.close()  # the next request opens a new one
            self.first_socket = None
        length = response.getheader("Inference-Header-Content-Length")  # oip.HEADER_LENGTH
        return Reply(response.status, body, 400 <= response.status < 500,
                     payload.error_message(body, response.status), closed,
                     int(length) if length and length.isdigit() else None)

    def close(self) -> None:
        self.connection.close()
        self.first_socket = None


# gRPC's codes for a request the client got wrong (HTTP's 4xx): the fuzzer's refusals; a case
# of the matrix, a bad argument, must be INVALID_ARGUMENT
GRPC_CLIENT_ERRORS = ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "OUT_OF_RANGE",
                      "UNIMPLEMENTED")


class GRPCSender:
    """Serialized requests to one unary method on one channel."""

    def __init__(self, address: str, method: str, timeout: float) -> None:
        import grpc

        self.grpc = grpc
        self.channel = grpc.insecure_channel(address)
        self.call = self.channel.unary_unary(method, request_serializer=None,
                                             response_deserializer=None)
        self.timeout = timeout
        self.kept = True

    def send(self, encoded: Encoded) -> Reply:
        try:
            return Reply(200, self.call(encoded.body, timeout=self.timeout), False, "")
        except self.grpc.RpcError as error:
            code = error.code()
            return Reply(code.name if code else "UNKNOWN", b"",
                         code is not None and code.name in GRPC_CLIENT_ERRORS,
                         error.details() or "")

    def close(self) -> None:
        self.channel.close()


def parses(body: str, data: bytes) -> bool:
    """Whether `data` is a message of gRPC request body `body` (True for a REST body)."""
    from deploybench.serving import oip, protos

    message = {"tfserving-grpc": protos.predict_pb2.PredictRequest,
               "oip-grpc": oip.grpc_predict_v2_pb2.ModelInferRequest}.get(body)
    if message is None:
        return True
    try:
        message.FromString(data)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError, and its C implementation's
        return False
    return True


def sender_for(target: str, protocol: str, address: str, model: str,
               timeout: float = 30.0) -> RESTSender | GRPCSender:
    """One connection (REST) or channel (gRPC) to `target`'s predict method for `model`."""
    from deploybench.serving import targets

    declared = targets.get(target).protocol(protocol)
    method = payload.BODIES[declared.body].grpc_method
    if method:
        return GRPCSender(address, method, timeout)
    return RESTSender(address, declared.client.PREDICT_PATH.format(model=model), timeout)


def survives(sender: RESTSender | GRPCSender, encoded: Encoded, body: payload.Body,
             output_name: str, closes_by_design: bool = False,
             nonfinite_by_design: bool = False, unparsed_by_design: bool = False,
             server_errors_by_design: bool = False, multiline_by_design: bool = False) -> str:
    """The fuzzer's property for one request: a refusal (4xx, INVALID_ARGUMENT) or a readable
    answer of finite logits (any logits, where the server runs non-finite values by design);
    never a 5xx, another gRPC code, a dropped connection or no answer. "" when it holds,
    else what happened. `unparsed_by_design`: bytes that are not the protocol's message, which
    the server answers its own way by design (TF Serving's gRPC: INTERNAL);
    `server_errors_by_design`: a server that answers 5xx for some malformed bodies (Triton's
    HTTP front end), one line on a connection kept open; `multiline_by_design`: a server whose
    refusal may quote the request's text, newlines and all (Triton)."""
    try:
        reply = sender.send(encoded)
    except TimeoutError:
        sender.close()
        return "no answer within the timeout"
    except (OSError, http.client.HTTPException) as error:
        sender.close()
        return f"connection dropped: {type(error).__name__}: {error}"
    if reply.closed and not (closes_by_design and reply.refused):
        return f"{reply.status}, and the server closed the connection"
    server_error = isinstance(reply.status, int) and reply.status >= 500
    if reply.refused or (unparsed_by_design and reply.status != 200) or (
            server_errors_by_design and server_error):
        one_line = "\n" not in reply.message or multiline_by_design
        return "" if one_line else "a refusal whose message spans lines"
    if reply.status == 200:
        seen = _answer_check(reply, body, output_name)
        readable = seen.endswith("rows of finite logits") or (
            nonfinite_by_design and seen == "non-finite logits")
        return "" if readable else f"200 with {seen}"
    return f"{reply.status}: {reply.message[:200]}"


def probe(target: str, protocol: str, address: str, model: str, signature: dict[str, Any],
          good_rows: Batch, reference: np.ndarray, tolerance: float,
          output_name: str = "logits", timeout: float = 30.0,
          cases: tuple[Case, ...] = CASES) -> Probe:
    """Every case of the matrix to `target` speaking `protocol` at `address`, on one
    connection; then one good request of `good_rows`, whose answer must match `reference`."""
    from deploybench.serving import targets

    server = targets.get(target)
    declared = server.protocol(protocol)
    body = payload.BODIES[declared.body]
    by_design, crashes = dict(declared.by_design), dict(declared.crashes)
    sender = sender_for(target, protocol, address, model, timeout)
    outcomes = []
    try:
        for case in cases_for(signature, cases):
            if case.name in crashes:  # sending it would end the probe, and the server
                outcomes.append(Outcome(case.name, "not sent", KNOWN_CRASH, crashes[case.name]))
                continue
            encoded = encode(case, declared.body, signature, model)
            if isinstance(encoded, Skip):
                outcomes.append(Outcome(case.name, "skipped", "skipped", encoded.reason))
                continue
            outcomes.append(_judge(case, sender, encoded, body, output_name,
                                   by_design.get(case.name), bool(server.closes_after_error)))
        good = body.encode(good_rows, model)
        headers = body.request_headers(good) if not body.grpc_method else {}
        good_answer = _good_answer(sender, Encoded(good, headers), body, output_name,
                                   reference, tolerance)
    finally:
        sender.close()
    return Probe(target, protocol, outcomes, good_answer, sender.kept,
                 server.closes_after_error)


def _judge(case: Case, sender: Any, encoded: Encoded, body: payload.Body, output_name: str,
           by_design: str | None, closes_by_design: bool) -> Outcome:
    try:
        reply = sender.send(encoded)
    except TimeoutError:
        return Outcome(case.name, "no answer", "FAILED", "no answer within the timeout")
    except (OSError, http.client.HTTPException) as error:
        sender.close()  # the next request opens a new connection
        sender.kept = False
        return Outcome(case.name, "connection dropped", "FAILED",
                       f"{type(error).__name__}: {error}", closed=True)
    status = str(reply.status)
    if reply.closed and not (closes_by_design and reply.refused):
        return Outcome(case.name, status, "FAILED", "the server closed the connection",
                       reply.message[:300], closed=True)
    message = " ".join(reply.message.split())
    named = reply.refused and status not in GRPC_CLIENT_ERRORS[1:] and any(
        w in message.lower() for w in case.words)
    if by_design is not None and not named:  # what this server does, declared
        seen = (_answer_check(reply, body, output_name) if reply.status == 200
                else message[:200])
        return Outcome(case.name, status, "by design", f"{by_design}; answer: {seen}")
    if reply.refused and status not in GRPC_CLIENT_ERRORS[1:]:
        if "\n" in reply.message or not named:
            return Outcome(case.name, status, "FAILED",
                           f"the message names none of {list(case.words)}", message[:300])
        return Outcome(case.name, status, "refused", message=message[:300], closed=reply.closed)
    if reply.status == 200:
        answered = _answer_check(reply, body, output_name)
        return Outcome(case.name, status, "FAILED", f"answered 200 ({answered})")
    return Outcome(case.name, status, "FAILED", f"not a refusal: {reply.message[:200]}",
                   reply.message[:300])


def _answer_check(reply: Reply, body: payload.Body, output_name: str) -> str:
    try:
        if reply.header_length is not None:  # the binary extension's answer
            from deploybench.serving import oip

            logits = oip.binary_rest_outputs(reply.body, reply.header_length, output_name)
        else:
            logits = body.answer(reply.body, output_name)
    except PredictionError as error:
        return f"unreadable: {error}"
    if not np.all(np.isfinite(logits)):
        return "non-finite logits"
    return f"{logits.shape[0] if logits.ndim else 0} rows of finite logits"


def _good_answer(sender: Any, encoded: Encoded, body: payload.Body, output_name: str,
                 reference: np.ndarray, tolerance: float) -> str:
    try:
        reply = sender.send(encoded)
    except (OSError, http.client.HTTPException) as error:
        return f"no answer: {type(error).__name__}: {error}"
    if reply.status != 200:
        return f"{reply.status}: {reply.message[:200]}"
    try:
        logits = body.answer(reply.body, output_name)
    except PredictionError as error:
        return f"unreadable answer: {error}"
    ok, why = payload.matches_reference(logits, reference, tolerance)
    return "correct" if ok else why


def table(probes: list[Probe]) -> tuple[list[str], list[list[str]]]:
    """The matrix as a table: a row per case, a column per target and protocol, each cell the
    status (or "skipped"), marked where it failed."""
    columns = [f"{p.target} {p.protocol}" for p in probes]
    body_rows = []
    seen = {o.case for p in probes for o in p.outcomes}  # the cases the model has
    for name in (n for n in CASE_NAMES if n in seen):
        cells = []
        for result in probes:
            outcome = next((o for o in result.outcomes if o.case == name), None)
            if outcome is None:
                cells.append("")
            elif outcome.verdict == "by design":
                cells.append(f"{outcome.status} (by design)")
            elif outcome.verdict == KNOWN_CRASH:
                cells.append("not sent: CRASHES the server (known)")
            else:
                closed = ", closed" + (" (by design)" if result.closes_by_design else "")
                cells.append(outcome.status + (closed if outcome.closed else "")
                             + (" FAILED" if not outcome.ok else ""))
        body_rows.append([name, *cells])
    body_rows.append(["good request afterwards",
                      *[p.good_answer + ("" if p.connection_kept else ", reconnected")
                        for p in probes]])
    return ["case", *columns], body_rows



def probe_target(target: str, endpoints: Any, root: Path, model: str,
                 protocols: tuple[str, ...] | None = None, timeout: float = 30.0) -> list[Probe]:
    """The matrix to every protocol of `target` (or `protocols`) at `endpoints`, about the
    exported `model` under `root`: its signature and golden samples."""
    from deploybench.golden import Golden
    from deploybench.manifest import FP32_TOLERANCE, load_manifest
    from deploybench.serving import targets

    manifest = load_manifest(root, model)
    golden = Golden.of(root, manifest)
    count = min(4, manifest.max_rows, len(golden.inputs))
    tolerance = float(manifest.tolerance.get("fp32_max_abs_diff", FP32_TOLERANCE))
    return [probe(target, protocol, endpoints.address(target, protocol), model,
                  manifest.signature(), golden.inputs[:count], golden.outputs[:count],
                  tolerance, manifest.outputs[0].name, timeout)
            for protocol in protocols or targets.get(target).protocol_names]
