"""One client interface for every server and protocol: predict(batch) -> logits (a Batch in,
float32 logits out), plus readiness and metadata. Load tests, the serve command and the tests
all go through it (serving/targets.py's make_client picks the class a target declares).

Each class builds itself from its target's addresses with `connect(addresses, model, ...)`,
`addresses` being the target's endpoints by key (serving/targets.py declares them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import requests

from deploybench.batch import Batch
from deploybench.serving import payload
from deploybench.serving.payload import PredictionError


class PredictClient(Protocol):
    target: str
    protocol: str
    model: str

    @classmethod
    def connect(cls, addresses: Mapping[str, str], model: str, *, input_name: str,
                output_name: str, timeout: float) -> PredictClient: ...

    def predict(self, batch: Batch) -> np.ndarray: ...
    def ready(self) -> bool: ...
    def metadata(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class _HTTPClient:
    def __init__(self, timeout: float) -> None:
        self.session = requests.Session()
        self.timeout = timeout

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.ConnectionError:
            raise PredictionError(f"cannot reach {self.target} at {url}") from None
        except requests.Timeout:
            raise PredictionError(f"{self.target} at {url} did not answer in "
                                  f"{self.timeout:g} s") from None

    def _post_predict(self, url: str, batch: Batch, binary: bool = False) -> np.ndarray:
        if binary:
            body = payload.encode_npy(batch)
            content_type = payload.binary_content_type(body)
        else:
            body, content_type = payload.encode(batch), payload.JSON_CONTENT_TYPE
        response = self._request("POST", url, data=body, headers={"Content-Type": content_type})
        if response.status_code != 200:
            raise PredictionError(
                f"{self.target} answered {response.status_code}: "
                f"{payload.error_message(response.content, response.status_code)}",
                response.status_code,
            )
        return payload.decode(response.content)

    def _status(self, url: str) -> Any:
        """The JSON a server describes a model with, or None when it cannot (not up yet)."""
        try:
            response = self._request("GET", url)
        except PredictionError:
            return None
        return response.json() if response.status_code == 200 else None

    def close(self) -> None:
        self.session.close()


class TFServingREST(_HTTPClient):
    target, protocol = "tfserving", "rest"
    PREDICT_PATH = "/v1/models/{model}:predict"  # what the locust user posts to

    def __init__(self, url: str, model: str, version: int | None = None,
                 timeout: float = 30.0) -> None:
        super().__init__(timeout)
        self.model = model
        self.model_url = f"{url.rstrip('/')}/v1/models/{model}"
        self.predict_url = self.model_url + (f"/versions/{version}" if version else "") + ":predict"

    @classmethod
    def connect(cls, addresses: Mapping[str, str], model: str, *, input_name: str = "pixels",
                output_name: str = "logits", timeout: float = 30.0) -> TFServingREST:
        return cls(addresses["rest"], model, timeout=timeout)

    def predict(self, batch: Batch) -> np.ndarray:
        return self._post_predict(self.predict_url, batch)

    def ready(self) -> bool:
        status = self._status(self.model_url)
        states = [v.get("state") for v in (status or {}).get("model_version_status", [])]
        return "AVAILABLE" in states

    def metadata(self) -> dict[str, Any]:
        return self._request("GET", self.model_url + "/metadata").json()


class TorchServeREST(_HTTPClient):
    target, protocol = "torchserve", "rest"
    PREDICT_PATH = "/predictions/{model}"

    def __init__(self, inference_url: str, management_url: str, model: str,
                 timeout: float = 30.0) -> None:
        super().__init__(timeout)
        self.model = model
        self.predict_url = f"{inference_url.rstrip('/')}/predictions/{model}"
        self.model_url = f"{management_url.rstrip('/')}/models/{model}"

    @classmethod
    def connect(cls, addresses: Mapping[str, str], model: str, *, input_name: str = "pixels",
                output_name: str = "logits", timeout: float = 30.0) -> TorchServeREST:
        return cls(addresses["inference"], addresses["management"], model, timeout)

    def predict(self, batch: Batch) -> np.ndarray:
        return self._post_predict(self.predict_url, batch, binary=self.protocol == "npy")

    def ready(self) -> bool:
        """A READY worker on the management API (/ping says Healthy before any worker is up)."""
        return any(
            worker.get("status") == "READY"
            for version in self._status(self.model_url) or []
            for worker in version.get("workers", [])
        )

    def metadata(self) -> dict[str, Any]:
        return self._request("GET", self.model_url).json()[0]


class TorchServeNpy(TorchServeREST):
    """TorchServe's REST API with the binary .npy request body."""

    protocol = "npy"


class _GRPCClient:
    """One channel to a gRPC server: connect, a call whose failure is a PredictionError naming
    the server, close."""

    target = ""

    def __init__(self, address: str, model: str, input_name: str = "pixels",
                 output_name: str = "logits", timeout: float = 30.0) -> None:
        import grpc

        self.grpc = grpc
        self.model, self.address = model, address
        self.input_name, self.output_name = input_name, output_name
        self.timeout = timeout
        self.channel = grpc.insecure_channel(address)

    @classmethod
    def connect(cls, addresses: Mapping[str, str], model: str, *, input_name: str = "pixels",
                output_name: str = "logits", timeout: float = 30.0) -> _GRPCClient:
        return cls(addresses["grpc"], model, input_name, output_name, timeout)

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout)
        except self.grpc.RpcError as error:
            code = error.code()
            raise PredictionError(f"{self.target} gRPC at {self.address}: "
                                  f"{code.name if code else 'error'}: {error.details()}"
                                  ) from None

    def close(self) -> None:
        self.channel.close()


class TFServingGRPC(_GRPCClient):
    target, protocol = "tfserving", "grpc"

    def __init__(self, target: str, model: str, input_name: str = "pixels",
                 output_name: str = "logits", timeout: float = 30.0) -> None:
        from deploybench.serving import protos

        super().__init__(target, model, input_name, output_name, timeout)
        self.protos = protos
        self.predict_stub = protos.prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = protos.model_service_pb2_grpc.ModelServiceStub(self.channel)

    def predict(self, batch: Batch) -> np.ndarray:
        request = self.protos.predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.model_spec.signature_name = "serving_default"
        for name, array in batch.arrays.items():
            request.inputs[name].CopyFrom(self.protos.tensor_proto(array))
        response = self._call(self.predict_stub.Predict, request)
        if self.output_name not in response.outputs:
            raise PredictionError(f"answer has no output {self.output_name!r}")
        return self.protos.tensor_to_array(response.outputs[self.output_name])

    def ready(self) -> bool:
        request = self.protos.get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model
        try:
            response = self._call(self.model_stub.GetModelStatus, request)
        except PredictionError:
            return False
        available = self.protos.get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return any(status.state == available for status in response.model_version_status)

    def metadata(self) -> dict[str, Any]:
        from google.protobuf.json_format import MessageToDict

        request = self.protos.get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = self.model
        request.metadata_field.append("signature_def")
        return MessageToDict(self._call(self.predict_stub.GetModelMetadata, request))



class KServeV1(_HTTPClient):
    """KServe's V1 protocol: TF Serving's REST predict API, the same request bytes."""

    target, protocol = "kserve", "v1"
    PREDICT_PATH = "/v1/models/{model}:predict"

    def __init__(self, url: str, model: str, timeout: float = 30.0) -> None:
        super().__init__(timeout)
        self.model, self.url = model, url.rstrip("/")
        self.predict_url = self.url + self.PREDICT_PATH.format(model=model)

    @classmethod
    def connect(cls, addresses: Mapping[str, str], model: str, *, input_name: str = "pixels",
                output_name: str = "logits", timeout: float = 30.0) -> KServeV1:
        return cls(addresses["rest"], model, timeout)

    def predict(self, batch: Batch) -> np.ndarray:
        return self._post_predict(self.predict_url, batch)

    def ready(self) -> bool:
        return (self._status(f"{self.url}/v1/models/{self.model}") or {}).get("ready") is True

    def metadata(self) -> dict[str, Any]:
        return self._request("GET", f"{self.url}/v2/models/{self.model}").json()


class OIPRest(_HTTPClient):
    """The Open Inference Protocol over REST, JSON tensors (Triton, MLServer, KServe...)."""

    target, protocol = "oip", "v2-rest"
    body = "oip-json"
    PREDICT_PATH = "/v2/models/{model}/infer"

    def __init__(self, url: str, model: str, input_name: str = "pixels",
                 output_name: str = "logits", timeout: float = 30.0) -> None:
        super().__init__(timeout)
        self.model, self.url = model, url.rstrip("/")
        self.input_name, self.output_name = input_name, output_name
        self.model_url = f"{self.url}/v2/models/{model}"
        self.encoding = payload.BODIES[self.body]

    @classmethod
    def connect(cls, addresses: Mapping[str, str], model: str, *, input_name: str = "pixels",
                output_name: str = "logits", timeout: float = 30.0) -> OIPRest:
        return cls(addresses["rest"], model, input_name, output_name, timeout)

    def predict(self, batch: Batch) -> np.ndarray:
        body = self.encoding.encode(batch, self.model)
        response = self._request("POST", self.model_url + "/infer", data=body,
                                 headers=self.encoding.request_headers(body))
        if response.status_code != 200:
            raise PredictionError(
                f"{self.target} answered {response.status_code}: "
                f"{payload.error_message(response.content, response.status_code)}",
                response.status_code)
        return self.encoding.answer(response.content, self.output_name)

    def ready(self) -> bool:
        """The protocol's model-ready: a 200 says ready. KServe also answers {"ready": ...};
        Triton answers 200 with no body."""
        try:
            response = self._request("GET", self.model_url + "/ready")
        except PredictionError:
            return False
        if response.status_code != 200:
            return False
        if not response.content.strip():
            return True
        try:
            answer = response.json()
        except ValueError:
            return False
        return not isinstance(answer, dict) or answer.get("ready", True) is True

    def metadata(self) -> dict[str, Any]:
        response = self._request("GET", self.model_url)
        if response.status_code != 200:
            raise PredictionError(f"{self.model_url}: {response.status_code} "
                                  f"{payload.error_message(response.content)}")
        return response.json()


class OIPBinary(OIPRest):
    """The Open Inference Protocol over REST with the binary tensor extension."""

    protocol, body = "v2-binary", "oip-binary"


class OIPGRPC(_GRPCClient):
    """The Open Inference Protocol over gRPC (GRPCInferenceService), raw tensor contents."""

    target, protocol = "oip", "v2-grpc"
    body = "oip-grpc"

    def __init__(self, address: str, model: str, input_name: str = "pixels",
                 output_name: str = "logits", timeout: float = 30.0) -> None:
        from deploybench.serving import oip

        super().__init__(address, model, input_name, output_name, timeout)
        self.oip = oip
        self.stub = oip.grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.encoding = payload.BODIES[self.body]
        self.infer = self.channel.unary_unary(self.encoding.grpc_method,
                                              request_serializer=None,
                                              response_deserializer=None)

    def predict(self, batch: Batch) -> np.ndarray:
        body = self.encoding.encode(batch, self.model)
        return self.encoding.answer(self._call(self.infer, body), self.output_name)

    def ready(self) -> bool:
        request = self.oip.grpc_predict_v2_pb2.ModelReadyRequest(name=self.model)
        try:
            return self._call(self.stub.ModelReady, request).ready
        except PredictionError:
            return False

    def metadata(self) -> dict[str, Any]:
        from google.protobuf.json_format import MessageToDict

        request = self.oip.grpc_predict_v2_pb2.ModelMetadataRequest(name=self.model)
        return MessageToDict(self._call(self.stub.ModelMetadata, request))
