"""results.json: one typed schema for every measurement (deploybench/records.py), one file per
run.

    {"schema": ..., "created": ..., "partial": false, "notes": [...],
     "environment": {versions, cpu, limits, mode, ...},
     "measurements": [{"kind": "load" | "edge" | "inprocess" | ..., ...}, ...]}

One writer per run (deploybench/jobs/writer.py) adds records and saves atomically; the stages
hand it their records. Here: reading and validating a file, and where it was measured.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import psutil
from pydantic import ValidationError

from deploybench.errors import DeploybenchError
from deploybench.records import SCHEMA, ResultsFile
from deploybench.settings import load_settings
from deploybench.versions import package_versions

__all__ = ["INT8_DOT_PRODUCT_FLAGS", "RESULTS_FILE", "SCHEMA", "cpu_int8_dot_product",
           "cpu_model", "describe_error", "environment", "read_results"]

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


def read_results(path: Path) -> ResultsFile:
    """A results.json, validated; anything wrong is one DeploybenchError line naming the record
    and the field, e.g. `run/results.json: measurement 3 (kind load): latency_ms.p99: Input
    should be a valid number` (3: the index in "measurements", counted from 0)."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise DeploybenchError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("schema"), str):
        raise DeploybenchError(f"{path}: not a deploybench results file")
    schema = data["schema"]
    older = ""
    if schema != SCHEMA:
        family, _, version = schema.rpartition("/")
        if family != SCHEMA.rpartition("/")[0]:
            raise DeploybenchError(f"{path}: not a deploybench results file (schema {schema})")
        if not (version.isdigit() and int(version) < int(SCHEMA.rpartition("/")[2])):
            raise DeploybenchError(f"{path}: schema {schema} is newer than this deploybench's "
                                   f"{SCHEMA}; update deploybench to read it")
        # an older file is read when every record still fits today's (and saved as today's
        # schema); else the line names the first record and field that does not
        older = f"schema {schema} (an older deploybench's) does not fit {SCHEMA}: "
        data = {**data, "schema": SCHEMA}
    try:
        return ResultsFile.model_validate(data)
    except ValidationError as error:
        raise DeploybenchError(f"{path}: {older}{describe_error(error, data)}"
                               + ("; run it again" if older else "")) from None


def describe_error(error: ValidationError, data: dict[str, Any]) -> str:
    """pydantic's first complaint about a results file as one line: the record (index and
    kind), the field's path in it, and what is wrong."""
    problems = error.errors()
    first = problems[0]
    loc = list(first["loc"])
    where = ""
    if len(loc) >= 2 and loc[0] == "measurements" and isinstance(loc[1], int):
        index = loc[1]
        raw = data["measurements"][index]
        raw = raw if isinstance(raw, dict) else {}
        kind = raw.get("kind")
        loc = loc[2:]
        # drop the union tags pydantic puts in the path (the kind, a fault's name)
        for tag in (kind, raw.get("fault") if kind == "fault" else None):
            if tag is not None and loc and loc[0] == tag:
                loc = loc[1:]
        where = f"measurement {index}" + (f" (kind {kind})" if isinstance(kind, str) else "")
    field = _path(loc)
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        discriminator = str(first.get("ctx", {}).get("discriminator", "kind")).strip("'")
        field = _path([*loc, discriminator])
        message = ("missing" if first["type"] == "union_tag_not_found"
                   else f"unknown {discriminator} {first['ctx']['tag']!r} (known: "
                        f"{first['ctx']['expected_tags']})")
    else:
        message = first["msg"]
    text = ": ".join(part for part in (where, field, message) if part)
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more)"
    return text


def _path(loc: list[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
