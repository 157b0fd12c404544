"""Docker mode against a real Docker engine (the one that answers, or a dockerd started here):
an engine that cannot get the servers' images does not sink the run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deploybench.jobs.stages import server_records
from deploybench.serving.manager import STATE_FILE, Deployment, ServerStatus
from tests.conftest import invoke
from tests.docker_engine import docker_engine
from tests.servers import free_offset, port_free

pytestmark = pytest.mark.slow

# Images no engine holds and no registry serves, whatever the machine's own engine has pulled:
# the situation of an air-gapped engine, or of images never built.
ABSENT = {"TFSERVING_IMAGE": "deploybench-absent/tfserving:none",
          "TORCHSERVE_IMAGE": "deploybench-absent/torchserve:none",
          "KSERVE_IMAGE": "deploybench-absent/kserve:none"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with docker_engine(tmp_path_factory.mktemp("docker")) as host, \
            pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOCKER_HOST", host)
        for name, image in ABSENT.items():
            patch.setenv(name, image)
        yield host


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DEPLOYBENCH_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def test_an_engine_without_the_images_serves_natively_naming_each_image(
        engine, export_root: Path, tmp_path: Path, state: Path) -> None:
    """No --mode and an engine answers, but it has none of the images and cannot pull them:
    each missing image is one line saying how to get it, and each server runs natively where
    it can (TorchServe) or is a row naming both reasons (TF Serving), instead of a failed
    `docker compose up`."""
    offset = free_offset()
    result = invoke("serve", "--artifacts", str(export_root), "--model", "digits-mlp",
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
        engine, export_root: Path, tmp_path: Path, state: Path) -> None:
    result = invoke("serve", "--artifacts", str(export_root), "--model", "digits-mlp",
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
