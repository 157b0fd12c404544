"""Helpers for tests that start real servers on loopback."""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from deploybench.serving.manager import Deployment, serve, stop
from deploybench.serving.targets import Endpoints, host_port, loopback_endpoints, targets

# every port a declared server listens on by default
DEFAULT_PORTS = tuple(host_port(endpoint.default)[1] for target in targets().values()
                      for endpoint in target.endpoints)


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ephemeral_ports() -> range:
    """The kernel's range for outgoing connections' local ports: a server port chosen there can
    be taken by any client's connection between the check and the server's bind."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def free_offset() -> int:
    """A shift of the published ports under which every one of them is free, all of them below
    the ephemeral port range. Each of pytest's parallel workers draws from its own share of the
    shifts, so two tests running at once never pick the same one."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    highest = min(ephemeral_ports().start, 65536) - max(DEFAULT_PORTS) - 1
    for _ in range(200):
        offset = random.randrange(10_000 + 10 * worker, highest, 10 * workers)
        if all(port_free(port + offset) for port in DEFAULT_PORTS):
            return offset
    raise RuntimeError("no free port range on 127.0.0.1")


def free_endpoints() -> tuple[int, Endpoints]:
    offset = free_offset()
    return offset, loopback_endpoints(offset)


def wait_for(condition: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.1) -> Any:
    """The first truthy value of `condition()`, or an AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not within {timeout:g} s: {what}")


@contextmanager
def native_torchserve(root: Path, models: list[str], state_dir: Path,
                      run_dir: Path) -> Iterator[Deployment]:
    """Real TorchServe, natively, on free loopback ports, its state in `state_dir` (where the
    CLI finds it while the context lasts); stopped afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEPLOYBENCH_STATE_DIR", str(state_dir))
        _, endpoints = free_endpoints()
        deployment = serve(root, mode="native", models=models, run_dir=run_dir,
                           endpoints=endpoints, servers=("torchserve",), log=lambda text: None)
        try:
            yield deployment
        finally:
            stop(deployment)


def inet_connections(process: Any) -> list[Any]:
    """A process's TCP/UDP sockets (psutil 6 renamed `connections` to `net_connections`; kserve
    keeps psutil below 6)."""
    method = getattr(process, "net_connections", None) or process.connections
    return method("inet")
