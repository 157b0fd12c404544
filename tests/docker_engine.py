"""A Docker engine for the tests: the one that answers, or a dockerd the tests start themselves
(serving/engine.py, as `deploybench serve --mode docker` does)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from deploybench.errors import DeploybenchError
from deploybench.serving import engine, processes

# DEPLOYBENCH_NO_DOCKER=1 skips the tests that need an engine, on a machine where none can run
# (not root, no dockerd); without it they fail naming the reason, never skip silently.
NO_DOCKER = os.environ.get("DEPLOYBENCH_NO_DOCKER") == "1"


@contextmanager
def docker_engine(folder: Path) -> Iterator[processes.ProcessRecord | None]:
    """An engine that answers (DOCKER_HOST, or the default socket: a user's Docker, CI's) is
    used as it is; otherwise, as root, a `dockerd` started with its defaults and stopped
    afterwards with what it ran (its images stay in its storage for the next session).
    Yields the dockerd started here, or None when an engine answered already."""
    if NO_DOCKER:
        pytest.skip("DEPLOYBENCH_NO_DOCKER=1: tests that need a Docker engine are skipped")
    try:
        started = engine.ensure_engine(folder / "dockerd.log")
    except DeploybenchError as error:
        pytest.fail(f"{error} (`make test` installs Debian's docker.io); set "
                    "DEPLOYBENCH_NO_DOCKER=1 to skip the Docker tests")
    try:
        yield started
    finally:
        if started is not None:
            processes.stop(started, grace_seconds=30)
