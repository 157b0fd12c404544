"""One measurement in its own process: `python -m deploybench.edge.worker JOB.json RESULT.json`,
started by deploybench.fresh (whose docstring says why a fresh process keeps figures honest).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deploybench import fresh


@dataclass(frozen=True)
class Job:
    model: str
    variant: str
    runtime: str  # litert | tensorflow | torch
    path: str  # the artifact, absolute
    golden: str  # golden.npz, absolute
    threads: int
    xnnpack: bool | None
    runs: int
    warmup: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_job(job: Job) -> dict[str, Any]:
    """Measure one job; an expected failure is a result with an error, not an exception."""
    from deploybench.edge.measure import measure, rss_bytes
    from deploybench.errors import DeploybenchError
    from deploybench.golden import Golden
    from deploybench.runtimes import BACKENDS

    try:
        golden = Golden.load(Path(job.golden), job.model)
    except Exception as error:  # missing, not an .npz, truncated zip, wrong arrays
        return {"status": "failed", "error": f"{job.golden}: unreadable golden samples ({error})"}
    try:
        rss = rss_bytes()
        start = time.perf_counter_ns()
        backend = BACKENDS[job.runtime](Path(job.path), job.threads, job.xnnpack)
        import_ms = (time.perf_counter_ns() - start) / 1e6
        import_memory = rss_bytes() - rss
        result = measure(backend.load, golden, job.runs, job.warmup)
    except DeploybenchError as error:
        return {"status": "failed", "error": str(error)}
    except Exception as error:  # the runtime's own error on this file: name the file
        first_line = (f"{type(error).__name__}: {error}".strip().splitlines() or [""])[0]
        return {"status": "failed", "error": f"{job.path}: {job.runtime} failed ({first_line})"}
    return {"status": "ok", "error": None, "import_ms": round(import_ms, 3),
            "import_memory_bytes": import_memory, **result}


def main(argv: list[str]) -> int:
    return fresh.main(argv, lambda job: run_job(Job(**job)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
