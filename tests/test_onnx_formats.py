"""ONNX artifacts from both twins (torch.onnx, tf2onnx, ONNX Runtime's int8 quantization),
run by ONNX Runtime: the public signature, parity with the reference, bad files, a missing
converter, threads."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from deploybench import runtimes
from deploybench.batch import Batch
from deploybench.export.exporter import in_batches
from deploybench.export.formats import FORMATS
from deploybench.export.onnx_formats import TF2ONNX_OPSET
from deploybench.golden import Golden, accuracy
from deploybench.manifest import FP32_TOLERANCE, MAX_ACCURACY_DROP, load_manifest
from deploybench.runtimes import ArtifactError, ONNXRuntimeBackend, load_onnx
from tests.test_export import reference_module

MODELS = ["digits-mlp", "digits-cnn"]
# format: (framework, precision, file name)
ONNX = {
    "onnx-keras": ("tensorflow", "fp32", "keras-fp32.onnx"),
    "onnx-keras-int8": ("tensorflow", "int8", "keras-int8.onnx"),
    "onnx-torch": ("pytorch", "fp32", "torch-fp32.onnx"),
    "onnx-torch-int8": ("pytorch", "int8", "torch-int8.onnx"),
}


def dims(value) -> list[int | str]:  # noqa: ANN001 - an onnx ValueInfoProto
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def tiny_model(path: Path, elem_type: int | None = None) -> Path:
    """A one-Relu ONNX model, input `x` (batch, 4) float32 unless `elem_type` says otherwise."""
    import onnx
    from onnx import TensorProto, helper

    elem_type = TensorProto.FLOAT if elem_type is None else elem_type
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", elem_type, ["batch", 4])],
        [helper.make_tensor_value_info("y", elem_type, ["batch", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                                ir_version=10), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_onnx_artifacts_are_single_files_with_the_public_signature(export_root, model):
    """Status ok with the declared matrix cell; one self-contained, valid file; input `pixels`
    and output `logits`, float32, batch dimension dynamic, for onnx and ONNX Runtime alike."""
    import onnx
    import onnxruntime as ort

    manifest = load_manifest(export_root, model)
    declared = {f.name: f for f in FORMATS}
    folder = None
    for fmt, (framework, precision, file_name) in ONNX.items():
        artifact = manifest.artifact(fmt)
        assert artifact.status == "ok", artifact
        assert (artifact.framework, artifact.runtime, artifact.precision) == (
            framework, "onnxruntime", precision)
        assert declared[fmt].optional and declared[fmt].runtime in runtimes.BACKENDS
        path = export_root / artifact.path
        assert path.name == file_name and path.is_file()
        folder = path.parent
        onnx.checker.check_model(str(path), full_check=True)
        proto = onnx.load(str(path), load_external_data=False)
        assert not [t.name for t in proto.graph.initializer
                    if t.data_location == onnx.TensorProto.EXTERNAL], fmt
        # only the standard domain: no unused imports left by a converter or ORT's optimizer
        assert {o.domain for o in proto.opset_import} == {""}, fmt
        if framework == "tensorflow":
            assert proto.opset_import[0].version == TF2ONNX_OPSET
        assert [v.name for v in proto.graph.input] == ["pixels"], fmt
        assert [v.name for v in proto.graph.output] == ["logits"], fmt
        (inp,), (out,) = proto.graph.input, proto.graph.output
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, fmt
        assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, fmt
        assert dims(inp) == ["batch", *manifest.inputs[0].shape[1:]], fmt
        assert dims(out) == ["batch", 10], fmt
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [(i.name, i.shape[0]) for i in session.get_inputs()] == [("pixels", "batch")]
        assert [(o.name, o.shape[0]) for o in session.get_outputs()] == [("logits", "batch")]
        if precision == "int8":  # QDQ: int8 weights, per output channel
            int8 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
            assert int8 and {"QuantizeLinear", "DequantizeLinear"} <= {
                n.op_type for n in proto.graph.node}, fmt
            scales = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer
                      if t.name.endswith("_scale")]
            assert any(s.size > 1 for s in scales), fmt
            # 1-byte weights; per-channel scales, zero points and QDQ nodes on top (digits-mlp:
            # 2.5-2.7x smaller, digits-cnn: 3.4x)
            fp32 = manifest.artifact(fmt.removesuffix("-int8"))
            assert artifact.bytes < fp32.bytes / 2, fmt
    # the four files and nothing else: no external data, no converter's leftovers
    assert sorted(p.name for p in folder.iterdir()) == sorted(f for _, _, f in ONNX.values())


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_onnx_artifacts_reproduce_the_reference(export_root, model):
    """On the golden samples (as the gate ran them, the manifest's figures again) and on
    inputs the export never saw, at batch 1 and at max_rows: fp32 within the fp32 tolerance of
    the reference module; int8 within the accuracy gate, and mostly the same top-1."""
    import torch

    manifest = load_manifest(export_root, model)
    golden = Golden.load(export_root / manifest.golden["path"])
    module = reference_module(export_root, model)
    shape = manifest.inputs[0].shape[1:]
    unseen = np.random.default_rng(11).uniform(0, 1, (manifest.max_rows, *shape))
    unseen = unseen.astype(np.float32)
    with torch.inference_mode():
        reference = module(torch.from_numpy(unseen)).numpy()
    for fmt in ONNX:
        artifact = manifest.artifact(fmt)
        runner = load_onnx(export_root / artifact.path)
        outputs = in_batches(runner, golden.inputs, manifest.max_rows)
        diff = float(np.max(np.abs(outputs - golden.outputs)))
        assert diff == pytest.approx(artifact.max_abs_diff, abs=1e-7), fmt
        assert accuracy(outputs, golden.labels) == pytest.approx(artifact.accuracy), fmt
        if artifact.quantized:
            assert golden.accuracy - artifact.accuracy <= MAX_ACCURACY_DROP, fmt
        else:
            assert diff <= FP32_TOLERANCE, fmt
        for rows in (1, manifest.max_rows):  # the dynamic batch dimension, both ends
            got = runner(Batch.single(manifest.inputs[0].name, unseen[:rows]))
            assert got.shape == (rows, 10) and got.dtype == np.float32, (fmt, rows)
            if artifact.quantized:
                agreement = np.mean(got.argmax(1) == reference[:rows].argmax(1))
                assert rows == 1 or agreement >= 0.8, (fmt, agreement)
            else:
                diff = float(np.max(np.abs(got - reference[:rows])))
                assert diff <= FP32_TOLERANCE, (fmt, rows, diff)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_a_damaged_onnx_file_is_refused_by_name(export_root, tmp_path, damage):
    manifest = load_manifest(export_root, "digits-cnn")
    data = (export_root / manifest.artifact("onnx-torch").path).read_bytes()
    bad = tmp_path / f"{damage}.onnx"
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    else:  # the header overwritten: no longer a model
        bad.write_bytes(b"\xff" * 64 + data[64:])
    with pytest.raises(ArtifactError, match=rf"{damage}.onnx: not a loadable ONNX model \(.+\)"):
        load_onnx(bad)


def test_a_missing_or_non_float32_model_is_refused(tmp_path):
    from onnx import TensorProto

    with pytest.raises(ArtifactError, match="absent.onnx: no such ONNX model"):
        load_onnx(tmp_path / "absent.onnx")
    ints = tiny_model(tmp_path / "ints.onnx", TensorProto.INT32)
    # int32 inputs are public inputs (token ids); an int32 output is no artifact's
    with pytest.raises(ArtifactError, match=r"ints.onnx: output is tensor\(int32\), not float32"):
        load_onnx(ints)
    doubles = tiny_model(tmp_path / "doubles.onnx", TensorProto.DOUBLE)
    with pytest.raises(ArtifactError, match=r"input 'x' is tensor\(double\), not float32 or int32"):
        load_onnx(doubles)


@pytest.mark.parametrize("threads", [1, 2])
def test_onnxruntime_backend_honours_threads(tmp_path, threads):
    import onnxruntime as ort

    path = tiny_model(tmp_path / "tiny.onnx")
    assert runtimes.BACKENDS["onnxruntime"] is ONNXRuntimeBackend
    runner = ONNXRuntimeBackend(path, threads).load()
    assert runner.info() == {"runtime_threads": {"intra_op": threads, "inter_op": 1}}
    options = runner.session.get_session_options()
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert runner.session.get_providers() == ["CPUExecutionProvider"]
    x = Batch.single("x", np.array([[-1, 0, 2, -3]], dtype=np.float32))
    np.testing.assert_array_equal(runner.predict(x), [[0, 0, 2, 0]])
    # unset, ORT picks: reported as unknown, not as ORT's placeholder 0
    assert load_onnx(path).info()["runtime_threads"]["intra_op"] is None


@pytest.mark.slow
def test_a_missing_converter_is_a_failed_row_and_the_rest_publishes(tmp_path, monkeypatch):
    """No tf2onnx: onnx-keras fails naming it, onnx-keras-int8 has no file to quantize and
    fails too; the SavedModel and the torch twin's ONNX files publish, nothing of the failed
    formats (or of any converter's temporary files) is left in the published folder."""
    from deploybench.export import exporter, onnx_formats
    from deploybench.zoo import get_spec

    monkeypatch.setattr(exporter, "FORMATS", (FORMATS[0], *onnx_formats.FORMATS))
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # `import tf2onnx` raises
    result = exporter.export_model(get_spec("digits-mlp"), tmp_path)
    assert result.published and not result.problems
    rows = {a.format: a for a in result.manifest.artifacts}
    assert list(rows) == ["savedmodel", *(f.name for f in onnx_formats.FORMATS)]
    assert rows["onnx-keras"].status == "failed"
    assert rows["onnx-keras"].reason.startswith("ModuleNotFoundError")
    assert "tf2onnx" in rows["onnx-keras"].reason
    assert rows["onnx-keras-int8"].status == "failed"
    assert "onnx-keras was not written" in rows["onnx-keras-int8"].reason
    assert [line.split(":")[0] for line in result.skipped] == [
        "digits-mlp onnx-keras", "digits-mlp onnx-keras-int8"]
    for fmt in ("savedmodel", "onnx-torch", "onnx-torch-int8"):
        assert rows[fmt].status == "ok", rows[fmt]
    published = (tmp_path / "digits-mlp").resolve()
    assert sorted(p.name for p in (published / "onnx").iterdir()) == [
        "torch-fp32.onnx", "torch-int8.onnx"]
    assert not [p for p in published.iterdir() if p.name.startswith("tmp")]
