"""results.json: one schema for every measurement (load, edge, in-process), one file per run.

    {"schema": ..., "created": ..., "partial": false, "notes": [...],
     "environment": {versions, cpu, limits, mode, ...},
     "measurements": [{"kind": "load" | "edge" | "inprocess" | ..., ...}, ...]}

Stages append measurements to the run's file; each write is atomic.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

import psutil

from deploybench.errors import DeploybenchError
from deploybench.files import atomic_write_json
from deploybench.settings import load_settings
from deploybench.versions import package_versions

SCHEMA = "deploybench.results/1"
RESULTS_FILE = "results.json"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(**extra: Any) -> dict[str, Any]:
    """Where the figures were measured: versions, CPU, memory, the server limits, and `extra`
    (mode, batching, ...)."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "versions": package_versions(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(affinity) if affinity else os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "limits": load_settings().to_dict(),
        **extra,
    }


class Results:
    """A run folder's results.json."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RESULTS_FILE
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError as error:
                raise DeploybenchError(f"{self.path}: not valid JSON ({error})") from error
            if self.data.get("schema") != SCHEMA:
                raise DeploybenchError(f"{self.path}: not a deploybench results file")
        else:
            self.data = {
                "schema": SCHEMA,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "partial": False,
                "notes": [],
                "environment": {},
                "measurements": [],
            }

    @property
    def measurements(self) -> list[dict[str, Any]]:
        return self.data["measurements"]

    def set_environment(self, **extra: Any) -> None:
        """Record the environment, keeping what earlier stages of this run recorded."""
        self.data["environment"] = {**self.data["environment"], **environment(**extra)}

    def add(self, *measurements: dict[str, Any]) -> None:
        for measurement in measurements:
            if "kind" not in measurement:
                raise ValueError("a measurement needs a 'kind'")
            self.measurements.append(measurement)

    def note(self, text: str) -> None:
        self.data["notes"].append(text)

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, self.data)
