"""Framework apart from runtime: the edge rows of a run as a matrix per model (rows: a runtime at
one precision; columns: the twin the artifact was converted from), and the answer lines that
separate the two effects: "same runtime, two frameworks" and "same framework, two runtimes".

Each cell is one edge measurement at the run's lowest thread count, with the runtime's default
settings (LiteRT with its XNNPACK delegate, as an app gets it), taken in one or more fresh
processes (`--repeats`): its p50 is their median, with the spread of their p50s (or, from one
process, its 95% order-statistic interval), and two figures are "within noise" when those
overlap.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from deploybench.formatting import kib, ms

FRAMEWORKS = {"tensorflow": "TensorFlow (Keras twin)", "pytorch": "PyTorch twin"}
FRAMEWORK_SHORT = {"tensorflow": "Keras", "pytorch": "PyTorch"}
RUNTIMES = {"litert": "LiteRT", "executorch": "ExecuTorch", "onnxruntime": "ONNX Runtime"}
PRECISIONS = ("fp32", "fp16", "dynamic-int8", "int8")
# What converts each twin to each runtime, for the lines (and why a cell has no artifact)
CONVERTERS = {("tensorflow", "litert"): "TFLiteConverter",
              ("pytorch", "litert"): "litert-torch",
              ("pytorch", "executorch"): "torch.export + XNNPACK lowering",
              ("tensorflow", "onnxruntime"): "tf2onnx",
              ("pytorch", "onnxruntime"): "torch.onnx (dynamo)"}
NO_PATH = {("tensorflow", "executorch"): "ExecuTorch runs PyTorch programs only"}


@dataclass
class Cell:
    """One artifact on one runtime: its measured rows (one per fresh process of `--repeats`),
    or none, with the reason there is no figure."""

    rows: list[dict[str, Any]]
    reason: str | None = None  # why there is no figure (a failed conversion, no such path)

    @property
    def row(self) -> dict[str, Any] | None:
        return self.rows[0] if self.rows else None

    @property
    def ok(self) -> bool:
        return bool(self.rows) and self.reason is None

    @property
    def p50s(self) -> list[float]:
        return sorted((r.get("latency_ms") or {}).get("p50") for r in self.rows
                      if (r.get("latency_ms") or {}).get("p50") is not None) if self.ok else []

    @property
    def p50(self) -> float | None:
        """The median p50 of the processes that measured it."""
        return statistics.median(self.p50s) if self.p50s else None

    @property
    def p50_interval(self) -> tuple[float, float] | None:
        """From several processes, the spread of their p50s: the run-to-run noise (a fresh
        process of the same artifact differed by up to 4% on mobilenet-v2 and 39% on a 35 µs
        model here, far beyond one process's own interval). From one process, its 95%
        order-statistic interval, which shows only that process's noise. None where neither
        (an older run's rows)."""
        if len(self.p50s) >= 2:
            return self.p50s[0], self.p50s[-1]
        interval = ((self.row or {}).get("latency_ci95_ms") or {}).get("p50")
        if not interval or None in interval:
            return None
        return interval[0], interval[1]

    def quality(self) -> str:
        """Held-out accuracy (for seeded weights, the labels are the reference's own top-1,
        so it reads as agreement with the reference), else top-1 agreement."""
        row = self.row or {}
        if row.get("accuracy") is not None:
            return f"accuracy {row['accuracy']:.3f}"
        if row.get("top1_agreement") is not None:
            return f"top-1 agreement {row['top1_agreement']:.3f}"
        return "-"

    def p50_text(self) -> str:
        text = ms(self.p50)
        if self.p50_interval:
            low, high = self.p50_interval
            text += f" [{low:.3g}, {high:.3g}]"
            if len(self.p50s) >= 2:
                text += f" over {len(self.p50s)} processes"
        return text

    def summary(self) -> str:
        """size, p50 with its interval, accuracy (or agreement), XNNPACK's share: one cell."""
        if not self.ok:
            return self.reason or "-"
        parts = [f"{kib(self.row['size_bytes'])} KiB", f"p50 {self.p50_text()}", self.quality()]
        share = self.row.get("delegated_share")
        if share is not None:
            parts.append(f"XNNPACK {share:.0%}")
        return ", ".join(parts)


@dataclass
class MatrixRow:
    runtime: str
    precision: str
    cells: dict[str, Cell]  # by framework

    @property
    def label(self) -> str:
        return f"{RUNTIMES.get(self.runtime, self.runtime)} {self.precision}"


@dataclass
class Matrix:
    model: str
    threads: int
    rows: list[MatrixRow]
    frameworks: tuple[str, ...] = tuple(FRAMEWORKS)

    def cell(self, runtime: str, precision: str, framework: str) -> Cell | None:
        for row in self.rows:
            if (row.runtime, row.precision) == (runtime, precision):
                return row.cells.get(framework)
        return None


def _edge_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in results.get("measurements", [])
            if m.get("kind") == "edge" and m.get("framework") and m.get("runtime")]


def _default_setting(row: dict[str, Any]) -> bool:
    """The runtime's default: LiteRT with XNNPACK (the other runtimes have no such switch)."""
    return row.get("xnnpack") is not False


def matrices(results: dict[str, Any]) -> list[Matrix]:
    """One matrix per model that has edge rows with their twin and runtime recorded."""
    edge = _edge_rows(results)
    found = []
    for model in sorted({r["model"] for r in edge}):
        mine = [r for r in edge if r["model"] == model]
        measured = [r["threads"] for r in mine if r.get("threads") is not None]
        threads = min(measured) if measured else 1
        table: list[MatrixRow] = []
        for runtime in RUNTIMES:
            for precision in PRECISIONS:
                here = [r for r in mine if (r["runtime"], r.get("precision")) == (runtime,
                                                                                  precision)]
                if not here:
                    continue
                cells = {}
                for framework in FRAMEWORKS:
                    cells[framework] = _cell(here, framework, threads, runtime)
                table.append(MatrixRow(runtime, precision, cells))
        found.append(Matrix(model, threads, table))
    return found


def _cell(rows_: list[dict[str, Any]], framework: str, threads: int, runtime: str) -> Cell:
    mine = [r for r in rows_ if r["framework"] == framework]
    if not mine:
        return Cell([], NO_PATH.get((framework, runtime), "not exported"))
    unmeasured = [r for r in mine if r.get("threads") is None]  # failed before running
    if unmeasured:
        row = unmeasured[0]
        if row.get("status") == "not-exported":  # its error says so
            return Cell([row], row.get("error"))
        return Cell([row], f"{row.get('status')}: {row.get('error')}")
    measured = [r for r in mine if r.get("threads") == threads and _default_setting(r)]
    if not measured:
        return Cell([], f"not measured at {_threads(threads)}")
    failed = [r for r in measured if r.get("status", "ok") != "ok"]
    if failed:
        return Cell(failed, f"{failed[0]['status']}: {failed[0].get('error')}")
    return Cell(measured)


def within_noise(a: Cell, b: Cell) -> bool | None:
    """True when the two p50 intervals overlap; None when either has no interval."""
    if a.p50_interval is None or b.p50_interval is None:
        return None
    return a.p50_interval[0] <= b.p50_interval[1] and b.p50_interval[0] <= a.p50_interval[1]


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n > 1 else ''}"


def _compare(first: tuple[str, Cell], second: tuple[str, Cell], what: str) -> str:
    """"A runs at 1.3x B's speed" or "within noise: <what> does not matter here"."""
    a, b = first[1], second[1]
    noise = within_noise(a, b)
    if noise:
        return f"within noise of each other: the {what} does not matter here"
    faster, slower = (first, second) if a.p50 <= b.p50 else (second, first)
    ratio = slower[1].p50 / faster[1].p50
    suffix = "" if noise is False else " (no intervals recorded: noise not judged)"
    return f"{faster[0]} runs at {ratio:.2f}x {slower[0]}'s speed{suffix}"


def same_runtime_lines(matrix: Matrix) -> list[str]:
    """For each runtime and precision both twins reach: the framework's effect alone."""
    lines = []
    for row in matrix.rows:
        tf, pt = row.cells.get("tensorflow"), row.cells.get("pytorch")
        if not (tf and pt and tf.ok and pt.ok):
            continue
        text = (f"Same runtime, two frameworks ({matrix.model}, {row.label}, "
                f"{_threads(matrix.threads)}): Keras twin "
                f"({CONVERTERS[('tensorflow', row.runtime)]}) {tf.summary()}; PyTorch twin "
                f"({CONVERTERS[('pytorch', row.runtime)]}) {pt.summary()}: "
                + _compare(("the Keras twin", tf), ("the PyTorch twin", pt), "framework"))
        lines.append(text + ".")
    return lines


def same_framework_lines(matrix: Matrix) -> list[str]:
    """For each twin and precision reaching two runtimes or more: the runtime's effect alone."""
    lines = []
    for framework in matrix.frameworks:
        for precision in PRECISIONS:
            cells = [(RUNTIMES[r.runtime], r.cells[framework]) for r in matrix.rows
                     if r.precision == precision and r.cells.get(framework)
                     and r.cells[framework].ok]
            if len(cells) < 2:
                continue
            ranked = sorted(cells, key=lambda item: item[1].p50)
            parts = [f"{name} {cell.summary()}" for name, cell in ranked]
            text = (f"Same framework, two runtimes ({matrix.model}, "
                    f"{FRAMEWORK_SHORT[framework]} twin, {precision}, "
                    f"{_threads(matrix.threads)}): " + "; ".join(parts) + ": ")
            fastest = ranked[0]
            if all(within_noise(fastest[1], other[1]) for other in ranked[1:]):
                text += "within noise of each other: the runtime does not matter here"
            else:
                text += "; ".join(
                    f"{fastest[0]} and {other[0]} within noise of each other"
                    if within_noise(fastest[1], other[1])
                    else _compare(fastest, other, "runtime") for other in ranked[1:])
            lines.append(text + ".")
    return lines


def split_lines(matrix: Matrix) -> list[str]:
    """The pair the kit used to measure (Keras on LiteRT against PyTorch on ExecuTorch), its
    ratio split into the framework's part (both twins on LiteRT) and the runtime's part (the
    PyTorch twin on LiteRT against ExecuTorch): the two multiply to the whole."""
    lines = []
    for precision in ("fp32", "int8"):
        keras_lite = matrix.cell("litert", precision, "tensorflow")
        torch_lite = matrix.cell("litert", precision, "pytorch")
        torch_et = matrix.cell("executorch", precision, "pytorch")
        if not all(c is not None and c.ok for c in (keras_lite, torch_lite, torch_et)):
            continue
        whole = torch_et.p50 / keras_lite.p50
        framework = torch_lite.p50 / keras_lite.p50
        runtime = torch_et.p50 / torch_lite.p50
        lines.append(
            f"Framework or runtime ({matrix.model}, {precision}, {_threads(matrix.threads)}): "
            f"PyTorch on ExecuTorch (p50 {torch_et.p50_text()}) takes {whole:.2f}x the time "
            f"of Keras on LiteRT ({keras_lite.p50_text()}); the framework's part, both twins "
            f"on LiteRT (PyTorch's {torch_lite.p50_text()}), is {framework:.2f}x"
            f"{' (within noise)' if within_noise(keras_lite, torch_lite) else ''}, and the "
            f"runtime's part, the PyTorch twin on ExecuTorch against LiteRT, {runtime:.2f}x"
            f"{' (within noise)' if within_noise(torch_lite, torch_et) else ''}.")
    return lines


def matrix_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for matrix in matrices(results):
        lines += split_lines(matrix) + same_runtime_lines(matrix) + same_framework_lines(matrix)
    return lines
