"""The export stage: train the reference, build both twins, write every format, gate on parity,
then publish the model's folder in one atomic step (or leave the previous export untouched)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from deploybench import layout
from deploybench.errors import IncompleteExportError, ParityError, UsageError
from deploybench.export.formats import FORMATS, ExportContext, Format, native_stderr_logged
from deploybench.files import (
    atomic_symlink,
    atomic_write_text,
    remove_tree,
    size_of,
    tree_sha256,
)
from deploybench.golden import GOLDEN_FILE, Golden, accuracy
from deploybench.manifest import (
    FP32_TOLERANCE,
    MANIFEST_FILE,
    MAX_ACCURACY_DROP,
    Artifact,
    Manifest,
    TensorSpec,
    exported_models,
)
from deploybench.versions import package_versions
from deploybench.zoo.spec import ModelSpec

log = logging.getLogger(__name__)

# Quantized variants of a model whose accuracy means nothing (seeded weights: the spec's
# min_accuracy is None) are judged by top-1 agreement with the reference on the golden samples
# instead of by accuracy drop. Measured on mobilenet-v2 (64 golden images, TF 2.21): int8 0.97
# (0.94-0.95 with a per-channel classifier), dynamic-int8 0.97-0.98, fp16 1.0; all-per-tensor
# int8 0.91; int8 calibrated on half the input range 0.33. 0.85 passes every sound variant with
# room for a few images' noise.
MIN_TOP1_AGREEMENT = 0.85


@dataclass
class ModelExport:
    """The outcome of exporting one model."""

    manifest: Manifest
    published: bool
    build_dir: Path
    seconds: float
    problems: list[str] = field(default_factory=list)  # what kept it from publishing
    skipped: list[str] = field(default_factory=list)  # optional formats that failed
    refused: list[str] = field(default_factory=list)  # artifacts the parity gate refused


def check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"cannot write to output folder {root}: {error.strerror}") from error


def judge(
    fmt: Format, outputs: np.ndarray, golden: Golden, artifact: Artifact,
    min_top1_agreement: float | None = None, tolerance: float = FP32_TOLERANCE,
) -> None:
    """The parity gate for one artifact: fp32 by max abs diff, quantized by accuracy drop, or,
    where `min_top1_agreement` is given (seeded weights), by top-1 agreement with the reference."""
    artifact.max_abs_diff = float(np.max(np.abs(outputs - golden.outputs)))
    artifact.accuracy = accuracy(outputs, golden.labels)
    artifact.accuracy_drop = golden.accuracy - artifact.accuracy
    artifact.top1_agreement = float(
        np.mean(np.argmax(outputs, axis=1) == np.argmax(golden.outputs, axis=1))
    )
    # written as `not <=` so that a NaN fails too
    if not fmt.quantized and not artifact.max_abs_diff <= tolerance:
        artifact.status = "parity-failed"
        artifact.reason = f"max abs diff {artifact.max_abs_diff:.3g} > tolerance {tolerance:.3g}"
    elif fmt.quantized and min_top1_agreement is not None:
        if not artifact.top1_agreement >= min_top1_agreement:
            artifact.status = "parity-failed"
            artifact.reason = (
                f"top-1 agreement {artifact.top1_agreement:.3f} < {min_top1_agreement:g}"
            )
    elif fmt.quantized and not artifact.accuracy_drop <= MAX_ACCURACY_DROP:
        artifact.status = "parity-failed"
        artifact.reason = (
            f"accuracy drop {artifact.accuracy_drop * 100:.1f} points "
            f"> {MAX_ACCURACY_DROP * 100:.0f}"
        )


def in_batches(predict: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray,
               rows: int) -> np.ndarray:
    """`predict` over `inputs`: the first one alone, then at most `rows` at a time. Every
    artifact must take both ends of the batch range (an exported program's batch dimension, an
    ExecuTorch program's capacity, end at max_rows), and a batch of one is what most requests
    carry: a program compiled for one batch size that ran another silently (an AOTInductor
    package does not check its input's shape) fails the gate here."""
    rows = max(rows, 1)
    starts = [0, *range(1, len(inputs), rows)] if len(inputs) else []
    parts = []
    for start in starts:
        batch = inputs[start:start + (1 if start == 0 else rows)]
        outputs = predict(batch)
        if len(outputs) != len(batch):
            raise ValueError(f"{len(batch)} rows in, {len(outputs)} rows out")
        parts.append(outputs)
    return np.concatenate(parts)


def export_model(
    spec: ModelSpec, root: Path, progress: Progress | None = None, version: int = 1
) -> ModelExport:
    """Export one model under `root`; publish it only if every artifact exported and passed."""
    import torch

    started = time.perf_counter()
    task = progress.add_task(f"{spec.name}: training", total=None) if progress else None

    def step(text: str) -> None:
        if progress is not None:
            progress.update(task, description=f"{spec.name}: {text}")

    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    build_dir = root / layout.BUILDS / f"{spec.name}-{stamp}"
    build_dir.mkdir(parents=True)

    reference = spec.reference(step)
    golden = reference.golden
    if spec.min_accuracy is not None and golden.accuracy < spec.min_accuracy:
        raise ParityError(
            f"{spec.name}: reference held-out accuracy {golden.accuracy:.3f} "
            f"< required {spec.min_accuracy}"
        )
    golden.save(build_dir / GOLDEN_FILE)
    if reference.torch_model is not None:
        torch.save(reference.torch_model.state_dict(), build_dir / "reference.pt")
    ctx = ExportContext(spec, reference.torch_model, reference.keras_model,
                        reference.calibration, build_dir, version)

    seeded = spec.gate_by_agreement  # accuracy means nothing: gate on top-1 agreement
    min_top1_agreement = MIN_TOP1_AGREEMENT if seeded else None
    tolerance = spec.fp32_tolerance(golden.outputs)
    artifacts: list[Artifact] = []
    # the formats of the frameworks the model has a side in (a user's model may have one)
    formats = [fmt for fmt in FORMATS if fmt.applies(spec) and fmt.framework in spec.frameworks]
    for fmt in formats:
        step(f"exporting {fmt.name}")
        artifact = Artifact(format=fmt.name, path="", quantized=fmt.quantized,
                            framework=fmt.framework, runtime=fmt.runtime,
                            precision=fmt.precision)
        artifacts.append(artifact)
        began = time.perf_counter()
        before = set(build_dir.rglob("*"))
        try:
            path = fmt.write(ctx)
        except Exception as error:  # a failed format is a row with its reason, not a crash
            log.exception("%s: %s export failed", spec.name, fmt.name)
            artifact.status = "failed"
            artifact.reason = f"{type(error).__name__}: {error}".splitlines()[0]
            artifact.export_seconds = round(time.perf_counter() - began, 3)
            remove_new_files(build_dir, before)  # nothing half-written is published
            continue
        artifact.export_seconds = round(time.perf_counter() - began, 3)
        readiness = ctx.readiness.get(fmt.name, {})
        artifact.delegated_share = readiness.get("delegated_share")
        artifact.non_delegated_ops = readiness.get("non_delegated_ops")
        artifact.path = f"{spec.name}/{path.relative_to(build_dir).as_posix()}"
        artifact.sha256 = tree_sha256(path)
        artifact.bytes = size_of(path)
        step(f"parity of {fmt.name}")
        try:
            with native_stderr_logged(f"{fmt.name}'s runtime"):  # C++ start-up lines
                outputs = in_batches(fmt.run(spec, path), golden.inputs, spec.max_rows)
            judge(fmt, outputs, golden, artifact, min_top1_agreement, tolerance)
        except Exception as error:
            log.exception("%s: %s could not be run for parity", spec.name, fmt.name)
            artifact.status = "failed"
            artifact.reason = f"cannot run for parity: {error}".splitlines()[0]

    by_name = {fmt.name: fmt for fmt in formats}
    for artifact in artifacts:  # refused: a finding, kept as a row; its files are not published
        if artifact.status == "parity-failed":
            cause = spec.known_causes.get(artifact.format)
            if cause:
                artifact.reason = f"{artifact.reason} ({cause})"
            if refusable(by_name[artifact.format], spec):
                written = build_dir / Path(artifact.path).relative_to(spec.name)
                if written.is_dir() and not written.is_symlink():
                    remove_tree(written)
                else:
                    written.unlink(missing_ok=True)
                artifact.sha256 = None
    manifest = Manifest(
        model=spec.name,
        version=version,
        description=spec.description,
        inputs=spec.tensor_specs(),
        outputs=[TensorSpec(spec.output_name, [None, spec.num_classes], "float32")],
        golden={
            "path": f"{spec.name}/{GOLDEN_FILE}",
            "samples": int(len(golden.labels)),
            "reference_accuracy": golden.accuracy,
            "split": spec.golden_split(),
        },
        tolerance={"fp32_max_abs_diff": tolerance,
                   **({"min_top1_agreement": MIN_TOP1_AGREEMENT} if seeded
                      else {"max_accuracy_drop": MAX_ACCURACY_DROP})},
        versions=package_versions(),
        data=spec.data_provenance(),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        max_rows=spec.max_rows,
        artifacts=artifacts,
        frameworks=list(spec.frameworks),
        source=spec.source,
    )
    manifest.save(build_dir / MANIFEST_FILE)
    optional = {fmt.name for fmt in formats if fmt.optional or spec.every_format_optional}
    problems, skipped, refused = [], [], []
    for a in artifacts:
        if a.status != "ok":
            line = f"{spec.name} {a.format}: {a.status}: {a.reason}"
            # an optional converter that is missing or fails leaves a row; an artifact the
            # parity gate refuses is a finding (a row with its figure and reason, the model
            # publishes with those that passed) unless it says the twin itself is wrong
            # (refusable); a core format that cannot be written keeps the model unpublished
            if a.status == "parity-failed" and refusable(by_name[a.format], spec):
                refused.append(line)
            elif a.status == "parity-failed":
                problems.append(line)
            else:
                (skipped if a.format in optional else problems).append(line)
    if not any(a.status == "ok" for a in artifacts):
        problems.append(f"{spec.name}: no format was exported and passed the parity gate")
    published = not problems
    if published:
        step("publishing")
        publish(root, spec.name, build_dir)
    if progress is not None:
        progress.update(task, description=f"{spec.name}: {'done' if published else 'FAILED'}")
    return ModelExport(manifest, published, build_dir, time.perf_counter() - started, problems,
                       skipped, refused)


def refusable(fmt: Format, spec: ModelSpec) -> bool:
    """Whether an artifact failing the parity gate is refused alone, the model publishing
    with the others: a quantized variant (what quantization costs is a finding), an optional
    converter's file, or a format whose cause the spec names (a runtime's known bug). An fp32
    artifact of the kit's own paths failing without a known cause says the twins differ (a
    porting mistake): then nothing publishes."""
    return (fmt.quantized or fmt.optional or spec.every_format_optional
            or fmt.name in spec.known_causes)


def remove_new_files(build_dir: Path, before: set[Path]) -> None:
    """Remove what a failed writer left in the build folder (deepest first)."""
    for path in sorted(set(build_dir.rglob("*")) - before, key=lambda p: len(p.parts),
                       reverse=True):
        if path.is_dir() and not path.is_symlink():
            remove_tree(path)
        else:
            path.unlink(missing_ok=True)


def publish(root: Path, model: str, build_dir: Path) -> None:
    """Swap the model's symlink to the new build in one rename; then tidy up around it."""
    link = root / model
    previous = link.resolve() if link.is_symlink() else None
    atomic_symlink(os.path.relpath(build_dir, root), link)
    store_link = layout.mar_path(root, model)
    store_link.parent.mkdir(exist_ok=True)
    if not store_link.is_symlink():
        atomic_symlink(f"../{model}/{model}.mar", store_link)
    atomic_write_text(root / layout.MODELS_CONFIG, layout.models_config_text(exported_models(root)))
    if previous is not None and previous != build_dir.resolve():
        remove_tree(previous)


def render_table(result: ModelExport) -> Table:
    manifest = result.manifest
    table = Table(title=f"{manifest.model} (reference accuracy "
                        f"{manifest.golden['reference_accuracy']:.4f})")
    for column in ("format", "status", "size", "accuracy", "max diff", "seconds"):
        table.add_column(column, justify="left" if column in ("format", "status") else "right")
    for a in manifest.artifacts:
        status = a.status if a.status == "ok" else f"[red]{a.status}[/red]: {a.reason}"
        table.add_row(
            a.format,
            status,
            f"{a.bytes / 1024:.1f} KiB" if a.bytes is not None else "-",
            f"{a.accuracy:.4f}" if a.accuracy is not None else "-",
            f"{a.max_abs_diff:.2e}" if a.max_abs_diff is not None else "-",
            f"{a.export_seconds:.2f}" if a.export_seconds is not None else "-",
        )
    return table


def export(specs: list[ModelSpec], root: Path, console: Console, version: int = 1) -> None:
    """Export each model, print a table per model, and raise if any export is not complete."""
    check_writable(root)
    # TensorFlow 2.21's C++ start-up lines (absl's, before its logging is set up) ignore
    # TF_CPP_MIN_LOG_LEVEL: imported here first, they go to the log, not the terminal
    with native_stderr_logged("TensorFlow's start-up"):
        import tensorflow  # noqa: F401
    results: list[ModelExport] = []
    started = time.perf_counter()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        for spec in specs:
            results.append(export_model(spec, root, progress, version))
    for result in results:
        console.print(render_table(result))
        for line in result.skipped:
            console.print(f"[yellow]not exported[/yellow] (optional): {line}", soft_wrap=True)
        for line in result.refused:
            console.print(f"[yellow]refused[/yellow] by the parity gate: {line}", soft_wrap=True)
        if result.published:
            console.print(f"published {root / result.manifest.model} "
                          f"in {result.seconds:.1f} s")
        else:
            console.print(f"[red]not published[/red]; the failed build is kept at "
                          f"{result.build_dir}, earlier artifacts are untouched")
    console.print(f"export finished in {time.perf_counter() - started:.1f} s")
    problems = [p for r in results for p in r.problems]
    if any("parity-failed" in p for p in problems):
        raise ParityError("parity gate failed: " + "; ".join(problems))
    if problems:
        raise IncompleteExportError("export incomplete: " + "; ".join(problems))
