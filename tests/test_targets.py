"""The server registry: a server is one declaration (serving/targets.py), read by everything
else; a target declared in tests only is measured by `deploybench load` and named by the report."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploybench.errors import UsageError
from deploybench.serving import clients, targets
from deploybench.serving.targets import Endpoint, Endpoints, Protocol, Target
from tests.conftest import invoke

REPO = Path(__file__).resolve().parent.parent
DOUBLE = Path(__file__).resolve().with_name("double_target.py")
KIT_SERVERS = ("tfserving", "torchserve", "kserve-tensorflow", "kserve-pytorch",
               "kserve-onnxruntime", "triton-tensorflow", "triton-pytorch")
EXTERNAL = ("oip",)  # declared, never started by the kit: left out of "all"

# Modules that must learn about servers from the registry only (the servers' own modules,
# clients.py, native.py, handler.py, faults.py, are where a server's specifics live).
READERS = ("deploybench/cli.py", "deploybench/jobs/run.py", "deploybench/jobs/bench.py",
           "deploybench/verdict.py", "deploybench/report.py", "deploybench/plots.py",
           "loadtest/runner.py", "loadtest/process.py", "loadtest/locustfile.py",
           "loadtest/measurement.py", "serving/manager.py")


def test_readers_never_spell_a_server_name() -> None:
    for path in READERS:
        tree = ast.parse((REPO / path).read_text())
        spelled = [node.value for node in ast.walk(tree)
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)
                   and any(node.value == name or node.value.startswith((f"{name}/", f"{name}_"))
                           for name in (*KIT_SERVERS, *EXTERNAL))]
        assert not spelled, f"{path} spells {spelled}: read the registry instead"


def test_endpoints_default_to_the_registry_and_shift_together() -> None:
    defaults, shifted = Endpoints(), Endpoints.loopback(offset=100)
    assert defaults.tfserving_rest == "http://127.0.0.1:8501"
    assert shifted.tfserving_rest == "http://127.0.0.1:8601"
    assert shifted.tfserving_grpc == "127.0.0.1:8600"
    assert shifted.of("torchserve")["management"] == "http://127.0.0.1:8181"
    assert shifted.address("torchserve", "npy") == "http://127.0.0.1:8180"
    assert shifted.metrics_url("tfserving") == (
        "http://127.0.0.1:8601/monitoring/prometheus/metrics")
    moved = Endpoints(tfserving_rest="http://127.0.0.1:9000")
    assert moved.tfserving_rest == "http://127.0.0.1:9000" and moved.torchserve_inference == (
        "http://127.0.0.1:8080")


def test_clients_and_pairs_come_from_the_declarations() -> None:
    client = targets.make_client("torchserve", "npy", "digits-mlp", Endpoints.loopback(10))
    assert isinstance(client, clients.TorchServeNpy)
    assert client.predict_url == "http://127.0.0.1:8090/predictions/digits-mlp"
    client.close()
    assert targets.pairs("all", "rest") == [("tfserving", "rest"), ("torchserve", "rest")]
    assert targets.pairs("tfserving", None) == [("tfserving", "rest"), ("tfserving", "grpc")]
    with pytest.raises(UsageError, match="torchserve does not speak grpc; it speaks rest, npy"):
        targets.pairs("torchserve", "grpc")
    with pytest.raises(UsageError, match=r"unknown server\(s\) \['nginx'\]"):
        targets.parse_targets("torchserve,nginx")
    assert targets.parse_targets("all") == KIT_SERVERS
    # `deploybench run`'s default: the mission's two servers and KServe's two frameworks
    assert targets.parse_targets("main") == ("tfserving", "torchserve", "kserve-tensorflow",
                                             "kserve-pytorch")
    assert targets.pairs("oip", "v2-grpc") == [("oip", "v2-grpc")]


def test_run_measures_each_servers_json_and_binary_protocol() -> None:
    servers = targets.parse_targets("all")
    assert targets.run_pairs(servers) == [
        ("tfserving", "rest"), ("tfserving", "grpc"), ("torchserve", "rest"),
        ("torchserve", "npy"), ("kserve-tensorflow", "v1"), ("kserve-tensorflow", "v2-binary"),
        ("kserve-pytorch", "v1"), ("kserve-pytorch", "v2-binary"),
        ("kserve-onnxruntime", "v1"), ("kserve-onnxruntime", "v2-binary"),
        ("triton-tensorflow", "v2-rest"), ("triton-tensorflow", "v2-binary"),
        ("triton-pytorch", "v2-rest"), ("triton-pytorch", "v2-binary")]
    assert targets.run_pairs(servers, binary_only=True) == [
        ("tfserving", "grpc"), ("torchserve", "npy"), ("kserve-tensorflow", "v2-binary"),
        ("kserve-pytorch", "v2-binary"), ("kserve-onnxruntime", "v2-binary"),
        ("triton-tensorflow", "v2-binary"), ("triton-pytorch", "v2-binary")]


def test_a_url_points_one_target_at_its_rest_or_grpc_protocols() -> None:
    pairs, endpoints = targets.at_url(targets.pairs("oip", None), "http://10.0.0.7:8000",
                                      Endpoints())
    assert pairs == [("oip", "v2-rest"), ("oip", "v2-binary")]
    assert endpoints.address("oip", "v2-binary") == "http://10.0.0.7:8000"
    assert endpoints.address("oip", "v2-grpc") == "127.0.0.1:8001"  # untouched
    pairs, endpoints = targets.at_url(targets.pairs("oip", None), "10.0.0.7:8001", Endpoints())
    assert pairs == [("oip", "v2-grpc")] and endpoints.of("oip")["grpc"] == "10.0.0.7:8001"
    with pytest.raises(UsageError, match="has no port"):
        targets.at_url(targets.pairs("oip", None), "http://10.0.0.7", Endpoints())


def test_a_declaration_is_checked() -> None:
    rest = Protocol("rest", "REST", "nowhere", "json", clients.TFServingREST, "XUser")
    with pytest.raises(KeyError, match="no endpoint 'nowhere'"):
        targets.register(Target("x", "X", "tensorflow", "savedmodel", (rest,),
                                (Endpoint("rest", "http://127.0.0.1:1"),)))
    with pytest.raises(ValueError, match="unknown framework"):
        targets.register(Target("x", "X", "jax", "savedmodel", (), ()))
    assert "x" not in targets.targets()


def test_locustfile_imports_stay_light() -> None:
    """The locust process loads the kit as an installed package, without torch or a TensorFlow
    runtime (gevent and their runtimes do not mix), and lists one user class per protocol."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('locustfile', {str(REPO / 'loadtest' / 'locustfile.py')!r})\n"  # noqa: E501
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "import json; print(json.dumps({'heavy': [m for m in ('torch', 'tensorflow.python')\n"
        "    if m in sys.modules], 'users': [u.__name__ for u in module.USERS]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd="/", timeout=120, check=True)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["heavy"] == []
    assert found["users"] == [
        "TFServingRESTUser", "TFServingGRPCUser", "TorchServeRESTUser", "TorchServeNpyUser",
        *(f"KServe{runtime}{protocol}User"
          for runtime in ("TensorFlow", "PyTorch", "ONNXRuntime")
          for protocol in ("V1", "V2REST", "V2Binary", "V2GRPC")),
        *(f"Triton{framework}{protocol}User" for framework in ("TensorFlow", "PyTorch")
          for protocol in ("V2REST", "V2Binary", "V2GRPC")),
        "OIPV2RESTUser", "OIPV2BinaryUser", "OIPV2GRPCUser"]


@pytest.fixture
def double_target(export_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The TF Serving test double, running, declared as a target in tests only."""
    from tests.fake_tfserving import FakeTFServing

    with FakeTFServing(export_root, models=["digits-mlp"]) as fake:
        monkeypatch.setenv("DOUBLE_REST_URL", fake.rest_url)
        monkeypatch.setenv("DOUBLE_GRPC_TARGET", fake.grpc_target)
        monkeypatch.setenv(targets.PLUGINS_ENV, str(DOUBLE))
        monkeypatch.setenv("DEPLOYBENCH_STATE_DIR", str(export_root.parent / "no-state"))
        try:
            yield fake
        finally:
            targets.unregister("tfserving-double")
            targets._PLUGINS_LOADED.discard(str(DOUBLE))


@pytest.mark.slow
def test_a_target_declared_in_tests_is_measured_and_reported(
        double_target: object, export_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    listed = invoke("servers")
    assert listed.exit_code == 0 and "tfserving-double" in listed.output
    result = invoke("load", "--no-calibrate",
                    "--target", "tfserving-double", "--artifacts", str(export_root),
                    "--model", "digits-mlp", "--users", "1", "--step-seconds", "2",
                    "--warmup-seconds", "0.5", "--port-offset", "0", "--out", str(run_dir))
    assert result.exit_code == 0, result.output
    steps = [m for m in json.loads((run_dir / "results.json").read_text())["measurements"]
             if m["kind"] == "load"]
    assert [(m["target"], m["protocol"]) for m in steps] == [
        ("tfserving-double", "rest"), ("tfserving-double", "grpc")]
    for step in steps:
        assert step["status"] == "ok" and step["requests"] > 0, step
        assert step["wrong_answers"] == 0 and step["failures"] == 0
        assert step["target_label"] == "TF Serving test double"
    assert steps[1]["endpoint"] == double_target.grpc_target  # type: ignore[attr-defined]
    reported = invoke("report", str(run_dir))
    assert reported.exit_code == 0, reported.output
    report = (run_dir / "report.md").read_text()
    assert "TF Serving test double gRPC" in report and "TF Serving test double REST" in report
