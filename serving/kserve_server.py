"""KServe's Python model server hosting the kit's models in one runtime: the SavedModel in
TensorFlow, the AOTInductor package in torch (TorchScript when no package was exported), or
the PyTorch twin's ONNX in ONNX Runtime. One process per runtime runs this same code, so the
difference between them is the runtime's, not the server's.

    python -m deploybench.serving.kserve_server --artifacts ROOT --models digits-mlp \\
        --runtime pytorch --host 127.0.0.1 --http-port 8092 --grpc-port 8093 --threads 1

It speaks TF Serving's REST predict API as KServe's V1 protocol (and takes TorchServe's .npy
body there, Content-Type application/x-npy) and the Open Inference Protocol (V2: REST JSON,
REST with the binary tensor extension, gRPC). What it does that KServe does not:
- it listens on --host (KServe 0.21 hard-codes every interface: `0.0.0.0` and `[::]`);
- every input is checked before the framework sees it (input_validation.py, the checks
  TorchServe's handler makes), and a bad one answers 400 naming the problem: a wrong rank
  reaching TensorFlow would abort the whole process;
- a request KServe itself cannot decode answers 400, not 500 (a 500 drops the keep-alive
  connection);
- inference runs on one thread of its own, one request at a time, off the event loop: the
  server keeps reading and answering other requests meanwhile, as TorchServe's frontend does
  for its one worker;
- a binary V2 request's tensors stay bytes until numpy reads them (KServe makes a Python list
  of every number first: 58 ms for one 224x224x3 image).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from deploybench.serving import hosting
from deploybench.serving.hosting import PLATFORMS, RUNTIME_FORMATS, load_hosted

STOP_GRACE_S = 2

log = logging.getLogger("deploybench.kserve")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="deploybench.serving.kserve_server")
    parser.add_argument("--artifacts", type=Path, required=True, help="export root")
    parser.add_argument("--models", required=True,
                        help="comma-separated exported models, or all: every one exported")
    parser.add_argument("--runtime", choices=sorted(RUNTIME_FORMATS))
    parser.add_argument("--health", action="store_true",
                        help="exit 0 when every model is ready on the V2 model-ready endpoint of "
                             "the server at --http-port (a container's healthcheck), else 1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8090)
    parser.add_argument("--grpc-port", type=int, default=8091)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    return parser.parse_args(argv)


def make_model(root: Path, name: str, runtime: str, threads: int) -> Any:
    """A kserve.Model for one exported model, its artifact loaded and checked first."""
    import kserve
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    from deploybench.batch import Batch
    from deploybench.serving import input_validation

    manifest, fmt, backend = load_hosted(root, name, runtime, threads)
    signature = manifest.signature()
    output_name = manifest.outputs[0].name

    def v2_batch(request: InferRequest) -> dict[str, np.ndarray]:
        input_validation.check_input_names([t.name for t in request.inputs], signature)
        # KServe keeps binary and gRPC raw contents in _raw_data, JSON numbers in data
        return input_validation.check_inputs({
            tensor.name: input_validation.decode_tensor(
                tensor.name, tensor.shape, tensor.datatype, tensor.data, tensor._raw_data,
                signature)
            for tensor in request.inputs}, signature)

    class KitModel(kserve.Model):
        def __init__(self) -> None:
            super().__init__(name)
            self.format = fmt
            # one inference at a time, on its own thread: the event loop keeps serving I/O
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
            self.runner: Any = None

        def load(self) -> bool:
            self.runner = backend.load()
            self.ready = True
            return True

        def get_input_types(self) -> list[dict[str, Any]]:
            return [{"name": spec["name"],
                     "datatype": input_validation.DATATYPES[spec["dtype"]],
                     "shape": [-1, *[-1 if axis in spec["dynamic"] else size
                                     for axis, size in enumerate(spec["shape"])]]}
                    for spec in input_validation.inputs_of(signature)]

        def get_output_types(self) -> list[dict[str, Any]]:
            return [{"name": output_name, "datatype": "FP32",
                     "shape": [-1, *manifest.outputs[0].shape[1:]]}]

        async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                          response_headers: dict[str, str] | None = None) -> Any:
            try:
                if isinstance(payload, InferRequest):
                    batch, form = v2_batch(payload), None
                elif media_type(headers) == input_validation.NPY_TYPE:
                    # TorchServe's binary bodies, accepted on V1 alike
                    batch, form = input_validation.decode_npy_body(payload, signature), "instances"
                elif media_type(headers) == input_validation.NPZ_TYPE:
                    batch, form = input_validation.decode_npz_body(payload, signature), "instances"
                else:
                    batch, form = input_validation.decode_predict_body(payload, signature)
            except ValueError as error:
                raise InvalidInput(input_validation.error_text(error)) from None
            loop = asyncio.get_running_loop()
            logits = await loop.run_in_executor(self.executor, self.runner.predict,
                                                Batch(batch))
            try:
                input_validation.check_outputs(logits)
            except ValueError as error:
                raise InvalidInput(input_validation.error_text(error)) from None
            if form is not None:  # V1: TF Serving's answer
                return {"predictions" if form == "instances" else "outputs": logits.tolist()}
            logits = np.ascontiguousarray(logits, dtype=np.float32)
            output = InferOutput(output_name, list(logits.shape), "FP32")
            if payload.from_grpc:  # gRPC's answer takes a list of numbers
                output.set_data_from_numpy(logits, binary_data=False)
            else:  # REST's is written from the array (KitDataPlane.encode)
                output.data = logits
            # KServe's REST answer requires an id; the protocol lets a request leave it out
            return InferResponse(payload.id or "", name, [output])

    model = KitModel()
    model.load()
    log.info("%s: %s loaded (%s)", name, fmt, PLATFORMS[fmt])
    return model


def media_type(headers: dict[str, str] | None) -> str:
    """A request's Content-Type without its parameters, lower case."""
    return (headers or {}).get("content-type", "").split(";")[0].strip().lower()


def plain_json_answer(response: Any, headers: dict[str, str] | None) -> bool:
    """Whether a V2 REST answer is plain JSON of numpy outputs: no binary outputs or named
    outputs asked for, not a CloudEvent."""
    from cloudevents.sdk.converters.util import has_binary_headers

    return (not response._use_binary_outputs and not response._requested_outputs
            and not has_binary_headers(headers or {})
            and (headers or {}).get("content-type", "") != "application/cloudevents+json"
            and all(isinstance(output.data, np.ndarray) for output in response.outputs))


def binary_request(body: bytes, header_length: int, model_name: str) -> Any:
    """A V2 REST request with the binary tensor extension, its tensors left as raw bytes.

    KServe's own decoding (InferRequest.from_bytes) turns every binary tensor into a Python list
    of numbers: 58 ms for one 224x224x3 image, three times mobilenet-v2's inference. Here the
    bytes stay bytes (what KServe does for gRPC's raw contents), and the model reads them with
    numpy, without a copy."""
    import orjson
    from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER as INFERENCE_HEADER
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

    if header_length > len(body):
        raise InvalidInput(f"malformed request: {INFERENCE_HEADER} says the JSON header is "
                           f"{header_length} bytes, the body has {len(body)}")
    try:
        header = orjson.loads(body[:header_length])
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"Unrecognized request format: {error}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidInput("malformed request: a V2 request has a list of 'inputs'")
    start, inputs = header_length, []
    for declared in header["inputs"]:
        if not isinstance(declared, dict):
            raise InvalidInput("malformed request: an input is not an object")
        for key, kind in (("name", str), ("shape", list), ("datatype", str),
                          ("parameters", dict)):
            if key in declared and not isinstance(declared[key], kind):
                raise InvalidInput(f"malformed request: an input's {key!r} is not a "
                                   f"{kind.__name__}")
        parameters = declared.get("parameters") or {}
        tensor = InferInput(declared.get("name"), declared.get("shape"),
                            declared.get("datatype"), parameters=parameters)
        if declared.get("data") is not None:
            tensor.data = declared["data"]
        elif "binary_data_size" in parameters:
            size = parameters["binary_data_size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"malformed request: input {tensor.name!r} declares "
                                   f"binary_data_size {size!r}, not a size in bytes")
            end = start + size
            if end > len(body):
                raise InvalidInput(f"malformed request: input {tensor.name!r} declares "
                                   f"{size} bytes, "
                                   f"{len(body) - start} follow")
            tensor._raw_data = body[start:end]
            start = end
        else:
            raise InvalidInput(f"malformed request: input {tensor.name!r} has neither 'data' "
                               "nor 'binary_data_size'")
        inputs.append(tensor)
    if start != len(body):
        raise InvalidInput(f"malformed request: {len(body) - start} bytes after the last "
                           "input's binary data")
    outputs = [RequestedOutput(name=o.get("name"), parameters=o.get("parameters"))
               for o in header.get("outputs") or [] if isinstance(o, dict)] or None
    return InferRequest(model_name=model_name, infer_inputs=inputs,
                        request_id=header.get("id"), parameters=header.get("parameters"),
                        request_outputs=outputs)


def bad_request_handlers(app: Any) -> None:
    """KServe's own decoding raises KeyError, ValueError or TypeError on a malformed body (a V2
    input without a name, a binary tensor shorter than its shape...), and FastAPI refuses a V2
    body without `inputs` in its own words (422, {"detail": [...]}). KServe's generic handler
    makes the first a 500 and drops the connection. The request was bad: 400, in the protocol's
    error body ({"error": ...}), with the problem named."""
    import pydantic
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import ORJSONResponse

    from deploybench.serving.input_validation import error_text

    async def bad_request(request: Any, error: Exception) -> ORJSONResponse:
        if isinstance(error, pydantic.ValidationError):  # an answer KServe could not encode
            log.error("cannot encode the answer: %s", error)
            return ORJSONResponse({"error": f"server error: {error}"}, status_code=500)
        text = f"missing field {error}" if isinstance(error, KeyError) else str(error)
        return ORJSONResponse({"error": error_text(f"malformed request: {text}")},
                              status_code=400)

    async def invalid_body(request: Any, error: RequestValidationError) -> ORJSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in problem['loc'][2:]) or 'body'}: {problem['msg']}"
            for problem in error.errors() if problem["loc"][1:2] != ("bytes",))
        # one line: a location may quote a key of the request, newlines and all
        return ORJSONResponse({"error": error_text(f"malformed request: {problems or 'not JSON'}")},
                              status_code=400)

    for kind in (KeyError, ValueError, TypeError):
        app.add_exception_handler(kind, bad_request)
    app.add_exception_handler(RequestValidationError, invalid_body)


class _Unparsed:
    """A gRPC request whose bytes are not its message: the handler refuses it."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def unparsed_request_interceptor() -> Any:
    """gRPC parses a request before any handler runs, and answers bytes it cannot parse with
    UNKNOWN (or INTERNAL): a bad request, named as a server error. This interceptor swaps each
    unary method's parser for one that hands the failure to the handler, which answers
    INVALID_ARGUMENT naming it."""
    import grpc
    from grpc import aio

    class Interceptor(aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            handler = await continuation(details)
            if handler is None or handler.unary_unary is None or (
                    handler.request_deserializer is None):
                return handler
            parse, behaviour = handler.request_deserializer, handler.unary_unary

            def tolerant(data: bytes) -> Any:
                try:
                    return parse(data)
                except Exception as error:  # noqa: BLE001 - protobuf's DecodeError and kin
                    return _Unparsed(error)

            async def refusing(request: Any, context: Any) -> Any:
                if isinstance(request, _Unparsed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                        f"malformed request: {request.error}")
                return await behaviour(request, context)

            return handler._replace(request_deserializer=tolerant, unary_unary=refusing)

    return Interceptor()


def serve(models: list[Any], host: str, http_port: int, grpc_port: int) -> None:
    """KServe's REST and gRPC servers for `models`, on `host` only."""
    import kserve
    import orjson
    from grpc import aio
    from kserve import model_server
    from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
    from kserve.errors import InvalidInput
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.infer_type import InferResponse
    from kserve.protocol.rest.server import RESTServer

    from deploybench.serving import input_validation

    class KitDataPlane(DataPlane):
        def decode(self, body: Any, headers: Any, protocol_version: str = "v1",
                   model_name: str | None = None) -> Any:
            # a V1 JSON body is parsed by the kit's own parser: KServe's (orjson) calls NaN
            # "Unrecognized request format", the kit's names it as the non-finite value it is
            binary = (input_validation.NPY_TYPE, input_validation.NPZ_TYPE)
            if (isinstance(body, bytes) and protocol_version.lower() == "v1"
                    and media_type(headers) not in binary):
                try:
                    body = input_validation.parse_json(body)
                except ValueError as error:
                    raise InvalidInput(str(error)) from None
            return super().decode(body, headers, protocol_version, model_name)

        def encode(self, model_name: str, response: Any, headers: Any,
                   req_attributes: dict) -> Any:
            """A V2 REST answer of the kit's model, JSON written from its numpy output by
            orjson: the same document KServe writes, without KServe's Python list of every
            number, its pydantic validation of it and FastAPI's walk over it again (a
            fifth of the server's time per mobilenet-v2 request, outside the model). Binary
            outputs asked for, named outputs and CloudEvents: KServe's own encoding."""
            if not (isinstance(response, InferResponse) and plain_json_answer(response, headers)):
                return super().encode(model_name, response, headers, req_attributes)
            body = orjson.dumps({
                "model_name": response.model_name, "model_version": response.model_version,
                "id": response.id, "parameters": response.parameters or None,
                "outputs": [{"name": output.name, "shape": output.shape,
                             "datatype": output.datatype,
                             "parameters": output.parameters or None,
                             # float32 numbers written as Python writes them (KServe's text)
                             "data": output.data.astype(np.float64).ravel()}
                            for output in response.outputs]},
                option=orjson.OPT_SERIALIZE_NUMPY)
            # KServe's endpoint drops the lower-case content headers of an encoded answer
            return body, {"Content-Type": "application/json",
                          "Content-Length": str(len(body))}

        def decode_inference_request(self, body: Any, headers: Any, model_name: str) -> Any:
            length = headers.get(INFERENCE_CONTENT_LENGTH_HEADER) if headers else None
            if isinstance(body, bytes) and length is not None:
                if not length.isdigit():
                    raise InvalidInput(f"malformed request: {INFERENCE_CONTENT_LENGTH_HEADER} "
                                       f"{length!r} is not a length in bytes")
                return binary_request(body, int(length), model_name)
            return super().decode_inference_request(body, headers, model_name)

    server = kserve.ModelServer(http_port=http_port, grpc_port=grpc_port, workers=1,
                                enable_grpc=False, grace_period=STOP_GRACE_S)
    server.dataplane = KitDataPlane(model_registry=server.registered_models)
    for model in models:
        server.register_model(model)
    rest = RESTServer(model_server.FASTAPI_APP_IMPORT_STRING, server.dataplane,
                      server.model_repository_extension, http_port, workers=1,
                      grace_period=STOP_GRACE_S)
    rest.config.host = host  # KServe's RESTServer binds 0.0.0.0 and offers no option
    # no line per request: uvicorn's access line and KServe's timing middleware's two (wall
    # and CPU) were written for every request, on the event loop's thread; errors still are
    rest.config.access_log = False
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    bad_request_handlers(model_server.app)

    async def grpc_serve() -> None:
        grpc_server = aio.server(interceptors=(unparsed_request_interceptor(),
                                               ExceptionToStatusInterceptor()))
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(server.dataplane, server.model_repository_extension), grpc_server)
        grpc_server.add_insecure_port(f"{host}:{grpc_port}")  # KServe's binds [::]
        await grpc_server.start()
        try:
            await grpc_server.wait_for_termination()
        finally:
            await grpc_server.stop(STOP_GRACE_S)

    async def both() -> None:
        grpc_task = asyncio.create_task(grpc_serve())
        try:
            await rest.start()  # returns when uvicorn stops (SIGTERM, SIGINT)
        finally:
            grpc_task.cancel()

    asyncio.run(both())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    root = args.artifacts.resolve()
    if args.health:
        sys.exit(0 if hosting.healthy(root, args.models, args.http_port) else 1)
    if args.runtime is None:
        raise SystemExit("--runtime is required to serve: " + ", ".join(RUNTIME_FORMATS))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    models = [make_model(root, name, args.runtime, args.threads)
              for name in hosting.model_names(root, args.models)]
    serve(models, args.host, args.http_port, args.grpc_port)


if __name__ == "__main__":
    main()
