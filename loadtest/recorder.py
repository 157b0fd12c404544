"""What the locust process measures beside locust's own stats: exact latencies, wrong answers,
scheduled versus completed requests, per request name, inside one measurement window.

The window opens after the warm-up and closes after the measured seconds (or when the test
stops); nothing outside it is counted. In a distributed run each worker records its own
window and ships what it recorded since its last report to the master (a delta, beside locust's
own stats report); the master adds the deltas up. HDR histograms add exactly, so the master's
percentiles are those of every request of every worker.

Light on purpose: imported inside the locust process.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from hdrh.histogram import HdrHistogram

from deploybench.loadtest import histogram, intervals

SUMMARY_SCHEMA = "deploybench.locust-summary/1"
HEAVY_MODULES = ("tensorflow", "torch", "keras", "jax")


@dataclass
class Tally:
    """One request name's figures inside the window."""

    target: str = ""
    protocol: str = ""
    model: str = ""
    open_loop: bool = False
    latency: HdrHistogram = field(default_factory=histogram.new)  # correct answers only
    service: HdrHistogram = field(default_factory=histogram.new)  # open loop: from actual send
    requests: int = 0  # completed, whatever the outcome
    failures: int = 0  # every failure, wrong answers included
    wrong_answers: int = 0
    nonfinite_answers: int = 0  # wrong answers holding NaN or Infinity
    scheduled: int = 0  # open loop: arrivals whose scheduled time fell in the window
    errors: dict[str, int] = field(default_factory=dict)
    timeline: list[list[float]] = field(default_factory=list)  # per second: [done, failed, ms]
    # a text model's correct answers by sequence-length bucket ("low-high")
    by_length: dict[str, HdrHistogram] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "protocol": self.protocol, "model": self.model,
            "open_loop": self.open_loop,
            "histogram": histogram.encode(self.latency),
            "service_histogram": histogram.encode(self.service),
            "requests": self.requests, "failures": self.failures,
            "wrong_answers": self.wrong_answers, "nonfinite_answers": self.nonfinite_answers,
            "scheduled": self.scheduled,
            "errors": dict(self.errors), "timeline": [list(t) for t in self.timeline],
            "by_length": {key: histogram.encode(h) for key, h in self.by_length.items()},
        }

    def add(self, data: dict[str, Any]) -> None:
        for key in ("target", "protocol", "model", "open_loop"):
            setattr(self, key, data.get(key) or getattr(self, key))
        self.latency.decode_and_add(data["histogram"].encode("ascii"))
        self.service.decode_and_add(data["service_histogram"].encode("ascii"))
        for key in ("requests", "failures", "wrong_answers", "nonfinite_answers", "scheduled"):
            setattr(self, key, getattr(self, key) + int(data.get(key, 0)))
        for reason, count in data.get("errors", {}).items():
            self.errors[reason] = self.errors.get(reason, 0) + count
        for key, text in data.get("by_length", {}).items():
            self.by_length.setdefault(key, histogram.new()).decode_and_add(text.encode("ascii"))
        # per-worker timelines have their own clocks: only a single process keeps one


class Recorder:
    def __init__(self) -> None:
        self.tallies: dict[str, Tally] = {}
        self.described: dict[str, dict[str, Any]] = {}
        self.recording = False
        self.window_start: float | None = None  # wall clock, seconds since the epoch
        self.window_end: float | None = None
        self.cpu_start: float | None = None
        self.cpu_percent: float | None = None
        self.cpu_warnings = 0
        self.in_flight: dict[str, int] = {}
        self.in_flight_at_end: dict[str, int] = {}
        self.in_flight_limit_hits = 0
        self.workers_reported: set[str] = set()
        self.by_worker: dict[str, dict[str, Tally]] = {}  # master: each worker's own tallies
        self.early_stop: dict[str, Any] | None = None  # how the window ended, when deciding
        # the server's metrics pages as the window opened and closed (--metrics-url)
        self.server_metrics: dict[str, Any] | None = None
        self.worker_cpu_max: float | None = None  # master: the busiest worker's CPU, percent
        self._cpu_mark = (time.time(), _process_cpu_seconds())

    # -- the window ----------------------------------------------------------------------
    def reset(self) -> None:
        """A fresh test: nothing recorded, window closed."""
        self.__init__()

    def clear(self) -> None:
        """Drop what was recorded so far (warm-up end, the UI's reset button); keep the window."""
        self.tallies = {}
        self.by_worker = {}
        self.cpu_warnings = 0
        self.in_flight_limit_hits = 0

    def open_window(self) -> None:
        self.clear()
        self.window_start, self.window_end = time.time(), None
        self.cpu_start = _process_cpu_seconds()
        self.recording = True

    def close_window(self) -> None:
        if not self.recording:
            return
        self.recording = False
        self.window_end = time.time()
        if self.cpu_start is not None and self.window_start is not None:
            wall = max(self.window_end - self.window_start, 1e-9)
            self.cpu_percent = round(100.0 * (_process_cpu_seconds() - self.cpu_start) / wall, 1)
        self.in_flight_at_end = {name: count for name, count in self.in_flight.items() if count}

    # -- recording -----------------------------------------------------------------------
    def describe(self, name: str, **meta: Any) -> None:
        """What a request name stands for (target, protocol, model, open_loop)."""
        self.described[name] = meta

    def tally(self, name: str) -> Tally:
        tally = self.tallies.get(name)
        if tally is None:
            tally = self.tallies[name] = Tally(**self.described.get(name, {}))
        return tally

    def sent(self, name: str) -> None:
        self.in_flight[name] = self.in_flight.get(name, 0) + 1

    def scheduled(self, name: str) -> None:
        if self.recording:
            self.tally(name).scheduled += 1

    def completed(self, name: str, response_time_ms: float, exception: BaseException | None,
                  service_ms: float | None = None, wrong: bool = False,
                  nonfinite: bool = False, length_bucket: str | None = None) -> None:
        if name in self.in_flight:
            self.in_flight[name] = max(self.in_flight[name] - 1, 0)
        if not self.recording:
            return
        tally = self.tally(name)
        tally.requests += 1
        second = int(time.time() - (self.window_start or 0.0))
        while len(tally.timeline) <= second:
            tally.timeline.append([0, 0, 0.0])
        slot = tally.timeline[second]
        slot[0] += 1
        if exception is not None:
            tally.failures += 1
            tally.wrong_answers += int(wrong)
            tally.nonfinite_answers += int(nonfinite)
            slot[1] += 1
            reason = f"{type(exception).__name__}: {exception}"[:200]
            tally.errors[reason] = tally.errors.get(reason, 0) + 1
            return
        histogram.record_ms(tally.latency, response_time_ms)
        if length_bucket is not None:
            histogram.record_ms(tally.by_length.setdefault(length_bucket, histogram.new()),
                                response_time_ms)
        if service_ms is not None:
            histogram.record_ms(tally.service, service_ms)
        slot[2] += response_time_ms

    # -- distributed: worker deltas ------------------------------------------------------
    def take_delta(self) -> dict[str, Any]:
        """What this worker recorded since its last report; forgotten here once taken."""
        wall, cpu = time.time(), _process_cpu_seconds()
        last_wall, last_cpu = self._cpu_mark
        self._cpu_mark = (wall, cpu)
        delta = {
            "tallies": {name: tally.to_dict() for name, tally in self.tallies.items()},
            "cpu_warnings": self.cpu_warnings,
            "in_flight_limit_hits": self.in_flight_limit_hits,
            # this worker's CPU since its last report, while it was measuring
            "cpu_percent": round(100.0 * (cpu - last_cpu) / max(wall - last_wall, 1e-9), 1)
            if self.recording else None,
        }
        self.clear()
        return delta

    def add_delta(self, client_id: str, delta: dict[str, Any] | None) -> None:
        if not delta:
            return
        self.workers_reported.add(client_id)
        own = self.by_worker.setdefault(client_id, {})
        for name, data in delta.get("tallies", {}).items():
            self.tally(name).add(data)
            own.setdefault(name, Tally()).add(data)  # each worker's own, to check the merge
        self.cpu_warnings += int(delta.get("cpu_warnings", 0))
        self.in_flight_limit_hits += int(delta.get("in_flight_limit_hits", 0))
        cpu = delta.get("cpu_percent")
        if cpu is not None:
            self.worker_cpu_max = max(cpu, self.worker_cpu_max or 0.0)

    # -- early stopping ------------------------------------------------------------------
    def p99_decision(self, bound_ms: float, min_pass_requests: int) -> dict[str, Any]:
        """The p99 of everything recorded in the window so far against `bound_ms`: decision
        "pass", "fail" or None (undecided), with the requests and the interval it rests on."""
        merged = histogram.new()
        for tally in self.tallies.values():
            merged.add(tally.latency)
        count = merged.get_total_count()
        interval = intervals.percentile_interval(merged, 99.0)
        return {"decision": intervals.decide_bound(interval, bound_ms, count, min_pass_requests),
                "requests": count, "p99_interval_ms": interval, "bound_ms": bound_ms,
                "min_pass_requests": min_pass_requests}

    # -- output --------------------------------------------------------------------------
    def summary(self, **extra: Any) -> dict[str, Any]:
        start, end = self.window_start, self.window_end
        if start is not None and end is None:
            end = time.time()
        return {
            "schema": SUMMARY_SCHEMA,
            "pid": os.getpid(),
            "window": {"start": start, "end": end,
                       "seconds": None if start is None else round(end - start, 4)},
            "loadgen": {"cpu_percent": self.cpu_percent if not self.workers_reported
                        else self.worker_cpu_max,
                        "cpu_warnings": self.cpu_warnings,
                        "in_flight_limit_hits": self.in_flight_limit_hits,
                        "workers_reported": len(self.workers_reported)},
            "in_flight_at_end": self.in_flight_at_end,
            "heavy_modules": [m for m in HEAVY_MODULES if m in sys.modules],
            "requests": {name: tally.to_dict() for name, tally in self.tallies.items()},
            "workers": {worker: {name: tally.to_dict() for name, tally in tallies.items()}
                        for worker, tallies in self.by_worker.items()},
            "early_stop": self.early_stop,
            "server_metrics": self.server_metrics,
            **extra,
        }


def _process_cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader never sees half a summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as file:
        json.dump(data, file)
    os.replace(temporary, path)
