"""deploybench.fresh: a job in a fresh interpreter, its result back, or how it died."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytest

from deploybench import fresh
from deploybench.edge.worker import Job


def test_pinned_prefixes_taskset_only_with_a_cpu_list() -> None:
    assert fresh.pinned(["python", "-V"], "0-1") == ["taskset", "-c", "0-1", "python", "-V"]
    assert fresh.pinned(["python", "-V"], None) == ["python", "-V"]
    assert fresh.pinned(["python", "-V"], "") == ["python", "-V"]


def test_exit_reason_names_a_status_or_a_signal() -> None:
    assert fresh.exit_reason(3) == "exit status 3"
    assert fresh.exit_reason(-signal.SIGKILL) == "signal SIGKILL"
    assert fresh.exit_reason(-200) == "signal 200"


def test_a_worker_result_comes_back(tmp_path: Path) -> None:
    """The edge worker, on a job whose golden samples are missing: its own failed row, written
    as its result (exit status 0), before any runtime is imported."""
    job = Job("digits-mlp", "tflite-fp32", "litert", str(tmp_path / "m.tflite"),
              str(tmp_path / "golden.npz"), 1, True, 1, 0)
    result = fresh.run("deploybench.edge.worker", job.to_dict(), timeout=120)
    assert result["status"] == "failed"
    assert result["error"].startswith(f"{tmp_path / 'golden.npz'}: unreadable golden samples")
    assert "export digits-mlp again" in result["error"]


def test_a_dying_worker_is_named_by_exit_status_and_last_stderr_line(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="deploybench.fresh"):
        with pytest.raises(fresh.WorkerFailed) as info:
            fresh.run("deploybench.loadtest.ceiling", {"batch": 1}, timeout=120)
    message = str(info.value)
    assert message == "process died with exit status 1 (KeyError: 'runtime')"
    assert "Traceback" in caplog.text  # the whole stderr is in the log


def test_an_unknown_module_is_a_named_failure() -> None:
    with pytest.raises(fresh.WorkerFailed, match="exit status 1 .*No module named"):
        fresh.run("deploybench.no_such_worker", {}, timeout=60)
