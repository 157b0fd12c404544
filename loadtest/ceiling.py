"""The in-process ceiling: how many inferences per second a framework alone sustains on the
same cores the server gets, at a given batch size. Run in its own (pinned) process:

    taskset -c CPUS python -m deploybench.loadtest.ceiling JOB.json RESULT.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def measure_ceiling(runtime: str, path: Path, golden: Path, batch: int, threads: int,
                    seconds: float, warmup_seconds: float = 1.0) -> dict[str, Any]:
    from deploybench.edge.runners import BACKENDS
    from deploybench.zoo.train import Golden

    inputs = Golden.load(golden).inputs
    rows = np.resize(inputs, (batch, *inputs.shape[1:])).astype(np.float32)
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


def main(argv: list[str]) -> int:
    job_file, result_file = (Path(a) for a in argv)
    job = json.loads(job_file.read_text())
    result = measure_ceiling(job["runtime"], Path(job["path"]), Path(job["golden"]),
                             job["batch"], job["threads"], job["seconds"])
    result_file.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main(sys.argv[1:]))
