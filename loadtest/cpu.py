"""Where the machine's CPU went during a measurement window: the server, locust, and anything
else (other work on a shared machine shows up as "other" and explains unstable figures).

A thread in the `deploybench load` process samples cumulative CPU times; a window's shares are
interpolated from the samples around its start and end. Percent of one core (a busy 2-core
machine reads 200).
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from typing import Any

import psutil

from deploybench.serving.usage import Usage


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class CpuSampler:
    """Samples (wall time, machine busy seconds, server seconds) every `interval` seconds."""

    def __init__(self, server_usage: Usage | None = None, interval: float = 0.25) -> None:
        self.server_usage = server_usage
        self.interval = interval
        self.samples: list[tuple[float, float, float | None]] = []
        self.server_peak_rss_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        server_seconds, rss = self.server_usage() if self.server_usage else (None, 0)
        self.server_peak_rss_bytes = max(self.server_peak_rss_bytes, rss)
        self.samples.append((time.time(), _busy_seconds(), server_seconds))

    def __enter__(self) -> CpuSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def _at(self, when: float, column: int) -> float | None:
        times = [s[0] for s in self.samples]
        index = min(max(bisect_left(times, when), 1), len(self.samples) - 1)
        (t0, *v0), (t1, *v1) = self.samples[index - 1], self.samples[index]
        a, b = v0[column - 1], v1[column - 1]
        if a is None or b is None:
            return None
        if t1 <= t0:
            return b
        share = min(max((when - t0) / (t1 - t0), 0.0), 1.0)
        return a + share * (b - a)

    def window(self, start: float, end: float, locust_percent: float | None
               ) -> dict[str, Any] | None:
        if len(self.samples) < 2 or end <= start:
            return None
        seconds = end - start
        machine_start, machine_end = self._at(start, 1), self._at(end, 1)
        server_start, server_end = self._at(start, 2), self._at(end, 2)
        machine = 100.0 * (machine_end - machine_start) / seconds  # type: ignore[operator]
        server = (None if server_start is None or server_end is None
                  else 100.0 * (server_end - server_start) / seconds)
        other = None
        if server is not None and locust_percent is not None:
            other = max(machine - server - locust_percent, 0.0)
        return {
            "cores": psutil.cpu_count(),
            "machine_percent": round(machine, 1),
            "server_percent": None if server is None else round(server, 1),
            "locust_percent": locust_percent,
            "other_percent": None if other is None else round(other, 1),
            "server_cpu_seconds": (None if server is None
                                   else round(server_end - server_start, 4)),  # type: ignore[operator]
            "server_peak_rss_bytes": self.server_peak_rss_bytes or None,
            "server_usage_from": self.server_usage.source if self.server_usage else None,
        }
