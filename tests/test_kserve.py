"""KServe's model server, one process per runtime (serving/kserve_server.py), started for
real on loopback: golden answers through every protocol, the bad-input matrix, the loopback
check, a locust sweep."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from deploybench.manifest import FP32_TOLERANCE
from deploybench.serving import oip, payload, processes
from deploybench.serving.manager import Deployment, serve, stop
from deploybench.serving.targets import get, make_client
from tests.bad_input_checks import assert_fuzz, assert_matrix
from tests.conftest import invoke
from tests.servers import free_offset, inet_connections
from tests.test_serving import golden

KSERVE = ("kserve-tensorflow", "kserve-pytorch", "kserve-onnxruntime")
MODELS = ["digits-mlp", "digits-cnn"]
LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


@pytest.fixture(scope="module")
def offset() -> int:
    return free_offset()


@pytest.fixture(scope="module")
def kserve(export_root: Path, tmp_path_factory: pytest.TempPathFactory,
           offset: int) -> Iterator[Deployment]:
    """The KServe servers, natively, on free loopback ports; stopped afterwards."""
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


def test_a_v2_rest_answer_is_the_document_kserve_writes(kserve, export_root):
    """The kit writes a plain V2 REST answer itself (serving/kserve_server.py, encode): the
    document KServe writes, float32 numbers in Python's text, its length and type declared."""
    import numpy as np
    import requests

    from deploybench.manifest import load_manifest

    manifest = load_manifest(export_root, "digits-mlp")
    (spec,), output = manifest.inputs, manifest.outputs[0].name
    rows = golden(export_root, "digits-mlp").inputs[:3].only
    url = f"{rest_url(kserve, 'kserve-pytorch')}/v2/models/digits-mlp/infer"
    request = {"id": "r-7", "inputs": [{"name": spec.name, "shape": list(rows.shape),
                                        "datatype": "FP32", "data": rows.ravel().tolist()}]}
    plain = requests.post(url, json=request, timeout=10)
    assert plain.status_code == 200, plain.text
    assert plain.headers["content-type"] == "application/json"
    assert int(plain.headers["content-length"]) == len(plain.content)
    answer = plain.json()
    assert list(answer) == ["model_name", "model_version", "id", "parameters", "outputs"]
    assert (answer["model_name"], answer["model_version"], answer["id"],
            answer["parameters"]) == ("digits-mlp", None, "r-7", None)
    (written,) = answer["outputs"]
    assert list(written) == ["name", "shape", "datatype", "parameters", "data"]
    assert (written["name"], written["shape"], written["datatype"]) == (output, [3, 10], "FP32")
    # each number is a float32 value written in full (as KServe's .item() gives it)
    assert all(float(np.float32(value)) == value for value in written["data"])


@pytest.mark.parametrize("target", KSERVE)
def test_metadata_declares_the_models_signature(kserve, target):
    for protocol in ("v2-rest", "v2-grpc"):
        client = make_client(target, protocol, "digits-cnn", kserve.endpoints_obj())
        name, shape, datatype = oip.metadata_signature(client.metadata())
        client.close()
        assert (name, [int(d) for d in shape], datatype) == ("pixels", [-1, 8, 8, 1], "FP32")


def test_the_runtimes_are_the_ones_declared(kserve):
    """One process per runtime, each with only its own runtime loaded: ONNX Runtime's server
    loads neither TensorFlow nor torch."""
    for target, loaded, absent in (("kserve-tensorflow", "tensorflow", ("torch",)),
                                   ("kserve-pytorch", "torch", ("tensorflow",)),
                                   ("kserve-onnxruntime", "onnxruntime",
                                    ("tensorflow", "torch"))):
        maps = {Path(m.path).name for m in psutil.Process(pid_of(kserve, target)).memory_maps()}
        names = " ".join(sorted(maps))
        assert (f"lib{loaded}" in names or f"_pywrap_{loaded}" in names
                or f"{loaded}_pybind" in names), (target, names[:300])
        for other in absent:
            assert f"lib{other}_cpu" not in names and f"_pywrap_{other}" not in names, target


@pytest.mark.parametrize("target", KSERVE)
@pytest.mark.parametrize("model", MODELS)  # digits-cnn: a wrong rank would abort TensorFlow
def test_the_bad_input_matrix_is_refused_on_one_connection(kserve, export_root, target, model):
    """Every case of the matrix in every protocol (V1, V2 REST, V2 binary, V2 gRPC): a 400 or
    INVALID_ARGUMENT naming the problem, on one keep-alive connection; the process never
    restarts, and it then answers golden samples correctly."""
    pid = pid_of(kserve, target)
    for probe in assert_matrix(target, kserve.endpoints_obj(), export_root, model):
        assert probe.connection_kept, probe.protocol
    assert psutil.pid_exists(pid) and pid_of(kserve, target) == pid


@pytest.mark.parametrize("target", KSERVE)
def test_the_fuzzer_gets_refusals_or_answers_never_a_5xx_drop_or_hang(kserve, export_root,
                                                                       target):
    pid = pid_of(kserve, target)
    assert_fuzz(target, kserve.endpoints_obj(), export_root)
    assert psutil.pid_exists(pid) and pid_of(kserve, target) == pid


def test_the_bad_inputs_command_prints_the_matrix_and_exits_0(kserve, export_root, offset):
    result = invoke("bad-inputs", "--target", "kserve-pytorch", "--protocol", "v1,v2-grpc",
                    "--port-offset", str(offset), "--artifacts", str(export_root))
    assert result.exit_code == 0, result.output
    assert "value beyond float32" in result.output and "INVALID_ARGUMENT" in result.output


def test_every_listening_socket_of_every_server_is_loopback(kserve):
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


def test_a_runtime_whose_artifact_was_not_exported_is_a_row_with_the_reason(
        export_copy, tmp_path, monkeypatch):
    """kserve-onnxruntime where the ONNX converter failed at export: an unavailable row naming
    the format and why, nothing started, nothing half-verified."""
    path = export_copy / "digits-mlp" / "manifest.json"
    data = json.loads(path.read_text())
    (artifact,) = [a for a in data["artifacts"] if a["format"] == "onnx-torch"]
    artifact.update(status="failed", reason="ModuleNotFoundError: No module named 'onnxscript'",
                    path="", sha256=None, bytes=None)
    path.write_text(json.dumps(data))
    monkeypatch.setenv("DEPLOYBENCH_STATE_DIR", str(tmp_path / "state"))
    deployment = serve(export_copy, mode="native", models=["digits-mlp"],
                       run_dir=tmp_path / "run", servers=("kserve-onnxruntime",),
                       log=lambda text: None)
    try:
        (status,) = deployment.servers
        assert (status.name, status.status) == ("kserve-onnxruntime", "unavailable")
        assert status.reason == ("digits-mlp: onnx-torch was not exported (failed: "
                                 "ModuleNotFoundError: No module named 'onnxscript')")
        assert deployment.processes == [] and deployment.up() == []
    finally:
        stop(deployment)
