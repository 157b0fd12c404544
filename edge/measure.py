"""Timing, memory and accuracy of one runner, the way TFLite's benchmark_model measures:
init (load + allocate), first inference, warm-up runs (not counted), then N timed runs of the
inference call alone at batch 1, reported as percentiles.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from deploybench.golden import Golden, accuracy
from deploybench.order_statistics import by_length, sorted_interval
from deploybench.runtimes import Runner

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def _vm_hwm_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _vm_hwm_bytes() is not None


class PeakMemory:
    """Peak RSS growth over a block: how much more resident memory the process needed at its
    worst than just before the block. On Linux the kernel's own high-water mark (VmHWM) is reset
    at the start, so short peaks count too; elsewhere only the RSS after the block is known."""

    def __enter__(self) -> PeakMemory:
        gc.collect()
        self.before = rss_bytes()
        self.method = "vmhwm" if _reset_peak() else "rss-after"
        return self

    def __exit__(self, *exc: object) -> None:
        self.after = rss_bytes()
        peak = _vm_hwm_bytes() if self.method == "vmhwm" else None
        self.peak = max(peak or 0, self.after)

    @property
    def peak_growth(self) -> int:
        return max(0, self.peak - self.before)

    @property
    def retained_growth(self) -> int:
        return self.after - self.before


def percentiles(samples_ms: np.ndarray) -> dict[str, float]:
    p50, p90, p99 = np.percentile(samples_ms, [50, 90, 99])
    return {
        "p50": round(float(p50), 5), "p90": round(float(p90), 5), "p99": round(float(p99), 5),
        "mean": round(float(np.mean(samples_ms)), 5),
        "min": round(float(np.min(samples_ms)), 5), "max": round(float(np.max(samples_ms)), 5),
    }


EDGE_PERCENTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


def percentile_intervals(samples_ms: np.ndarray) -> dict[str, list[float | None]]:
    """Each percentile's 95% distribution-free interval [low, high] from the timed runs (as the
    load stage gives its steps'): what lets two rows be called within noise of each other. The
    runs are taken one after another, so they are not quite independent: a slow spell of the
    machine widens the spread more than the interval admits; read overlapping intervals as
    "no difference shown", not as proof of none."""
    ordered = [round(float(v), 5) for v in np.sort(samples_ms)]
    return {key: sorted_interval(ordered, q) for key, q in EDGE_PERCENTILES.items()}


def _ms(start_ns: int) -> float:
    return (time.perf_counter_ns() - start_ns) / 1e6


def measure(
    load: Callable[[], Runner], golden: Golden, runs: int, warmup: int
) -> dict[str, Any]:
    """Load, time and check one model on the golden samples, one sample (batch 1) at a time.

    Timed runs cycle through the golden inputs; each input is set before the clock starts and
    the output is read after it stops, so only the inference call is timed. The garbage
    collector is off while timing. Accuracy is then taken on every golden sample.
    """
    batches = [golden.inputs[i : i + 1].contiguous() for i in range(len(golden.inputs))]
    samples = np.empty(runs, dtype=np.float64)
    with PeakMemory() as memory:
        start = time.perf_counter_ns()
        runner = load()
        init_ms = _ms(start)
        runner.set_input(batches[0])
        start = time.perf_counter_ns()
        runner.run()
        first_ms = _ms(start)
        for i in range(warmup):
            runner.set_input(batches[(i + 1) % len(batches)])
            runner.run()
        gc.disable()
        try:
            for i in range(runs):
                runner.set_input(batches[i % len(batches)])
                start = time.perf_counter_ns()
                runner.run()
                samples[i] = time.perf_counter_ns() - start
        finally:
            gc.enable()
    outputs = []
    for batch in batches:
        runner.set_input(batch)
        runner.run()
        outputs.append(runner.output())
    return {
        "init_ms": round(init_ms, 4),
        "first_ms": round(first_ms, 4),
        "latency_ms": percentiles(samples / 1e6),
        "latency_ci95_ms": percentile_intervals(samples / 1e6),
        "latency_by_length_ms": _by_length(golden, samples / 1e6),
        "peak_memory_growth_bytes": memory.peak_growth,
        "retained_memory_growth_bytes": memory.retained_growth,
        "memory_method": memory.method,
        **agreement(np.concatenate(outputs), golden),
        **runner.info(),
    }


def _by_length(golden: Golden, samples_ms: np.ndarray) -> list[dict[str, Any]] | None:
    """A text model's latency by sequence length: timed run i ran golden sample i mod n."""
    inputs = golden.inputs
    if not inputs.variable:
        return None
    lengths = [int(inputs.lengths[i % len(inputs)]) for i in range(len(samples_ms))]
    return by_length(lengths, samples_ms.tolist(), int(inputs.arrays[inputs.names[0]].shape[1]))


def agreement(outputs: np.ndarray, golden: Golden) -> dict[str, Any]:
    """Held-out accuracy, top-1 agreement with the reference and max abs diff from it."""
    finite = bool(np.all(np.isfinite(outputs)))
    acc = accuracy(outputs, golden.labels)
    return {
        "samples": int(len(golden.labels)),
        "accuracy": acc,
        "reference_accuracy": golden.accuracy,
        "accuracy_drop": round(golden.accuracy - acc, 6),
        "top1_agreement": float(
            np.mean(np.argmax(outputs, axis=1) == np.argmax(golden.outputs, axis=1))
        ),
        # JSON has no NaN: a model that returns non-finite logits has no max abs diff
        "max_abs_diff": float(np.max(np.abs(outputs - golden.outputs))) if finite else None,
        "finite_outputs": finite,
    }
