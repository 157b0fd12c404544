"""A user's own models through the rest of the kit, for real: served by the servers of their
framework (golden answers through every protocol, the bad-input matrix generated from the
model's signature), then `deploybench run` with short steps: load steps with no wrong answer,
the other framework's servers as rows with their reason, edge rows, and a report that says what
was compared and makes no framework comparison it did not measure."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploybench.golden import Golden
from deploybench.manifest import load_manifest
from deploybench.serving import payload
from deploybench.serving.manager import Deployment, serve, stop
from deploybench.serving.targets import get, loopback_endpoints, make_client
from tests.bad_input_checks import assert_matrix
from tests.conftest import invoke
from tests.servers import free_offset

KERAS_SERVERS = ("kserve-tensorflow", "triton-tensorflow")


@pytest.fixture(scope="module")
def exported(user_root: tuple[Path, Path]) -> Path:
    """The session's user models (tests/conftest.py): `mine`, a Keras model with a float32
    and an int32 input, and `net`, a torch.export program, exported."""
    return user_root[0]


@pytest.fixture(scope="module")
def deployment(exported: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Deployment]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEPLOYBENCH_STATE_DIR", str(tmp_path_factory.mktemp("user-state")))
        started = serve(exported, mode="native", models=["mine"],
                        run_dir=tmp_path_factory.mktemp("user-run"),
                        endpoints=loopback_endpoints(free_offset()),
                        servers=(*KERAS_SERVERS, "kserve-pytorch"), log=lambda text: None)
        try:
            yield started
        finally:
            stop(started)


def test_the_other_frameworks_server_is_a_row_with_its_reason(deployment: Deployment) -> None:
    status = {s.name: s for s in deployment.servers}
    assert sorted(deployment.up()) == sorted(KERAS_SERVERS), deployment.servers
    assert status["kserve-pytorch"].status == "unavailable"
    assert "mine has no aoti artifact" in status["kserve-pytorch"].reason
    assert "tensorflow only" in status["kserve-pytorch"].reason


@pytest.mark.parametrize("target", KERAS_SERVERS)
def test_every_protocol_answers_the_users_golden_rows(deployment: Deployment, exported: Path,
                                                      target: str) -> None:
    manifest = load_manifest(exported, "mine")
    golden = Golden.of(exported, manifest)
    tolerance = manifest.tolerance["fp32_max_abs_diff"]
    for protocol in get(target).protocol_names:
        client = make_client(target, protocol, "mine", deployment.endpoints_obj())
        try:
            for rows in (slice(0, 1), slice(0, len(golden.labels))):
                ok, why = payload.matches_reference(client.predict(golden.inputs.rows(rows)),
                                                    golden.outputs[rows], tolerance)
                assert ok, (protocol, rows, why)
        finally:
            client.close()


@pytest.mark.parametrize("target", KERAS_SERVERS)
def test_bad_input_matrix_from_the_users_signature(deployment: Deployment, exported: Path,
                                                   target: str) -> None:
    probes = assert_matrix(target, deployment.endpoints_obj(), exported, model="mine")
    cases = {o.case for probe in probes for o in probe.outcomes}
    # generated from the signature: a float input (features) and an integer one with a
    # declared range (ids, second)
    assert {"non-finite value", "wrong rank", "id beyond the vocabulary", "negative id",
            "float ids"} <= cases, cases


def run_report(exported: Path, out: Path, model: str, servers: str) -> dict:
    result = invoke("run", "--model", model, "--artifacts", str(exported), "--no-export",
                    "--mode", "native", "--servers", servers, "--users", "2",
                    "--step-seconds", "2", "--warmup-seconds", "0.5", "--no-rate-search",
                    "--edge-threads", "1", "--edge-runs", "20", "--edge-repeats", "1",
                    "--edge-variants", "executorch-fp32,executorch-int8,onnx-torch,"
                                       "litert-torch-fp32",
                    "--port-offset", str(free_offset()), "--out", str(out))
    assert result.exit_code == 0, result.output
    return json.loads((out / "results.json").read_text())


def test_run_of_a_torch_program_measures_pytorch_paths_only(
        exported: Path, user_root: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOYBENCH_STATE_DIR", str(tmp_path / "state"))  # beside the fixture's
    monkeypatch.setenv("DEPLOYBENCH_MODELS", str(user_root[1]))  # `run --model net` finds it
    results = run_report(exported, tmp_path / "run", "net", "torchserve,kserve-pytorch,"
                                                            "kserve-tensorflow")
    rows = results["measurements"]
    loads = [r for r in rows if r["kind"] == "load"]
    assert {r["target"] for r in loads} == {"torchserve", "kserve-pytorch"}, loads
    assert all(r["status"] == "ok" and r["wrong_answers"] == 0 and r["requests"] > 0
               for r in loads), loads
    servers = {r["target"]: r for r in rows if r["kind"] == "server"}
    assert servers["kserve-tensorflow"]["status"] == "unavailable"
    edge = {r["variant"] for r in rows if r["kind"] == "edge" and r.get("status") == "ok"}
    assert {"executorch-fp32", "executorch-int8", "onnx-torch"} <= edge, edge
    report = (tmp_path / "run" / "report.md").read_text()
    assert "What was compared (net, your model): PyTorch's paths only" in report
    assert "two frameworks" not in report and "TensorFlow -> LiteRT" not in report
    assert "PyTorch -> LiteRT (litert-torch)" in report
