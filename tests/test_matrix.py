"""The framework x runtime matrix and its answer lines, from hand-made edge rows (the edge
stage's own rows are checked in test_edge.py): every figure they quote is one of the rows'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deploybench.edge.bench import new_row
from deploybench.jobs.writer import RunWriter
from deploybench.matrix import matrices, matrix_lines, within_noise
from deploybench.records import to_record
from deploybench.report import write_reports


def edge(variant: str, framework: str, runtime: str, precision: str, p50: float,
         interval: tuple[float, float] | None = None, size: int = 100 * 1024,
         **fields: Any) -> dict[str, Any]:
    low, high = interval or (p50 * 0.98, p50 * 1.02)
    row = new_row(kind="edge", model="digits-cnn", variant=variant, runtime=runtime,
                  framework=framework, precision=precision, threads=1,
                  xnnpack=True if runtime == "litert" else None, status="ok",
                  size_bytes=size, runs=100, warmup=5, accuracy=0.975, top1_agreement=1.0,
                  latency_ms={"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3},
                  latency_ci95_ms={"p50": [low, high], "p90": [None, None],
                                   "p99": [None, None]})
    return {**row, **fields}


ROWS = [
    edge("tflite-fp32", "tensorflow", "litert", "fp32", 0.040, size=334 * 1024,
         delegated_share=0.5556),
    edge("tflite-fp32", "tensorflow", "litert", "fp32", 0.090, xnnpack=False),  # not default
    edge("tflite-int8", "tensorflow", "litert", "int8", 0.030, size=89 * 1024),
    edge("litert-torch-fp32", "pytorch", "litert", "fp32", 0.0405, (0.0395, 0.0415),
         size=340 * 1024, delegated_share=1.0),
    edge("executorch-fp32", "pytorch", "executorch", "fp32", 0.080, size=338 * 1024),
    edge("executorch-int8", "pytorch", "executorch", "int8", 0.060, size=94 * 1024),
    edge("onnx-torch", "pytorch", "onnxruntime", "fp32", 0.020, size=330 * 1024),
    edge("onnx-keras", "tensorflow", "onnxruntime", "fp32", 0.030, size=332 * 1024),
    {**new_row(kind="edge", model="digits-cnn", variant="litert-torch-int8",
               runtime="litert", framework="pytorch", precision="int8", runs=100, warmup=5),
     "status": "not-exported", "error": "not exported: ModuleNotFoundError: litert_torch"},
]


def test_the_matrix_puts_each_artifact_in_its_runtime_and_framework_cell():
    (matrix,) = matrices({"measurements": ROWS})
    assert matrix.model == "digits-cnn" and matrix.threads == 1
    assert [row.label for row in matrix.rows] == [
        "LiteRT fp32", "LiteRT int8", "ExecuTorch fp32", "ExecuTorch int8",
        "ONNX Runtime fp32"]
    lite = matrix.cell("litert", "fp32", "tensorflow")
    assert lite.p50 == 0.040  # XNNPACK on, LiteRT's default, not the slower row without it
    assert lite.summary() == ("334.0 KiB, p50 0.04 ms [0.0392, 0.0408], accuracy 0.975, "
                              "XNNPACK 56%")
    # a failed conversion is a cell with its reason; a path no converter takes says so
    failed = matrix.cell("litert", "int8", "pytorch")
    assert not failed.ok and "ModuleNotFoundError: litert_torch" in failed.summary()
    assert matrix.cell("executorch", "fp32", "tensorflow").summary() == (
        "ExecuTorch runs PyTorch programs only")
    assert matrix.cell("onnxruntime", "int8", "pytorch") is None  # no such row


def test_same_runtime_two_frameworks_within_noise_says_the_framework_does_not_matter():
    lines = matrix_lines({"measurements": ROWS})
    (litert,) = [line for line in lines
                 if line.startswith("Same runtime, two frameworks (digits-cnn, LiteRT fp32")]
    assert "Keras twin (TFLiteConverter) 334.0 KiB, p50 0.04 ms [0.0392, 0.0408]" in litert
    assert "PyTorch twin (litert-torch) 340.0 KiB, p50 0.0405 ms [0.0395, 0.0415]" in litert
    assert litert.endswith("within noise of each other: the framework does not matter here.")
    (onnx,) = [line for line in lines if "ONNX Runtime fp32" in line]
    assert onnx.endswith("the PyTorch twin runs at 1.50x the Keras twin's speed.")


def test_same_framework_two_runtimes_ranks_the_runtimes_of_one_twin():
    lines = matrix_lines({"measurements": ROWS})
    (pytorch,) = [line for line in lines
                  if line.startswith("Same framework, two runtimes (digits-cnn, PyTorch twin, "
                                     "fp32")]
    assert pytorch.index("ONNX Runtime") < pytorch.index("LiteRT") < pytorch.index(
        "ExecuTorch 338.0 KiB")
    assert "ONNX Runtime runs at 2.02x LiteRT's speed" in pytorch
    assert "ONNX Runtime runs at 4.00x ExecuTorch's speed" in pytorch
    # int8: the PyTorch twin reaches one runtime only (litert-torch's failed): no line
    assert not [line for line in lines if "PyTorch twin, int8" in line]


def test_the_old_pair_is_split_into_the_framework_and_the_runtime_parts():
    lines = matrix_lines({"measurements": ROWS})
    (split,) = [line for line in lines if line.startswith("Framework or runtime")]
    # 0.080 / 0.040 = 2.00 = (0.0405 / 0.040 = 1.01) x (0.080 / 0.0405 = 1.98)
    assert "takes 2.00x the time of Keras on LiteRT" in split
    assert "is 1.01x (within noise)" in split and "ExecuTorch against LiteRT, 1.98x." in split


def test_intervals_decide_noise_and_a_row_without_them_is_not_judged():
    (matrix,) = matrices({"measurements": ROWS})
    keras = matrix.cell("onnxruntime", "fp32", "tensorflow")
    torch = matrix.cell("onnxruntime", "fp32", "pytorch")
    assert within_noise(keras, torch) is False
    older = [{**row, "latency_ci95_ms": None} for row in ROWS]
    lines = matrix_lines({"measurements": older})
    assert all("no intervals recorded: noise not judged" in line
               for line in lines if line.startswith("Same runtime"))


def test_repeats_give_the_median_and_the_spread_across_processes():
    """Three fresh processes of each row: the cell's p50 is their median and its interval
    their spread, which decides noise (the processes' own tight intervals would not)."""
    spread = {"litert-torch-fp32": (0.0400, 0.0430), "tflite-fp32": (0.0410, 0.0440)}
    rows = []
    for row in ROWS:
        if row["variant"] in spread and row.get("xnnpack"):
            low, high = spread[row["variant"]]
            for repeat, p50 in enumerate((low, (low + high) / 2, high), start=1):
                rows.append({**row, "repeat": repeat, "latency_ms": {"p50": p50},
                             "latency_ci95_ms": {"p50": [p50 * 0.999, p50 * 1.001]}})
        else:
            rows.append(row)
    (matrix,) = matrices({"measurements": rows})
    keras = matrix.cell("litert", "fp32", "tensorflow")
    assert keras.p50 == pytest.approx(0.0425) and keras.p50_interval == (0.041, 0.044)
    assert "p50 0.0425 ms [0.041, 0.044] over 3 processes" in keras.summary()
    torch = matrix.cell("litert", "fp32", "pytorch")
    assert within_noise(keras, torch) is True
    (line,) = [line for line in matrix_lines({"measurements": rows})
               if "LiteRT fp32" in line and line.startswith("Same runtime")]
    assert line.endswith("the framework does not matter here.")


def test_runtimes_all_within_noise_are_said_once_and_one_apart_is_named():
    rows = [dict(row) for row in ROWS if row["framework"] == "pytorch"]
    for row in rows:
        if row["variant"] in ("litert-torch-fp32", "executorch-fp32", "onnx-torch"):
            row["latency_ms"] = {"p50": 0.040}
            row["latency_ci95_ms"] = {"p50": [0.039, 0.041]}
    (line,) = [line for line in matrix_lines({"measurements": rows})
               if line.startswith("Same framework, two runtimes (digits-cnn, PyTorch twin, fp32")]
    assert line.endswith("accuracy 0.975: within noise of each other: the runtime does not "
                         "matter here.")
    rows = [{**row, "latency_ms": {"p50": 0.080}, "latency_ci95_ms": {"p50": [0.079, 0.081]}}
            if row["variant"] == "executorch-fp32" else row for row in rows]
    (line,) = [line for line in matrix_lines({"measurements": rows})
               if line.startswith("Same framework, two runtimes (digits-cnn, PyTorch twin, fp32")]
    assert "LiteRT and ONNX Runtime within noise of each other" in line
    assert line.endswith("LiteRT runs at 2.00x ExecuTorch's speed.")


def test_a_run_without_twin_and_runtime_fields_has_no_matrix():
    rows = [{**row, "framework": None} for row in ROWS]
    assert matrices({"measurements": rows}) == [] and matrix_lines({"measurements": rows}) == []


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    writer = RunWriter(tmp_path / "run")
    writer.set_environment(mode="native")
    writer.add(*(to_record(row) for row in ROWS))
    return writer.run_dir


def test_the_rendered_reports_carry_the_matrix_and_its_lines(run_dir: Path):
    html_path, md_path = write_reports(run_dir)
    html, markdown = html_path.read_text(), md_path.read_text()
    assert "Framework or runtime: every twin on every runtime that takes it" in html
    assert ("<tr><td class=\"l\">LiteRT fp32</td><td class=\"l\">334.0 KiB, p50 0.04 ms "
            "[0.0392, 0.0408], accuracy 0.975, XNNPACK 56%</td>") in html
    assert "<td class=\"l bad\">not exported: ModuleNotFoundError: litert_torch</td>" in html
    assert "Same runtime, two frameworks (digits-cnn, LiteRT fp32, 1 thread)" in html
    assert "Same framework, two runtimes (digits-cnn, PyTorch twin, fp32, 1 thread)" in html
    assert ("| LiteRT int8 | 89.0 KiB, p50 0.03 ms [0.0294, 0.0306], accuracy 0.975 | "
            "not exported: ModuleNotFoundError: litert_torch |") in markdown
