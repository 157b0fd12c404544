"""A Docker engine for the tests: the one that answers, or one the tests start themselves."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from deploybench.serving.manager import docker_engine_available
from tests.servers import wait_for

# DEPLOYBENCH_NO_DOCKER=1 skips the tests that need an engine, on a machine where none can run
# (not root, no dockerd); without it they fail naming the reason, never skip silently.
NO_DOCKER = os.environ.get("DEPLOYBENCH_NO_DOCKER") == "1"


@contextmanager
def docker_engine(folder: Path) -> Iterator[str]:
    """The address of a Docker engine: an engine that answers (DOCKER_HOST, or the default
    socket: a user's Docker, CI's) is used as it is; otherwise, as root, a `dockerd` started
    here with its own socket and state under `folder`, stopped afterwards with what it ran."""
    if NO_DOCKER:
        pytest.skip("DEPLOYBENCH_NO_DOCKER=1: tests that need a Docker engine are skipped")
    if docker_engine_available()[0]:
        yield os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        pytest.fail("no Docker engine answers, and none can be started here ("
                    + ("dockerd is not installed: `make test` installs Debian's docker.io"
                       if dockerd is None else "starting dockerd needs root")
                    + "); set DEPLOYBENCH_NO_DOCKER=1 to skip the Docker tests")
    host = f"unix://{folder / 'docker.sock'}"
    with open(folder / "dockerd.log", "wb") as log:
        process = subprocess.Popen(
            [dockerd, "--host", host, "--data-root", str(folder / "data"),
             "--exec-root", str(folder / "exec"), "--pidfile", str(folder / "dockerd.pid")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: process.poll() is not None or docker_engine_available(host)[0], 60,
                 "dockerd answers")
        if process.poll() is not None:
            pytest.fail(f"dockerd exited at start ({process.returncode}): "
                        + (folder / "dockerd.log").read_text()[-800:])
        yield host
    finally:
        process.terminate()  # dockerd stops its containers and its containerd, then exits
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
