"""Hypothesis strategies for malformed and boundary request bodies, one per request body of
payload.BODIES (the bad-input matrix's encoders name the same bodies), drawn from the model's
signature (every input's name, shape, dtype, dynamic axes and id range): random JSON shapes,
columns under right and wrong names, .npy headers and .npz archives, a valid binary header with
random bytes after it, random protobuf fields. Used by the fuzz tests
(a bounded number of examples per protocol, in `make test`) and by the longer run
(tests/fuzz_decoders.py)."""

from __future__ import annotations

import io
import json
import struct
import warnings
import zipfile
from typing import Any

import numpy as np
from hypothesis import strategies as st

from deploybench.serving import bad_inputs, payload
from deploybench.serving.bad_inputs import Encoded, npy_file
from deploybench.serving.input_validation import inputs_of

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


def _specs(signature: dict[str, Any]) -> list[dict[str, Any]]:
    return inputs_of(signature)


def _names(signature: dict[str, Any]) -> st.SearchStrategy[str]:
    """An input's name, or a name the model does not have."""
    return st.sampled_from([*(spec["name"] for spec in _specs(signature)), "x", ""])


def _numbers(spec: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Any number, and for token ids also ids at and around the ends of the vocabulary."""
    if spec.get("high") is None:
        return NUMBERS
    return st.one_of(NUMBERS, st.integers(-3, spec["high"] + 3),
                     st.sampled_from([0, spec["high"] - 1, spec["high"]]))


@st.composite
def _rows(draw: st.DrawFn, signature: dict[str, Any], spec: dict[str, Any]) -> Any:
    """Rows near an input's shape: any length on a dynamic axis up to two past its size, the
    right shape or one size off, any numbers (or ids) in them."""
    shape = [draw(st.integers(0, signature["max_rows"] + 2)), *spec["shape"]]
    for axis in spec["dynamic"]:
        shape[axis + 1] = draw(st.integers(0, spec["shape"][axis] + 2))
    if draw(st.booleans()):
        axis = draw(st.integers(0, len(shape) - 1))
        shape[axis] = max(0, shape[axis] + draw(st.sampled_from([-1, 1])))
    size = int(np.prod(shape))
    values = draw(st.lists(_numbers(spec), min_size=min(size, 8), max_size=min(size, 8)))
    flat = (values * (size // max(len(values), 1) + 1))[:size] if values else [0.5] * size
    array = np.array(flat, dtype=object).reshape(shape) if size else np.zeros(shape)
    return array.tolist()


def _near_rows(signature: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Rows for any one of the model's inputs, or any JSON value."""
    return st.one_of(*(_rows(signature, spec) for spec in _specs(signature)), JSON_VALUES)


def _named_rows(signature: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Columns by name: often every input (each near its own shape), sometimes one missing,
    one unknown, or any rows under any name."""
    every = st.fixed_dictionaries({spec["name"]: st.one_of(_rows(signature, spec), JSON_VALUES)
                                   for spec in _specs(signature)})
    extra = st.dictionaries(_names(signature), _near_rows(signature), max_size=3)
    return st.one_of(every, extra, st.tuples(every, extra).map(lambda pair: pair[0] | pair[1]))


def rest_json(signature: dict[str, Any], model: str) -> st.SearchStrategy[Encoded]:
    rows = _near_rows(signature)
    documents = st.one_of(
        st.fixed_dictionaries({"instances": rows}),
        st.fixed_dictionaries({"inputs": rows}),
        st.fixed_dictionaries({"inputs": _named_rows(signature)}),
        st.fixed_dictionaries({"instances": st.lists(_named_rows(signature), max_size=3)}),
        st.fixed_dictionaries({"signature_name": JSON_VALUES, "instances": rows}),
        JSON_VALUES,
    )
    return st.one_of(documents.map(lambda d: Encoded(_dumps(d))),
                     st.binary(max_size=300).map(Encoded))


@st.composite
def _npy(draw: st.DrawFn, signature: dict[str, Any]) -> bytes:
    shape = tuple(draw(st.lists(SIZES, max_size=4)))
    descr = draw(st.sampled_from(["<f4", ">f4", "<f8", "<f2", "|b1", "<i4", "<i8", "<U3", "|O",
                                  "V8", "<c8", "nonsense"]))
    fortran = draw(st.one_of(st.booleans(), st.none()))
    header = draw(st.one_of(
        st.just(repr({"descr": descr, "fortran_order": fortran, "shape": shape})),
        st.text(max_size=80)))
    text = header + " " * ((-(len(header) + 11)) % 64) + "\n"
    length = draw(st.one_of(st.just(len(text.encode())), st.integers(0, 70_000)))
    spec = draw(st.sampled_from(_specs(signature)))
    data = draw(st.one_of(st.binary(max_size=600), st.just(bad_inputs.good_values(
        spec, 1).tobytes())))
    version = draw(st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x09\x09"]))
    size = struct.pack("<H", min(length, 65535)) if version == b"\x01\x00" else struct.pack(
        "<I", length)
    return b"\x93NUMPY" + version + size + text.encode("utf-8") + data


@st.composite
def _valid_npy(draw: st.DrawFn, spec: dict[str, Any]) -> bytes:
    """A well-formed .npy of one row of an input, any values of its dtype (NaN for floats)."""
    shape = bad_inputs.row_shape(spec)
    count = int(np.prod(shape))
    if spec["dtype"] == "float32":
        values = st.floats(width=32, allow_nan=True, allow_infinity=True)
    else:
        values = st.integers(-(2**31), 2**31 - 1)
    drawn = draw(st.lists(values, min_size=count, max_size=count))
    return npy_file(np.array(drawn, dtype=spec["dtype"]).reshape(1, *shape))


@st.composite
def _npz(draw: st.DrawFn, signature: dict[str, Any]) -> bytes:
    """An .npz (a zip of .npy members) with members under any names, well-formed or not, and
    sometimes cut short."""
    members = draw(st.lists(st.tuples(
        _names(signature),
        st.one_of(*(_valid_npy(spec) for spec in _specs(signature)), _npy(signature),
                  st.binary(max_size=100))), max_size=4))
    archive = io.BytesIO()
    # two members of one name are a case worth sending; zipfile warns when it writes them
    with warnings.catch_warnings(), zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as npz:
        warnings.simplefilter("ignore", UserWarning)
        for name, member in members:
            npz.writestr(f"{name}.npy" if draw(st.booleans()) or not name else name, member)
    body = archive.getvalue()
    cut = draw(st.one_of(st.none(), st.integers(0, max(len(body) - 1, 0))))
    return body if cut is None else body[:cut]


def npy(signature: dict[str, Any], model: str) -> st.SearchStrategy[Encoded]:
    """TorchServe's binary body: an .npy for a model of one input, an .npz for several."""
    if len(_specs(signature)) > 1:
        headers = {"Content-Type": payload.NPZ_CONTENT_TYPE}
        return st.one_of(_npz(signature), st.binary(max_size=300)).map(
            lambda body: Encoded(body, headers))
    headers = {"Content-Type": payload.NPY_CONTENT_TYPE}
    return st.one_of(_npy(signature), _valid_npy(_specs(signature)[0]),
                     st.binary(max_size=300)).map(lambda body: Encoded(body, headers))


@st.composite
def _tensor_proto(draw: st.DrawFn, signature: dict[str, Any]) -> Any:
    from deploybench.serving import protos

    proto = protos.tensor_pb2.TensorProto(dtype=draw(st.integers(0, 30)))
    for size in draw(st.lists(SIZES, max_size=4)):
        proto.tensor_shape.dim.add(size=size)
    contents = draw(st.sampled_from(["bytes", "float", "int"]))
    if contents == "bytes":
        proto.tensor_content = draw(st.binary(max_size=600))
    elif contents == "float":
        proto.float_val.extend(draw(st.lists(st.floats(width=32), max_size=70)))
    else:
        proto.int_val.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=70)))
    return proto


@st.composite
def _predict_request(draw: st.DrawFn, signature: dict[str, Any], model: str) -> bytes:
    from deploybench.serving import protos

    request = protos.predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = draw(st.sampled_from(["serving_default", "", "x"]))
    for name in draw(st.lists(_names(signature), max_size=3, unique=True)):
        request.inputs[name].CopyFrom(draw(_tensor_proto(signature)))
    return request.SerializeToString()


def tfserving_grpc(signature: dict[str, Any], model: str) -> st.SearchStrategy[Encoded]:
    return st.one_of(_predict_request(signature, model), st.binary(max_size=300)).map(Encoded)


def _v2_input(signature: dict[str, Any], binary: bool) -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, Any] = {
        "name": _names(signature),
        "shape": st.one_of(st.lists(SIZES, max_size=4), JSON_VALUES),
        "datatype": st.one_of(DATATYPES, JSON_VALUES),
    }
    if binary:
        fields["parameters"] = st.fixed_dictionaries(
            {"binary_data_size": st.one_of(SIZES, JSON_VALUES)})
    else:
        fields["data"] = _near_rows(signature)
    return st.fixed_dictionaries(fields)


def _v2_inputs(signature: dict[str, Any], binary: bool) -> st.SearchStrategy[list[Any]]:
    return st.lists(_v2_input(signature, binary), max_size=len(_specs(signature)) + 1)


def oip_json(signature: dict[str, Any], model: str) -> st.SearchStrategy[Encoded]:
    headers = {"Content-Type": payload.JSON_CONTENT_TYPE}
    documents = st.one_of(
        st.fixed_dictionaries({"inputs": _v2_inputs(signature, False)},
                              optional={"id": JSON_VALUES, "parameters": JSON_VALUES,
                                        "outputs": JSON_VALUES}),
        JSON_VALUES)
    return st.one_of(documents.map(_dumps), st.binary(max_size=300)).map(
        lambda body: Encoded(body, headers))


@st.composite
def _oip_binary(draw: st.DrawFn, signature: dict[str, Any]) -> Encoded:
    from deploybench.serving import oip

    header = _dumps({"inputs": draw(_v2_inputs(signature, True))})
    good = b"".join(bad_inputs.good_values(spec, 1).tobytes() for spec in _specs(signature))
    raw = draw(st.one_of(st.binary(max_size=600), st.just(good)))
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
    for _ in range(draw(st.integers(0, len(_specs(signature)) + 1))):
        tensor = request.inputs.add(name=draw(_names(signature)), datatype=draw(DATATYPES))
        tensor.shape.extend(draw(st.lists(SIZES, max_size=4)))
        if raw:
            request.raw_input_contents.append(draw(st.binary(max_size=600)))
        elif draw(st.booleans()):
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32),
                                                               max_size=70)))
        else:
            tensor.contents.int_contents.extend(draw(st.lists(
                st.integers(-(2**31), 2**31 - 1), max_size=70)))
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


HUGE_SHAPE = 2**24  # elements: a JSON input declaring more is a known crash where declared


def declares_huge_shape(body: bytes) -> bool:
    """Whether a JSON V2 body declares an input of more than HUGE_SHAPE elements (or a size
    that is not a small number) in its shape."""
    try:
        document = json.loads(body)
    except ValueError:
        return False
    inputs = document.get("inputs") if isinstance(document, dict) else None
    for tensor in inputs if isinstance(inputs, list) else []:
        shape = tensor.get("shape") if isinstance(tensor, dict) else None
        if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
            if any(abs(d) > HUGE_SHAPE for d in shape) or abs(
                    int(np.prod([float(d) for d in shape] or [0.0]))) > HUGE_SHAPE:
                return True
    return False


def fuzz(target: str, protocol: str, address: str, model: str, signature: dict[str, Any],
         output_name: str, examples: int, stop_at_first: bool = True,
         timeout: float = 30.0) -> tuple[int, list[str]]:
    """`examples` generated bodies (and the regressions) to `target` speaking `protocol`:
    (examples tried, what failed). With `stop_at_first`, the first failure raises, shrunk by
    Hypothesis to a minimal body."""
    from hypothesis import HealthCheck, assume, given, settings

    from deploybench.serving import targets

    server = targets.get(target)
    declared = server.protocol(protocol)
    body = payload.BODIES[declared.body]
    sender = bad_inputs.sender_for(target, protocol, address, model, timeout)
    closes = bool(server.closes_after_error)
    nonfinite = "non-finite value" in dict(declared.by_design)
    unparsed = "not the protocol's format" in dict(declared.by_design)
    huge_crashes = "huge size in a header" in dict(declared.crashes)
    tried, failures = 0, []

    def one(encoded: Encoded) -> None:
        nonlocal tried
        tried += 1
        why = bad_inputs.survives(
            sender, encoded, body, output_name, closes, nonfinite,
            unparsed and not bad_inputs.parses(declared.body, encoded.body),
            bool(declared.server_errors), bool(declared.multiline_errors))
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
            # a known crash (Protocol.crashes) would end the run, and the server: drawn again
            assume(not (huge_crashes and declares_huge_shape(encoded.body)))
            one(encoded)

        generated()
    finally:
        sender.close()
    return tried, failures
