"""The export stage, with real runtimes: every artifact reproduces the reference."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from deploybench import runtimes
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
        "torchscript", "mar",
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
        outputs = runner_for(artifact.format, export_root / artifact.path)(golden.inputs)
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
        logits = runner(pixels=golden.inputs[:3])["logits"]
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

    from deploybench.export.formats import ExportContext, _tflite, strip_debug_strings
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
    assert {"MAR-INF/MANIFEST.json", "handler.py", "signature.json"} <= names
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


def test_parity_failure_exits_non_zero_and_keeps_earlier_artifacts(tmp_path, monkeypatch):
    from deploybench.zoo import spec as spec_module

    first = invoke("export", "--model", "digits-mlp", "--out", str(tmp_path))
    assert first.exit_code == 0, first.output
    before = load_manifest(tmp_path, "digits-mlp")
    published = (tmp_path / "digits-mlp").resolve()

    real = spec_module.torch_to_keras_weights

    def perturbed(module):
        weights = real(module)
        weights[0] = weights[0] + 0.05  # a porting mistake the gate must catch
        return weights

    monkeypatch.setattr(spec_module, "torch_to_keras_weights", perturbed)
    second = invoke("export", "--model", "digits-mlp", "--out", str(tmp_path))
    assert second.exit_code == 3
    assert "savedmodel" in second.output and "max abs diff" in second.output
    # the earlier export is still the published one, intact
    assert (tmp_path / "digits-mlp").resolve() == published
    after = load_manifest(tmp_path, "digits-mlp")
    assert after.created == before.created
    for artifact in after.artifacts:
        assert tree_sha256(tmp_path / artifact.path) == artifact.sha256
