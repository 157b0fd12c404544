"""The Docker engine the kit talks to: the one that answers (a user's Docker, CI's), used as it
is, or, as root where none answers, a `dockerd` started here with its defaults and stopped by
whoever started it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from deploybench.errors import DeploybenchError
from deploybench.serving import processes

START_TIMEOUT_S = 60.0


def engine_available(host: str | None = None) -> tuple[bool, str]:
    """Whether a Docker engine answers (SDK ping) at `host`, by default where DOCKER_HOST or
    the default socket says, and why not."""
    try:
        import docker

        client = (docker.DockerClient(base_url=host, timeout=5) if host
                  else docker.from_env(timeout=5))
        client.ping()
        client.close()
        return True, ""
    except Exception as error:  # the SDK raises several kinds; all mean "no engine"
        return False, f"no Docker engine answers ({type(error).__name__})"


def why_cannot_start() -> str | None:
    """Why this process cannot start a dockerd of its own, or None if it can."""
    if shutil.which("dockerd") is None:
        return "dockerd is not installed (Debian's docker.io provides it)"
    if os.geteuid() != 0:
        return "starting dockerd needs root"
    if os.environ.get("DOCKER_HOST"):
        return f"DOCKER_HOST names {os.environ['DOCKER_HOST']}, which does not answer"
    return None


def start_dockerd(log: Path) -> processes.ProcessRecord:
    """Start `dockerd` with its defaults (its usual socket, storage and bridge network) and
    return once it answers. The caller stops it with `processes.stop(record)`: dockerd then
    stops the containers it runs and its containerd."""
    why_not = why_cannot_start()
    if why_not:
        raise DeploybenchError(f"no Docker engine answers, and none can be started here: {why_not}")
    process, record = processes.launch("dockerd", [shutil.which("dockerd")], log, log.parent)
    if not processes.wait_until(lambda: process.poll() is not None or engine_available()[0],
                                START_TIMEOUT_S):
        processes.stop(record)
        raise DeploybenchError(f"dockerd did not answer within {START_TIMEOUT_S:.0f} s "
                               f"(log: {log})")
    if process.poll() is not None:
        raise DeploybenchError(f"dockerd exited at start ({process.returncode}): "
                               f"{processes.log_tail(log)}")
    return record


def ensure_engine(log: Path) -> processes.ProcessRecord | None:
    """An engine that answers: None when one already did, else the record of the dockerd
    started for it (the caller stops it)."""
    if engine_available()[0]:
        return None
    return start_dockerd(log)
