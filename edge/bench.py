"""The edge stage: every artifact a phone can run, from either twin, under its runtime (LiteRT,
with XNNPACK and without; ExecuTorch; ONNX Runtime), at each thread count, beside the
in-process baselines (the SavedModel in TensorFlow, TorchScript, the exported program and
AOTInductor in torch, both twins' ONNX in ONNX Runtime) on the same inputs; one typed record
per measurement, handed to the caller's sink (the run's writer puts it in
RUN_DIR/results.json), and a table. What runs where comes from the manifest (each artifact's
twin, runtime and precision): a format added to export is measured without a change here.

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
from deploybench.manifest import Artifact, Manifest, load_manifest, verify_artifacts
from deploybench.records import EdgeRecord, Sink, to_record

# The runtimes a phone can run, each planned by its function below; every artifact the manifest
# gives one of these runtimes is measured, whichever twin it was converted from.
EDGE_RUNTIMES = ("litert", "executorch", "onnxruntime")
# Server-side runtimes, run in process on the same inputs: (format, runtime)
BASELINES = (("savedmodel", "tensorflow"), ("torchscript", "torch"),
             ("exported-program", "torch-export"), ("aoti", "aoti"),
             ("onnx-torch", "onnxruntime"), ("onnx-keras", "onnxruntime"))
# Manifests written before artifacts declared their place in the matrix
_LEGACY = {"tflite": ("tensorflow", "litert"), "executorch": ("pytorch", "executorch")}
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


def matrix_place(artifact: Artifact) -> dict[str, Any]:
    """The artifact's twin, runtime and precision: the manifest's, or for a manifest written
    before artifacts declared them, read from the format's name."""
    family = artifact.format.split("-", 1)[0]
    framework, runtime = _LEGACY.get(family, (artifact.framework, artifact.runtime))
    precision = artifact.precision or artifact.format.removeprefix(f"{family}-")
    return {"framework": artifact.framework or framework,
            "runtime": artifact.runtime or runtime, "precision": precision}


def not_exported(base: dict[str, Any], artifact: Artifact) -> Pending:
    """An artifact its converter could not write (an optional format): a row with the reason,
    which the report shows as the matrix cell; not a failure of the edge run."""
    return failed(base, f"not exported: {artifact.reason}", status="not-exported")


def locate(root: Path, manifest: Manifest, fmt: str, base: dict[str, Any]) -> Path | Pending:
    """The artifact's path, checked against the manifest, with its path and size put in
    `base`; or, for one never exported or changed since, its final row."""
    artifact = manifest.artifact(fmt)
    if artifact.status == "failed":
        return not_exported(base, artifact)
    try:
        path = checked_path(root, manifest, fmt)
    except DeploybenchError as error:
        return failed(base, str(error))
    base.update(path=os.path.relpath(path, root), size_bytes=size_of(path))
    return path


def plan_litert(
    root: Path, manifest: Manifest, variant: str, golden: Path, threads: list[int],
    runs: int, warmup: int,
) -> list[Pending]:
    """A .tflite (from either twin) under the LiteRT interpreter, at each thread count, with
    XNNPACK and without; its operators read before anything runs."""
    base = new_row(kind="edge", model=manifest.model, variant=variant, runs=runs,
                   warmup=warmup, **matrix_place(manifest.artifact(variant)))
    path = locate(root, manifest, variant, base)
    if isinstance(path, Pending):
        return [path]
    try:
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
    artifact = manifest.artifact(variant)
    base = new_row(kind="edge", model=manifest.model, variant=variant, runs=runs,
                   warmup=warmup, **matrix_place(artifact))
    path = locate(root, manifest, variant, base)
    if isinstance(path, Pending):
        return [path]
    share, left = artifact.delegated_share, artifact.non_delegated_ops or []
    if share is None:
        verdict = "XNNPACK delegation not recorded at export"
    elif not left:
        verdict = "XNNPACK runs every operator"
    else:
        verdict = (f"XNNPACK runs {share:.0%} of the operators; left to the portable kernels: "
                   f"{', '.join(left)}")
    base.update(edge_ready=True, verdict=verdict, delegated_share=share,
                non_delegated_ops=left)
    return [
        Pending({**base, "threads": n, "xnnpack": True},
                Job(manifest.model, variant, "executorch", str(path), str(golden), n, True,
                    runs, warmup))
        for n in threads
    ]


def plan_onnxruntime(
    root: Path, manifest: Manifest, variant: str, golden: Path, threads: list[int],
    runs: int, warmup: int,
) -> list[Pending]:
    """An ONNX model (from either twin) under ONNX Runtime's CPU execution provider, the one
    this build of ONNX Runtime has (ONNX Runtime Mobile runs the same kernels on a phone), at
    each thread count."""
    base = new_row(kind="edge", model=manifest.model, variant=variant, runs=runs,
                   warmup=warmup, **matrix_place(manifest.artifact(variant)))
    path = locate(root, manifest, variant, base)
    if isinstance(path, Pending):
        return [path]
    base.update(edge_ready=True, verdict="ONNX Runtime, CPU execution provider")
    return [
        Pending({**base, "threads": n},
                Job(manifest.model, variant, "onnxruntime", str(path), str(golden), n, None,
                    runs, warmup))
        for n in threads
    ]


PLANNERS = {"litert": plan_litert, "executorch": plan_executorch,
            "onnxruntime": plan_onnxruntime}


def plan_baseline(
    root: Path, manifest: Manifest, fmt: str, runtime: str, golden: Path,
    threads: list[int], runs: int, warmup: int,
) -> list[Pending]:
    """A format the manifest has, in process under `runtime` at each thread count."""
    base = new_row(kind="inprocess", model=manifest.model, variant=fmt, runs=runs,
                   warmup=warmup, **{**matrix_place(manifest.artifact(fmt)), "runtime": runtime})
    path = locate(root, manifest, fmt, base)
    if isinstance(path, Pending):
        return [path]
    return [
        Pending({**base, "threads": n},
                Job(manifest.model, fmt, runtime, str(path), str(golden), n, None, runs, warmup))
        for n in threads
    ]


def plan_model(
    root: Path, model: str, threads: list[int], runs: int, warmup: int, baselines: bool,
    variants: tuple[str, ...] | None = None,
) -> list[Pending]:
    """Every edge artifact of the model's manifest (or those of `variants` it has), by the
    runtime that runs it, then the in-process baselines its manifest has."""
    try:
        manifest = load_manifest(root, model)
    except DeploybenchError as error:
        return [failed(new_row(kind="edge", model=model, runs=runs, warmup=warmup), str(error))]
    golden = root / manifest.golden["path"]
    pending: list[Pending] = []
    for runtime, plan in PLANNERS.items():
        for artifact in manifest.artifacts:
            if matrix_place(artifact)["runtime"] == runtime and (
                    variants is None or artifact.format in variants):
                pending += plan(root, manifest, artifact.format, golden, threads, runs, warmup)
    if baselines:
        exported = {a.format for a in manifest.artifacts}
        for fmt, runtime in BASELINES:
            if fmt in exported:  # an export from before a format existed has no row for it
                pending += plan_baseline(root, manifest, fmt, runtime, golden, threads, runs,
                                         warmup)
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


def edge_variants() -> tuple[str, ...]:
    """Every format export writes for a phone's runtime, in export's order."""
    from deploybench.export.formats import FORMATS

    return tuple(f.name for f in FORMATS if f.runtime in EDGE_RUNTIMES)


def parse_variants(text: str | None) -> tuple[str, ...] | None:
    """--variants: edge formats, comma-separated; None (every one) when not given."""
    if text is None:
        return None
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    known = edge_variants()
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise UsageError(f"--variants: {', '.join(unknown) or 'none given'} is not an edge "
                         f"format (one of {', '.join(known)})")
    return names


def describe(row: dict[str, Any]) -> str:
    parts = [row["model"], row["variant"] or "", row["runtime"] or ""]
    if row["threads"] is not None:
        parts.append(f"{row['threads']} thread{'s' if row['threads'] > 1 else ''}")
    if row["xnnpack"] is not None:
        parts.append("XNNPACK" if row["xnnpack"] else "no XNNPACK")
    return " ".join(p for p in parts if p)


def edge_environment(root: Path, threads: list[int], runs: int, warmup: int, baselines: bool,
                     repeats: int = 1, variants: tuple[str, ...] | None = None,
                     ) -> dict[str, Any]:
    """How the edge figures were taken, for the run's environment."""
    return {"runner": "in-process, one fresh process per measurement, one at a time",
            "artifacts": str(root), "threads": threads, "runs": runs, "warmup": warmup,
            "batch": 1, "baselines": baselines, "repeats": repeats,
            "variants": list(variants) if variants is not None else "all"}


def repeated(pending: list[Pending], repeats: int) -> list[Pending]:
    """Every measurement `repeats` times, each in a fresh process, the whole plan once per
    round (a slow spell of the machine then hits one round of every row, not every round of
    one row); a row that failed before running is written once."""
    rounds = []
    for repeat in range(1, repeats + 1):
        rounds += [Pending({**item.row, "repeat": repeat}, item.job) for item in pending
                   if item.job is not None or repeat == 1]
    return rounds


def run_edge(
    root: Path, models: list[str], threads: list[int], runs: int, warmup: int,
    console: Console, emit: Sink, baselines: bool = True, repeats: int = 1,
    variants: tuple[str, ...] | None = None,
) -> list[dict[str, Any]]:
    """Measure `models` (a model never exported is a failed row), hand every row to `emit` as
    it comes (a killed run keeps what it measured), print the tables; raise if any row is not
    ok (after every row was emitted)."""
    pending = repeated([p for name in models
                        for p in plan_model(root, name, threads, runs, warmup, baselines,
                                            variants)],
                       repeats)
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
    problems = [f"{describe(r)}: {r['error']}" for r in rows
                if r["status"] not in ("ok", "not-exported")]
    if problems:
        raise EdgeIncompleteError(
            f"edge run incomplete ({len(problems)} of {len(rows)} not measured): "
            + "; ".join(problems)
        )
    return rows
