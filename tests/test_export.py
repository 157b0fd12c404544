"""The export stage, with real runtimes: every artifact reproduces the reference."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from deploybench import runtimes
from deploybench.batch import Batch
from deploybench.export.exporter import in_batches
from deploybench.export.formats import FORMATS
from deploybench.files import tree_sha256
from deploybench.golden import Golden, accuracy
from deploybench.manifest import FP32_TOLERANCE, MAX_ACCURACY_DROP, load_manifest
from tests.conftest import invoke

MODELS = ["digits-mlp", "digits-cnn"]
RUNNERS = {f.name: f.runner for f in FORMATS}


def runner_for(fmt: str, path: Path):
    """Each format under its own runtime (the .mar's model read from inside the archive)."""
    return RUNNERS[fmt](path)


@pytest.mark.parametrize("model", MODELS)
def test_manifest_describes_every_artifact(export_root, model):
    manifest = load_manifest(export_root, model)
    assert manifest.model == model
    assert manifest.golden["reference_accuracy"] >= 0.95
    assert manifest.inputs[0].name == "pixels" and manifest.inputs[0].dtype == "float32"
    assert manifest.outputs[0].name == "logits" and manifest.outputs[0].shape == [None, 10]
    formats = {a.format for a in manifest.artifacts}
    assert formats == {
        "savedmodel", "tflite-fp32", "tflite-fp16", "tflite-dynamic-int8", "tflite-int8",
        "torchscript", "mar", "exported-program", "aoti", "executorch-fp32", "executorch-int8",
        "litert-torch-fp32", "litert-torch-dynamic-int8", "litert-torch-int8",
        "onnx-keras", "onnx-keras-int8", "onnx-torch", "onnx-torch-int8",
    }
    for artifact in manifest.artifacts:
        path = export_root / artifact.path
        assert artifact.status == "ok", artifact
        assert path.exists()
        assert artifact.sha256 == tree_sha256(path)
        assert artifact.bytes > 0 and artifact.export_seconds >= 0
    for package in ("torch", "tensorflow", "keras", "ai-edge-litert", "torchserve"):
        assert manifest.versions[package]


@pytest.mark.parametrize("model", MODELS)
def test_each_artifact_reproduces_the_reference_in_its_own_runtime(export_root, model):
    manifest = load_manifest(export_root, model)
    golden = Golden.load(export_root / manifest.golden["path"])
    for artifact in manifest.artifacts:
        outputs = in_batches(runner_for(artifact.format, export_root / artifact.path),
                             golden.inputs, manifest.max_rows)
        assert outputs.shape == golden.outputs.shape
        measured = accuracy(outputs, golden.labels)
        assert measured == pytest.approx(artifact.accuracy), artifact.format
        diff = float(np.max(np.abs(outputs - golden.outputs)))
        assert diff == pytest.approx(artifact.max_abs_diff, abs=1e-7), artifact.format
        if artifact.quantized:
            assert golden.accuracy - measured <= MAX_ACCURACY_DROP, artifact.format
        else:
            assert diff <= FP32_TOLERANCE, artifact.format


TFLITE = ("tflite-fp32", "tflite-fp16", "tflite-dynamic-int8", "tflite-int8")


def tensor_types(model) -> dict[str, set[int]]:  # noqa: ANN001 - a flatbuffer ModelT
    """Tensor type name -> the tensor indices of that type, in the first subgraph."""
    from ai_edge_litert.tools import flatbuffer_utils

    types: dict[str, set[int]] = {}
    for index, tensor in enumerate(model.subgraphs[0].tensors):
        types.setdefault(flatbuffer_utils.type_to_name(tensor.type), set()).add(index)
    return types


@pytest.mark.parametrize("model", MODELS)
def test_every_tflite_variant_takes_and_returns_float32_under_its_signature(export_root, model):
    """The public signature for every artifact, full int8 included; debug strings stripped."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils

    manifest = load_manifest(export_root, model)
    golden = Golden.load(export_root / manifest.golden["path"])
    for fmt in TFLITE:
        path = export_root / manifest.artifact(fmt).path
        interpreter = Interpreter(model_path=str(path))
        assert interpreter.get_signature_list() == {
            "serving_default": {"inputs": ["pixels"], "outputs": ["logits"]}
        }, fmt
        runner = interpreter.get_signature_runner("serving_default")
        assert runner.get_input_details()["pixels"]["dtype"] == np.float32, fmt
        assert runner.get_output_details()["logits"]["dtype"] == np.float32, fmt
        logits = runner(pixels=golden.inputs[:3].only)["logits"]
        np.testing.assert_array_equal(logits, runtimes.TFLiteModel(path).predict(golden.inputs[:3]))
        parsed = flatbuffer_utils.read_model(str(path))
        assert not any(t.name for t in parsed.subgraphs[0].tensors), fmt
        assert not parsed.subgraphs[0].name and not parsed.description, fmt


def test_full_int8_variant_runs_int8_between_a_quantize_and_a_dequantize(export_root):
    """float32 only at the edges: the input and the logits; every other tensor is int8, or
    int32 for biases and shape constants."""
    from ai_edge_litert.tools import flatbuffer_utils

    from deploybench.edge.ops import read_ops

    manifest = load_manifest(export_root, "digits-cnn")
    path = export_root / manifest.artifact("tflite-int8").path
    parsed = flatbuffer_utils.read_model(str(path))
    subgraph = parsed.subgraphs[0]
    types = tensor_types(parsed)
    assert set(types) == {"FLOAT32", "INT8", "INT32"}
    assert types["FLOAT32"] == {*subgraph.inputs, *subgraph.outputs}
    counts = read_ops(path).op_counts
    assert counts["QUANTIZE"] == 1 and counts["DEQUANTIZE"] == 1


def test_stripping_debug_strings_changes_no_output(export_root, tmp_path):
    """The exporter strips every TFLite variant: the stripped file computes exactly the logits
    of the converter's own output, without its tensor names."""
    from ai_edge_litert.tools import flatbuffer_utils

    from deploybench.export.tf_formats import ExportContext, _tflite, strip_debug_strings
    from deploybench.zoo import get_spec

    manifest = load_manifest(export_root, "digits-cnn")
    golden = Golden.load(export_root / manifest.golden["path"])
    ctx = ExportContext(get_spec("digits-cnn"), None, None, golden.inputs,
                        (export_root / "digits-cnn").resolve())
    for variant in ("fp32", "int8"):
        full = _tflite(ctx, variant)
        stripped = strip_debug_strings(full)
        assert len(stripped) < len(full)
        names = [t.name for t in
                 flatbuffer_utils.read_model_from_bytearray(bytearray(full)).subgraphs[0].tensors]
        assert all(names)  # what was stripped: every tensor had a name
        outputs = []
        for name, data in (("full", full), ("stripped", stripped)):
            (tmp_path / f"{name}.tflite").write_bytes(data)
            outputs.append(runtimes.TFLiteModel(tmp_path / f"{name}.tflite").predict(golden.inputs))
        np.testing.assert_array_equal(outputs[0], outputs[1])


def test_savedmodel_has_tf_serving_layout_and_stable_names(export_root):
    import tensorflow as tf

    manifest = load_manifest(export_root, "digits-mlp")
    path = export_root / manifest.artifact("savedmodel").path
    assert path.name == "1" and path.parent.name == "savedmodel"
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["pixels"]
    assert list(signature.structured_outputs) == ["logits"]


def test_mar_carries_model_handler_and_manifest(export_root):
    manifest = load_manifest(export_root, "digits-cnn")
    mar = export_root / "model-store" / "digits-cnn.mar"
    assert mar.resolve() == (export_root / manifest.artifact("mar").path).resolve()
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        mar_manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        signature = json.loads(archive.read("signature.json"))
    assert {"MAR-INF/MANIFEST.json", "handler.py", "input_validation.py",
            "signature.json"} <= names
    assert mar_manifest["model"]["serializedFile"] in names
    assert mar_manifest["model"]["modelName"] == "digits-cnn"
    assert signature["input_shape"] == [8, 8, 1]


def test_models_config_parses_with_tf_serving_protos(export_root):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(
        (export_root / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    entries = {c.name: c.base_path for c in config.model_config_list.config}
    assert set(entries) == set(MODELS)
    for base in entries.values():
        local = export_root / base.removeprefix("/models/")
        assert (local / "1" / "saved_model.pb").is_file()


def test_unknown_model_exits_non_zero_with_the_list(tmp_path):
    result = invoke("export", "--model", "resnet-9000", "--out", str(tmp_path))
    assert result.exit_code != 0
    assert "digits-mlp" in result.output and "digits-cnn" in result.output


def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = invoke("export", "--model", "digits-mlp", "--out", str(blocker / "sub"))
    assert result.exit_code != 0
    assert "cannot write to output folder" in result.output


def test_parity_failure_exits_non_zero_and_keeps_earlier_artifacts(export_copy, monkeypatch):
    """A wrong Keras weight: the TensorFlow formats fail the gate. Only they are re-exported
    here (the gate judges every format alike; the torch path's own failure is tested below)."""
    from deploybench.export import exporter
    from deploybench.zoo import spec as spec_module

    monkeypatch.setattr(exporter, "FORMATS", FORMATS[:2])  # savedmodel, tflite-fp32
    root = export_copy  # holds the session's published export
    before = load_manifest(root, "digits-mlp")
    published = (root / "digits-mlp").resolve()

    real = spec_module.torch_to_keras_weights

    def perturbed(module):
        weights = real(module)
        weights[0] = weights[0] + 0.05  # a porting mistake the gate must catch
        return weights

    monkeypatch.setattr(spec_module, "torch_to_keras_weights", perturbed)
    second = invoke("export", "--model", "digits-mlp", "--out", str(root))
    assert second.exit_code == 3
    assert "savedmodel" in second.output and "max abs diff" in second.output
    # the earlier export is still the published one, intact
    assert (root / "digits-mlp").resolve() == published
    after = load_manifest(root, "digits-mlp")
    assert after.created == before.created
    for artifact in after.artifacts:
        assert tree_sha256(root / artifact.path) == artifact.sha256


def test_a_quantized_artifact_failing_the_gate_is_refused_and_the_rest_publishes(
        export_copy, monkeypatch):
    """What quantization costs is a finding: the full-int8 variant judged against a gate no
    quantized file can pass is refused (its row, figure and reason kept, its file not
    published), and the model publishes with the artifacts that passed, exit 0."""
    from deploybench.export import exporter

    names = ("savedmodel", "tflite-fp32", "tflite-int8")
    monkeypatch.setattr(exporter, "FORMATS", tuple(f for f in FORMATS if f.name in names))
    monkeypatch.setattr(exporter, "MAX_ACCURACY_DROP", -1.0)  # every quantized file fails
    root = export_copy
    before = (root / "digits-mlp").resolve()
    result = invoke("export", "--model", "digits-mlp", "--out", str(root))
    assert result.exit_code == 0, result.output
    assert "refused" in result.output and "tflite-int8" in result.output
    assert (root / "digits-mlp").resolve() != before  # published
    manifest = load_manifest(root, "digits-mlp")
    int8 = manifest.artifact("tflite-int8")
    assert int8.status == "parity-failed" and "accuracy drop" in int8.reason
    assert int8.sha256 is None and not (root / int8.path).exists()
    for fmt in ("savedmodel", "tflite-fp32"):
        artifact = manifest.artifact(fmt)
        assert artifact.status == "ok"
        assert tree_sha256(root / artifact.path) == artifact.sha256


def test_only_findings_are_refused_a_porting_mistake_stops_the_export():
    from deploybench.export.exporter import refusable
    from deploybench.zoo import get_spec

    by_name = {f.name: f for f in FORMATS}
    digits, bert = get_spec("digits-mlp"), get_spec("text-bert")
    assert refusable(by_name["tflite-int8"], digits)  # quantized
    assert refusable(by_name["onnx-torch"], digits)  # an optional converter's file
    assert not refusable(by_name["savedmodel"], digits)  # fp32, the kit's own path
    assert not refusable(by_name["executorch-fp32"], digits)
    # a cause the spec names makes a core fp32 failure a recorded finding
    named = dataclasses.replace(bert, known_causes={"executorch-fp32": "a bug"})
    assert refusable(by_name["executorch-fp32"], named)


# --- PyTorch's current path: torch.export, ExecuTorch ----------------------------------------

TORCH_EXPORT_FORMATS = ("exported-program", "aoti", "executorch-fp32", "executorch-int8")


def reference_module(export_root: Path, model: str):  # noqa: ANN201
    """The reference torch module, rebuilt from the weights the export saved."""
    import torch

    from deploybench.zoo import get_spec

    module = get_spec(model).build_torch()
    module.load_state_dict(torch.load(export_root / model / "reference.pt"))
    return module.eval()


@pytest.mark.parametrize("model", MODELS)
def test_torch_export_artifacts_match_the_reference_on_unseen_inputs(export_root, model):
    """Inputs the export never saw (uniform noise in the pixels' range), at batch 1 and at the
    model's max_rows: fp32 artifacts within the fp32 tolerance, int8 mostly the same top-1."""
    import torch

    manifest = load_manifest(export_root, model)
    module = reference_module(export_root, model)
    shape = manifest.inputs[0].shape[1:]
    unseen = np.random.default_rng(7).uniform(0, 1, (manifest.max_rows, *shape))
    unseen = unseen.astype(np.float32)
    with torch.inference_mode():
        reference = module(torch.from_numpy(unseen)).numpy()
    for fmt in TORCH_EXPORT_FORMATS:
        predict = runner_for(fmt, export_root / manifest.artifact(fmt).path)
        for rows in (1, manifest.max_rows):  # the dynamic batch dimension, both ends
            outputs = predict(Batch.single(manifest.inputs[0].name, unseen[:rows]))
            assert outputs.shape == (rows, 10), (fmt, rows)
            if manifest.artifact(fmt).quantized:
                agreement = np.mean(outputs.argmax(1) == reference[:rows].argmax(1))
                assert rows == 1 or agreement >= 0.8, (fmt, agreement)
            else:
                diff = float(np.max(np.abs(outputs - reference[:rows])))
                assert diff <= FP32_TOLERANCE, (fmt, rows, diff)


@pytest.mark.parametrize("model", MODELS)
def test_executorch_programs_record_what_xnnpack_runs(export_root, model):
    manifest = load_manifest(export_root, model)
    for fmt in ("executorch-fp32", "executorch-int8"):
        artifact = manifest.artifact(fmt)
        assert 0.5 < artifact.delegated_share <= 1.0, artifact
        assert isinstance(artifact.non_delegated_ops, list)
        assert all(not op.startswith("aten_") for op in artifact.non_delegated_ops)
        assert (artifact.delegated_share == 1.0) == (not artifact.non_delegated_ops)
    fp32, int8 = manifest.artifact("executorch-fp32"), manifest.artifact("executorch-int8")
    assert int8.bytes < fp32.bytes / 2.5  # int8 weights
    for artifact in manifest.artifacts:
        if artifact.format not in ("executorch-fp32", "executorch-int8"):
            assert artifact.delegated_share is None


def test_a_corrupt_executorch_program_is_named(tmp_path):
    from deploybench.runtimes import ArtifactError

    bad = tmp_path / "broken.pte"
    bad.write_bytes(b"not a program")
    with pytest.raises(ArtifactError, match="broken.pte: not a loadable ExecuTorch program"):
        runner_for("executorch-fp32", bad)


def test_a_corrupt_aoti_package_is_named(tmp_path):
    from deploybench.runtimes import ArtifactError

    bad = tmp_path / "broken.pt2"
    bad.write_bytes(b"not a package")
    with pytest.raises(ArtifactError, match="broken.pt2: not a loadable AOTInductor package"):
        runner_for("aoti", bad)


def test_a_perturbed_torch_path_fails_its_artifact_and_keeps_the_published_one(
        export_copy, monkeypatch):
    """A wrong weight in the ExecuTorch path only, and no C++ compiler for AOTInductor: the
    export fails naming executorch-fp32 and aoti (the compiler it tried), the formats before
    them passed, and the earlier published export stays."""
    from torch._inductor import config as inductor_config

    from deploybench.export import torch_formats

    root = export_copy  # holds the session's published export
    published = (root / "digits-mlp").resolve()
    real = torch_formats._write_executorch

    def perturbed(ctx, variant):  # noqa: ANN001, ANN202
        if variant == "fp32":
            import torch

            with torch.no_grad():
                next(ctx.torch_model.parameters()).add_(0.05)
            try:
                return real(ctx, variant)
            finally:
                with torch.no_grad():
                    next(ctx.torch_model.parameters()).sub_(0.05)
        return real(ctx, variant)

    monkeypatch.setattr(torch_formats, "_write_executorch", perturbed)
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",)}):
        second = invoke("export", "--model", "digits-mlp", "--out", str(root))
    assert second.exit_code == 3, second.output
    assert "executorch-fp32" in second.output and "max abs diff" in second.output
    assert (root / "digits-mlp").resolve() == published
    failed = [p for p in (root / ".builds").iterdir()
              if p.name.startswith("digits-mlp-") and p.resolve() != published]
    (build,) = failed
    rows = {a["format"]: a for a in json.loads((build / "manifest.json").read_text())["artifacts"]}
    assert rows["executorch-fp32"]["status"] == "parity-failed"
    assert rows["aoti"]["status"] == "failed"
    assert "C++ compiler" in rows["aoti"]["reason"]
    assert "/nonexistent/c++" in rows["aoti"]["reason"]
    assert all(rows[f]["status"] == "ok" for f in ("savedmodel", "torchscript",
                                                   "exported-program", "executorch-int8"))


def test_export_keeps_native_libraries_lines_off_the_terminal(tmp_path):
    """TensorFlow's C++ start-up lines (absl's, which ignore TF_CPP_MIN_LOG_LEVEL) and the
    TFLite converter's quantization line go to the log: a fresh process exporting the
    SavedModel and the full-int8 variant writes nothing to stderr."""
    code = (
        "import sys\n"
        "from rich.console import Console\n"
        "from deploybench.export import exporter\n"
        "from deploybench.zoo import get_spec\n"
        "exporter.FORMATS = tuple(f for f in exporter.FORMATS\n"
        "                         if f.name in ('savedmodel', 'tflite-int8'))\n"
        f"exporter.export([get_spec('digits-mlp')], __import__('pathlib').Path({str(tmp_path)!r}),"
        " Console(file=sys.stdout))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "published" in done.stdout
    assert done.stderr == "", done.stderr[:2000]
