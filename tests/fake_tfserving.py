"""A TEST DOUBLE for TensorFlow Serving. It is not TF Serving and must never be reported as it.

The TF Serving server binary cannot be installed on the development and CI machines, so the
TF Serving clients are tested against this double instead. It follows TF Serving's documented
REST and gRPC contract (the REST API guide, apis/*.proto, and the messages and status codes of
http_rest_api_handler.cc, json_tensor.cc, predict_util.cc and get_model_status_impl.cc) over
the exported SavedModels, which TensorFlow runs in this process:

REST (127.0.0.1, an ephemeral port)
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict
        {"instances": [...]} (rows, or {"<input>": row} objects) -> {"predictions": [...]}
        {"inputs": ...} (a tensor, or {"<input>": tensor})        -> {"outputs": ...}
    GET  /v1/models/<name>[/versions/<v>]            model status (GetModelStatusResponse)
    GET  /v1/models/<name>[/versions/<v>]/metadata   signature_def metadata
    errors: {"error": "<message>"} with TF Serving's status: 400 (INVALID_ARGUMENT,
    FAILED_PRECONDITION), 404 (NOT_FOUND), 501 (UNIMPLEMENTED: classify, regress).
gRPC (127.0.0.1, an ephemeral port)
    PredictionService.Predict, PredictionService.GetModelMetadata, ModelService.GetModelStatus,
    with INVALID_ARGUMENT, NOT_FOUND and FAILED_PRECONDITION where TF Serving uses them.

Like TF Serving's default version policy, it serves the highest version under each model's
savedmodel/ folder. TF Serving itself does not check input shapes against the signature (the
TensorFlow kernel fails later, with INVALID_ARGUMENT); the double checks them up front, with its
own message, and answers the same status. `perturb` adds Gaussian noise of that standard
deviation to every output, so a load test can prove that wrong answers are counted.

    with FakeTFServing(export_root, models=["digits-mlp"], perturb=0.0) as fake:
        requests.post(f"{fake.rest_url}/v1/models/digits-mlp:predict", json=...)
        grpc.insecure_channel(fake.grpc_target)
"""

from __future__ import annotations

import json
import re
import threading
from concurrent import futures
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from deploybench import layout

HOST = "127.0.0.1"
DEFAULT_SIGNATURE = "serving_default"
# TF Serving's own path patterns (http_rest_api_util.cc), case-insensitive like RE2's (?i).
PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
}


class ServingError(Exception):
    """An error answered to the client, with TF Serving's status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass
class Servable:
    """One loaded model version: its serving signatures and the TensorFlow functions."""

    name: str
    version: int
    signature_defs: Any  # protobuf map: signature name -> tensorflow SignatureDef
    functions: dict[str, Any]  # signature name -> concrete function
    keepalive: Any  # the loaded SavedModel object, which owns the variables

    def signature(self, name: str, rest: bool) -> tuple[Any, Any]:
        name = name or DEFAULT_SIGNATURE
        if name not in self.functions:
            if rest:  # http_rest_api_handler.cc GetInfoMap
                raise invalid(f'Serving signature name: "{name}" not found in signature def')
            raise ServingError(  # predict_util.cc RunPredict
                grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{name}" not found.'
            )
        return self.signature_defs[name], self.functions[name]


def _load_servable(name: str, base: Path) -> Servable:
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    versions = sorted(
        int(p.name) for p in base.iterdir() if p.name.isdigit() and (p / "saved_model.pb").is_file()
    )
    if not versions:
        raise ValueError(f"{base}: no SavedModel version folder")
    path = base / str(versions[-1])
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    (meta_graph,) = [g for g in saved_model.meta_graphs if "serve" in g.meta_info_def.tags]
    loaded = tf.saved_model.load(str(path))
    functions = {key: fn for key, fn in loaded.signatures.items()}
    return Servable(name, versions[-1], meta_graph.signature_def, functions, loaded)


class FakeTFServing:
    """TF Serving's REST and gRPC contract over exported SavedModels; a test double only."""

    def __init__(
        self,
        export_root: Path | str,
        models: list[str] | None = None,
        perturb: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.export_root = Path(export_root)
        names = models if models is not None else _exported(self.export_root)
        missing = [n for n in names if not (self.export_root / n / "savedmodel").is_dir()]
        if missing or not names:
            raise ValueError(f"no exported SavedModel for {missing or 'any model'} "
                             f"under {self.export_root}")
        self.model_names = list(names)
        self.perturb = perturb
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()
        self.servables: dict[str, Servable] = {}
        self._http: ThreadingHTTPServer | None = None
        self._grpc: grpc.Server | None = None
        self.rest_port = 0
        self.grpc_port = 0

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    def start(self) -> FakeTFServing:
        for name in self.model_names:
            base = Path(layout.savedmodel_base(self.export_root, name))
            self.servables[name] = _load_servable(name, base)
        self._http = ThreadingHTTPServer((HOST, 0), _rest_handler(self))
        self._http.daemon_threads = True
        self.rest_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        _add_grpc_services(self, self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"{HOST}:0")
        self._grpc.start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None

    def __enter__(self) -> FakeTFServing:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- the model server ----------------------------------------------------------------

    def servable(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        if version is not None and label is not None:
            raise invalid(f"Both model version ({version}) and model version label ({label}) "
                          "cannot be supplied.")
        if label is not None:  # no version labels are configured
            raise invalid(f"Unrecognized servable version label: {label}")
        servable = self.servables.get(name)
        if servable is None or (version is not None and version != servable.version):
            request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}"
            )
        return servable

    def status(self, name: str, version: int | None = None) -> Any:
        """GetModelStatusResponse, as get_model_status_impl.cc builds it."""
        from tensorflow_serving.apis import get_model_status_pb2

        servable = self.servables.get(name)
        if servable is None:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}"
            )
        if version is not None and version != servable.version:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}"
            )
        response = get_model_status_pb2.GetModelStatusResponse()
        entry = response.model_version_status.add()
        entry.version = servable.version
        entry.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        entry.status.error_code = 0  # tensorflow.error.OK
        entry.status.error_message = ""
        return response

    def metadata(self, servable: Servable) -> Any:
        """GetModelMetadataResponse with the signature_def field, as TF Serving fills it."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in servable.signature_defs.items():
            signatures.signature_def[key].CopyFrom(signature_def)
        response.metadata["signature_def"].Pack(signatures)
        return response

    def run(self, servable: Servable, signature_name: str, inputs: dict[str, np.ndarray],
            rest: bool) -> dict[str, np.ndarray]:
        """Run one signature on named inputs checked against it; outputs by alias."""
        import tensorflow as tf

        signature_def, function = servable.signature(signature_name, rest)
        for alias, value in inputs.items():
            expected = [d.size for d in signature_def.inputs[alias].tensor_shape.dim]
            shape = list(value.shape)
            if len(shape) != len(expected) or any(
                e not in (-1, got) for e, got in zip(expected, shape, strict=True)
            ):
                raise invalid(f"input {alias}: got shape {_shape(shape)}, but the signature "
                              f"expects {_shape(expected)} (-1: any size)")
        try:
            outputs = function(**{k: tf.constant(v) for k, v in inputs.items()})
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            raise invalid(str(error).splitlines()[0]) from error
        result = {alias: tensor.numpy() for alias, tensor in outputs.items()}
        if self.perturb:
            with self._rng_lock:
                for alias, value in result.items():
                    noise = self._rng.normal(0.0, self.perturb, value.shape)
                    result[alias] = (value + noise).astype(value.dtype)
        return result


def _exported(root: Path) -> list[str]:
    from deploybench.manifest import exported_models

    return exported_models(root)


def _shape(dims: list[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


# --- REST ------------------------------------------------------------------------------------


def _json_debug(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=True)


def _json_type(value: Any) -> str:  # json_tensor.cc JsonTypeString
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _dense_shape(value: Any) -> list[int]:
    """The shape TF Serving reads off the first element at every level (GetDenseTensorShape)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], dtype: str, out: list[float]) -> None:
    """json_tensor.cc FillTensorProto: dense nested lists of numbers, or a precise error."""
    if not isinstance(value, list):
        if level != len(shape):
            raise invalid(f"JSON Value: {_json_debug(value)} found at incorrect level: "
                          f"{level + 1} in the JSON DOM. Expected at level: {len(shape)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid(f"JSON Value: {_json_debug(value)} Type: {_json_type(value)} "
                          f"is not of expected type: {dtype}")
        if dtype == "int32" and not _json_int32(value):  # rapidjson's IsInt
            raise invalid(f"JSON Value: {_json_debug(value)} Type: {_json_type(value)} "
                          f"is not of expected type: {dtype}")
        if dtype == "float" and not _lossless_float(value):
            raise invalid(f"Cannot convert JSON value: {_json_debug(value)} to float without "
                          "loss of precision.")
        out.append(value)
        return
    if level >= len(shape):
        raise invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise invalid(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                      f"expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _json_int32(value: int | float) -> bool:
    """rapidjson's IsInt: an integer written without a fraction or exponent, within int32."""
    return isinstance(value, int) and -(2**31) <= value < 2**31


def _lossless_float(value: float) -> bool:
    """json_tensor.cc IsLosslessDecimal<float>: NaN and Infinity pass (TF Serving runs them),
    integers up to 2**24 - 1, other numbers within float32's range."""
    if isinstance(value, float) and not np.isfinite(value):
        return True
    if isinstance(value, int):
        return abs(value) <= 2**24 - 1
    return float(np.finfo(np.float32).min) <= value <= float(np.finfo(np.float32).max)


def _tensor(value: Any, np_dtype: np.dtype, dtype: str) -> np.ndarray:
    shape = _dense_shape(value)
    flat: list[float] = []
    _fill(value, 0, shape, dtype, flat)
    return np.asarray(flat, dtype=np_dtype).reshape(shape)


def _dtype_name(enum_value: int) -> str:
    """TensorFlow's DataTypeString, which TF Serving's messages use ("float", not "float32")."""
    import tensorflow as tf

    try:
        name = tf.dtypes.as_dtype(enum_value).name
    except TypeError:
        return f"dtype {enum_value}"
    return {"float32": "float", "float64": "double", "float16": "half"}.get(name, name)


def _input_specs(signature_def: Any) -> dict[str, tuple[np.dtype, str]]:
    import tensorflow as tf

    return {
        alias: (tf.dtypes.as_dtype(info.dtype).as_numpy_dtype, _dtype_name(info.dtype))
        for alias, info in signature_def.inputs.items()
    }


def _rows(instances: list[Any], specs: dict[str, tuple[np.dtype, str]]) -> dict[str, np.ndarray]:
    """Row ("instances") format: a list of values, or of {input: value} objects."""
    names = sorted(specs)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in names}
    as_objects = isinstance(instances[0], dict)
    if len(names) > 1 and not as_objects:
        raise invalid("instances is a plain list, but expecting list of objects as multiple "
                      "input tensors required as per tensorinfo_map")
    for index, item in enumerate(instances):
        if as_objects and not isinstance(item, dict):
            raise invalid(f"Expecting object but got list at item {index} of input list")
        if not as_objects and isinstance(item, dict):
            raise invalid(f"Expecting value/list but got object at item {index} of input list")
        values = item if as_objects else {names[0]: item}
        if sorted(values) != names:
            raise invalid(f"Failed to process element: {index} of 'instances' list. JSON "
                          f"object: {_json_debug(item)} keys must be equal to: "
                          f"{','.join(names)}")
        for name in names:
            try:
                tensor = _tensor(values[name], *specs[name])
                first = columns[name][0] if columns[name] else tensor
                if tensor.size != first.size:
                    raise invalid(f"Expecting tensor size: {first.size} but got: {tensor.size}")
                if tensor.shape != first.shape:
                    raise invalid(f"Expecting shape {_shape(list(first.shape))} but got: "
                                  f"{_shape(list(tensor.shape))}")
            except ServingError as error:
                where = f"{index} key: {name}" if as_objects else str(index)
                raise invalid(f"Failed to process element: {where} of 'instances' list. "
                              f"Error: INVALID_ARGUMENT: {error.message}") from None
            columns[name].append(tensor)
    return {name: np.stack(values) for name, values in columns.items()}


def _columns(inputs: Any, specs: dict[str, tuple[np.dtype, str]]) -> dict[str, np.ndarray]:
    """Columnar ("inputs") format: one tensor, or {input: tensor}."""
    names = sorted(specs)
    if not isinstance(inputs, dict):
        if len(names) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple "
                          "input tensors required as per tensorinfo_map")
        return {names[0]: _tensor(inputs, *specs[names[0]])}
    for key in inputs:
        if key not in specs:
            raise invalid(f"JSON object: does not have named input: {key}")
    for name in names:
        if name not in inputs:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
    return {name: _tensor(inputs[name], *specs[name]) for name in names}


def _json_ready(array: np.ndarray) -> Any:
    return array.tolist()


def _rest_handler(server: FakeTFServing) -> type[BaseHTTPRequestHandler]:
    from google.protobuf import json_format

    def to_json(message: Any, field_names: bool = False) -> Any:
        return json_format.MessageToDict(
            message,
            always_print_fields_with_no_presence=True,
            preserving_proto_field_name=field_names,
        )

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FakeTFServing-test-double"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:  # noqa: N802
            self._answer(self._get)

        def do_POST(self) -> None:  # noqa: N802
            self._answer(self._post)

        def do_PUT(self) -> None:  # noqa: N802
            self._answer(self._malformed)

        def do_DELETE(self) -> None:  # noqa: N802
            self._answer(self._malformed)

        def _answer(self, route: Any) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            if not path.lower().startswith("/v1/"):
                self._send(HTTPStatus.NOT_FOUND, {"error": f"Not found: {path}"})
                return
            try:
                self._send(HTTPStatus.OK, route(path, body))
            except ServingError as error:
                status = HTTP_STATUS.get(error.code, HTTPStatus.INTERNAL_SERVER_ERROR)
                self._send(status, {"error": error.message})

        def _send(self, status: HTTPStatus, payload: Any) -> None:
            data = json.dumps(payload, indent=1, allow_nan=True).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _malformed(self, path: str, body: bytes) -> Any:
            raise invalid(f"Malformed request: {self.command} {path}")

        def _get(self, path: str, body: bytes) -> Any:
            match = STATUS_PATH.fullmatch(path)
            if not match:
                self._malformed(path, body)
            name, version, label, subresource = match.groups()
            if not name:
                raise invalid("Missing model name in request.")
            version_number = int(version) if version else None
            if subresource:
                servable = server.servable(name, version_number, label)
                response = server.metadata(servable)
                from tensorflow_serving.apis import get_model_metadata_pb2

                signatures = get_model_metadata_pb2.SignatureDefMap()
                response.metadata["signature_def"].Unpack(signatures)
                return {
                    "model_spec": to_json(response.model_spec, field_names=True),
                    "metadata": {"signature_def": to_json(signatures, field_names=True)},
                }
            if label:
                server.servable(name, version_number, label)  # labels are errors here
            return to_json(server.status(name, version_number))

        def _post(self, path: str, body: bytes) -> Any:
            match = PREDICT_PATH.fullmatch(path)
            if not match:
                self._malformed(path, body)
            name, version, label, method = match.groups()
            servable = server.servable(name, int(version) if version else None, label)
            if method.lower() != "predict":
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"{method} is not implemented by this test double")
            request = _parse_body(body)
            signature_name = request.get("signature_name", "")
            if not isinstance(signature_name, str):
                raise invalid(f"JSON Value: {_json_debug(request)} not formatted correctly. "
                              "'signature_name' key must be a string value.")
            signature_def, _ = servable.signature(signature_name, rest=True)
            specs = _input_specs(signature_def)
            if ("instances" in request) == ("inputs" in request):
                if "instances" in request:
                    raise invalid(f"JSON Value: {_json_debug(request)} Not formatted correctly "
                                  "expecting only one of 'inputs' or 'instances' keys to exist ")
                raise invalid("Missing 'inputs' or 'instances' key")
            if "instances" in request:
                instances = request["instances"]
                if not isinstance(instances, list):
                    raise invalid(f"JSON Value: {_json_debug(request)} Expecting 'instances' "
                                  "to be an list/array")
                if not instances:
                    raise invalid(f"JSON Value: {_json_debug(request)} No values in "
                                  "'instances' array")
                inputs = _rows(instances, specs)
            else:
                inputs = _columns(request["inputs"], specs)
            outputs = server.run(servable, signature_name, inputs, rest=True)
            key = "predictions" if "instances" in request else "outputs"
            if len(outputs) == 1:
                (value,) = outputs.values()
                return {key: _json_ready(value)}
            if key == "outputs":
                return {key: {alias: _json_ready(v) for alias, v in outputs.items()}}
            rows = len(next(iter(outputs.values())))
            return {key: [{a: _json_ready(v[i]) for a, v in outputs.items()} for i in range(rows)]}

    return Handler


def _parse_body(body: bytes) -> dict[str, Any]:
    text = body.decode("utf-8", errors="replace")
    if not text.strip():
        raise invalid("JSON Parse error: The document is empty")
    try:
        request = json.loads(text)
    except json.JSONDecodeError as error:
        raise invalid(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None
    if not isinstance(request, dict):
        raise invalid(f"JSON Value: {_json_debug(request)} Is not object")
    return request


# --- gRPC ------------------------------------------------------------------------------------


def _add_grpc_services(server: FakeTFServing, grpc_server: grpc.Server) -> None:
    from tensorflow_serving.apis import (
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    def guarded(method: Any) -> Any:
        def call(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return method(request)
            except ServingError as error:
                context.abort(error.code, error.message)

        return call

    def spec_of(model_spec: Any) -> Servable:
        version = model_spec.version.value if model_spec.HasField("version") else None
        label = model_spec.version_label or None
        return server.servable(model_spec.name, version, label)

    def predict(request: Any) -> Any:
        import tensorflow as tf

        servable = spec_of(request.model_spec)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature_def, _ = servable.signature(signature_name, rest=False)
        sent, wanted = set(request.inputs), set(signature_def.inputs)
        if len(sent) != len(wanted):  # predict_util.cc VerifyRequestInputsSize
            raise invalid(
                f"input size does not match signature: {len(sent)}!={len(wanted)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
                f"Missing but required: {{{','.join(sorted(wanted - sent))}}}."
            )
        inputs = {}
        for index, alias in enumerate(sorted(sent)):
            if alias not in wanted:
                raise invalid(f"input tensor alias not found in signature: {alias}. Inputs "
                              f"expected to be in the set {{{','.join(sorted(wanted))}}}.")
            proto = request.inputs[alias]
            expected = signature_def.inputs[alias].dtype
            if proto.dtype != expected:
                raise invalid(f"Expects arg[{index}] to be {_dtype_name(expected)} but "
                              f"{_dtype_name(proto.dtype)} is provided")
            # predict_util.cc: Tensor::FromProto fails on a negative size, on contents that
            # do not fill the shape, or when the tensor it declares cannot be allocated
            try:
                if any(dim.size < 0 for dim in proto.tensor_shape.dim):
                    raise ValueError("negative dimension")
                inputs[alias] = tf.make_ndarray(proto)
            except (TypeError, ValueError, MemoryError) as error:
                raise invalid(f"tensor parsing error: {alias} ({error})") from None
        aliases = list(request.output_filter) or list(signature_def.outputs)
        for alias in aliases:
            if alias not in signature_def.outputs:
                raise invalid(f"output tensor alias not found in signature: {alias} Outputs "
                              f"expected to be in the set "
                              f"{{{','.join(sorted(signature_def.outputs))}}}.")
        outputs = server.run(servable, signature_name, inputs, rest=False)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        for alias in aliases:
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(outputs[alias]))
        return response

    def get_model_metadata(request: Any) -> Any:
        fields = list(request.metadata_field)
        if not fields:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field != "signature_def":
                raise invalid(f"Metadata field {field} is not supported")
        return server.metadata(spec_of(request.model_spec))

    def get_model_status(request: Any) -> Any:
        spec = request.model_spec
        if spec.version_label:
            raise invalid(f"Unrecognized servable version label: {spec.version_label}")
        version = spec.version.value if spec.HasField("version") else None
        return server.status(spec.name, version)

    class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
        Predict = guarded(predict)
        GetModelMetadata = guarded(get_model_metadata)

    class Models(model_service_pb2_grpc.ModelServiceServicer):
        GetModelStatus = guarded(get_model_status)

    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Prediction(), grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(Models(), grpc_server)
