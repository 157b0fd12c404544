"""Docker mode against a real Docker engine (the one that answers, or a dockerd started here):
the images built offline (`make images`), the stack brought up by `deploybench serve --mode
docker`, measured through the containers, inspected live, crashed under load, taken down
without a trace; and an engine that cannot get the images does not sink the run."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from rich.console import Console

import docker
from deploybench.golden import Golden
from deploybench.jobs.stages import server_records
from deploybench.jobs.writer import RunWriter
from deploybench.loadtest import histogram
from deploybench.loadtest.runner import LoadPlan, LoadRun
from deploybench.loadtest.scenarios import load_scenario
from deploybench.manifest import load_manifest
from deploybench.serving import faults, hardening, images, manager
from deploybench.serving.manager import STATE_FILE, Deployment, ServerStatus
from deploybench.serving.processes import ProcessRecord
from deploybench.serving.targets import make_client
from deploybench.settings import load_settings
from tests.bad_input_checks import assert_matrix
from tests.conftest import invoke
from tests.docker_engine import docker_engine
from tests.servers import free_offset, port_free, wait_for

pytestmark = pytest.mark.slow

MODEL = "digits-mlp"
TRITON = ("triton-tensorflow", "triton-pytorch")
IN_DOCKER = ("torchserve", "kserve-tensorflow", "kserve-pytorch", "kserve-onnxruntime", *TRITON)
# Images no engine holds and no registry serves, whatever the machine's own engine has pulled:
# the situation of an air-gapped engine, or of images never built.
ABSENT = {"TFSERVING_IMAGE": "deploybench-absent/tfserving:none",
          "TORCHSERVE_IMAGE": "deploybench-absent/torchserve:none",
          "KSERVE_IMAGE": "deploybench-absent/kserve:none",
          "TRITON_IMAGE": "deploybench-absent/triton:none"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessRecord | None]:
    """The dockerd these tests started, or None when an engine answered already."""
    with docker_engine(tmp_path_factory.mktemp("docker")) as started:
        yield started


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DEPLOYBENCH_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def absent_images(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, image in ABSENT.items():
        monkeypatch.setenv(name, image)


# first: the images (no export needed), while a parallel worker exports the models
@pytest.fixture(scope="module")
def built(engine) -> dict[str, images.BuiltImage]:
    """`make images`, once per session (the engine caches the layers: a rebuild is seconds)."""
    return {row.service: row for row in images.build_images(log=lambda _: None)}


def test_make_images_builds_every_image_it_can_offline(built) -> None:
    for service in ("torchserve", "kserve-tensorflow", "locust-master", "triton-tensorflow"):
        row = built[service]
        assert row.size_bytes and row.size_bytes > 100 * 2**20, row
        assert row.image.startswith("deploybench-"), row
    client = docker.from_env()
    try:  # built on the offline stand-ins, which the Debian base from debootstrap carries
        debian = client.images.get(images.DEBIAN_IMAGE)
        assert images.LABEL in debian.labels
        for service, stand_in in (("torchserve", images.OFFLINE_BASE),
                                  ("triton-tensorflow", images.TRITON_BASE)):
            base = client.images.get(stand_in)
            assert images.LABEL in base.labels
            # the kit's own Dockerfile on that base: its layers sit on the stand-in's
            history = {layer["Id"] for layer in client.api.history(built[service].image)}
            assert base.id in history and debian.id in history, service
    finally:
        client.close()
    tfserving = built["tfserving"]
    assert tfserving.size_bytes is None and "cannot be built here" in tfserving.note


def test_the_triton_image_runs_its_own_numpy_1_environment(built) -> None:
    """Triton's environment in its image: requirements-triton.txt's versions (numpy<2), the kit
    from its sources, and the backends folder the launcher needs made at build time (the root
    file system is read-only when it runs)."""
    script = ("import json, sys; from importlib.metadata import version; "
              "from deploybench.serving import triton_server as t; "
              "print(json.dumps({'prefix': sys.prefix, 'backends': str(t.backends_folder("
              "t.distribution())), **{p: version(p) for p in ('numpy', 'nvidia-pytriton', "
              "'torch', 'tensorflow', 'deploybench')}}))")
    client = docker.from_env()
    try:
        said = client.containers.run(built["triton-tensorflow"].image,
                                     ["/opt/triton-venv/bin/python", "-c", script],
                                     entrypoint=[], read_only=True, remove=True,
                                     stderr=False).decode()
    finally:
        client.close()
    found = json.loads(said.strip().splitlines()[-1])
    assert found["prefix"] == "/opt/triton-venv"
    assert found["backends"].startswith("/opt/triton-venv/share/deploybench-triton/")
    assert int(found["numpy"].split(".")[0]) == 1, found
    pins = dict(line.split("==") for line in images.requirement_lines(images.TRITON_REQUIREMENTS)
                if "==" in line)
    assert found["nvidia-pytriton"] == pins["nvidia-pytriton"], found
    assert found["torch"].split("+")[0] == pins["torch"], found
    assert found["tensorflow"].startswith(pins["tensorflow"].rstrip("*")), found


def test_an_engine_without_the_images_serves_natively_naming_each_image(
        engine, absent_images, export_root: Path, tmp_path: Path, state: Path) -> None:
    """No --mode and an engine answers, but it has none of the images and cannot pull them:
    each missing image is one line saying how to get it, and each server runs natively where
    it can (TorchServe) or is a row naming both reasons (TF Serving), instead of a failed
    `docker compose up`."""
    offset = free_offset()
    result = invoke("serve", "--artifacts", str(export_root), "--model", MODEL,
                    "--servers", "tfserving,torchserve", "--port-offset", str(offset),
                    "--run-dir", str(tmp_path / "run"))
    try:
        assert result.exit_code == 0, result.output
        said = " ".join(result.output.split())  # the console wraps long lines
        assert (f"tfserving: image {ABSENT['TFSERVING_IMAGE']} is not on this Docker engine "
                "and cannot be pulled (") in said
        assert "`docker pull deploybench-absent/tfserving:none` where a registry is reachable" \
            in said
        assert (f"torchserve: image {ABSENT['TORCHSERVE_IMAGE']} is not on this Docker engine "
                "and cannot be pulled (") in said
        assert "`docker compose build torchserve` builds it; serving it natively" in said
        deployment = Deployment.load()
        assert deployment.mode == "native" and not deployment.uses_compose()
        torchserve, tfserving = deployment.status("torchserve"), deployment.status("tfserving")
        assert (torchserve.status, torchserve.mode) == ("up", "native")
        assert (tfserving.status, tfserving.mode) == ("unavailable", "native")
        assert ABSENT["TFSERVING_IMAGE"] in tfserving.reason
        assert "tensorflow_model_server is not on PATH" in tfserving.reason
    finally:
        stopped = invoke("stop")
    assert stopped.exit_code == 0 and "torchserve" in stopped.output
    assert port_free(8080 + offset)


def test_mode_docker_with_no_image_fails_naming_them_and_starts_nothing(
        engine, absent_images, export_root: Path, tmp_path: Path, state: Path) -> None:
    result = invoke("serve", "--artifacts", str(export_root), "--model", MODEL,
                    "--mode", "docker", "--servers", "tfserving,torchserve",
                    "--run-dir", str(tmp_path / "run"))
    assert result.exit_code != 0
    last = result.output.strip().splitlines()[-1]
    assert "--mode docker: no server can run in Docker here" in last, last
    assert ABSENT["TFSERVING_IMAGE"] in last and ABSENT["TORCHSERVE_IMAGE"] in last
    assert not (state / STATE_FILE).exists()


def test_each_server_record_carries_the_mode_it_ran_in() -> None:
    deployment = Deployment("docker+native", "/x", ["digits-mlp"], "/run", {}, {}, servers=[
        ServerStatus("kserve-pytorch", "up", mode="docker"),
        ServerStatus("torchserve", "up", mode="native"),
        ServerStatus("tfserving", "unavailable", "image missing, and no binary", "native")])
    assert deployment.uses_compose()
    records = {r.target: r for r in server_records(deployment)}
    assert {name: r.mode for name, r in records.items()} == {
        "kserve-pytorch": "docker", "torchserve": "native", "tfserving": "native"}
    assert records["tfserving"].reason == "image missing, and no binary"


# --- the stack, from images built offline ---------------------------------------------------


@pytest.fixture(scope="module")
def stack(built, export_root: Path, tmp_path_factory: pytest.TempPathFactory,
          ) -> Iterator[tuple[Deployment, str]]:
    """`deploybench serve --mode docker`: every server whose image exists, in its container."""
    folder = tmp_path_factory.mktemp("stack")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEPLOYBENCH_STATE_DIR", str(folder / "state"))
        result = invoke("serve", "--mode", "docker", "--artifacts", str(export_root),
                        "--port-offset", str(free_offset()), "--run-dir", str(folder / "run"))
        assert result.exit_code == 0, result.output
        deployment = Deployment.load()
        try:
            yield deployment, " ".join(result.output.split())
        finally:
            if Deployment.load() is not None:  # the last test stops it; this, if it failed
                invoke("stop")


def test_serve_mode_docker_runs_each_server_in_its_container(stack) -> None:
    deployment, said = stack
    assert deployment.mode == "docker" and deployment.uses_compose()
    for name in IN_DOCKER:
        status = deployment.status(name)
        assert (status.status, status.mode) == ("up", "docker"), status
        assert f"{name}: up, answering correctly (docker)" in said
        (container,) = manager.compose_containers(name)
        assert container.status == "running"
    tfserving = deployment.status("tfserving")
    assert tfserving.status == "unavailable" and "tensorflow/serving:" in tfserving.reason


def test_the_running_containers_are_hardened(stack) -> None:
    """docker inspect on the live containers: loopback ports, read-only root and mounts,
    non-root, .env's limits, a healthcheck that asks the model, a restart policy; and
    TorchServe's model API refuses to register a model."""
    deployment, _ = stack
    settings = load_settings()
    for service in IN_DOCKER:  # healthy comes a health interval after the first answer
        wait_for(lambda s=service: all(c.ok for c in hardening.inspect_service(s, settings)
                                       if c.item.startswith("healthcheck")), 60,
                 f"{service} healthy")
    checks = [c for s in IN_DOCKER for c in hardening.inspect_service(s, settings)]
    failed = [c for c in checks if not c.ok]
    assert not failed, failed
    assert len(checks) == 8 * len(IN_DOCKER)
    torchserve = [c for c in checks if c.service == "torchserve"]
    assert "READY: digits-cnn, digits-mlp" in next(c.seen for c in torchserve
                                                     if c.item.startswith("healthcheck"))
    management = deployment.endpoints_obj().torchserve_management
    refused = requests.post(f"{management}/models", params={"url": "x.mar"}, timeout=10)
    assert refused.status_code == 405, refused.text
    listed = requests.get(f"{management}/models", timeout=10).json()["models"]
    assert sorted(m["modelName"] for m in listed) == ["digits-cnn", "digits-mlp"]


def load_results(*args: str) -> dict:
    result = invoke("load", "--no-calibrate", "--model", MODEL, "--warmup-seconds", "1", *args)
    assert result.exit_code == 0, result.output
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "results.json").read_text())


def test_the_bad_input_matrix_is_refused_by_every_container(stack, export_root: Path) -> None:
    """The matrix every native server gets, against the containers: the images run the same
    validation as the native servers."""
    deployment, _ = stack
    for name in IN_DOCKER:
        assert_matrix(name, deployment.endpoints_obj(), export_root, MODEL)


def test_load_through_the_containers_reads_cpu_and_memory_from_container_stats(
        stack, tmp_path: Path) -> None:
    data = load_results("--target", "torchserve", "--protocol", "npy", "--users", "2",
                        "--step-seconds", "3", "--out", str(tmp_path / "run"))
    (step,) = data["measurements"]
    assert step["status"] == "ok" and step["requests"] > 50 and step["wrong_answers"] == 0
    cpu = step["cpu"]
    assert cpu["server_usage_from"].startswith("container stats")
    # the container did the work: most of a busy core or more, and a JVM's worth of memory
    assert cpu["server_percent"] > 30 and step["server_cpu_s_per_1k"] > 0
    assert 50 * 2**20 < step["server_peak_rss_bytes"] < 4 * 2**30


def test_load_through_the_triton_containers_reads_their_metrics_and_stats(
        stack, tmp_path: Path) -> None:
    """A step through each Triton container: answers right, CPU and memory from the engine's
    stats, and Triton's own breakdown from its metrics port published on loopback."""
    data = load_results("--target", ",".join(TRITON), "--protocol", "v2-grpc", "--users", "2",
                        "--step-seconds", "3", "--out", str(tmp_path / "run"))
    steps = data["measurements"]
    assert sorted(step["target"] for step in steps) == sorted(TRITON)
    for step in steps:
        assert step["status"] == "ok" and step["requests"] > 50, step
        assert step["wrong_answers"] == 0 and step["failures"] == 0, step
        assert step["cpu"]["server_usage_from"].startswith("container stats")
        # tritonserver and a stub process per model, each with its framework loaded
        assert 50 * 2**20 < step["server_peak_rss_bytes"] < 4 * 2**30
        figures = step["server_metrics"]
        assert figures["available"] and not figures["missing"], figures
        assert figures["model_ms"]["mean"] > 0 and figures["batch_counts"] == "rows"


def test_distributed_locust_through_compose_merges_the_workers_exactly(
        stack, tmp_path: Path) -> None:
    """The loadtest profile's master and two workers: the master's record is the exact merge
    of both workers' histograms (requests add up; the merged p99 lies within theirs)."""
    data = load_results("--target", "torchserve", "--protocol", "rest", "--users", "4",
                        "--step-seconds", "4", "--workers", "2", "--out", str(tmp_path / "run"))
    (step,) = data["measurements"]
    assert step["status"] == "ok" and step["wrong_answers"] == 0, step
    workers = step["loadgen_workers"]
    assert len(workers) == 2 and all(w["requests"] > 20 for w in workers), workers
    assert sum(w["requests"] for w in workers) == step["requests"]
    assert sum(w["failures"] for w in workers) == step["failures"]
    summary = json.loads((tmp_path / "run" / step["locust_files"]["summary"]).read_text())
    assert summary["role"] == "master" and summary["loadgen"]["workers_reported"] == 2
    merged = histogram.decode(next(iter(summary["requests"].values()))["histogram"])
    assert merged.get_total_count() == step["requests"] - step["failures"]
    # exact: the master's histogram is the sum of the workers' (not a bound on the p99: hdrh
    # ranks percentiles to the nearest count, so a merged p99 may sit one value above both)
    added = histogram.merge([own["histogram"] for tallies in summary["workers"].values()
                             for own in tallies.values()])
    assert histogram.latency_ms(added) == step["latency_ms"], step["latency_ms"]
    assert all(w["p99_ms"] > 0 for w in workers), workers
    # the load generator's containers are gone with the step
    assert not manager.compose_containers("locust-master", all_states=True)
    assert not manager.compose_containers("locust-worker", all_states=True)


def test_a_crashed_torchserve_container_restarts_under_load(stack, export_root: Path,
                                                            tmp_path: Path) -> None:
    """Every process of the TorchServe container killed in the middle of a locust step: its
    restart policy brings it back, the failed requests are counted, and results.json states the
    time from the kill to the first correct answer."""
    deployment, _ = stack
    endpoints = deployment.endpoints_obj()
    golden = Golden.load(export_root / load_manifest(export_root, MODEL).golden["path"])
    plan = LoadPlan([("torchserve", "rest")], [MODEL], export_root.resolve(), endpoints,
                    load_scenario("sweep", levels=[2], step_seconds=20, warmup_seconds=1),
                    tmp_path / "run", deployment.mode)
    writer = RunWriter(plan.run_dir)

    def crash() -> faults.ContainerCrash:
        time.sleep(4.0)  # locust's start and warm-up: the crash lands inside the window
        client = make_client("torchserve", "rest", MODEL, endpoints)
        return faults.crash_container("torchserve", client, golden.inputs[:1],
                                      golden.outputs[:1], timeout=90)

    (step,), crashed = faults.during(lambda: LoadRun(plan, Console(file=io.StringIO()),
                                                     writer.add).run(), crash, delay_s=0.0)
    writer.add(crashed.measurement("torchserve", scenario="sweep", level=2,
                                   failed_requests=step["failures"]))
    writer.note(crashed.note())
    assert crashed.status == "recovered", crashed
    assert crashed.restarts == 1 and crashed.exit_code == 137, crashed
    assert 0 < crashed.recovery_s < 90
    # the step went on through the crash: its failures are counted, none silently dropped
    assert step["status"] == "ok", step
    assert step["failures"] > 0 and step["wrong_answers"] == 0
    assert sum(step["errors"].values()) == step["failures"]
    assert step["requests"] > step["failures"]  # answers before the crash and after the restart
    data = json.loads((plan.run_dir / "results.json").read_text())
    (row,) = [m for m in data["measurements"] if m["kind"] == "fault"]
    assert row["fault"] == "container-crash" and row["recovery_s"] == crashed.recovery_s
    print(f"\ncontainer crash: {step['failures']} of {step['requests']} requests failed; "
          f"answering again after {crashed.recovery_s} s")


def test_stop_takes_the_stack_down_leaving_nothing_behind(stack) -> None:
    stopped = invoke("stop")
    assert stopped.exit_code == 0 and "compose stack" in stopped.output
    client = docker.from_env()
    try:
        project = {"label": f"com.docker.compose.project={manager.COMPOSE_PROJECT}"}
        assert not client.containers.list(all=True, filters=project)
        assert not client.networks.list(filters=project)
        assert not client.volumes.list(filters=project)
    finally:
        client.close()
    assert Deployment.load() is None


def test_serve_mode_docker_starts_dockerd_when_none_answers_and_stop_stops_it(
        engine, built, export_root: Path, tmp_path: Path, state: Path) -> None:
    """Last: it stops the engine. As root with no engine answering, `serve --mode docker`
    starts Debian's dockerd itself, serves through it, and `stop` stops it again."""
    if engine is None:
        pytest.skip("an engine of this machine's own answers: the kit never stops it")
    from deploybench.serving import engine as engines
    from deploybench.serving import processes

    processes.stop(engine, grace_seconds=30)
    assert not engines.engine_available()[0]
    result = invoke("serve", "--mode", "docker", "--artifacts", str(export_root),
                    "--servers", "torchserve", "--port-offset", str(free_offset()),
                    "--run-dir", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "started dockerd (pid " in said and "torchserve: up, answering correctly (docker)" \
        in said
    deployment = Deployment.load()
    (dockerd,) = [p for p in deployment.processes if p.name == "dockerd"]
    assert dockerd.alive() and engines.engine_available()[0]
    stopped = invoke("stop")
    assert stopped.exit_code == 0 and f"dockerd (pid {dockerd.pid})" in stopped.output
    assert not dockerd.alive() and not engines.engine_available()[0]
