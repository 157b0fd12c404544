"""NVIDIA Triton (serving/triton_server.py, serving/triton_model.py), one process per framework
with the same code, started for real on loopback from its own environment: golden answers
through every protocol, the bad-input matrix and the fuzzer, its known crash, loopback
sockets, dynamic batching, a locust step with Triton's own breakdown, and a clean stop however
it ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from deploybench.loadtest.server_metrics import parse
from deploybench.manifest import FP32_TOLERANCE
from deploybench.serving import oip, payload, processes
from deploybench.serving.manager import Deployment, serve, stop
from deploybench.serving.native import triton_python
from deploybench.serving.targets import get, loopback_endpoints, make_client
from deploybench.serving.triton_server import SHM_DIR, SHM_PREFIX
from deploybench.settings import load_settings
from tests.bad_input_checks import assert_fuzz, assert_matrix
from tests.conftest import invoke
from tests.servers import free_offset, inet_connections
from tests.test_serving import golden

TRITON = ("triton-tensorflow", "triton-pytorch")
MODELS = ["digits-mlp", "digits-cnn"]
LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


def start(root: Path, folder: Path, servers: tuple[str, ...], models: list[str],
          offset: int, **settings: object) -> Deployment:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEPLOYBENCH_STATE_DIR", str(folder / "state"))
        deployment = serve(root, mode="native", models=models, run_dir=folder / "run",
                           endpoints=loopback_endpoints(offset), servers=servers,
                           settings=load_settings(**settings), log=lambda text: None)
    assert sorted(deployment.up()) == sorted(servers), deployment.servers
    return deployment


def segments(launcher: int) -> set[str]:
    """The shared-memory segments of the Triton that launcher `launcher` started."""
    return {path.name for path in SHM_DIR.glob(f"{SHM_PREFIX}_{launcher}_*")}


@pytest.fixture(scope="module")
def offset() -> int:
    return free_offset()


@pytest.fixture(scope="module")
def triton(export_root: Path, tmp_path_factory: pytest.TempPathFactory,
           offset: int) -> Iterator[Deployment]:
    """Both Triton targets, batching off, natively on free loopback ports. `stop` then ends
    every process of theirs (launcher, tritonserver, backend stubs) and removes their shared
    memory, within Triton's exit timeout."""
    deployment = start(export_root, tmp_path_factory.mktemp("triton"), TRITON, MODELS, offset,
                       batching=False)
    try:
        yield deployment
    finally:
        assert all(segments(record.pid) for record in deployment.processes)  # while running
        started = time.monotonic()
        stop(deployment)
    assert time.monotonic() - started < 20
    for record in deployment.processes:
        assert not processes.group_members(record) and not segments(record.pid), record.name


def pid_of(deployment: Deployment, target: str) -> int:
    (record,) = [r for r in deployment.processes if r.name == target]
    return record.pid


@pytest.mark.parametrize("target", TRITON)
@pytest.mark.parametrize("model", MODELS)
def test_every_protocol_answers_golden_samples_at_one_row_and_max_rows(triton, export_root,
                                                                       target, model):
    samples = golden(export_root, model)
    max_rows = json.loads((export_root / model / "manifest.json").read_text())["max_rows"]
    for protocol in get(target).protocol_names:
        client = make_client(target, protocol, model, triton.endpoints_obj())
        try:
            for rows in (1, max_rows):
                outputs = client.predict(samples.inputs[:rows])
                ok, why = payload.matches_reference(outputs, samples.outputs[:rows],
                                                    FP32_TOLERANCE)
                assert ok, (protocol, rows, why)
            assert client.ready()
        finally:
            client.close()


@pytest.mark.parametrize("target", TRITON)
def test_metadata_declares_the_models_signature(triton, target):
    for protocol in ("v2-rest", "v2-grpc"):
        client = make_client(target, protocol, "digits-cnn", triton.endpoints_obj())
        name, shape, datatype = oip.metadata_signature(client.metadata())
        client.close()
        assert (name, [int(d) for d in shape], datatype) == ("pixels", [-1, 8, 8, 1], "FP32")


def test_each_framework_runs_in_its_own_triton_with_only_its_runtime_loaded(triton):
    for target, loaded, absent in (("triton-tensorflow", "_pywrap_tensorflow", "libtorch_cpu"),
                                   ("triton-pytorch", "libtorch_cpu", "_pywrap_tensorflow")):
        record = next(r for r in triton.processes if r.name == target)
        names = {proc.name() for proc in processes.group_members(record)}
        assert {"tritonserver", "triton_python_b"} <= {n[:15] for n in names}, names
        maps = " ".join(Path(m.path).name for proc in processes.group_members(record)
                        for m in proc.memory_maps())
        assert loaded in maps and absent not in maps, target


@pytest.mark.parametrize("target", TRITON)
@pytest.mark.parametrize("model", MODELS)  # digits-cnn: a wrong rank would abort TensorFlow
def test_the_bad_input_matrix_is_refused_or_as_declared_and_triton_stays_up(
        triton, export_root, target, model):
    """Every case the kit's model sees is a 400 / INVALID_ARGUMENT naming the problem; what
    Triton's own front ends answer otherwise is declared in the registry, and the known crash
    is not sent. The same process then answers golden samples correctly."""
    pid = pid_of(triton, target)
    probes = assert_matrix(target, triton.endpoints_obj(), export_root, model)
    for probe in probes:
        assert probe.connection_kept, probe.protocol
        cases = {o.case: o for o in probe.outcomes}
        # the checks only the kit's model makes: Triton itself runs NaN
        if "non-finite value" in cases:
            assert cases["non-finite value"].verdict == "refused", probe.protocol
            assert "non-finite" in cases["non-finite value"].message
    assert psutil.pid_exists(pid) and pid_of(triton, target) == pid


@pytest.mark.parametrize("target", TRITON)
def test_the_fuzzer_gets_refusals_or_answers_never_a_drop_or_hang(triton, export_root, target):
    pid = pid_of(triton, target)
    assert_fuzz(target, triton.endpoints_obj(), export_root)
    assert psutil.pid_exists(pid) and pid_of(triton, target) == pid


def test_every_listening_socket_is_loopback_and_the_admin_apis_are_closed(triton):
    """Triton binds every interface by default; the kit puts HTTP, gRPC and metrics on
    loopback. Its repository, statistics, trace and logging APIs need a key nobody has."""
    listening = []
    for record in triton.processes:
        for process in processes.group_members(record):
            for conn in inet_connections(process):
                if conn.status == psutil.CONN_LISTEN or conn.type == socket.SOCK_DGRAM:
                    listening.append((record.name, conn.laddr.ip, conn.laddr.port))
    endpoints = triton.endpoints_obj()
    expected = {int(endpoints.of(t)[key].rsplit(":", 1)[1]) for t in TRITON
                for key in ("rest", "grpc", "metrics")}
    assert expected <= {port for _, _, port in listening}, listening
    for name, ip, port in listening:
        assert ip in LOOPBACK, f"{name} listens on {ip}:{port}"
    rest = endpoints.of("triton-pytorch")["rest"]
    for method, path in (("POST", "/v2/repository/index"), ("GET", "/v2/models/stats"),
                         ("GET", "/v2/trace/setting"), ("GET", "/v2/logging"),
                         ("POST", "/v2/repository/models/digits-mlp/unload")):
        answer = requests.request(method, rest + path, timeout=10)
        assert answer.status_code in (401, 403), (path, answer.status_code, answer.text)


def test_a_locust_step_has_no_wrong_answer_and_tritons_breakdown_fits_the_clients_time(
        triton, export_root, offset, tmp_path):
    run_dir = tmp_path / "load"
    result = invoke("load", "--no-calibrate", "--target", ",".join(TRITON),
                    "--artifacts", str(export_root), "--model", "digits-cnn", "--users", "2",
                    "--step-seconds", "2", "--warmup-seconds", "0.5",
                    "--port-offset", str(offset), "--out", str(run_dir))
    assert result.exit_code == 0, result.output
    steps = [m for m in json.loads((run_dir / "results.json").read_text())["measurements"]
             if m["kind"] == "load"]
    assert {(m["target"], m["protocol"]) for m in steps} == {
        (t, p) for t in TRITON for p in get(t).protocol_names}
    for step in steps:
        assert step["status"] == "ok" and step["requests"] > 0, step
        assert step["wrong_answers"] == 0 and step["failures"] == 0, step
        figures = step["server_metrics"]
        assert figures["available"] and not figures["missing"], figures
        parts = {part: figures[f"{part}_ms"]["mean"] for part in
                 ("request", "queue", "model_input", "model", "model_output")}
        assert all(value is not None and value >= 0 for value in parts.values()), parts
        split = figures["breakdown_ms"]
        assert split["server_whole"] == "published"
        # Triton's whole-request mean came out above the client's in two clean-clone runs, by
        # 0.9% and 2.2% (its counters read at the step's edges while requests run, its own
        # end of a request): the report shows "outside the server" as measured, slightly
        # negative then; here the two agree within 5%
        assert parts["request"] <= split["client"] * 1.05, (parts, split)
        assert parts["queue"] + parts["model"] + split["model_io"] <= parts["request"] + 0.01
        assert figures["batch_sizes"]["mean"] >= 1 and figures["batch_counts"] == "rows"


def test_the_oip_target_measures_triton_at_its_url(triton, export_root, tmp_path):
    """The kit's OIP client against a second, independent implementation of the protocol."""
    endpoints = triton.endpoints_obj().of("triton-tensorflow")
    result = invoke("load", "--no-calibrate", "--target", "oip", "--url", endpoints["rest"],
                    "--artifacts", str(export_root), "--model", "digits-mlp", "--users", "1",
                    "--step-seconds", "1", "--warmup-seconds", "0.5",
                    "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    steps = [m for m in json.loads((tmp_path / "run" / "results.json").read_text())[
        "measurements"] if m["kind"] == "load"]
    assert [s["protocol"] for s in steps] == ["v2-rest", "v2-binary"]
    for step in steps:
        assert step["answers_checked"] and step["requests"] > 0
        assert step["wrong_answers"] == 0 and step["failures"] == 0


def test_batching_on_serves_concurrent_requests_in_larger_batches_still_right(
        export_root, tmp_path):
    """Triton's dynamic batcher from .env's settings: 16 single-row clients at once are run
    in batches of more than one (Triton's own counts), every answer still its own."""
    offset = free_offset()
    deployment = start(export_root, tmp_path, ("triton-pytorch",), ["digits-mlp"], offset,
                       batching=True, max_batch_size=8, batch_timeout_ms=20)
    try:
        samples = golden(export_root, "digits-mlp")
        endpoints = deployment.endpoints_obj()
        config = (tmp_path / "run" / "triton-pytorch" / "triton-repository" / "digits-mlp"
                  / "config.pbtxt").read_text()
        assert "dynamic_batching" in config and "preferred_batch_size: [ 8 ]" in config

        def ask(index: int) -> bool:
            client = make_client("triton-pytorch", "v2-binary", "digits-mlp", endpoints)
            try:
                answer = client.predict(samples.inputs[index:index + 1])
                return payload.matches_reference(answer, samples.outputs[index:index + 1],
                                                 FP32_TOLERANCE)[0]
            finally:
                client.close()

        def counts() -> tuple[float, float]:  # rows run, batches run
            page = parse(requests.get(endpoints.metrics_url("triton-pytorch"), timeout=10).text)
            return tuple(sum(v for (name, _), v in page.items() if name == metric)
                         for metric in ("nv_inference_count", "nv_inference_exec_count"))

        before = counts()
        with ThreadPoolExecutor(16) as pool:
            assert all(pool.map(ask, [i % len(samples.outputs) for i in range(96)]))
        rows, batches = (after - earlier for after, earlier in zip(counts(), before,
                                                                    strict=True))
        assert rows == 96 and batches < rows / 2, (rows, batches)
    finally:
        stop(deployment)


def test_the_known_crash_is_real_and_leaves_no_process_or_segment(export_root, tmp_path):
    """What the registry declares as Triton's crash (a JSON shape of 2**31 rows) does take
    tritonserver down: if a new Triton stops crashing, the declaration must go. The launcher
    then removes the shared memory Triton left and exits; nothing of its group runs on."""
    deployment = start(export_root, tmp_path, ("triton-pytorch",), ["digits-mlp"],
                       free_offset())
    try:
        (record,) = deployment.processes
        rest = deployment.endpoints_obj().of("triton-pytorch")["rest"]
        body = {"inputs": [{"name": "pixels", "shape": [2**31, 64], "datatype": "FP32",
                            "data": [0.5] * 64}]}
        with pytest.raises(requests.ConnectionError):
            requests.post(f"{rest}/v2/models/digits-mlp/infer", json=body, timeout=30)
        assert processes.wait_until(lambda: not processes.group_members(record), 30)
        assert not segments(record.pid)
        log = Path(record.log).read_text()
        assert "std::bad_alloc" in log
    finally:
        stop(deployment)


def test_a_sigkilled_launcher_takes_triton_and_its_stubs_down(export_root, tmp_path):
    deployment = start(export_root, tmp_path, ("triton-pytorch",), ["digits-mlp"],
                       free_offset())
    try:
        (record,) = deployment.processes
        members = processes.group_members(record)
        assert len(members) >= 3, members  # the launcher, tritonserver, the backend stub
        os.kill(record.pid, signal.SIGKILL)
        _, alive = psutil.wait_procs(members, timeout=30)
        assert not alive, alive
        assert not segments(record.pid)
    finally:
        assert stop(deployment) == []  # nothing was left to stop


def test_the_triton_environment_has_numpy_1_and_the_launcher_refuses_numpy_2(tmp_path):
    """Triton's Python backend passes tensors through numpy 1.x's C interface: with numpy 2
    every answer comes back empty. The Triton environment has numpy<2, and the launcher run
    by an interpreter with numpy 2 (the kit's main one) refuses to start, naming it."""
    version = subprocess.run([str(triton_python()), "-c", "import numpy; print(numpy.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert int(version.split(".")[0]) == 1, version
    refused = subprocess.run(
        [sys.executable, "-m", "deploybench.serving.triton_server", "--artifacts",
         str(tmp_path), "--models", "digits-mlp", "--runtime", "pytorch"],
        capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "needs numpy<2" in refused.stderr, refused.stderr
