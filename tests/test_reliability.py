"""Reliability (issue 7): faults under load against real native TorchServe, an export killed
midway, a tampered artifact in `deploybench run`, and bad input through the clients (the TF
Serving test double) and the CLI. Safe defaults and the secret scan are in test_security.py;
the HTTP bad-input matrix against TorchServe is in test_serving.py.

Every load here is bounded (short steps, subprocess timeouts); servers listen on 127.0.0.1 on
free ports and are stopped by their fixtures."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import requests
from rich.console import Console

from deploybench.batch import Batch
from deploybench.export.formats import FORMATS
from deploybench.files import tree_sha256
from deploybench.golden import Golden
from deploybench.jobs.writer import RunWriter
from deploybench.loadtest import histogram
from deploybench.loadtest.runner import LoadPlan, LoadRun
from deploybench.loadtest.scenarios import load_scenario
from deploybench.manifest import FP32_TOLERANCE, exported_models, load_manifest, verify_artifacts
from deploybench.serving import faults, native, processes
from deploybench.serving.clients import TFServingGRPC, TFServingREST
from deploybench.serving.manager import STATE_FILE, Deployment, serve, stop
from deploybench.serving.payload import PredictionError, matches_reference
from deploybench.serving.targets import Endpoints
from deploybench.settings import load_settings
from tests.conftest import invoke
from tests.servers import (
    free_endpoints,
    free_offset,
    inet_connections,
    native_torchserve,
    wait_for,
)

MODEL = "digits-mlp"
DEPLOYBENCH = [str(Path(sys.executable).with_name("deploybench"))]  # the console script
QUIET = Console(file=io.StringIO())


def golden(root: Path, model: str = MODEL) -> Golden:
    return Golden.load(root / load_manifest(root, model).golden["path"])




def inference_count(endpoints: Endpoints) -> float:
    """TorchServe's own count of inference requests (its Prometheus metrics)."""
    text = requests.get(f"{endpoints.torchserve_metrics}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ts_inference_requests_total{"))


def once_load_flows(endpoints: Endpoints, then_s: float) -> None:
    """Wait until locust's requests reach TorchServe, then `then_s` more seconds: a fault
    timed from here lands inside the measurement window however slowly locust started."""
    base = inference_count(endpoints)
    wait_for(lambda: inference_count(endpoints) > base + 5, 60, "locust's requests arrive")
    time.sleep(then_s)


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def locust_listening(parent: psutil.Process) -> list[tuple[str, int]]:
    """Addresses the locust processes started by `parent` listen on, found while they run."""
    addresses = []
    for child in parent.children(recursive=True):
        try:
            if "locust" not in " ".join(child.cmdline()):
                continue
            addresses += [(c.laddr.ip, c.laddr.port) for c in inet_connections(child)
                          if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    return addresses


def cli(args: list[str], state: Path, timeout: float) -> subprocess.CompletedProcess:
    """`deploybench ARGS` as its own process, bounded by `timeout`."""
    env = {**os.environ, "DEPLOYBENCH_STATE_DIR": str(state), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([*DEPLOYBENCH, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def error_lines(stderr: str) -> list[str]:
    """The CLI's own lines on stderr (not TensorFlow's or absl's start-up chatter)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "state"
    monkeypatch.setenv("DEPLOYBENCH_STATE_DIR", str(directory))
    return directory


# --- faults under load: a killed worker --------------------------------------------------------

@pytest.fixture(scope="module")
def torchserve(export_root: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Deployment]:
    """Real TorchServe, natively, with the hardened config, one worker for digits-mlp."""
    with native_torchserve(export_root, [MODEL], tmp_path_factory.mktemp("state"),
                           tmp_path_factory.mktemp("serve")) as deployment:
        yield deployment


@pytest.mark.slow
def test_worker_killed_mid_step_is_counted_and_recovers(torchserve: Deployment,
                                                        export_root: Path,
                                                        tmp_path: Path) -> None:
    """SIGKILL the Python backend worker in the middle of a locust step: the step completes,
    every failed request is counted, TorchServe starts a new worker, answers are correct again,
    and results.json states the recovery time (a measurement of kind "fault")."""
    endpoints = torchserve.endpoints_obj()
    samples = golden(export_root)
    run_dir = tmp_path / "run"
    plan = LoadPlan([("torchserve", "rest")], [MODEL], export_root.resolve(), endpoints,
                    load_scenario("sweep", levels=[2], step_seconds=8, warmup_seconds=1),
                    run_dir, "native")
    plan.observers = torchserve.observers()
    seen: dict[str, Any] = {}

    def fault() -> faults.WorkerKill:
        once_load_flows(endpoints, then_s=1.0 + 2.0)  # the 1 s warm-up, then 2 s measured
        seen["locust_listening"] = locust_listening(psutil.Process())
        return faults.kill_torchserve_worker(endpoints, MODEL, samples.inputs[:1],
                                             samples.outputs[:1], timeout=60)

    writer = RunWriter(run_dir)
    (step,), kill = faults.during(lambda: LoadRun(plan, QUIET, writer.add).run(), fault,
                                  delay_s=0.0)
    writer.add(kill.measurement(scenario="sweep", level=2))
    writer.note(kill.note())

    # TorchServe brought a new worker back and it answers correctly
    assert kill.status == "recovered", kill
    assert kill.new_pid != kill.killed_pid and not psutil.pid_exists(kill.killed_pid)
    assert 0 < kill.recovery_s < 60
    assert faults.ready_pids(endpoints.torchserve_management, MODEL) == {kill.new_pid}
    # the step completed, and the kill fell inside its measurement window
    assert step["status"] == "ok", step
    summary = json.loads((run_dir / step["locust_files"]["summary"]).read_text())
    window = summary["window"]
    assert window["start"] < kill.killed_at < window["end"], (window, kill.killed_at)
    # nothing silently dropped: every completed request is a success or a counted failure, and
    # locust's own, independent count of failures agrees
    (tally,) = summary["requests"].values()
    successes = histogram.decode(tally["histogram"]).get_total_count()
    assert step["requests"] == successes + step["failures"] > 0
    assert sum(step["errors"].values()) == step["failures"]
    assert step["locust"]["failures"] == step["failures"]
    assert step["wrong_answers"] == 0
    for reason in step["errors"]:  # only the requests the dead worker held: "Worker died"
        assert "Worker died" in reason or "Connection" in reason, reason
    # afterwards: correct answers from the new worker
    answer = requests.post(f"{endpoints.torchserve_inference}/predictions/{MODEL}",
                           json={"instances": samples.inputs[:16].only.tolist()}, timeout=30)
    ok, why = matches_reference(np.asarray(answer.json()["predictions"], np.float32),
                                samples.outputs[:16], FP32_TOLERANCE)
    assert ok, why
    # the results say it: a "fault" measurement with the recovery time, and a note
    data = results(run_dir)
    (row,) = [m for m in data["measurements"] if m["kind"] == "fault"]
    assert row["fault"] == "torchserve-worker-kill" and row["recovery_s"] == kill.recovery_s
    assert any("answering correctly again after" in note for note in data["notes"])
    # the load generator never opened a listening port beyond loopback (headless: none at all)
    assert all(ip in ("127.0.0.1", "::1") for ip, _ in seen["locust_listening"])
    print(f"\nworker kill: {step['failures']} of {step['requests']} requests failed "
          f"({step['errors']}); recovered in {kill.recovery_s} s")


# --- safe defaults, on the running native server -----------------------------------------------

LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


@pytest.mark.slow
def test_every_listening_socket_of_native_torchserve_is_loopback(torchserve: Deployment
                                                                 ) -> None:
    """The launcher, the JVM and its Python workers: every TCP/UDP socket they listen on is
    bound to loopback (the workers talk to the JVM over Unix sockets)."""
    (record,) = torchserve.processes
    members = processes.group_members(record)
    assert len(members) >= 3  # launcher, JVM, one worker
    listening = []
    for process in members:
        for conn in inet_connections(process):
            if conn.status == psutil.CONN_LISTEN or conn.type == socket.SOCK_DGRAM:
                listening.append((process.name(), conn.laddr.ip, conn.laddr.port))
    ports = {port for _, _, port in listening}
    endpoints = torchserve.endpoints_obj()
    expected = {int(url.rsplit(":", 1)[1]) for url in (
        endpoints.torchserve_inference, endpoints.torchserve_management,
        endpoints.torchserve_metrics, endpoints.torchserve_grpc_inference,
        endpoints.torchserve_grpc_management)}
    assert expected <= ports, listening  # all five found, so the check means something
    for name, ip, port in listening:
        assert ip in LOOPBACK, f"{name} listens on {ip}:{port}"


@pytest.mark.slow
def test_native_torchserve_refuses_model_registration(torchserve: Deployment,
                                                      export_root: Path) -> None:
    management = torchserve.endpoints["torchserve_management"]
    for url in (f"{MODEL}.mar", "https://example.com/evil.mar",
                f"file://{(export_root / 'model-store').resolve()}/{MODEL}.mar"):
        answer = requests.post(f"{management}/models", params={"url": url}, timeout=10)
        assert answer.status_code == 405, (url, answer.text)
    assert requests.delete(f"{management}/models/{MODEL}", timeout=10).status_code == 405
    assert faults.ready_pids(management, MODEL)  # still served
    config = native.read_properties(Path(torchserve.run_dir) / "torchserve" / "config.properties")
    store = (export_root / "model-store").resolve()
    assert config["enable_model_api"] == "false"
    assert config["allowed_urls"] == f"file://{store}/.*"
    assert config["use_env_allowed_urls"] == "false"
    assert config["max_request_size"] == "6553500"
    for key in ("inference_address", "management_address", "metrics_address"):
        assert config[key].startswith("http://127.0.0.1:"), (key, config[key])
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert config[key] == "127.0.0.1", (key, config[key])


# --- faults under load: the whole server killed ------------------------------------------------

def start_torchserve(root: Path, run_dir: Path, **options: Any) -> Deployment:
    _, endpoints = free_endpoints()
    return serve(root, mode="native", models=[MODEL], run_dir=run_dir, endpoints=endpoints,
                 servers=("torchserve",), log=lambda text: None, **options)


def kill_during_load(process: subprocess.Popen, run_dir: Path,
                     record: processes.ProcessRecord, timeout: float) -> tuple[float, str]:
    """Once the command `process` has begun its load stage (run_dir/locust exists), wait 3 s
    and kill the server's whole process group; returns the seconds from the kill to the
    command's end, and its stderr. The command is killed if it outlives `timeout`."""
    try:
        wait_for((run_dir / "locust").exists, timeout, "the load stage begins")
        time.sleep(3.0)
        faults.kill_server(record)
        killed = time.monotonic()
        _, stderr = process.communicate(timeout=timeout)
        return time.monotonic() - killed, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
            processes.stop(record)  # a SIGKILLed command leaves its servers behind


@pytest.mark.slow
def test_load_ends_clearly_when_the_server_dies(export_root: Path, tmp_path: Path,
                                                state: Path) -> None:
    """`deploybench load` against a server whose process group is killed mid-step: a failed
    step, a one-line error, a non-zero exit within seconds; `deploybench stop` cleans up."""
    deployment = start_torchserve(export_root, tmp_path / "serve")
    (record,) = deployment.processes
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [*DEPLOYBENCH, "load", "--no-calibrate", "--target", "torchserve", "--model", MODEL,
         "--users", "2", "--step-seconds", "30", "--warmup-seconds", "1", "--out", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "DEPLOYBENCH_STATE_DIR": str(state)})
    ended_after, stderr = kill_during_load(process, run_dir, record, timeout=60)
    assert process.returncode == 1
    assert ended_after < 20, ended_after  # not the 30 s step, not a hang
    (line,) = error_lines(stderr)
    assert stderr.strip().splitlines() == [line]  # the whole of stderr: one line
    assert "torchserve went away during the step" in line and "connection refused" in line
    data = results(run_dir)
    (step,) = data["measurements"]
    assert step["status"] == "failed" and step["server_gone"] is True
    assert step["failures"] == sum(step["errors"].values())  # counted, not hidden
    assert "latency_ms" not in step  # no figures made of refused connections
    assert data["partial"] is True
    print(f"\nserver killed under load: load exited {process.returncode} {ended_after:.1f} s "
          f"later; {step['failures']} of {step['requests']} requests failed before the stop")
    # `deploybench stop` still cleans up: nothing of the group left, the state file removed
    assert (state / STATE_FILE).is_file()
    stopped = invoke("stop")
    assert stopped.exit_code == 0
    assert "nothing was still running" in stopped.output
    assert not (state / STATE_FILE).exists()
    assert processes.group_members(record) == []


def test_stop_cleans_up_a_group_whose_leader_died(tmp_path: Path, state: Path) -> None:
    """Only the launcher killed (TorchServe's JVM and workers would live on): `stop` still
    finds and stops the rest of the recorded process group."""
    _, record = processes.launch("torchserve", ["sh", "-c", "sleep 60 & sleep 60 & wait"],
                                 tmp_path / "fake.log", tmp_path)
    children = wait_for(lambda: psutil.Process(record.pid).children(), 10, "children")
    deployment = Deployment("native", str(tmp_path), [MODEL], str(tmp_path), {}, {},
                            processes=[record])
    deployment.save()
    os.kill(record.pid, signal.SIGKILL)
    wait_for(lambda: not record.alive(), 10, "the leader is dead")
    assert all(child.is_running() for child in children)
    result = invoke("stop")
    assert result.exit_code == 0 and f"torchserve (pid {record.pid})" in result.output
    psutil.wait_procs(children, timeout=10)
    assert not any(child.is_running() for child in children)
    assert not (state / STATE_FILE).exists()


def start_run(export_root: Path, run_dir: Path, state: Path, step_seconds: float
              ) -> tuple[subprocess.Popen, processes.ProcessRecord]:
    """`deploybench run` of the digits model against native TorchServe, once its server is
    recorded: the process and the server's record."""
    command = [*DEPLOYBENCH, "run", "--no-export", "--artifacts", str(export_root),
               "--model", MODEL, "--mode", "native", "--servers", "torchserve",
               "--users", "1,2", "--step-seconds", str(step_seconds), "--warmup-seconds", "1",
               "--no-rate-search", "--edge-runs", "20", "--edge-threads", "1",
               "--port-offset", str(free_offset()), "--out", str(run_dir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "DEPLOYBENCH_STATE_DIR": str(state)})
    try:
        wait_for((state / STATE_FILE).is_file, 120, "the server is recorded")
    except BaseException:
        process.kill()
        process.wait()
        raise
    (record,) = Deployment.load(state).processes
    return process, record


@pytest.mark.slow
def test_run_keeps_partial_results_when_the_server_dies(export_root: Path, tmp_path: Path,
                                                        state: Path) -> None:
    """`deploybench run` whose server is killed during the load stage: the step is failed (not
    a run full of connection refusals), the run ends partial with its report, and the servers
    are stopped."""
    run_dir = tmp_path / "run"
    process, record = start_run(export_root, run_dir, state, step_seconds=20)
    ended_after, stderr = kill_during_load(process, run_dir, record, timeout=120)
    assert process.returncode == 1, stderr[-2000:]
    assert ended_after < 60, ended_after
    (line,) = error_lines(stderr)
    assert "torchserve went away during the step" in line
    data = results(run_dir)
    assert data["partial"] is True
    assert any("stopped during load" in note and "went away" in note for note in data["notes"])
    load = [m for m in data["measurements"] if m["kind"] == "load"]
    assert [m["status"] for m in load] == ["failed"] and load[0]["server_gone"]
    assert not [m for m in data["measurements"] if m["kind"] == "edge"]  # the run ended
    assert "Partial run" in (run_dir / "report.md").read_text()
    print(f"\nserver killed during run: exited {process.returncode} {ended_after:.1f} s later")
    assert not (state / STATE_FILE).exists()
    assert processes.group_members(record) == []


@pytest.mark.slow
def test_run_terminated_stops_its_servers_and_locust_and_keeps_what_it_measured(
        export_root: Path, tmp_path: Path, state: Path) -> None:
    """SIGTERM (a CI time limit, `kill`, a container stop) during the load stage: the run
    stops TorchServe and its locust, ends partial with its report, and exits 143."""
    run_dir = tmp_path / "run"
    process, record = start_run(export_root, run_dir, state, step_seconds=30)
    try:
        wait_for(lambda: list((run_dir / "locust").glob("*.log")), 120, "locust has started")
        time.sleep(2.0)
        locusts = [p for p in psutil.Process(process.pid).children(recursive=True)
                   if "locust" in " ".join(p.cmdline())]
        assert locusts
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
            processes.stop(record)  # a SIGKILLed command leaves its servers behind
    assert process.returncode == 143, stderr[-2000:]
    assert "terminated (SIGTERM)" in stderr
    psutil.wait_procs(locusts, timeout=10)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in locusts)
    assert processes.group_members(record) == []
    assert not (state / STATE_FILE).exists()
    data = results(run_dir)
    assert data["partial"] is True
    assert any("stopped during load: terminated (SIGTERM)" in note for note in data["notes"])
    assert "Partial run" in (run_dir / "report.md").read_text()


# --- model version rollover under load ---------------------------------------------------------

@pytest.mark.slow
def test_version_rollover_under_load_loses_no_request(export_root: Path, tmp_path: Path,
                                                      state: Path) -> None:
    """Version 2 exported by `deploybench export --version 2`, registered in a running
    TorchServe (model API on, loopback only: a separate config for this drill), made the
    default, and version 1 removed, while locust runs: no failed or wrong answer."""
    from deploybench.export import exporter

    v2_root = tmp_path / "v2"
    shutil.copytree(export_root, v2_root, symlinks=True)
    # the .mar is all TorchServe serves: only it (and the TorchScript in it) is re-exported
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exporter, "FORMATS", tuple(f for f in FORMATS
                                                 if f.name in ("torchscript", "mar")))
        exported = invoke("export", "--model", MODEL, "--version", "2", "--out", str(v2_root))
    assert exported.exit_code == 0, exported.output
    assert load_manifest(v2_root, MODEL).version == 2
    root = tmp_path / "served"
    shutil.copytree(export_root, root, symlinks=True)
    shutil.copyfile(v2_root / MODEL / f"{MODEL}.mar", root / "model-store" / f"{MODEL}-v2.mar")

    settings = load_settings()
    deployment = start_torchserve(root, tmp_path / "serve",
                                  overrides={"torchserve": {"enable_model_api": "true"}})
    try:
        endpoints = deployment.endpoints_obj()
        run_dir = tmp_path / "run"
        # the rollover takes 3-4 s on a quiet machine and took 10.7 s on a busy one: a step
        # long enough to hold it whole
        plan = LoadPlan([("torchserve", "rest")], [MODEL], root.resolve(), endpoints,
                        load_scenario("sweep", levels=[2], step_seconds=18, warmup_seconds=1),
                        run_dir, "native")

        def rollover() -> faults.Rollover:
            once_load_flows(endpoints, then_s=1.0 + 1.5)
            return faults.rollover_torchserve(
                endpoints.torchserve_management, MODEL, f"{MODEL}-v2.mar", "2", "1",
                max_batch_delay_ms=settings.batch_timeout_ms)

        writer = RunWriter(run_dir)
        (step,), done = faults.during(lambda: LoadRun(plan, QUIET, writer.add).run(), rollover,
                                      delay_s=0.0)
        writer.add(done.measurement(failed_requests=step["failures"]))
        writer.note(done.note())
        versions = requests.get(f"{endpoints.torchserve_management}/models/{MODEL}/all",
                                timeout=10).json()
    finally:
        stop(deployment)
    assert [(v["modelVersion"], v["modelUrl"]) for v in versions] == [("2", f"{MODEL}-v2.mar")]
    assert step["status"] == "ok" and step["requests"] > 0
    assert step["failures"] == 0 and step["wrong_answers"] == 0, step["errors"]
    # the whole rollover happened inside the window, and answers kept coming after version 1
    # was gone (so version 2 gave them)
    summary = json.loads((run_dir / step["locust_files"]["summary"]).read_text())
    window = summary["window"]
    assert window["start"] < done.started_at < done.finished_at < window["end"]
    (tally,) = summary["requests"].values()
    after = int(done.finished_at - window["start"]) + 1
    assert sum(slot[0] for slot in tally["timeline"][after:]) > 0
    print(f"\nrollover: {step['requests']} requests, {step['failures']} failed; "
          f"v2 registered in {done.registered_s} s, default at {done.default_s} s")


# --- artifacts ---------------------------------------------------------------------------------

def test_run_refuses_a_tampered_artifact_before_serving(export_copy: Path, tmp_path: Path,
                                                       state: Path) -> None:
    copy = export_copy
    mar = (copy / MODEL / f"{MODEL}.mar").resolve()
    mar.write_bytes(mar.read_bytes()[:-64])
    run_dir = tmp_path / "run"
    result = invoke("run", "--no-export", "--artifacts", str(copy), "--model", MODEL,
                    "--mode", "native", "--servers", "torchserve", "--out", str(run_dir))
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error:") and f"{MODEL}.mar" in last and "sha256" in last
    data = results(run_dir)
    assert data["partial"] is True
    assert any("stopped during serve" in note for note in data["notes"])
    assert (run_dir / "report.md").is_file()
    assert not (state / STATE_FILE).exists()  # nothing was started


@pytest.mark.slow
def test_export_killed_midway_leaves_the_published_model_intact(export_root: Path,
                                                                export_copy: Path) -> None:
    """`deploybench export` SIGKILLed while it builds into a root that holds a published
    digits-mlp: the published manifest, every sha256 and the artifacts themselves still hold."""
    root = export_copy
    published = (root / MODEL).resolve()
    before = {path: path.read_bytes() for path in (root / "models.config",
                                                   root / "model-store" / f"{MODEL}.mar")}
    builds = set((root / ".builds").iterdir())
    process = subprocess.Popen([*DEPLOYBENCH, "export", "--model", MODEL, "--out", str(root)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        (new,) = wait_for(lambda: set((root / ".builds").iterdir()) - builds, 60,
                          "a new build folder")
        time.sleep(1.0)  # well inside the build: training, nothing published yet
        assert process.poll() is None, "the export ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert new.is_dir() and not (new / "manifest.json").exists()  # a half build, kept aside
    assert (root / MODEL).resolve() == published
    assert exported_models(root) == sorted(exported_models(export_root))
    for path, content in before.items():
        assert path.read_bytes() == content, path
    manifest = load_manifest(root, MODEL)
    verify_artifacts(root, manifest)  # every sha256 still matches
    for artifact in manifest.artifacts:
        assert tree_sha256(root / artifact.path) == artifact.sha256
    samples = golden(root)
    runners = {f.name: f.runner for f in FORMATS}
    for fmt in ("torchscript", "mar", "tflite-fp32", "savedmodel"):  # and they still load
        outputs = runners[fmt](root / manifest.artifact(fmt).path)(samples.inputs[:32])
        ok, why = matches_reference(outputs, samples.outputs[:32], FP32_TOLERANCE)
        assert ok, (fmt, why)


# --- the TF Serving client paths, against the test double --------------------------------------

@pytest.fixture(scope="module")
def double(export_root: Path) -> Iterator[Any]:
    from tests.fake_tfserving import FakeTFServing

    with FakeTFServing(export_root, models=[MODEL]) as fake:
        yield fake


@pytest.mark.slow
def test_tfserving_clients_name_unknown_models_versions_and_bad_shapes(double: Any,
                                                                       export_root: Path
                                                                       ) -> None:
    row = np.full((1, 64), 0.5, np.float32)
    cases: list[tuple[Any, np.ndarray, str]] = [
        (TFServingREST(double.rest_url, "no-such-model"), row,
         r"404: Servable not found for request: Latest\(no-such-model\)"),
        (TFServingREST(double.rest_url, MODEL, version=7), row,
         r"404: Servable not found for request: Specific\(digits-mlp, 7\)"),
        (TFServingREST(double.rest_url, MODEL), row[:, :63], r"400: .*expects \[-1,64\]"),
        (TFServingGRPC(double.grpc_target, "no-such-model"), row,
         r"NOT_FOUND: Servable not found for request: Latest\(no-such-model\)"),
        (TFServingGRPC(double.grpc_target, MODEL), row[:, :63],
         r"INVALID_ARGUMENT: .*expects \[-1,64\]"),
    ]
    for client, batch, message in cases:
        with pytest.raises(PredictionError, match=message) as info:
            client.predict(Batch.single("pixels", batch))
        assert "\n" not in str(info.value)
        if client.protocol == "rest":
            assert info.value.status in (400, 404)
        if client.model == "no-such-model":
            assert not client.ready()
        client.close()
    samples = golden(export_root)  # and the double still answers correctly on both protocols
    for client in (TFServingREST(double.rest_url, MODEL),
                   TFServingGRPC(double.grpc_target, MODEL)):
        ok, why = matches_reference(client.predict(samples.inputs[:8]), samples.outputs[:8],
                                    FP32_TOLERANCE)
        assert ok, why
        client.close()


# --- the CLI: one line, non-zero exit ----------------------------------------------------------

# (case, arguments, exit code, what the line names); {tmp}, {export} and {offset} filled in
CLI_BAD_INPUTS = [
    ("load: unknown target", ["load", "--out", "{tmp}/run", "--target", "nginx"], 2,
     "unknown server(s) ['nginx']"),
    ("load: unknown model", ["load", "--out", "{tmp}/run", "--model", "no-such-model",
                             "--artifacts", "{export}", "--port-offset", "{offset}"], 1,
     "no-such-model/manifest.json: no manifest"),
    ("load: bad user list", ["load", "--out", "{tmp}/run", "--users", "1,x"], 1,
     "not a comma-separated list of int"),
    ("load: unknown scenario", ["load", "--out", "{tmp}/run", "--scenario", "burst.yaml"], 2,
     "unknown scenario 'burst.yaml'"),
    ("serve: no export there", ["serve", "--artifacts", "/nonexistent", "--mode", "native"], 2,
     "/nonexistent: no such export folder"),
    ("serve: unknown server", ["serve", "--artifacts", "{export}", "--servers", "nginx"], 2,
     "unknown server(s) ['nginx']"),
    ("serve: unknown mode", ["serve", "--artifacts", "{export}", "--mode", "podman",
                             "--servers", "torchserve", "--run-dir", "{tmp}/run"], 1,
     "unknown mode 'podman'"),
    ("export: unknown model", ["export", "--model", "nope", "--out", "{tmp}/run"], 1,
     "unknown model 'nope'"),
    ("report: missing run folder", ["report", "{tmp}/run"], 1, "no results.json"),
    ("edge: bad --threads", ["edge", "--out", "{tmp}/run", "--artifacts", "{export}",
                             "--threads", "0"], 2, "--threads"),
    ("edge: no export there", ["edge", "--out", "{tmp}/run", "--artifacts", "/nonexistent"], 2,
     "/nonexistent: no such export folder"),
    ("run: bad --users", ["run", "--users", "0", "--out", "{tmp}/run"], 2, "user levels"),
    ("run: bad --edge-threads", ["run", "--edge-threads", "two", "--out", "{tmp}/run"], 2,
     "thread counts"),
    ("run: unknown mode", ["run", "--mode", "podman", "--out", "{tmp}/run"], 2,
     "unknown mode 'podman'"),
]


@pytest.mark.parametrize(("case", "args", "code", "names"), CLI_BAD_INPUTS,
                         ids=[c[0] for c in CLI_BAD_INPUTS])
def test_cli_bad_input_is_one_line_and_a_non_zero_exit(case: str, args: list[str], code: int,
                                                       names: str, export_root: Path,
                                                       tmp_path: Path, state: Path) -> None:
    values = {"tmp": str(tmp_path), "export": str(export_root), "offset": str(free_offset())}
    result = invoke(*[arg.format(**values) for arg in args])
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:") and names in lines[0], lines[0]
    # refused before any work: no run folder, no server record
    assert not (tmp_path / "run").exists() or case.startswith("report")
    assert not (state / STATE_FILE).exists()
