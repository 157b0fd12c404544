"""One job in a fresh Python process: `[taskset -c CPUS] python -m MODULE JOB.json RESULT.json`.

Why a fresh process: TensorFlow fixes its thread pools at first use, so a thread count can
only be set in a new process; a CPU list binds a whole process; peak memory growth is measured
from a process that holds no other model; and a runtime that crashes on a bad file takes only
its own job down.

Parent side: `run(module, job, ...)` returns the worker's result dict, or raises WorkerFailed
naming how it ended. Child side: the worker module's `__main__` calls `main(argv, handler)`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploybench.errors import DeploybenchError

log = logging.getLogger(__name__)


class WorkerFailed(DeploybenchError):
    """The worker timed out, or ended without writing its result. The message says how in a
    few words (the exit status or signal and its last stderr line); the log has its stderr."""


def pinned(command: list[str], cpus: str | None) -> list[str]:
    """`command` restricted to the CPUs `cpus` (taskset list, e.g. "1" or "0-1"); children
    inherit the affinity (TorchServe's JVM and its Python workers alike)."""
    return ["taskset", "-c", cpus, *command] if cpus else command


def exit_reason(returncode: int) -> str:
    """How a process ended: `exit status N`, or `signal SIGKILL` when a signal ended it."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def run(module: str, job: dict[str, Any], *, timeout: float, cpus: str | None = None,
        env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `python -m module JOB RESULT` in a fresh interpreter (pinned to `cpus` when given,
    with `env` over this process's environment) and return the result it wrote."""
    with tempfile.TemporaryDirectory(prefix="deploybench-fresh-") as folder:
        job_file, result_file = Path(folder) / "job.json", Path(folder) / "result.json"
        job_file.write_text(json.dumps(job))
        command = pinned([sys.executable, "-m", module, str(job_file), str(result_file)], cpus)
        # TensorFlow's C++ log lines would bury the last stderr line, the one that says why
        quiet = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, **quiet, **(env or {})}, check=False)
        except subprocess.TimeoutExpired as expired:
            log.error("%s %s timed out after %g s:\n%s", module, json.dumps(job), timeout,
                      _text(expired.stderr))
            raise WorkerFailed(f"timed out after {timeout:g} s") from None
        if done.returncode == 0 and result_file.is_file():
            return json.loads(result_file.read_text())
        reason = exit_reason(done.returncode)
        log.error("%s %s failed (%s):\n%s", module, json.dumps(job), reason, done.stderr)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        last = f" ({lines[-1].strip()})" if lines else ""
        raise WorkerFailed(f"process died with {reason}{last}")


def main(argv: list[str], handler: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
    """The worker's side: `handler(job)` for the JOB file in argv, its result into the RESULT
    file. An exception escapes on purpose: its traceback ends stderr, and the parent names
    the last line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before the handler imports TensorFlow
    job_file, result_file = (Path(arg) for arg in argv)
    result = handler(json.loads(job_file.read_text()))
    result_file.write_text(json.dumps(result))
    return 0
