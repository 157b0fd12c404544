"""The in-process ceiling: how many inferences per second a framework alone sustains on the
same cores the server gets, at a given batch size. Run in its own (pinned) process:

    taskset -c CPUS python -m deploybench.loadtest.ceiling JOB.json RESULT.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from deploybench import fresh


def measure_ceiling(runtime: str, path: Path, golden: Path, batch: int, threads: int,
                    seconds: float, warmup_seconds: float = 1.0) -> dict[str, Any]:
    from deploybench.golden import Golden
    from deploybench.runtimes import BACKENDS

    inputs = Golden.load(golden).inputs
    rows = inputs.rows(np.resize(np.arange(len(inputs)), batch))
    runner = BACKENDS[runtime](path, threads, None).load()
    runner.set_input(rows)
    deadline = time.perf_counter() + warmup_seconds
    while time.perf_counter() < deadline:
        runner.run()
    iterations = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        runner.run()
        iterations += 1
    return {"runtime": runtime, "batch": batch, "threads": threads, "iterations": iterations,
            "seconds": round(elapsed, 3),
            "inferences_per_s": round(iterations * batch / elapsed, 2),
            "batch_latency_ms": round(elapsed / iterations * 1000, 3)}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    return measure_ceiling(job["runtime"], Path(job["path"]), Path(job["golden"]),
                           job["batch"], job["threads"], job["seconds"])


def main(argv: list[str]) -> int:
    return fresh.main(argv, run_job)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
