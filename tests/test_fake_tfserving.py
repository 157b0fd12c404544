"""The TF Serving test double (tests/fake_tfserving.py) against TF Serving's REST and gRPC
contract, on the real export: answers match the manifest's golden reference outputs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from deploybench.golden import Golden
from deploybench.manifest import load_manifest
from tests.bad_input_checks import assert_fuzz, assert_matrix
from tests.fake_tfserving import FakeTFServing

MODELS = ("digits-mlp", "digits-cnn")


@pytest.fixture(scope="module")
def fake(export_root: Path) -> Iterator[FakeTFServing]:
    with FakeTFServing(export_root) as server:
        yield server


def golden(export_root: Path, model: str) -> tuple[Golden, float]:
    manifest = load_manifest(export_root, model)
    tolerance = manifest.tolerance["fp32_max_abs_diff"]
    return Golden.load(export_root / manifest.golden["path"]), tolerance


def max_diff(answer: object, expected: np.ndarray) -> float:
    got = np.asarray(answer, dtype=np.float64)
    assert got.shape == expected.shape
    return float(np.max(np.abs(got - expected)))


def predict(fake: FakeTFServing, model: str, body: object, suffix: str = "") -> requests.Response:
    url = f"{fake.rest_url}/v1/models/{model}{suffix}:predict"
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(url, data=data, headers={"Content-Type": "application/json"}, timeout=30)


# --- REST: predictions ------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_rest_row_and_columnar_forms_match_golden(
    fake: FakeTFServing, export_root: Path, model: str
) -> None:
    data, tolerance = golden(export_root, model)
    rows, expected = data.inputs[:16].only, data.outputs[:16]
    forms = [
        ({"instances": rows.tolist()}, "predictions"),
        ({"instances": [{"pixels": row} for row in rows.tolist()]}, "predictions"),
        ({"inputs": rows.tolist()}, "outputs"),
        ({"inputs": {"pixels": rows.tolist()}}, "outputs"),
        ({"signature_name": "serving_default", "instances": rows.tolist()}, "predictions"),
    ]
    for body, key in forms:
        reply = predict(fake, model, body)
        assert reply.status_code == 200, reply.text
        assert reply.headers["Content-Type"] == "application/json"
        assert set(reply.json()) == {key}
        assert max_diff(reply.json()[key], expected) <= tolerance


def test_rest_every_golden_sample_and_explicit_version(
    fake: FakeTFServing, export_root: Path
) -> None:
    data, tolerance = golden(export_root, "digits-mlp")
    reply = predict(fake, "digits-mlp", {"instances": data.inputs.only.tolist()}, "/versions/1")
    assert reply.status_code == 200, reply.text
    assert max_diff(reply.json()["predictions"], data.outputs) <= tolerance


def test_rest_concurrent_requests_are_all_correct(fake: FakeTFServing, export_root: Path) -> None:
    data, tolerance = golden(export_root, "digits-cnn")

    def one(i: int) -> float:
        reply = predict(fake, "digits-cnn", {"instances": data.inputs[i : i + 1].only.tolist()})
        assert reply.status_code == 200, reply.text
        return max_diff(reply.json()["predictions"], data.outputs[i : i + 1])

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert max(pool.map(one, range(32))) <= tolerance


# --- REST: status and metadata ----------------------------------------------------------------


def test_rest_model_status(fake: FakeTFServing) -> None:
    expected = {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    for path in ("/v1/models/digits-mlp", "/v1/models/digits-mlp/versions/1"):
        reply = requests.get(fake.rest_url + path, timeout=10)
        assert reply.status_code == 200
        assert reply.json() == expected


def test_rest_metadata_is_the_signature_def(fake: FakeTFServing) -> None:
    reply = requests.get(f"{fake.rest_url}/v1/models/digits-cnn/metadata", timeout=10)
    assert reply.status_code == 200
    body = reply.json()
    assert body["model_spec"] == {"name": "digits-cnn", "version": "1", "signature_name": ""}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    (pixels,) = signature["inputs"].values()
    assert list(signature["inputs"]) == ["pixels"]
    assert pixels["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in pixels["tensor_shape"]["dim"]] == ["-1", "8", "8", "1"]
    logits = signature["outputs"]["logits"]
    assert [d["size"] for d in logits["tensor_shape"]["dim"]] == ["-1", "10"]


# --- REST: errors -----------------------------------------------------------------------------

ROW = [0.5] * 64
BAD_BODIES = [
    ("malformed JSON", b'{"instances": [', "JSON Parse error"),
    ("empty body", b"", "The document is empty"),
    ("not an object", [ROW], "Is not object"),
    ("missing key", {"rows": [ROW]}, "Missing 'inputs' or 'instances' key"),
    ("both keys", {"instances": [ROW], "inputs": [ROW]}, "only one of 'inputs' or 'instances'"),
    ("instances not a list", {"instances": 3}, "Expecting 'instances' to be an list/array"),
    ("empty instances", {"instances": []}, "No values in 'instances' array"),
    ("wrong input name", {"instances": [{"image": ROW}]}, "keys must be equal to: pixels"),
    ("wrong columnar name", {"inputs": {"image": [ROW]}}, "does not have named input: image"),
    ("string value", {"instances": [["a"] * 64]}, "is not of expected type: float"),
    ("null value", {"instances": [[None] * 64]}, "Type: Null is not of expected type: float"),
    ("nested object", {"instances": [[{"x": 1}] * 64]}, "Type: Object"),
    ("ragged rows", {"instances": [ROW, ROW[:10]]}, "Expecting tensor size: 64 but got: 10"),
    ("ragged columnar", {"inputs": [ROW, ROW[:10]]}, "unexpected size: 10"),
    ("wrong shape", {"instances": [ROW[:63]]}, "expects [-1,64]"),
    ("too deep", {"instances": [[ROW]]}, "expects [-1,64]"),
    ("unknown signature", {"signature_name": "nope", "instances": [ROW]},
     'Serving signature name: "nope" not found in signature def'),
]


@pytest.mark.parametrize(("case", "body", "message"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_rest_bad_requests_get_400_with_tf_serving_error_json(
    fake: FakeTFServing, case: str, body: object, message: str
) -> None:
    reply = predict(fake, "digits-mlp", body)
    assert reply.status_code == 400, reply.text
    assert set(reply.json()) == {"error"}
    assert message in reply.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("POST", "/v1/models/nope:predict", 404, "Servable not found for request: Latest(nope)"),
        ("POST", "/v1/models/digits-mlp/versions/7:predict", 404,
         "Servable not found for request: Specific(digits-mlp, 7)"),
        ("POST", "/v1/models/digits-mlp/labels/canary:predict", 400,
         "Unrecognized servable version label: canary"),
        ("GET", "/v1/models/nope", 404, "Could not find any versions of model nope"),
        ("GET", "/v1/models/digits-mlp/versions/7", 404,
         "Could not find version 7 of model digits-mlp"),
        ("GET", "/v1/models/nope/metadata", 404, "Servable not found for request: Latest(nope)"),
        ("GET", "/v1/models", 400, "Missing model name in request."),
        ("POST", "/v1/models/digits-mlp:explain", 400,
         "Malformed request: POST /v1/models/digits-mlp:explain"),
    ],
)
def test_rest_unknown_models_versions_and_paths(
    fake: FakeTFServing, method: str, path: str, status: int, message: str
) -> None:
    reply = requests.request(method, fake.rest_url + path, json={"instances": [ROW]}, timeout=10)
    assert reply.status_code == status, reply.text
    assert reply.json() == {"error": message}


def test_rest_still_correct_after_errors(fake: FakeTFServing, export_root: Path) -> None:
    data, tolerance = golden(export_root, "digits-mlp")
    for _, body, _ in BAD_BODIES:
        predict(fake, "digits-mlp", body)
    reply = predict(fake, "digits-mlp", {"instances": data.inputs[:4].only.tolist()})
    assert reply.status_code == 200
    assert max_diff(reply.json()["predictions"], data.outputs[:4]) <= tolerance


# --- gRPC -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def channel(fake: FakeTFServing) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fake.grpc_target) as open_channel:
        yield open_channel


def predict_request(model: str, inputs: dict[str, np.ndarray], **spec: object):  # noqa: ANN201
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return request


@pytest.mark.parametrize("model", MODELS)
def test_grpc_predict_matches_golden(
    channel: grpc.Channel, export_root: Path, model: str
) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    data, tolerance = golden(export_root, model)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    reply = stub.Predict(predict_request(model, {"pixels": data.inputs[:32].only}), timeout=30)
    assert reply.model_spec.name == model
    assert reply.model_spec.version.value == 1
    assert reply.model_spec.signature_name == "serving_default"
    assert list(reply.outputs) == ["logits"]
    assert max_diff(tf.make_ndarray(reply.outputs["logits"]), data.outputs[:32]) <= tolerance


def test_grpc_metadata_and_status(channel: grpc.Channel) -> None:
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        prediction_service_pb2_grpc,
    )

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "digits-mlp"
    request.metadata_field.append("signature_def")
    reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
        request, timeout=10
    )
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert reply.metadata["signature_def"].Unpack(signatures)
    serving = signatures.signature_def["serving_default"]
    assert [d.size for d in serving.inputs["pixels"].tensor_shape.dim] == [-1, 64]

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "digits-mlp"
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        status_request, timeout=10
    )
    (entry,) = status.model_version_status
    assert entry.version == 1
    assert entry.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def grpc_error(call, request) -> grpc.RpcError:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    return caught.value


def test_grpc_error_codes(channel: grpc.Channel) -> None:
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_service_pb2_grpc,
        prediction_service_pb2_grpc,
    )

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    row = np.full((1, 64), 0.5, dtype=np.float32)
    cases = [
        (predict_request("nope", {"pixels": row}), grpc.StatusCode.NOT_FOUND,
         "Servable not found for request: Latest(nope)"),
        (predict_request("digits-mlp", {"pixels": row}, version=9), grpc.StatusCode.NOT_FOUND,
         "Servable not found for request: Specific(digits-mlp, 9)"),
        (predict_request("digits-mlp", {"image": row}), grpc.StatusCode.INVALID_ARGUMENT,
         "input tensor alias not found in signature: image"),
        (predict_request("digits-mlp", {"pixels": row, "extra": row}),
         grpc.StatusCode.INVALID_ARGUMENT, "input size does not match signature: 2!=1"),
        (predict_request("digits-mlp", {"pixels": row.astype(np.float64)}),
         grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[0] to be float but double is provided"),
        (predict_request("digits-mlp", {"pixels": row[:, :63]}),
         grpc.StatusCode.INVALID_ARGUMENT, "expects [-1,64]"),
        (predict_request("digits-mlp", {"pixels": row}, signature_name="nope"),
         grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
    ]
    for request, code, message in cases:
        error = grpc_error(stub.Predict, request)
        assert error.code() == code, error.details()
        assert message in error.details()

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "nope"
    error = grpc_error(model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus,
                       status_request)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Could not find any versions of model nope"


# --- the bad-input matrix and the fuzzer: the checks the real TF Serving gets where it runs -----


class FakeEndpoints:
    """The double's addresses, as the kit's Endpoints give a target's."""

    def __init__(self, fake: FakeTFServing) -> None:
        self.addresses = {"rest": fake.rest_url, "grpc": fake.grpc_target}

    def address(self, target: str, protocol: str) -> str:
        return self.addresses[protocol]


@pytest.mark.parametrize("model", MODELS)
def test_the_bad_input_matrix_gets_refusals_or_tf_serving_s_declared_answers(
    fake: FakeTFServing, export_root: Path, model: str
) -> None:
    """Every case refused with TF Serving's words, except those the registry declares TF
    Serving answers by design (NaN runs, no row limit, gRPC's INTERNAL for bytes that are not
    a request): exactly those, so the declaration cannot go stale."""
    assert_matrix("tfserving", FakeEndpoints(fake), export_root, model)


def test_the_fuzzer_gets_tf_serving_s_refusals_or_answers(fake: FakeTFServing,
                                                         export_root: Path) -> None:
    assert_fuzz("tfserving", FakeEndpoints(fake), export_root)


# --- options ----------------------------------------------------------------------------------


def test_perturb_makes_answers_wrong_detectably(export_root: Path) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    data, tolerance = golden(export_root, "digits-mlp")
    with FakeTFServing(export_root, models=["digits-mlp"], perturb=0.5) as noisy:
        reply = predict(noisy, "digits-mlp", {"instances": data.inputs[:8].only.tolist()})
        assert reply.status_code == 200
        assert max_diff(reply.json()["predictions"], data.outputs[:8]) > 100 * tolerance
        with grpc.insecure_channel(noisy.grpc_target) as open_channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(open_channel)
            answer = stub.Predict(predict_request("digits-mlp", {"pixels": data.inputs[:8].only}),
                                  timeout=30)
        assert max_diff(tf.make_ndarray(answer.outputs["logits"]), data.outputs[:8]) > tolerance
        # only the models asked for are served
        assert predict(noisy, "digits-cnn", {"instances": [[[[0.0]] * 8] * 8]}).status_code == 404


def test_unknown_model_is_refused_at_construction(export_root: Path) -> None:
    with pytest.raises(ValueError, match="no-such-model"):
        FakeTFServing(export_root, models=["no-such-model"])
