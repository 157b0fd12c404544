"""Real TorchServe, started natively from the exported .mar, through the serve/stop CLI."""

from __future__ import annotations

import concurrent.futures
import io
import json
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests

from deploybench.batch import Batch
from deploybench.errors import DeploybenchError
from deploybench.golden import Golden
from deploybench.manifest import FP32_TOLERANCE, load_manifest
from deploybench.serving import payload
from deploybench.serving.clients import TorchServeREST
from deploybench.serving.manager import Deployment, serve, stop
from deploybench.serving.targets import Endpoints, make_client
from deploybench.settings import load_settings
from tests.bad_input_checks import assert_fuzz, assert_matrix
from tests.conftest import invoke
from tests.servers import free_endpoints, free_offset, port_free

MODELS = ["digits-mlp", "digits-cnn"]


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory, monkeypatch_module):
    directory = tmp_path_factory.mktemp("state")
    monkeypatch_module.setenv("DEPLOYBENCH_STATE_DIR", str(directory))
    return directory


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def served(export_root, state_dir, tmp_path_factory):
    """`deploybench serve --mode native` for both servers; `deploybench stop` afterwards."""
    offset = free_offset()
    # deeper than a Unix socket's path may be: TorchServe's workers must still start
    run_dir = tmp_path_factory.mktemp("serve-run") / ("a-run-folder-deep-down-" * 4)
    assert len(str(run_dir / "torchserve" / "tmp" / ".ts.sock.9000")) > 107
    result = invoke("serve", "--artifacts", str(export_root), "--mode", "native",
                    "--port-offset", str(offset), "--run-dir", str(run_dir))
    assert result.exit_code == 0, result.output
    deployment = Deployment.load()
    yield deployment, result.output
    stopped = invoke("stop")
    assert stopped.exit_code == 0 and "torchserve" in stopped.output
    assert not any(p.alive() for p in deployment.processes)
    assert port_free(8080 + offset)


@pytest.fixture(scope="module")
def torchserve_url(served):
    return served[0].endpoints["torchserve_inference"]


def golden(export_root: Path, model: str) -> Golden:
    return Golden.load(export_root / load_manifest(export_root, model).golden["path"])


def post(url: str, model: str, body, content_type: str = "application/json"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{url}/predictions/{model}", data=data,
                         headers={"Content-Type": content_type}, timeout=30)


def test_serve_reports_tf_serving_unavailable_and_runs_torchserve(served):
    deployment, output = served
    assert deployment.mode == "native"
    assert deployment.status("torchserve").status == "up"
    tfserving = deployment.status("tfserving")
    assert tfserving.status == "unavailable"
    assert "tensorflow_model_server is not on PATH" in tfserving.reason
    assert "tensorflow_model_server is not on PATH" in output


def test_torchserve_worker_gets_the_settings_of_dot_env(served):
    """Threads and the allocator setting reach the Python worker that runs the model."""
    deployment, _ = served
    settings = load_settings()
    (record,) = [r for r in deployment.processes if r.name == "torchserve"]
    workers = [p for p in psutil.Process(record.pid).children(recursive=True)
               if "model_service_worker" in " ".join(p.cmdline())]
    assert workers
    for worker in workers:
        environment = worker.environ()
        assert settings.process_env()  # .env sets the allocator ...
        for key, value in settings.process_env().items():  # ... and the worker has it whole
            assert environment[key] == value
        assert environment["DEPLOYBENCH_TORCH_THREADS"] == str(settings.intra_op_threads)
        # bodies reach the handler undecoded: it parses JSON with orjson, not TorchServe with json
        assert environment["TS_DECODE_INPUT_REQUEST"] == "false"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("form", ["instances", "inputs"])
def test_predictions_match_the_reference_in_both_forms(export_root, torchserve_url, model, form):
    samples = golden(export_root, model)
    for rows in (slice(0, 1), slice(0, 10)):
        response = post(torchserve_url, model, payload.encode(samples.inputs[rows], form))
        assert response.status_code == 200, response.text
        answer = response.json()
        assert set(answer) == {payload.ANSWER_KEYS[form]}
        outputs = payload.decode(answer)
        ok, why = payload.matches_reference(outputs, samples.outputs[rows], FP32_TOLERANCE)
        assert ok, why


@pytest.mark.parametrize("model", MODELS)
def test_npy_body_gets_the_same_answer_as_json(export_root, torchserve_url, model):
    samples = golden(export_root, model)
    rows = samples.inputs[:10]
    binary = post(torchserve_url, model, payload.encode_npy(rows), payload.NPY_CONTENT_TYPE)
    text = post(torchserve_url, model, payload.encode(rows))
    assert binary.status_code == 200, binary.text
    assert set(binary.json()) == {"predictions"}
    np.testing.assert_array_equal(payload.decode(binary.content), payload.decode(text.content))
    ok, why = payload.matches_reference(payload.decode(binary.content), samples.outputs[:10],
                                        FP32_TOLERANCE)
    assert ok, why


def test_named_input_forms_are_accepted(export_root, torchserve_url):
    samples = golden(export_root, "digits-mlp")
    rows = samples.inputs[:3].only.tolist()
    for body in ({"instances": [{"pixels": row} for row in rows]},
                 {"inputs": {"pixels": rows}}):
        response = post(torchserve_url, "digits-mlp", body)
        assert response.status_code == 200, response.text
        assert np.allclose(payload.decode(response.json()), samples.outputs[:3], atol=1e-4)


def test_client_api_predicts_and_reports_readiness(export_root, served):
    deployment, _ = served
    endpoints = deployment.endpoints_obj()
    client = TorchServeREST(endpoints.torchserve_inference, endpoints.torchserve_management,
                            "digits-cnn")
    samples = golden(export_root, "digits-cnn")
    assert client.ready()
    assert client.metadata()["modelName"] == "digits-cnn"
    np.testing.assert_allclose(client.predict(samples.inputs[:5]), samples.outputs[:5],
                               atol=FP32_TOLERANCE)
    with pytest.raises(payload.PredictionError, match="400.*wrong shape"):
        client.predict(Batch.single("pixels", np.zeros((1, 7), np.float32)))
    client.close()
    binary = make_client("torchserve", "npy", "digits-cnn", Endpoints(
        torchserve_inference=endpoints.torchserve_inference,
        torchserve_management=endpoints.torchserve_management))
    assert binary.protocol == "npy" and binary.ready()
    np.testing.assert_allclose(binary.predict(samples.inputs[:5]), samples.outputs[:5],
                               atol=FP32_TOLERANCE)
    with pytest.raises(payload.PredictionError, match="400.*wrong shape"):
        binary.predict(Batch.single("pixels", np.zeros((2, 8, 8, 2), np.float32)))
    binary.close()


ROW = [0.5] * 64
BAD_INPUTS = {
    "malformed JSON": (b'{"instances": [[0.5, ', "malformed JSON"),
    "not an object": ([1, 2, 3], "JSON object"),
    "wrong key": ({"rows": [ROW]}, "'instances' or 'inputs'"),
    "both keys": ({"instances": [ROW], "inputs": [ROW]}, "exactly one"),
    "wrong shape": ({"instances": [[0.5] * 63]}, "wrong shape"),
    "missing batch axis": ({"instances": ROW}, "wrong shape"),
    "ragged rows": ({"instances": [ROW, [0.5] * 10]}, "ragged"),
    "string values": ({"instances": [["a"] * 64]}, "wrong dtype"),
    "nested objects": ({"instances": [[{"x": 1}] * 64]}, "wrong dtype"),
    "nulls": ({"instances": [[None] * 64]}, "wrong dtype"),
    "NaN": (b'{"instances": [[NaN' + b", 0.5" * 63 + b"]]}", "non-finite"),
    "Infinity": (b'{"instances": [[Infinity' + b", 0.5" * 63 + b"]]}", "non-finite"),
    "empty input": ({"instances": []}, "empty input"),
    "too many rows": ({"instances": [ROW] * 65}, "too many rows"),
    "unknown input name": ({"inputs": {"image": [ROW]}}, "unknown input name"),
    "unknown signature": ({"signature_name": "x", "instances": [ROW]}, "signature_name"),
}


def npy(array: np.ndarray) -> bytes:
    """Any array as an .npy file, whatever its dtype (pickled objects included)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


GOOD_NPY = npy(np.full((1, 64), 0.5, np.float32))
BAD_NPY_INPUTS = {
    "npy: empty body": (b"", "empty request body"),
    "npy: not an .npy file": (b"\x00" * 200, "malformed .npy body"),
    "npy: truncated": (GOOD_NPY[:-10], "malformed .npy body"),
    "npy: bytes after the array": (GOOD_NPY + b"xx", "bytes after the array"),
    "npy: pickled objects": (npy(np.array([{"x": 1}], dtype=object)), "allow_pickle=False"),
    "npy: float64": (npy(np.zeros((1, 64))), "holds float64, expected float32"),
    "npy: int": (npy(np.zeros((1, 64), np.int32)), "holds int32, expected float32"),
    "npy: wrong shape": (npy(np.zeros((1, 63), np.float32)), "wrong shape"),
    "npy: scalar": (npy(np.float32(1.0)), "wrong shape"),
    "npy: no rows": (npy(np.zeros((0, 64), np.float32)), "empty input"),
    "npy: too many rows": (npy(np.zeros((65, 64), np.float32)), "too many rows"),
    "npy: NaN": (npy(np.array([[0.5] * 63 + [np.nan]], np.float32)), "non-finite"),
}


def bad_request(case: str) -> tuple[bytes, str, str]:
    """Body, Content-Type and the words the 400 must name, for a case of either matrix."""
    if case in BAD_NPY_INPUTS:
        return (*BAD_NPY_INPUTS[case][:1], payload.NPY_CONTENT_TYPE, BAD_NPY_INPUTS[case][1])
    body, expected = BAD_INPUTS[case]
    return body, payload.JSON_CONTENT_TYPE, expected


@pytest.mark.parametrize("case", sorted(BAD_INPUTS) + sorted(BAD_NPY_INPUTS))
def test_bad_input_gets_400_naming_the_problem(export_root, torchserve_url, case):
    body, content_type, expected = bad_request(case)
    response = post(torchserve_url, "digits-mlp", body, content_type)
    assert response.status_code == 400, response.text
    assert expected in response.json()["error"]
    # and the server still answers a good request correctly
    samples = golden(export_root, "digits-mlp")
    good = post(torchserve_url, "digits-mlp", payload.encode(samples.inputs[:1]))
    assert good.status_code == 200
    assert np.allclose(payload.decode(good.content), samples.outputs[:1], atol=FP32_TOLERANCE)


def test_wrong_content_type_gets_400(torchserve_url):
    response = post(torchserve_url, "digits-mlp", json.dumps({"instances": [ROW]}), "text/plain")
    assert response.status_code == 400
    assert "Content-Type" in response.json()["error"]


def twenty_megabytes() -> bytes:
    """A well-formed predict body of about 20 MB: past TorchServe's max_request_size."""
    row = json.dumps(ROW).encode()
    return b'{"instances": [' + b", ".join([row] * (20_000_000 // len(row))) + b"]}"


# Answered by TorchServe's frontend before the handler sees them: (path under /predictions/,
# body, status, what the message names). TorchServe answers an oversized body with an empty
# 413; deploybench's clients and load test describe it (payload.error_message).
FRONTEND_BAD_INPUTS = {
    "20 MB body": ("digits-mlp", twenty_megabytes, 413,
                   ["Too Large", "max_request_size"]),  # 3.13 renames the phrase
    "unknown model": ("no-such-model", {"instances": [ROW]}, 404,
                      ["ModelNotFoundException", "no-such-model"]),
    "unknown version": ("digits-mlp/7", {"instances": [ROW]}, 404,
                        ["Model version: 7 does not exist for model: digits-mlp"]),
}


@pytest.mark.parametrize("case", sorted(FRONTEND_BAD_INPUTS))
def test_frontend_refusals_are_4xx_naming_the_problem(torchserve_url, case):
    path, body, status, words = FRONTEND_BAD_INPUTS[case]
    response = post(torchserve_url, path, body() if callable(body) else body)
    assert response.status_code == status, response.text[:300]
    message = payload.error_message(response.content, response.status_code)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_client_names_an_oversized_body_and_an_unknown_model(served):
    deployment, _ = served
    endpoints = deployment.endpoints_obj()
    client = TorchServeREST(endpoints.torchserve_inference, endpoints.torchserve_management,
                            "digits-mlp")
    with pytest.raises(payload.PredictionError, match="413: .*Too Large") as info:
        # ~20 MB of JSON
        client.predict(Batch.single("pixels", np.full((62_500, 64), 0.5, np.float32)))
    assert info.value.status == 413 and "max_request_size" in str(info.value)
    client.close()
    unknown = TorchServeREST(endpoints.torchserve_inference, endpoints.torchserve_management,
                             "no-such-model")
    with pytest.raises(payload.PredictionError, match="404: .*Model not found: no-such-model"):
        unknown.predict(Batch.single("pixels", np.zeros((1, 64), np.float32)))
    assert not unknown.ready()
    unknown.close()


def test_the_whole_matrix_leaves_the_worker_alive_and_correct(export_root, served):
    """Every bad input in a row: each refused, and afterwards the same worker process (pid
    unchanged on the management API) still answers golden samples correctly."""
    deployment, _ = served
    endpoints = deployment.endpoints_obj()
    url = endpoints.torchserve_inference

    def workers() -> list[dict]:
        answer = requests.get(f"{endpoints.torchserve_management}/models/digits-mlp", timeout=10)
        return answer.json()[0]["workers"]

    before = workers()
    assert [w["status"] for w in before] == ["READY"]
    for case in [*BAD_INPUTS, *BAD_NPY_INPUTS]:
        body, content_type, _ = bad_request(case)
        assert post(url, "digits-mlp", body, content_type).status_code == 400
    assert post(url, "digits-mlp", json.dumps({"instances": [ROW]}), "text/plain"
                ).status_code == 400
    for path, body, status, _ in FRONTEND_BAD_INPUTS.values():
        assert post(url, path, body() if callable(body) else body).status_code == status
    after = workers()
    assert [(w["pid"], w["status"]) for w in after] == [(before[0]["pid"], "READY")]
    samples = golden(export_root, "digits-mlp")
    good = post(url, "digits-mlp", payload.encode(samples.inputs[:8]))
    assert good.status_code == 200
    ok, why = payload.matches_reference(payload.decode(good.content), samples.outputs[:8],
                                        FP32_TOLERANCE)
    assert ok, why


def worker_pids(endpoints: Endpoints, model: str) -> list[tuple[int, str]]:
    answer = requests.get(f"{endpoints.torchserve_management}/models/{model}", timeout=10)
    return [(w["pid"], w["status"]) for w in answer.json()[0]["workers"]]


@pytest.mark.parametrize("model", MODELS)
def test_the_shared_bad_input_matrix_is_refused_and_the_worker_lives(export_root, served, model):
    """The matrix every server gets (serving/bad_inputs.py), in REST JSON and .npy: each case
    a 400 naming the problem (TorchServe's frontend closes the connection after each, saying
    so), the same worker READY afterwards, a good request answered correctly."""
    endpoints = served[0].endpoints_obj()
    before = worker_pids(endpoints, model)
    assert_matrix("torchserve", endpoints, export_root, model)
    assert worker_pids(endpoints, model) == before and before[0][1] == "READY"


def test_the_fuzzer_gets_refusals_or_answers_never_a_5xx_drop_or_hang(export_root, served):
    endpoints = served[0].endpoints_obj()
    before = worker_pids(endpoints, "digits-mlp")
    assert_fuzz("torchserve", endpoints, export_root)
    assert worker_pids(endpoints, "digits-mlp") == before


def test_serving_refuses_a_tampered_artifact(export_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYBENCH_STATE_DIR", str(tmp_path / "state"))
    copy = export_copy
    mar = (copy / "digits-mlp" / "digits-mlp.mar").resolve()
    mar.write_bytes(mar.read_bytes()[:-100])  # truncated
    with pytest.raises(DeploybenchError, match=r"digits-mlp\.mar.*sha256"):
        serve(copy, mode="native", models=["digits-mlp"], servers=("torchserve",))


def test_batched_bad_request_fails_alone(export_root, tmp_path, monkeypatch):
    """With batching on, a bad request in a batch gets its own 400; neighbours are answered,
    JSON and .npy bodies alike."""
    monkeypatch.setenv("DEPLOYBENCH_STATE_DIR", str(tmp_path / "state"))
    _, endpoints = free_endpoints()
    settings = load_settings(batching=True, max_batch_size=8, batch_timeout_ms=500)
    deployment = serve(export_root, mode="native", models=["digits-mlp"],
                       run_dir=tmp_path / "run", endpoints=endpoints, servers=("torchserve",),
                       settings=settings, log=lambda text: None)
    try:
        samples = golden(export_root, "digits-mlp")
        requests_ = [(payload.encode(samples.inputs[i : i + 1]), payload.JSON_CONTENT_TYPE)
                     if i % 2 else
                     (payload.encode_npy(samples.inputs[i : i + 1]), payload.NPY_CONTENT_TYPE)
                     for i in range(8)]
        requests_[3] = (json.dumps({"instances": [[0.5] * 63]}).encode(),
                        payload.JSON_CONTENT_TYPE)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(
                lambda request: post(endpoints.torchserve_inference, "digits-mlp", *request),
                requests_))
        assert answers[3].status_code == 400
        assert "wrong shape" in answers[3].json()["error"]
        for index, answer in enumerate(answers):
            if index != 3:
                assert answer.status_code == 200, answer.text
                assert np.allclose(payload.decode(answer.content),
                                   samples.outputs[index : index + 1], atol=FP32_TOLERANCE)
        log = (tmp_path / "run" / "torchserve" / "logs" / "model_log.log").read_text()
        assert "rejected" in log  # the bad request really shared a batch with good ones
        assert "batch of 8 requests, 1 rejected" in log or "1 rejected" in log
        # the kit's log config: no line per request from TorchServe itself (its console and
        # ts_log.log keep start-up, warnings and errors), the handler's own in model_log.log
        for name in ("torchserve.log", "logs/ts_log.log"):
            text = (tmp_path / "run" / "torchserve" / name).read_text()
            assert "Inference API bind to" in text, name
            assert "Backend response time" not in text and "[METRICS]" not in text, name
        assert not (tmp_path / "run" / "torchserve" / "logs" / "access_log.log").exists()
    finally:
        stop(deployment)


def test_handler_parses_json_alike_with_and_without_orjson(monkeypatch):
    """The fast parser and the standard one give the same batch and the same errors."""
    from deploybench.serving import input_validation as handler

    assert handler.orjson is not None  # a dependency: the native worker parses with it
    signature = {"input_name": "pixels", "input_shape": [64], "max_rows": 64}
    rows = np.random.default_rng(3).random((2, 64), dtype=np.float32)
    bodies = {
        "rows": json.dumps({"instances": rows.tolist()}).encode(),
        "named": json.dumps({"inputs": {"pixels": rows.tolist()}}).encode(),
        "nan": b'{"instances": [[NaN' + b", 0" * 63 + b"]]}",
        "malformed": b'{"instances": [[1, 2,]]}',
        "not utf-8": b'{"instances": "\xff"}',
    }

    def outcome(body):
        try:
            batch, form = handler.decode_predict_body(bytearray(body), signature)
            return batch["pixels"].tolist(), form
        except ValueError as error:
            return str(error)

    fast = {name: outcome(body) for name, body in bodies.items()}
    monkeypatch.setattr(handler, "orjson", None)
    standard = {name: outcome(body) for name, body in bodies.items()}
    assert fast == standard
    assert fast["rows"] == (rows.tolist(), "instances")
    assert fast["nan"] == "non-finite value (NaN or Infinity) in row 0"
    assert fast["malformed"].startswith("malformed JSON: ")

