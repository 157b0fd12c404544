"""CPU time and peak memory of a server while it is under load: psutil over the process tree
natively, the docker SDK's container stats in docker mode."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import psutil

from deploybench.serving.processes import ProcessRecord

SAMPLE_SECONDS = 0.25


@dataclass
class Usage:
    cpu_seconds: float
    peak_rss_bytes: int

    def per_1k(self, requests: int) -> float | None:
        return self.cpu_seconds / requests * 1000 if requests else None


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


class ProcessTreeMonitor:
    """Samples a native server's whole process tree (TorchServe: the JVM and its workers)."""

    def __init__(self, record: ProcessRecord) -> None:
        self.record = record
        self._cpu: dict[int, float] = {}
        self._start: dict[int, float] = {}
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss = 0
        for process in _tree(self.record.pid):
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    self._cpu[process.pid] = times.user + times.system
                    self._start.setdefault(process.pid, self._cpu[process.pid])
                    rss += process.memory_info().rss
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    def __enter__(self) -> ProcessTreeMonitor:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def usage(self) -> Usage:
        used = sum(self._cpu[pid] - self._start[pid] for pid in self._cpu)
        return Usage(round(used, 3), self.peak_rss)


class ContainerMonitor:
    """Samples a compose service's container through the docker SDK's stats."""

    def __init__(self, service: str, project: str) -> None:
        import docker

        self.client = docker.from_env()
        labels = [f"com.docker.compose.service={service}", f"com.docker.compose.project={project}"]
        containers = self.client.containers.list(filters={"label": labels})
        if not containers:
            raise RuntimeError(f"no running container for compose service {service}")
        self.container = containers[0]
        self.peak_rss = 0
        self._first_ns: int | None = None
        self._last_ns = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        stats = self.container.stats(stream=False)
        used_ns = stats["cpu_stats"]["cpu_usage"]["total_usage"]
        if self._first_ns is None:
            self._first_ns = used_ns
        self._last_ns = used_ns
        self.peak_rss = max(self.peak_rss, stats.get("memory_stats", {}).get("usage", 0))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    def __enter__(self) -> ContainerMonitor:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def usage(self) -> Usage:
        return Usage(round((self._last_ns - (self._first_ns or 0)) / 1e9, 3), self.peak_rss)
