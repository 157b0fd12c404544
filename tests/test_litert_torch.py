"""The PyTorch twin converted to LiteRT by litert-torch, run by the LiteRT interpreter: the public
signature, parity with the reference at both ends of the batch range, bad files, a missing
converter."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from deploybench.batch import Batch
from deploybench.export import litert_torch_formats
from deploybench.export.exporter import in_batches
from deploybench.export.formats import FORMATS
from deploybench.golden import Golden, accuracy
from deploybench.manifest import FP32_TOLERANCE, MAX_ACCURACY_DROP, load_manifest
from deploybench.runtimes import ArtifactError, load_exported_program

MODELS = ["digits-mlp", "digits-cnn"]
# format: (precision, file name under <model>/litert-torch/)
LITERT_TORCH = {
    "litert-torch-fp32": ("fp32", "fp32.tflite"),
    "litert-torch-dynamic-int8": ("dynamic-int8", "dynamic-int8.tflite"),
    "litert-torch-int8": ("int8", "int8.tflite"),
}
RUNNERS = {f.name: f.runner for f in FORMATS}


def test_the_formats_are_declared_optional_pytorch_on_litert():
    declared = {f.name: f for f in FORMATS}
    assert {f.name for f in litert_torch_formats.FORMATS} == set(LITERT_TORCH)
    for name, (precision, _) in LITERT_TORCH.items():
        fmt = declared[name]
        assert (fmt.framework, fmt.runtime, fmt.precision) == ("pytorch", "litert", precision)
        assert fmt.optional and fmt.quantized == (precision != "fp32")
        # the runner of the Keras twin's .tflite files, so both twins run the same way
        assert fmt.runner is declared["tflite-fp32"].runner


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_litert_torch_files_have_the_public_signature_and_builtin_ops_only(export_root, model):
    """Status ok with the declared matrix cell; `serving_default` taking the model's input
    name and returning its output name, float32 both, NHWC (the model's input shape) with a
    batch dimension of any size; debug strings stripped; builtin ops only, no TRANSPOSE."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils

    from deploybench.edge.ops import read_ops

    manifest = load_manifest(export_root, model)
    input_spec, output_spec = manifest.inputs[0], manifest.outputs[0]
    for fmt, (precision, file_name) in LITERT_TORCH.items():
        artifact = manifest.artifact(fmt)
        assert artifact.status == "ok", artifact
        assert (artifact.framework, artifact.runtime, artifact.precision) == (
            "pytorch", "litert", precision)
        assert artifact.quantized == (precision != "fp32")
        assert artifact.path == f"{model}/litert-torch/{file_name}"
        path = export_root / artifact.path
        assert artifact.bytes == path.stat().st_size

        interpreter = Interpreter(model_path=str(path))
        assert interpreter.get_signature_list() == {
            "serving_default": {"inputs": [input_spec.name], "outputs": [output_spec.name]}
        }, fmt
        runner = interpreter.get_signature_runner("serving_default")
        inputs = runner.get_input_details()[input_spec.name]
        outputs = runner.get_output_details()[output_spec.name]
        assert inputs["dtype"] == np.float32 and outputs["dtype"] == np.float32, fmt
        assert list(inputs["shape_signature"]) == [-1, *input_spec.shape[1:]], fmt
        assert list(outputs["shape_signature"]) == [-1, *output_spec.shape[1:]], fmt

        report = read_ops(path)
        assert report.edge_ready and not report.flex_ops, (fmt, report.verdict)
        # the twin permutes NHWC to NCHW itself; the converter folds it away
        assert "TRANSPOSE" not in report.ops, (fmt, report.op_counts)
        parsed = flatbuffer_utils.read_model(str(path))
        assert not any(t.name for t in parsed.subgraphs[0].tensors), fmt


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_full_int8_runs_int8_between_a_quantize_and_a_dequantize(export_root, model):
    """As the Keras twin's int8 file: float32 only at the input and the logits, one QUANTIZE
    and one DEQUANTIZE, every other tensor int8 (or int32: biases, shapes)."""
    from ai_edge_litert.tools import flatbuffer_utils

    from deploybench.edge.ops import read_ops

    path = export_root / load_manifest(export_root, model).artifact("litert-torch-int8").path
    subgraph = flatbuffer_utils.read_model(str(path)).subgraphs[0]
    types: dict[str, set[int]] = {}
    for index, tensor in enumerate(subgraph.tensors):
        types.setdefault(flatbuffer_utils.type_to_name(tensor.type), set()).add(index)
    assert set(types) == {"FLOAT32", "INT8", "INT32"}
    assert types["FLOAT32"] == {*subgraph.inputs, *subgraph.outputs}
    counts = read_ops(path).op_counts
    assert counts["QUANTIZE"] == 1 and counts["DEQUANTIZE"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_litert_torch_files_reproduce_the_golden_outputs(export_root, model):
    """Through the parity gate's batching (one row, then max_rows at a time): fp32 within the
    fp32 tolerance, the quantized variants within the accuracy gate; as the manifest says."""
    manifest = load_manifest(export_root, model)
    golden = Golden.load(export_root / manifest.golden["path"])
    for fmt in LITERT_TORCH:
        artifact = manifest.artifact(fmt)
        outputs = in_batches(RUNNERS[fmt](export_root / artifact.path), golden.inputs,
                             manifest.max_rows)
        assert outputs.shape == golden.outputs.shape, fmt
        diff = float(np.max(np.abs(outputs - golden.outputs)))
        measured = accuracy(outputs, golden.labels)
        assert diff == pytest.approx(artifact.max_abs_diff, abs=1e-6), fmt
        assert measured == pytest.approx(artifact.accuracy), fmt
        if artifact.quantized:
            assert golden.accuracy - measured <= MAX_ACCURACY_DROP, (fmt, measured)
        else:
            assert diff <= FP32_TOLERANCE, (fmt, diff)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_litert_torch_files_match_the_exported_program_on_unseen_inputs(export_root, model):
    """Inputs the export never saw (seeded, in the data's range), at one row, a few rows and
    max_rows (the file was converted at one row and resized by LiteRT): fp32 within the fp32
    tolerance of torch.export's program, the quantized variants mostly the same top-1."""
    manifest = load_manifest(export_root, model)
    golden = Golden.load(export_root / manifest.golden["path"])
    low, high = float(golden.inputs.only.min()), float(golden.inputs.only.max())
    shape = manifest.inputs[0].shape[1:]
    unseen = np.random.default_rng(11).uniform(low, high, (manifest.max_rows, *shape))
    unseen = Batch.single(manifest.inputs[0].name, unseen.astype(np.float32))
    reference = load_exported_program(
        export_root / manifest.artifact("exported-program").path).predict(unseen)
    for fmt in LITERT_TORCH:
        predict = RUNNERS[fmt](export_root / manifest.artifact(fmt).path)
        for rows in (1, 3, manifest.max_rows, 1):  # and back down: resizing both ways
            outputs = predict(unseen[:rows])
            assert outputs.shape == (rows, reference.shape[1]), (fmt, rows)
            if manifest.artifact(fmt).quantized:
                agreement = np.mean(outputs.argmax(1) == reference[:rows].argmax(1))
                assert rows < manifest.max_rows or agreement >= 0.8, (fmt, agreement)
            else:
                diff = float(np.max(np.abs(outputs - reference[:rows])))
                assert diff <= FP32_TOLERANCE, (fmt, rows, diff)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_a_damaged_litert_torch_file_is_refused_naming_it(export_root, tmp_path, damage):
    manifest = load_manifest(export_root, "digits-cnn")
    good = (export_root / manifest.artifact("litert-torch-fp32").path).read_bytes()
    bad = tmp_path / f"{damage}.tflite"
    if damage == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    else:  # the root table's offset garbled: the flatbuffer verifier rejects it
        bad.write_bytes(b"\xff\xff\xff\x7f" + good[4:])
    with pytest.raises(ArtifactError, match=f"{bad.name}: not a loadable TFLite model"):
        RUNNERS["litert-torch-fp32"](bad)


@pytest.mark.slow
def test_a_missing_converter_leaves_failed_rows_and_the_rest_publishes(tmp_path, monkeypatch):
    """No litert_torch to import: each litert-torch format is a failed row naming it, nothing of
    it is left in the published folder, and the model's other formats publish."""
    from deploybench.export import exporter
    from deploybench.zoo import get_spec

    declared = {f.name: f for f in FORMATS}
    monkeypatch.setattr(exporter, "FORMATS", (
        declared["savedmodel"], declared["tflite-fp32"], *litert_torch_formats.FORMATS))
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # `import litert_torch` fails
    root = tmp_path / "export"
    result = exporter.export_model(get_spec("digits-mlp"), root)
    assert result.published and not result.problems, result.problems
    rows = {a.format: a for a in result.manifest.artifacts}
    assert rows["savedmodel"].status == "ok" and rows["tflite-fp32"].status == "ok"
    for fmt in LITERT_TORCH:
        assert rows[fmt].status == "failed", rows[fmt]
        assert "litert_torch" in rows[fmt].reason, rows[fmt].reason
        assert rows[fmt].path == "" and rows[fmt].sha256 is None
    assert len(result.skipped) == len(LITERT_TORCH)
    published = (root / "digits-mlp").resolve()
    assert published == result.build_dir.resolve()
    assert not (published / litert_torch_formats.OUTPUT_DIR).exists()
    assert not list(published.rglob("*litert*"))
