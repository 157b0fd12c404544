"""The edge stage, with the real LiteRT interpreter, TensorFlow and torch on real exports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploybench import runtimes
from deploybench.edge.bench import BASELINES, EDGE_RUNTIMES, FIELDS
from deploybench.edge.ops import read_ops
from deploybench.files import tree_sha256
from deploybench.jobs.writer import RunWriter
from deploybench.manifest import FP32_TOLERANCE, MAX_ACCURACY_DROP, load_manifest
from deploybench.records import to_record
from tests.conftest import invoke

MODELS = ["digits-mlp", "digits-cnn"]
REQUIRED = (
    "kind", "model", "variant", "runtime", "threads", "xnnpack", "size_bytes", "init_ms",
    "first_ms", "latency_ms", "accuracy", "top1_agreement", "max_abs_diff", "edge_ready",
    "ops", "runs", "status", "error",
)
QUICK = ("--threads", "1", "--runs", "20", "--warmup", "2", "--repeats", "1")
TFLITE = "tflite-fp32,tflite-fp16,tflite-dynamic-int8,tflite-int8"


def rows_of(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "results.json").read_text())["measurements"]


@pytest.fixture(scope="module")
def edge_run(export_root, tmp_path_factory) -> tuple[Path, list[dict], str]:
    """One real edge run over both exported models, with baselines, kept short."""
    run_dir = tmp_path_factory.mktemp("edge-run")
    result = invoke("edge", "--artifacts", str(export_root), "--model", "all", *QUICK,
                    "--out", str(run_dir))
    assert result.exit_code == 0, result.output
    return run_dir, rows_of(run_dir), result.output


def reseal(root: Path, model: str, fmt: str) -> None:
    """Record an artifact's current sha256 in the manifest, as if export had written it."""
    path = root / model / "manifest.json"
    data = json.loads(path.read_text())
    for artifact in data["artifacts"]:
        if artifact["format"] == fmt:
            artifact["sha256"] = tree_sha256(root / artifact["path"])
    path.write_text(json.dumps(data))


def flex_model(path: Path) -> Path:
    """A model whose only op (matrix determinant) has no TFLite builtin: it needs Flex."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 3, 3], tf.float32)])
    def determinant(x):
        return tf.linalg.det(x)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [determinant.get_concrete_function()], determinant
    )
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS,
    ]
    path.write_bytes(converter.convert())
    return path


# --- a full run ---------------------------------------------------------------------------


def test_every_row_has_the_required_fields(edge_run):
    run_dir, rows, _ = edge_run
    data = json.loads((run_dir / "results.json").read_text())
    assert data["partial"] is False
    assert data["environment"]["edge"]["runs"] == 20
    assert data["environment"]["versions"]["ai-edge-litert"]
    assert rows
    for row in rows:
        assert set(REQUIRED) <= set(row) and list(row) == list(FIELDS), row
        assert row["status"] == "ok", row
        assert row["error"] is None
        assert row["runs"] == 20 and row["threads"] == 1 and row["batch"] == 1
        latency = row["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
        assert row["init_ms"] > 0 and row["first_ms"] > 0
        assert row["peak_memory_growth_bytes"] >= 0
        assert row["size_bytes"] > 0


def test_every_edge_artifact_runs_under_its_runtime_beside_the_baselines(edge_run,
                                                                         export_root):
    """What runs where comes from the manifest: every artifact of an edge runtime, from either
    twin (LiteRT with XNNPACK and without), then the in-process baselines, each row carrying
    the artifact's twin and precision."""
    _, rows, _ = edge_run
    for model in MODELS:
        manifest = load_manifest(export_root, model)
        mine = [r for r in rows if r["model"] == model]
        edge = {(r["variant"], r["runtime"], r["xnnpack"]) for r in mine if r["kind"] == "edge"}
        expected = set()
        for artifact in manifest.artifacts:
            if artifact.runtime == "litert":
                expected |= {(artifact.format, "litert", x) for x in (True, False)}
            elif artifact.runtime == "executorch":
                expected.add((artifact.format, "executorch", True))
            elif artifact.runtime == "onnxruntime":
                expected.add((artifact.format, "onnxruntime", None))
        assert edge == expected
        assert {"litert-torch-fp32", "litert-torch-int8", "onnx-torch", "onnx-keras",
                "onnx-torch-int8", "onnx-keras-int8"} <= {variant for variant, _, _ in edge}
        baselines = {(r["variant"], r["runtime"]) for r in mine if r["kind"] == "inprocess"}
        assert baselines == set(BASELINES)
        for r in mine:
            artifact = manifest.artifact(r["variant"])
            assert (r["framework"], r["precision"]) == (artifact.framework, artifact.precision)
            low, high = r["latency_ci95_ms"]["p50"]  # 20 runs bound the median both sides
            assert low <= r["latency_ms"]["p50"] <= high, r
            if r["runtime"] == "executorch":  # the pool size ExecuTorch reports back
                assert r["runtime_threads"] == {"threadpool": 1}
            elif r["runtime"] == "litert" and r["xnnpack"]:
                assert r["delegate_partitions"] >= 1  # XNNPACK really took part
                assert 0 < r["delegated_share"] <= 1, r
                assert (r["delegated_share"] == 1) == (r["non_delegated_ops"] == []), r
            elif r["runtime"] == "litert":
                assert r["delegate_partitions"] == 0 and r["delegated_share"] is None
            else:  # the runtime reports the thread count it really used
                assert r["runtime_threads"]["intra_op"] == 1, r
    assert set(EDGE_RUNTIMES) == {"litert", "executorch", "onnxruntime"}


def test_accuracy_stays_within_the_export_bounds(edge_run, export_root):
    _, rows, _ = edge_run
    for row in rows:
        manifest = load_manifest(export_root, row["model"])
        reference = manifest.golden["reference_accuracy"]
        assert row["reference_accuracy"] == pytest.approx(reference)
        assert row["samples"] == manifest.golden["samples"]
        if manifest.artifact(row["variant"]).quantized:
            assert reference - row["accuracy"] <= MAX_ACCURACY_DROP, row
            assert row["top1_agreement"] >= 0.95, row
        else:
            assert row["max_abs_diff"] <= FP32_TOLERANCE, row
            assert row["top1_agreement"] == 1.0, row


def test_full_int8_is_at_least_3x_smaller_than_fp32(edge_run):
    _, rows, _ = edge_run
    size = {r["variant"]: r["size_bytes"] for r in rows if r["model"] == "digits-cnn"}
    assert size["tflite-fp32"] >= 3 * size["tflite-int8"], size


def test_exported_variants_are_edge_ready_with_their_ops_listed(edge_run):
    _, rows, output = edge_run
    for row in rows:
        if row["runtime"] == "executorch":  # readiness: XNNPACK's share, the rest named
            assert row["edge_ready"] is True and 0.5 < row["delegated_share"] <= 1
            assert row["verdict"].startswith("XNNPACK runs")
            for op in row["non_delegated_ops"]:
                assert op in row["verdict"]
        elif row["runtime"] == "onnxruntime" and row["kind"] == "edge":  # no operator list
            assert row["edge_ready"] is True and row["ops"] is None
        elif row["kind"] == "edge":  # a .tflite from either twin: builtin operators only
            assert row["edge_ready"] is True and row["non_builtin_ops"] == []
            assert {"FULLY_CONNECTED", "BATCH_MATMUL"} & set(row["ops"]), row["ops"]
            assert sum(row["op_counts"].values()) >= len(row["ops"])
        else:
            assert row["edge_ready"] is None and row["ops"] is None
    cnn = next(r for r in rows if r["model"] == "digits-cnn" and r["kind"] == "edge")
    assert "CONV_2D" in cnn["ops"]
    assert "digits-cnn: speed and memory" in output and "int8 ops:" in output


# --- bad input ----------------------------------------------------------------------------


def test_bad_files_are_named_errors_and_the_other_variants_still_measure(export_copy, tmp_path):
    tflite = export_copy / "digits-mlp" / "tflite"
    truncated = tflite / "int8.tflite"
    truncated.write_bytes(truncated.read_bytes()[:1000])  # sha256 no longer matches
    garbage = tflite / "fp16.tflite"
    garbage.write_bytes(b"this is not a flatbuffer at all")
    reseal(export_copy, "digits-mlp", "tflite-fp16")  # matching sha256: must fail on content
    missing = tflite / "dynamic-int8.tflite"
    missing.unlink()

    run_dir = tmp_path / "run"
    earlier = {"kind": "server", "target": "elsewhere", "status": "up", "reason": ""}
    RunWriter(run_dir).add(to_record(earlier))  # another stage's row in the run file is kept
    result = invoke("edge", "--artifacts", str(export_copy), "--model", "digits-mlp", *QUICK,
                    "--no-baselines", "--variants", TFLITE, "--out", str(run_dir))
    assert result.exit_code == 4, result.output
    rows = rows_of(run_dir)
    assert rows[0] == earlier
    assert {r["variant"] for r in rows[1:]} == set(TFLITE.split(","))  # only those chosen
    results = json.loads((run_dir / "results.json").read_text())
    assert results["environment"]["edge"]["variants"] == TFLITE.split(",")
    assert f"edge: only {TFLITE.replace(',', ', ')} measured" in " ".join(results["notes"])
    by_variant = {r["variant"]: r for r in rows[1:]}

    assert by_variant["tflite-int8"]["status"] == "failed"
    assert str(truncated) in by_variant["tflite-int8"]["error"]
    assert "sha256 does not match" in by_variant["tflite-int8"]["error"]
    assert str(garbage) in by_variant["tflite-fp16"]["error"]
    assert "not a TFLite model" in by_variant["tflite-fp16"]["error"]
    assert str(missing) in by_variant["tflite-dynamic-int8"]["error"]
    assert "missing" in by_variant["tflite-dynamic-int8"]["error"]

    fp32 = [r for r in rows[1:] if r["variant"] == "tflite-fp32"]
    assert len(fp32) == 2 and all(r["status"] == "ok" for r in fp32)
    assert all(r["accuracy"] > 0.9 for r in fp32)
    assert str(truncated) in result.output  # named on the console too, after the table
    assert "speed and memory" in result.output


def test_executorch_runs_at_1_and_2_threads_and_a_corrupt_program_is_named(export_copy,
                                                                           tmp_path):
    """digits-cnn's ExecuTorch programs at 1 and 2 threads (the runtime's pool reports the
    count set); a corrupt .pte, resealed so it passes the sha256 check, is a failed row naming
    the file while the fp32 program is measured."""
    broken = export_copy / "digits-cnn" / "executorch" / "int8.pte"
    broken.write_bytes(b"\0" * 64 + broken.read_bytes()[64:])
    reseal(export_copy, "digits-cnn", "executorch-int8")
    run_dir = tmp_path / "run"
    result = invoke("edge", "--artifacts", str(export_copy), "--model", "digits-cnn",
                    "--threads", "1,2", "--runs", "20", "--warmup", "2", "--repeats", "1",
                    "--no-baselines", "--variants", "executorch-fp32,executorch-int8",
                    "--out", str(run_dir))
    assert result.exit_code == 4, result.output
    rows = rows_of(run_dir)
    fp32 = [r for r in rows if r["variant"] == "executorch-fp32"]
    assert sorted(r["threads"] for r in fp32) == [1, 2]
    for row in fp32:
        assert row["status"] == "ok", row
        assert row["runtime_threads"] == {"threadpool": row["threads"]}
        assert row["max_abs_diff"] <= FP32_TOLERANCE and row["top1_agreement"] == 1.0
    int8 = [r for r in rows if r["variant"] == "executorch-int8"]
    assert len(int8) == 2 and all(r["status"] == "failed" for r in int8)
    assert all(str(broken) in r["error"] for r in int8)
    assert len(rows) == 4  # the two programs chosen, nothing else


def test_corrupt_flatbuffer_with_a_valid_header_is_a_named_error(export_root, tmp_path):
    source = export_root / "digits-cnn" / "tflite" / "fp32.tflite"
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(source.read_bytes()[:4096])  # keeps the TFL3 identifier
    with pytest.raises(runtimes.ArtifactError, match="corrupt TFLite model") as info:
        read_ops(broken)
    assert str(broken) in str(info.value)
    with pytest.raises(runtimes.ArtifactError, match="no such TFLite file"):
        read_ops(tmp_path / "absent.tflite")


def test_a_conversion_that_failed_at_export_is_a_row_with_its_reason_not_a_failure(
        export_copy, tmp_path):
    """An optional converter that failed (its artifact a failed row of the manifest) is a
    not-exported row naming why, the matrix cell the report shows; the run still passes."""
    path = export_copy / "digits-mlp" / "manifest.json"
    data = json.loads(path.read_text())
    (artifact,) = [a for a in data["artifacts"] if a["format"] == "litert-torch-int8"]
    artifact.update(status="failed", reason="ModuleNotFoundError: No module named 'litert_torch'",
                    path="", sha256=None, bytes=None)
    path.write_text(json.dumps(data))
    run_dir = tmp_path / "run"
    result = invoke("edge", "--artifacts", str(export_copy), "--model", "digits-mlp", *QUICK,
                    "--no-baselines", "--variants", "litert-torch-fp32,litert-torch-int8",
                    "--out", str(run_dir))
    assert result.exit_code == 0, result.output
    rows = rows_of(run_dir)
    assert {r["variant"] for r in rows} == {"litert-torch-fp32", "litert-torch-int8"}
    (row,) = [r for r in rows if r["variant"] == "litert-torch-int8"]
    assert row["status"] == "not-exported" and "No module named 'litert_torch'" in row["error"]
    assert (row["framework"], row["runtime"], row["precision"]) == ("pytorch", "litert", "int8")
    assert all(r["status"] == "ok" for r in rows if r is not row)
    assert invoke("report", str(run_dir)).exit_code == 0
    html = (run_dir / "report.html").read_text()
    assert "not exported: ModuleNotFoundError: No module named &#39;litert_torch&#39;" in html


# --- mobile readiness ---------------------------------------------------------------------


def test_a_flex_model_is_not_edge_ready_and_its_op_is_named(tmp_path):
    path = flex_model(tmp_path / "flex.tflite")
    report = read_ops(path)
    assert report.flex_ops == ["FlexMatrixDeterminant"]
    assert report.ops == ["FlexMatrixDeterminant"]
    assert report.edge_ready is False
    assert "FlexMatrixDeterminant" in report.verdict
    # it really is a Flex model: the plain LiteRT interpreter refuses it at allocation
    with pytest.raises(runtimes.ArtifactError, match="Select TensorFlow op"):
        runtimes.TFLiteModel(path)


def test_edge_flags_a_flex_variant_without_running_it(export_copy, tmp_path):
    flex_model(export_copy / "digits-mlp" / "tflite" / "fp16.tflite")
    reseal(export_copy, "digits-mlp", "tflite-fp16")
    run_dir = tmp_path / "run"
    result = invoke("edge", "--artifacts", str(export_copy), "--model", "digits-mlp", *QUICK,
                    "--no-baselines", "--variants", TFLITE, "--out", str(run_dir))
    assert result.exit_code == 4, result.output
    rows = rows_of(run_dir)
    (flex,) = [r for r in rows if r["variant"] == "tflite-fp16"]
    assert flex["status"] == "not-edge-ready" and flex["edge_ready"] is False
    assert flex["non_builtin_ops"] == ["FlexMatrixDeterminant"]
    assert "FlexMatrixDeterminant" in flex["error"] and flex["latency_ms"] is None
    others = [r for r in rows if r["variant"] != "tflite-fp16"]
    assert len(others) == 6 and all(r["status"] == "ok" for r in others)  # XNNPACK on and off
    assert "FlexMatrixDeterminant" in result.output


# --- usage --------------------------------------------------------------------------------


def test_bad_thread_list_is_a_usage_error(export_root, tmp_path):
    result = invoke("edge", "--artifacts", str(export_root), "--threads", "1,zero",
                    "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "--threads" in result.output


def test_an_unknown_variant_is_a_usage_error_naming_the_edge_formats(export_root, tmp_path):
    result = invoke("edge", "--artifacts", str(export_root),
                    "--variants", "tflite-int8,tflite-int4", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "tflite-int4 is not an edge format" in result.output
    assert "executorch-int8" in result.output  # the formats it could have named
    assert not (tmp_path / "results.json").exists()


def test_missing_export_folder_is_a_usage_error(tmp_path):
    result = invoke("edge", "--artifacts", str(tmp_path / "nowhere"), "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "nowhere" in result.output and "deploybench export" in result.output


def test_unexported_model_is_a_failed_row_naming_the_manifest(export_root, tmp_path):
    result = invoke("edge", "--artifacts", str(export_root), "--model", "mobilenet-v2",
                    *QUICK[:-2], "--repeats", "2", "--out", str(tmp_path))
    assert result.exit_code == 4
    (row,) = rows_of(tmp_path)  # a row that failed before running is written once
    assert row["status"] == "failed" and "manifest.json" in row["error"]
    environment = json.loads((tmp_path / "results.json").read_text())["environment"]
    assert environment["edge"]["repeats"] == 2


def test_repeats_measure_every_row_once_per_round_in_fresh_processes():
    from deploybench.edge.bench import Pending, repeated
    from deploybench.edge.worker import Job

    def job(variant: str) -> Job:
        return Job("m", variant, "litert", "/x.tflite", "/g.npz", 1, True, 20, 2)

    plan = [Pending({"variant": "a"}, job("a")), Pending({"variant": "b"}, job("b")),
            Pending({"variant": "broken", "status": "failed"})]
    rows = [(item.row["variant"], item.row["repeat"]) for item in repeated(plan, 3)]
    assert rows == [("a", 1), ("b", 1), ("broken", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)]


def test_int8_line_compares_with_fp32_and_names_a_cpu_without_int8_dot_product():
    from deploybench.results import cpu_int8_dot_product
    from deploybench.verdict import int8_lines

    assert set(cpu_int8_dot_product()) <= {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp",
                                            "i8mm"}

    def row(variant, xnnpack, p50, size):
        return {"kind": "edge", "model": "m", "variant": variant, "threads": 1,
                "xnnpack": xnnpack, "latency_ms": {"p50": p50}, "size_bytes": size,
                "top1_agreement": 0.97 if "int8" in variant else 1.0}

    rows = [row("tflite-fp32", True, 8.0, 4000), row("tflite-fp32", False, 30.0, 4000),
            row("tflite-int8", True, 8.0, 1000), row("tflite-int8", False, 25.0, 1000)]
    plain = {"environment": {"cpu_int8_dot_product": []}}
    (line,) = int8_lines(plain, "m", rows)
    # each at its faster setting: 8 ms against 8 ms
    assert "4.00x smaller, p50 1.00x as fast, top-1 agreement with fp32's reference 0.970" in line
    assert "no int8 dot-product instructions" in line
    vnni = {"environment": {"cpu_int8_dot_product": ["avx512_vnni"]}}
    rows[2]["latency_ms"]["p50"] = 4.0
    (line,) = int8_lines(vnni, "m", rows)
    assert "p50 2.00x as fast" in line and "dot-product" not in line
    assert int8_lines(plain, "m", rows[:2]) == []  # no int8 variant measured


def test_executorch_runtime_loads_without_its_compiler_which_still_loads_after(export_root):
    """The bindings come up in a fresh process without `executorch.exir`'s compiler (what made
    the runtime's import ~10 s), load a program, and the compiler still imports whole after."""
    pte = export_root / "digits-mlp" / "executorch" / "fp32.pte"
    code = ("import sys\n"
            "from deploybench import runtimes\n"
            "runtimes.executorch_bindings()\n"
            "assert 'executorch.exir.capture' not in sys.modules, 'compiler loaded'\n"
            "assert 'executorch.exir' not in sys.modules\n"
            f"runner = runtimes.load_executorch({str(pte)!r})\n"
            "import executorch.exir\n"
            "assert callable(executorch.exir.to_edge_transform_and_lower)\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
