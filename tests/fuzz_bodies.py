"""Hypothesis strategies for malformed and boundary request bodies, one per request body of
payload.BODIES (the bad-input matrix's encoders name the same bodies): random JSON shapes, a
valid binary header with random bytes after it, random protobuf fields. Used by the fuzz tests
(a bounded number of examples per protocol, in `make test`) and by the longer run
(tests/fuzz_decoders.py)."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from hypothesis import strategies as st

from deploybench.serving import payload
from deploybench.serving.bad_inputs import Encoded, npy_file

SIZES = st.one_of(st.integers(-3, 70), st.sampled_from([2**31, 2**40, 2**63 - 1]))
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(-(2**70), 2**70), st.sampled_from([1e39, -1e39, 3.4e38, 1e-46]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=6))
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=40)
DATATYPES = st.sampled_from(["FP32", "FP64", "FP16", "INT32", "INT64", "BOOL", "BYTES", "UINT8",
                             "fp32", ""])


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def _rows(draw: st.DrawFn, signature: dict[str, Any]) -> Any:
    """Rows near the model's shape: the right shape or one size off, any numbers in them."""
    shape = [draw(st.integers(0, signature["max_rows"] + 2)), *signature["input_shape"]]
    if draw(st.booleans()):
        axis = draw(st.integers(0, len(shape) - 1))
        shape[axis] = max(0, shape[axis] + draw(st.sampled_from([-1, 1])))
    size = int(np.prod(shape))
    values = draw(st.lists(NUMBERS, min_size=min(size, 8), max_size=min(size, 8)))
    flat = (values * (size // max(len(values), 1) + 1))[:size] if values else [0.5] * size
    array = np.array(flat, dtype=object).reshape(shape) if size else np.zeros(shape)
    return array.tolist()


def _near_rows(signature: dict[str, Any]) -> st.SearchStrategy[Any]:
    return st.one_of(_rows(signature), JSON_VALUES)


def rest_json(signature: dict[str, Any], model: str) -> st.SearchStrategy[Encoded]:
    name = signature["input_name"]
    rows = _near_rows(signature)
    documents = st.one_of(
        st.fixed_dictionaries({"instances": rows}),
        st.fixed_dictionaries({"inputs": rows}),
        st.fixed_dictionaries({"inputs": st.dictionaries(st.sampled_from([name, "x", ""]), rows,
                                                         max_size=2)}),
        st.fixed_dictionaries({"instances": st.lists(st.dictionaries(
            st.sampled_from([name, "x"]), rows, max_size=2), max_size=3)}),
        st.fixed_dictionaries({"signature_name": JSON_VALUES, "instances": rows}),
        JSON_VALUES,
    )
    return st.one_of(documents.map(lambda d: Encoded(_dumps(d))),
                     st.binary(max_size=300).map(Encoded))


@st.composite
def _npy(draw: st.DrawFn, signature: dict[str, Any]) -> bytes:
    shape = tuple(draw(st.lists(SIZES, max_size=4)))
    descr = draw(st.sampled_from(["<f4", ">f4", "<f8", "<f2", "|b1", "<i4", "<U3", "|O", "V8",
                                  "<c8", "nonsense"]))
    fortran = draw(st.one_of(st.booleans(), st.none()))
    header = draw(st.one_of(
        st.just(repr({"descr": descr, "fortran_order": fortran, "shape": shape})),
        st.text(max_size=80)))
    text = header + " " * ((-(len(header) + 11)) % 64) + "\n"
    length = draw(st.one_of(st.just(len(text.encode())), st.integers(0, 70_000)))
    data = draw(st.one_of(st.binary(max_size=600), st.just(np.full(
        (1, *signature["input_shape"]), np.nan, np.float32).tobytes())))
    version = draw(st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x09\x09"]))
    size = struct.pack("<H", min(length, 65535)) if version == b"\x01\x00" else struct.pack(
        "<I", length)
    return b"\x93NUMPY" + version + size + text.encode("utf-8") + data


def npy(signature: dict[str, Any], model: str) -> st.SearchStrategy[Encoded]:
    headers = {"Content-Type": payload.NPY_CONTENT_TYPE}
    valid = st.builds(lambda values: npy_file(np.array(values, dtype=np.float32).reshape(
        1, *signature["input_shape"])), st.lists(
            st.floats(width=32, allow_nan=True, allow_infinity=True),
            min_size=int(np.prod(signature["input_shape"])),
            max_size=int(np.prod(signature["input_shape"]))))
    return st.one_of(_npy(signature), valid, st.binary(max_size=300)).map(
        lambda body: Encoded(body, headers))


@st.composite
def _tensor_proto(draw: st.DrawFn, signature: dict[str, Any]) -> Any:
    from deploybench.serving import protos

    proto = protos.tensor_pb2.TensorProto(dtype=draw(st.integers(0, 30)))
    for size in draw(st.lists(SIZES, max_size=4)):
        proto.tensor_shape.dim.add(size=size)
    if draw(st.booleans()):
        proto.tensor_content = draw(st.binary(max_size=600))
    else:
        proto.float_val.extend(draw(st.lists(st.floats(width=32), max_size=70)))
    return proto


@st.composite
def _predict_request(draw: st.DrawFn, signature: dict[str, Any], model: str) -> bytes:
    from deploybench.serving import protos

    request = protos.predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = draw(st.sampled_from(["serving_default", "", "x"]))
    for name in draw(st.lists(st.sampled_from([signature["input_name"], "x"]), max_size=2,
                              unique=True)):
        request.inputs[name].CopyFrom(draw(_tensor_proto(signature)))
    return request.SerializeToString()


def tfserving_grpc(signature: dict[str, Any], model: str) -> st.SearchStrategy[Encoded]:
    return st.one_of(_predict_request(signature, model), st.binary(max_size=300)).map(Encoded)


def _v2_input(signature: dict[str, Any], binary: bool) -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, Any] = {
        "name": st.sampled_from([signature["input_name"], "x", ""]),
        "shape": st.one_of(st.lists(SIZES, max_size=4), JSON_VALUES),
        "datatype": st.one_of(DATATYPES, JSON_VALUES),
    }
    if binary:
        fields["parameters"] = st.fixed_dictionaries(
            {"binary_data_size": st.one_of(SIZES, JSON_VALUES)})
    else:
        fields["data"] = _near_rows(signature)
    return st.fixed_dictionaries(fields)


def oip_json(signature: dict[str, Any], model: str) -> st.SearchStrategy[Encoded]:
    headers = {"Content-Type": payload.JSON_CONTENT_TYPE}
    documents = st.one_of(
        st.fixed_dictionaries({"inputs": st.lists(_v2_input(signature, False), max_size=2)},
                              optional={"id": JSON_VALUES, "parameters": JSON_VALUES,
                                        "outputs": JSON_VALUES}),
        JSON_VALUES)
    return st.one_of(documents.map(_dumps), st.binary(max_size=300)).map(
        lambda body: Encoded(body, headers))


@st.composite
def _oip_binary(draw: st.DrawFn, signature: dict[str, Any]) -> Encoded:
    from deploybench.serving import oip

    header = _dumps({"inputs": draw(st.lists(_v2_input(signature, True), max_size=2))})
    raw = draw(st.one_of(st.binary(max_size=600), st.just(np.full(
        (1, *signature["input_shape"]), 0.5, np.float32).tobytes())))
    length = draw(st.one_of(st.just(str(len(header))), st.integers(-5, len(header) + 700).map(
        str), st.text(alphabet="0123456789-x ", max_size=5)))
    return Encoded(header + raw, {"Content-Type": oip.BINARY_CONTENT_TYPE,
                                  oip.HEADER_LENGTH: length})


def oip_binary(signature: dict[str, Any], model: str) -> st.SearchStrategy[Encoded]:
    return _oip_binary(signature)


@st.composite
def _infer_request(draw: st.DrawFn, signature: dict[str, Any], model: str) -> bytes:
    from deploybench.serving import oip

    request = oip.grpc_predict_v2_pb2.ModelInferRequest(model_name=model)
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 2))):
        tensor = request.inputs.add(name=draw(st.sampled_from([signature["input_name"], "x"])),
                                    datatype=draw(DATATYPES))
        tensor.shape.extend(draw(st.lists(SIZES, max_size=4)))
        if raw:
            request.raw_input_contents.append(draw(st.binary(max_size=600)))
        else:
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32),
                                                               max_size=70)))
    if raw and draw(st.booleans()):
        request.raw_input_contents.append(draw(st.binary(max_size=20)))  # one too many
    return request.SerializeToString()


def oip_grpc(signature: dict[str, Any], model: str) -> st.SearchStrategy[Encoded]:
    return st.one_of(_infer_request(signature, model), st.binary(max_size=300)).map(Encoded)


# one strategy per request body, as bad_inputs.ENCODERS has one encoder per body
STRATEGIES = {"json": rest_json, "npy": npy, "tfserving-grpc": tfserving_grpc,
              "oip-json": oip_json, "oip-binary": oip_binary, "oip-grpc": oip_grpc}


def _binary_v2(header: dict[str, Any], raw: bytes) -> Encoded:
    from deploybench.serving import oip

    text = _dumps(header)
    return Encoded(text + raw, {"Content-Type": oip.BINARY_CONTENT_TYPE,
                                oip.HEADER_LENGTH: str(len(text))})


NOT_A_MESSAGE = b"\x0a\xff\xff\xff\xff\x0f"  # field 1, a length beyond any message
# Bodies the fuzzer found a server mishandling, by request body: sent first, every run
REGRESSIONS: dict[str, list[Encoded]] = {
    "json": [
        # a non-ASCII error message desynced TorchServe's worker and frontend: the worker died
        Encoded(_dumps({"signature_name": ["d\u00f9"], "instances": [[0.5] * 64]})),
        # finite inputs near float32's limit overflowed inside the model: 200, NaN logits
        Encoded(_dumps({"instances": [[3.4e38] * 64]})),
    ],
    "npy": [  # a header of 1 byte: numpy's tokenizer raised TokenError, a 500
        Encoded(b"\x93NUMPY\x01\x00\x01\x00{'descr': '<f4', 'fortran_order': False, "
                b"'shape': (1, 64)}\n" + bytes(256), {"Content-Type": payload.NPY_CONTENT_TYPE}),
    ],
    "oip-json": [  # a key with a newline quoted in KServe's validation message: two lines
        Encoded(_dumps({"inputs": [], "parameters": {"a\nb": {"c": [1]}}}),
                {"Content-Type": payload.JSON_CONTENT_TYPE}),
    ],
    "oip-binary": [  # a datatype that is not a string: KServe's AttributeError, a 500 and a drop
        _binary_v2({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": {},
                                "parameters": {"binary_data_size": 256}}]}, bytes(256)),
    ],
    # bytes that are not a request: KServe's gRPC answered UNKNOWN (a DecodeError)
    "oip-grpc": [Encoded(NOT_A_MESSAGE)],
    "tfserving-grpc": [
        Encoded(NOT_A_MESSAGE),
        # a float tensor of 1 PiB declared, no contents: the double's MemoryError, UNKNOWN
        Encoded(b"\n\x1d\n\ndigits-mlp\x1a\x0fserving_default\x12\"\n\x06pixels\x12\x18"
                b"\x08\x01\x12\x14\x12\x02\x08E\x12\x06\x08\x80\x80\x80\x80\x08\x12\x02\x08,"
                b"\x12\x02\x08,"),
    ],
}


def fuzz(target: str, protocol: str, address: str, model: str, signature: dict[str, Any],
         output_name: str, examples: int, stop_at_first: bool = True,
         timeout: float = 30.0) -> tuple[int, list[str]]:
    """`examples` generated bodies (and the regressions) to `target` speaking `protocol`:
    (examples tried, what failed). With `stop_at_first`, the first failure raises, shrunk by
    Hypothesis to a minimal body."""
    from hypothesis import HealthCheck, given, settings

    from deploybench.serving import bad_inputs, targets

    server = targets.get(target)
    declared = server.protocol(protocol)
    body = payload.BODIES[declared.body]
    sender = bad_inputs.sender_for(target, protocol, address, model, timeout)
    closes = bool(server.closes_after_error)
    nonfinite = "non-finite value" in dict(declared.by_design)
    unparsed = "not the protocol's format" in dict(declared.by_design)
    tried, failures = 0, []

    def one(encoded: Encoded) -> None:
        nonlocal tried
        tried += 1
        why = bad_inputs.survives(
            sender, encoded, body, output_name, closes, nonfinite,
            unparsed and not bad_inputs.parses(declared.body, encoded.body))
        if why:
            failures.append(f"{why} <- {encoded.body[:160]!r} {encoded.headers}")
            if stop_at_first:
                raise AssertionError(failures[-1])

    try:
        for encoded in REGRESSIONS.get(declared.body, []):
            one(encoded)

        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(STRATEGIES[declared.body](signature, model))
        def generated(encoded: Encoded) -> None:
            one(encoded)

        generated()
    finally:
        sender.close()
    return tried, failures
