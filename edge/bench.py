"""The edge stage: every TFLite variant of a model under the LiteRT interpreter, at each thread
count, with XNNPACK and without, beside the SavedModel in TensorFlow and the TorchScript in
torch on the same inputs; one typed record per measurement, handed to the caller's sink
(the run's writer puts it in RUN_DIR/results.json), and a table.

Each artifact's sha256 is checked against the manifest and each .tflite file's operators are
read before anything runs; a bad file is a failed row naming the file, and the other variants
go on. Each measurement runs in its own process (see worker.py), one after another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from deploybench import fresh
from deploybench.edge.ops import read_ops
from deploybench.edge.table import render
from deploybench.edge.worker import Job
from deploybench.errors import DeploybenchError, UsageError
from deploybench.files import size_of
from deploybench.manifest import Manifest, load_manifest, verify_artifacts
from deploybench.records import EdgeRecord, Sink, to_record

EDGE_VARIANTS = ("tflite-fp32", "tflite-fp16", "tflite-dynamic-int8", "tflite-int8")
EXECUTORCH_VARIANTS = ("executorch-fp32", "executorch-int8")  # PyTorch's edge path
BASELINES = (("savedmodel", "tensorflow"), ("torchscript", "torch"),
             ("exported-program", "torch-export"), ("aoti", "aoti"))
WORKER_TIMEOUT_S = 900

# Every row has every field, so a failed row reads like a measured one with blanks; the
# record declares them (edge and in-process rows share the fields).
FIELDS = tuple(EdgeRecord.model_fields)


class EdgeIncompleteError(DeploybenchError):
    """Some variant could not be measured (bad file, not edge-ready, runtime failure)."""

    exit_code = 4


@dataclass
class Pending:
    """A row to write: final already (a failure found before running), or waiting for its job."""

    row: dict[str, Any]
    job: Job | None = None


def new_row(**values: Any) -> dict[str, Any]:
    row = dict.fromkeys(FIELDS)
    row["batch"] = 1
    row.update(values)
    return row


def failed(row: dict[str, Any], error: str, status: str = "failed") -> Pending:
    return Pending({**row, "status": status, "error": error})


def checked_path(root: Path, manifest: Manifest, fmt: str) -> Path:
    """The artifact's path, once it is known to be exported and unchanged since export."""
    artifact = manifest.artifact(fmt)
    if artifact.status != "ok" or not artifact.path:
        raise DeploybenchError(
            f"{root / manifest.model}: {fmt} was not exported ({artifact.status}: "
            f"{artifact.reason})"
        )
    verify_artifacts(root, manifest, [fmt])
    return root / artifact.path


def plan_variant(
    root: Path, manifest: Manifest, variant: str, golden: Path, threads: list[int],
    runs: int, warmup: int,
) -> list[Pending]:
    base = new_row(kind="edge", model=manifest.model, variant=variant, runtime="litert",
                   runs=runs, warmup=warmup)
    try:
        path = checked_path(root, manifest, variant)
        base["path"] = os.path.relpath(path, root)
        base["size_bytes"] = size_of(path)
        report = read_ops(path)
    except DeploybenchError as error:
        return [failed(base, str(error))]
    base.update(edge_ready=report.edge_ready, verdict=report.verdict, ops=report.ops,
                op_counts=report.op_counts, non_builtin_ops=report.non_builtin_ops)
    if not report.edge_ready:  # never run: a Flex model fails at allocation anyway
        return [failed(base, f"{path}: {report.verdict}", status="not-edge-ready")]
    return [
        Pending(
            {**base, "threads": n, "xnnpack": xnnpack},
            Job(manifest.model, variant, "litert", str(path), str(golden), n, xnnpack,
                runs, warmup),
        )
        for n in threads
        for xnnpack in (True, False)
    ]


def plan_executorch(
    root: Path, manifest: Manifest, variant: str, golden: Path, threads: list[int],
    runs: int, warmup: int,
) -> list[Pending]:
    """An ExecuTorch program at each thread count. Every program runs on ExecuTorch's runtime
    (what XNNPACK does not take, its portable kernels do); its readiness is how much XNNPACK
    takes, from the export's record of the lowering."""
    base = new_row(kind="edge", model=manifest.model, variant=variant, runtime="executorch",
                   runs=runs, warmup=warmup)
    try:
        path = checked_path(root, manifest, variant)
    except DeploybenchError as error:
        return [failed(base, str(error))]
    artifact = manifest.artifact(variant)
    share, left = artifact.delegated_share, artifact.non_delegated_ops or []
    if share is None:
        verdict = "XNNPACK delegation not recorded at export"
    elif not left:
        verdict = "XNNPACK runs every operator"
    else:
        verdict = (f"XNNPACK runs {share:.0%} of the operators; left to the portable kernels: "
                   f"{', '.join(left)}")
    base.update(path=os.path.relpath(path, root), size_bytes=size_of(path), edge_ready=True,
                verdict=verdict, delegated_share=share, non_delegated_ops=left)
    return [
        Pending({**base, "threads": n, "xnnpack": True},
                Job(manifest.model, variant, "executorch", str(path), str(golden), n, True,
                    runs, warmup))
        for n in threads
    ]


def plan_baseline(
    root: Path, manifest: Manifest, fmt: str, runtime: str, golden: Path,
    threads: list[int], runs: int, warmup: int,
) -> list[Pending]:
    base = new_row(kind="inprocess", model=manifest.model, variant=fmt, runtime=runtime,
                   runs=runs, warmup=warmup)
    try:
        path = checked_path(root, manifest, fmt)
    except DeploybenchError as error:
        return [failed(base, str(error))]
    base.update(path=os.path.relpath(path, root), size_bytes=size_of(path))
    return [
        Pending({**base, "threads": n},
                Job(manifest.model, fmt, runtime, str(path), str(golden), n, None, runs, warmup))
        for n in threads
    ]


def plan_model(
    root: Path, model: str, threads: list[int], runs: int, warmup: int, baselines: bool
) -> list[Pending]:
    try:
        manifest = load_manifest(root, model)
    except DeploybenchError as error:
        return [failed(new_row(kind="edge", model=model, runs=runs, warmup=warmup), str(error))]
    golden = root / manifest.golden["path"]
    pending: list[Pending] = []
    for variant in EDGE_VARIANTS:
        pending += plan_variant(root, manifest, variant, golden, threads, runs, warmup)
    for variant in EXECUTORCH_VARIANTS:
        pending += plan_executorch(root, manifest, variant, golden, threads, runs, warmup)
    if baselines:
        for fmt, runtime in BASELINES:
            pending += plan_baseline(root, manifest, fmt, runtime, golden, threads, runs, warmup)
    return pending


def run_worker(job: Job, timeout: float = WORKER_TIMEOUT_S) -> dict[str, Any]:
    """Run one job in a fresh interpreter process and return its result fields."""
    try:
        return fresh.run("deploybench.edge.worker", job.to_dict(), timeout=timeout)
    except fresh.WorkerFailed as error:  # timed out, or died: a failed row, the others go on
        return {"status": "failed", "error": f"{job.path}: {job.runtime} measurement {error}"}


def parse_threads(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or any(n < 1 for n in counts):
        raise UsageError(f"--threads: expected positive thread counts like 1,2 (got {text!r})")
    return list(dict.fromkeys(counts))


def describe(row: dict[str, Any]) -> str:
    parts = [row["model"], row["variant"] or "", row["runtime"] or ""]
    if row["threads"] is not None:
        parts.append(f"{row['threads']} thread{'s' if row['threads'] > 1 else ''}")
    if row["xnnpack"] is not None:
        parts.append("XNNPACK" if row["xnnpack"] else "no XNNPACK")
    return " ".join(p for p in parts if p)


def edge_environment(root: Path, threads: list[int], runs: int, warmup: int, baselines: bool
                ) -> dict[str, Any]:
    """How the edge figures were taken, for the run's environment."""
    return {"runner": "in-process, one fresh process per measurement, one at a time",
            "artifacts": str(root), "threads": threads, "runs": runs, "warmup": warmup,
            "batch": 1, "baselines": baselines}


def run_edge(
    root: Path, models: list[str], threads: list[int], runs: int, warmup: int,
    console: Console, emit: Sink, baselines: bool = True,
) -> list[dict[str, Any]]:
    """Measure `models` (a model never exported is a failed row), hand every row to `emit` as
    it comes (a killed run keeps what it measured), print the tables; raise if any row is not
    ok (after every row was emitted)."""
    pending = [p for name in models for p in plan_model(root, name, threads, runs, warmup,
                                                        baselines)]
    rows: list[dict[str, Any]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("edge", total=len(pending))
        for item in pending:
            progress.update(task, description=f"measuring {describe(item.row)}")
            row = item.row
            if item.job is not None:
                row = {**row, **run_worker(item.job)}
            rows.append(row)
            emit(to_record(row))
            progress.advance(task)

    render(rows, console)
    problems = [f"{describe(r)}: {r['error']}" for r in rows if r["status"] != "ok"]
    if problems:
        raise EdgeIncompleteError(
            f"edge run incomplete ({len(problems)} of {len(rows)} not measured): "
            + "; ".join(problems)
        )
    return rows
