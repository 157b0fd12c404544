"""How the load runner observes a running server: how much CPU and memory it has used (from its
process tree where the kit started it natively, from the Docker engine's container stats where
it runs in a container: each source answers (cumulative CPU seconds or None, memory in use in
bytes)), and, in Docker, whether a server that refuses connections is coming back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import psutil


class Usage(Protocol):
    source: str  # where the figures come from, stated with them

    def __call__(self) -> tuple[float | None, int]: ...


@dataclass(frozen=True)
class Observer:
    usage: Usage
    # True while the server is down but restarting (a container under its restart policy):
    # a step then goes on, counting the failures, instead of ending as "server gone"
    coming_back: Callable[[], bool] | None = None


def _source(name: str, read: Callable[[], tuple[float | None, int]]) -> Usage:
    read.source = name  # type: ignore[attr-defined]
    return read  # type: ignore[return-value]


def process_tree_usage(pids: list[int]) -> Usage:
    """CPU seconds and resident memory of the servers' whole process trees (TorchServe: the JVM
    and its Python workers)."""

    def read() -> tuple[float | None, int]:
        total, rss, found = 0.0, 0, False
        for pid in pids:
            try:
                root = psutil.Process(pid)
                processes = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for process in processes:
                try:
                    with process.oneshot():
                        times = process.cpu_times()
                        rss += process.memory_info().rss
                except psutil.Error:
                    continue
                total += times.user + times.system
                found = True
        return (total if found else None), rss

    return _source("process tree (resident memory)", read)


def container_usage(container_ids: list[str]) -> Usage:
    """CPU seconds and memory of the containers, from the engine's stats (what `docker stats`
    shows): the cgroup's CPU time, and its memory less the page cache it could drop
    (inactive_file), as `docker stats` counts it."""
    import docker

    client = docker.from_env(timeout=10)

    def read() -> tuple[float | None, int]:
        total, memory, found = 0.0, 0, False
        for container in container_ids:
            try:
                stats = client.api.stats(container, stream=False, one_shot=True)
            except Exception:  # gone (killed, restarting): no figure from it this time
                continue
            cpu = stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage")
            if cpu is None:
                continue
            memory_stats = stats.get("memory_stats", {})
            cache = memory_stats.get("stats", {}).get(
                "inactive_file", memory_stats.get("stats", {}).get("total_inactive_file", 0))
            total += cpu / 1e9
            memory += max(memory_stats.get("usage", 0) - cache, 0)
            found = True
        return (total if found else None), memory

    return _source("container stats (memory less page cache)", read)
