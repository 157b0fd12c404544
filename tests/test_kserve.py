"""KServe's model server, one process per framework (serving/kserve_server.py), started for
real on loopback: golden answers through every protocol, the bad-input matrix, the loopback
check, a locust sweep."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from deploybench.manifest import FP32_TOLERANCE
from deploybench.serving import oip, payload, processes
from deploybench.serving.manager import Deployment, serve, stop
from deploybench.serving.targets import get, host_port, make_client
from tests.conftest import invoke
from tests.servers import free_offset, inet_connections
from tests.test_serving import BAD_INPUTS, BAD_NPY_INPUTS, ROW, golden

KSERVE = ("kserve-tensorflow", "kserve-pytorch")
MODELS = ["digits-mlp", "digits-cnn"]
LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")
# KServe parses a JSON body itself before the model sees it (orjson, which also refuses NaN
# and Infinity as not JSON): its words name the problem for these
KSERVE_JSON_WORDS = "Unrecognized request format"
PARSED_BY_KSERVE = ("malformed JSON", "NaN", "Infinity")


@pytest.fixture(scope="module")
def offset() -> int:
    return free_offset()


@pytest.fixture(scope="module")
def kserve(export_root: Path, tmp_path_factory: pytest.TempPathFactory,
           offset: int) -> Iterator[Deployment]:
    """Both KServe servers, natively, on free loopback ports; stopped afterwards."""
    from deploybench.serving.targets import loopback_endpoints

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEPLOYBENCH_STATE_DIR", str(tmp_path_factory.mktemp("kserve-state")))
        deployment = serve(export_root, mode="native", models=MODELS,
                           run_dir=tmp_path_factory.mktemp("kserve-run"),
                           endpoints=loopback_endpoints(offset), servers=KSERVE,
                           log=lambda text: None)
        try:
            assert sorted(deployment.up()) == sorted(KSERVE), deployment.servers
            yield deployment
        finally:
            stop(deployment)
    assert not any(record.alive() for record in deployment.processes)


def rest_url(deployment: Deployment, target: str) -> str:
    return deployment.endpoints_obj().of(target)["rest"]


def pid_of(deployment: Deployment, target: str) -> int:
    (record,) = [r for r in deployment.processes if r.name == target]
    return record.pid


@pytest.mark.parametrize("target", KSERVE)
@pytest.mark.parametrize("model", MODELS)
def test_every_protocol_answers_golden_samples(kserve, export_root, target, model):
    samples = golden(export_root, model)
    for protocol in get(target).protocol_names:
        client = make_client(target, protocol, model, kserve.endpoints_obj())
        try:
            for rows in (1, 8):
                outputs = client.predict(samples.inputs[:rows])
                ok, why = payload.matches_reference(outputs, samples.outputs[:rows],
                                                    FP32_TOLERANCE)
                assert ok, (protocol, rows, why)
            assert client.ready()
        finally:
            client.close()


@pytest.mark.parametrize("target", KSERVE)
def test_metadata_declares_the_models_signature(kserve, target):
    for protocol in ("v2-rest", "v2-grpc"):
        client = make_client(target, protocol, "digits-cnn", kserve.endpoints_obj())
        name, shape, datatype = oip.metadata_signature(client.metadata())
        client.close()
        assert (name, [int(d) for d in shape], datatype) == ("pixels", [-1, 8, 8, 1], "FP32")


def test_the_frameworks_are_the_ones_declared(kserve):
    """One process per framework, each with only its own framework imported."""
    for target, loaded, absent in (("kserve-tensorflow", "tensorflow", "torch"),
                                   ("kserve-pytorch", "torch", "tensorflow")):
        maps = {Path(m.path).name for m in psutil.Process(pid_of(kserve, target)).memory_maps()}
        names = " ".join(sorted(maps))
        assert f"lib{loaded}" in names or f"_pywrap_{loaded}" in names, (target, names[:300])
        assert f"lib{absent}_cpu" not in names and f"_pywrap_{absent}" not in names, target


def v2_tensor(shape: list, data: list, name: str = "pixels", datatype: str = "FP32") -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


def binary(header: dict, raw: bytes) -> tuple[bytes, dict]:
    text = json.dumps(header).encode()
    return text + raw, {oip.HEADER_LENGTH: str(len(text)),
                        "Content-Type": "application/octet-stream"}


ONE = np.full((1, 64), 0.5, np.float32)
# The Open Inference Protocol's bad inputs for digits-mlp (1 x 64): body (or a binary body and
# its headers) and the words the 400 must name
BAD_V2_INPUTS = {
    "v2: no inputs": ({"outputs": []}, "inputs"),
    "v2: two inputs": ({"inputs": [v2_tensor([1, 64], ROW)["inputs"][0]] * 2}, "one input"),
    "v2: unknown input name": (v2_tensor([1, 64], ROW, name="image"), "unknown input name"),
    "v2: wrong datatype": (v2_tensor([1, 64], [1] * 64, datatype="INT32"), "wrong dtype"),
    "v2: wrong rank": (v2_tensor([64], ROW), "wrong shape"),
    "v2: wrong shape": (v2_tensor([1, 63], ROW[:63]), "wrong shape"),
    "v2: size short of the shape": (v2_tensor([2, 64], ROW), "wrong size"),
    "v2: strings": (v2_tensor([1, 64], ["a"] * 64), "wrong dtype"),
    "v2: empty batch": (v2_tensor([0, 64], []), "empty input"),
    "v2: too many rows": (v2_tensor([65, 64], ROW * 65), "too many rows"),
    "v2: negative size": (v2_tensor([-1, 64], ROW), "wrong shape"),
    "v2 binary: shorter than its shape": (binary(
        {"inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32",
                     "parameters": {"binary_data_size": 256}}]}, ONE.tobytes()), "wrong size"),
    "v2 binary: fewer bytes than declared": (binary(
        {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                     "parameters": {"binary_data_size": 512}}]}, ONE.tobytes()), "malformed"),
    "v2 binary: NaN": (binary(
        {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                     "parameters": {"binary_data_size": 256}}]},
        np.full((1, 64), np.nan, np.float32).tobytes()), "non-finite"),
    "v2 binary: no header length": ((ONE.tobytes(), {"Content-Type":
                                                      "application/octet-stream"}), "header"),
}


class Reply:
    def __init__(self, status: int, body: bytes, closes: bool) -> None:
        self.status_code, self.content, self.closes = status, body, closes

    def json(self) -> dict:
        return json.loads(self.content)


def send_bad(connection: http.client.HTTPConnection, case: str) -> Reply:
    """One bad request on `connection` (kept open between requests, as a client pool does)."""
    if case in BAD_V2_INPUTS:
        body = BAD_V2_INPUTS[case][0]
        data, headers = body if isinstance(body, tuple) else (json.dumps(body).encode(), {
            "Content-Type": "application/json"})
        path = "/v2/models/digits-mlp/infer"
    else:
        if case in BAD_NPY_INPUTS:
            data, content_type = BAD_NPY_INPUTS[case][0], payload.NPY_CONTENT_TYPE
        else:
            body = BAD_INPUTS[case][0]
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            content_type = payload.JSON_CONTENT_TYPE
        path, headers = "/v1/models/digits-mlp:predict", {"Content-Type": content_type}
    connection.request("POST", path, body=data, headers=headers)
    response = connection.getresponse()
    body = response.read()
    return Reply(response.status, body, response.will_close)


def expected_words(case: str) -> str:
    if case in BAD_V2_INPUTS:
        return BAD_V2_INPUTS[case][1]
    if case in PARSED_BY_KSERVE:
        return KSERVE_JSON_WORDS
    return {**BAD_INPUTS, **BAD_NPY_INPUTS}[case][1]


CASES = sorted(BAD_INPUTS) + sorted(BAD_NPY_INPUTS) + sorted(BAD_V2_INPUTS)


@pytest.mark.parametrize("target", KSERVE)
def test_the_whole_bad_input_matrix_gets_400s_on_one_connection(kserve, export_root, target):
    """Every bad input of TorchServe's matrix (V1, JSON and .npy) and of the Open Inference
    Protocol's, in a row on one keep-alive connection: each a 400 naming the problem in the
    protocol's error body; the connection is never dropped, the process never restarts, and it
    then answers golden samples correctly."""
    url, pid = rest_url(kserve, target), pid_of(kserve, target)
    host, port = host_port(url)
    connection = http.client.HTTPConnection(host, port, timeout=30)
    first = None
    try:
        for case in CASES:
            response = send_bad(connection, case)
            assert response.status_code == 400, (case, response.status_code, response.content)
            error = response.json()["error"]
            assert expected_words(case) in error, (case, error)
            assert "\n" not in payload.error_message(response.content)
            assert not response.closes, f"{case}: the server closed the connection"
            first = first or connection.sock.getsockname()
            assert connection.sock.getsockname() == first, case  # never reconnected
    finally:
        connection.close()
    assert psutil.pid_exists(pid) and pid_of(kserve, target) == pid
    samples = golden(export_root, "digits-mlp")
    client = make_client(target, "v2-binary", "digits-mlp", kserve.endpoints_obj())
    ok, why = payload.matches_reference(client.predict(samples.inputs[:8]),
                                        samples.outputs[:8], FP32_TOLERANCE)
    client.close()
    assert ok, why


@pytest.mark.parametrize("target", KSERVE)
def test_a_bad_grpc_request_is_invalid_argument_naming_the_problem(kserve, target):
    import grpc

    address = kserve.endpoints_obj().of(target)["grpc"]
    with grpc.insecure_channel(address) as channel:
        stub = oip.grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = oip.grpc_predict_v2_pb2.ModelInferRequest(model_name="digits-cnn")
        tensor = request.inputs.add(name="pixels", datatype="FP32")
        tensor.shape.extend([1, 8, 8])  # rank 3: would abort TensorFlow
        request.raw_input_contents.append(np.zeros(64, "<f4").tobytes())
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "wrong shape" in info.value.details()
    client = make_client(target, "v2-grpc", "digits-cnn", kserve.endpoints_obj())
    assert client.predict(np.zeros((1, 8, 8, 1), np.float32)).shape == (1, 10)
    client.close()


def test_every_listening_socket_of_both_servers_is_loopback(kserve):
    """KServe binds every interface by itself; the kit's server listens on loopback only."""
    listening = []
    for record in kserve.processes:
        for process in processes.group_members(record):
            for conn in inet_connections(process):
                if conn.status == psutil.CONN_LISTEN or conn.type == socket.SOCK_DGRAM:
                    listening.append((record.name, conn.laddr.ip, conn.laddr.port))
    ports = {port for _, _, port in listening}
    endpoints = kserve.endpoints_obj()
    expected = {int(endpoints.of(t)[key].rsplit(":", 1)[1]) for t in KSERVE
                for key in ("rest", "grpc")}
    assert expected <= ports, listening
    for name, ip, port in listening:
        assert ip in LOOPBACK, f"{name} listens on {ip}:{port}"


def test_a_locust_sweep_through_every_protocol_has_no_wrong_answer(kserve, export_root,
                                                                  offset, tmp_path):
    run_dir = tmp_path / "load"
    result = invoke("load", "--no-calibrate",
                    "--target", ",".join(KSERVE), "--artifacts", str(export_root),
                    "--model", "digits-cnn", "--users", "2", "--step-seconds", "2",
                    "--warmup-seconds", "0.5", "--port-offset", str(offset),
                    "--out", str(run_dir))
    assert result.exit_code == 0, result.output
    steps = [m for m in json.loads((run_dir / "results.json").read_text())["measurements"]
             if m["kind"] == "load"]
    assert {(m["target"], m["protocol"]) for m in steps} == {
        (t, p) for t in KSERVE for p in get(t).protocol_names}
    for step in steps:
        assert step["status"] == "ok" and step["requests"] > 0, step
        assert step["wrong_answers"] == 0 and step["failures"] == 0, step


def load_steps(run_dir: Path) -> list[dict]:
    return [m for m in json.loads((run_dir / "results.json").read_text())["measurements"]
            if m["kind"] == "load"]


def test_any_oip_endpoint_is_measured_at_its_url(kserve, export_root, tmp_path):
    """The kit's own KServe server measured as a foreign one (target oip, its address given,
    no deployment state): answers checked against the export, or not checked at all for a
    model the kit is told nothing about."""
    endpoints = kserve.endpoints_obj().of("kserve-pytorch")
    common = ["--users", "1", "--step-seconds", "1", "--warmup-seconds", "0.5"]
    checked = invoke("load", "--no-calibrate",
                     "--target", "oip", "--url", endpoints["rest"], "--artifacts",
                     str(export_root), "--model", "digits-cnn", *common,
                     "--out", str(tmp_path / "checked"))
    assert checked.exit_code == 0, checked.output
    steps = load_steps(tmp_path / "checked")
    assert [s["protocol"] for s in steps] == ["v2-rest", "v2-binary"]  # the URL's REST ones
    for step in steps:
        assert step["target"] == "oip" and step["target_label"] == "OIP endpoint"
        assert step["answers_checked"] is True and step["requests"] > 0
        assert step["wrong_answers"] == 0 and step["failures"] == 0
        assert step["endpoint"] == endpoints["rest"]
    unchecked = invoke("load", "--no-calibrate",
                       "--target", "oip", "--url", endpoints["grpc"], "--protocol",
                       "v2-grpc", "--model", "digits-mlp", "--no-check", "--artifacts",
                       str(tmp_path / "nothing-exported"), *common,
                       "--out", str(tmp_path / "unchecked"))
    assert unchecked.exit_code == 0, unchecked.output
    (step,) = load_steps(tmp_path / "unchecked")
    assert step["answers_checked"] is False and step["protocol"] == "v2-grpc"
    assert step["requests"] > 0 and step["failures"] == 0


def test_an_oip_model_with_another_signature_is_one_line(kserve, export_root, tmp_path):
    """An export whose model takes another input than the server's: refused before any load,
    in one line naming both signatures."""
    root = tmp_path / "export"
    shutil.copytree(export_root / "digits-mlp", root / "digits-mlp", symlinks=False)
    manifest = json.loads((root / "digits-mlp" / "manifest.json").read_text())
    manifest["inputs"][0]["shape"] = [None, 63]
    (root / "digits-mlp" / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("load", "--no-calibrate",
                    "--target", "oip", "--url", rest_url(kserve, "kserve-tensorflow"),
                    "--artifacts", str(root), "--model", "digits-mlp", "--users", "1",
                    "--out", str(tmp_path / "run"))
    assert result.exit_code != 0
    line = result.output.strip().splitlines()[-1]
    assert "takes pixels [-1, 64] FP32" in line and "takes pixels [-1, 63] FP32" in line, line
    assert not (tmp_path / "run" / "results.json").exists()


def test_url_and_no_check_mistakes_are_usage_errors(tmp_path):
    for args, words in (
        (["--target", "kserve-pytorch,oip", "--url", "http://127.0.0.1:1"], "one --target"),
        (["--target", "oip", "--url", "127.0.0.1:1", "--protocol", "v2-rest"], "URL"),
        (["--target", "torchserve", "--no-check", "--model", "x", "--port-offset", "0"],
         "Open Inference Protocol"),
    ):
        result = invoke("load", "--no-calibrate", *args, "--out", str(tmp_path / "run"))
        assert result.exit_code == 2, (args, result.output)
        assert words in result.output, (args, result.output)
