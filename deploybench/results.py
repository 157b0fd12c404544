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


# Instructions that multiply int8 vectors into int32 sums in one step (x86: VNNI, AMX; Arm:
# dotprod, i8mm): without them an int8 model runs at about its fp32 speed (XNNPACK widens to
# 16 bits), so whether full-int8 is faster depends on the CPU more than on the file.
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_int8_dot_product() -> list[str]:
    """The int8 dot-product instruction sets this CPU has (x86 `flags`, Arm `Features`)."""
    flags = set()
    for line in _cpuinfo():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return [flag for flag in INT8_DOT_PRODUCT_FLAGS if flag in flags]


def environment(**extra: Any) -> dict[str, Any]:
    """Where the figures were measured: versions, CPU, memory, the server limits, and `extra`
    (mode, batching, ...)."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "versions": package_versions(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_int8_dot_product": cpu_int8_dot_product(),
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
