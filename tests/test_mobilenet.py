"""mobilenet-v2: the seeded MobileNetV2 twin, and its real export under every runtime."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from deploybench import runtimes
from deploybench.edge.ops import read_ops
from deploybench.export.exporter import MIN_TOP1_AGREEMENT, in_batches
from deploybench.golden import Golden
from deploybench.manifest import FP32_TOLERANCE, load_manifest
from deploybench.zoo import get_spec
from deploybench.zoo import mobilenet_v2 as mnv2
from tests.conftest import invoke

MODEL = "mobilenet-v2"
TFLITE = ("tflite-fp32", "tflite-fp16", "tflite-dynamic-int8", "tflite-int8")
FP32 = ("savedmodel", "tflite-fp32", "torchscript", "mar", "exported-program", "aoti",
        "executorch-fp32", "litert-torch-fp32", "onnx-keras", "onnx-torch")
# keras.applications.MobileNetV2(alpha=1.0, classes=1000).count_params(): 3,504,872 weights
# plus 34,112 BatchNorm moving statistics
KERAS_PARAMS = 3_538_984


@pytest.fixture(scope="module")
def spec():  # noqa: ANN201
    return get_spec(MODEL)


@pytest.fixture(scope="module")
def twins(spec):  # noqa: ANN001, ANN201
    torch_model = spec.build_torch()
    keras_model = spec.build_keras()
    spec.copy_weights(torch_model, keras_model)
    return torch_model, keras_model


@pytest.fixture(scope="module")
def split(spec):  # noqa: ANN001, ANN201
    return spec.data()


# --- the twins, before export --------------------------------------------------------------


def test_spec_declares_a_seeded_image_model(spec):
    assert spec.input_shape == (224, 224, 3) and spec.num_classes == 1000
    assert spec.input_name == "image" and spec.output_name == "logits"
    assert spec.training is None and spec.min_accuracy is None


def test_twins_are_mobilenet_v2(twins):
    torch_model, keras_model = twins
    assert keras_model.count_params() == KERAS_PARAMS
    convs = [m for m in torch_model.modules() if isinstance(m, torch.nn.Conv2d)]
    depthwise = [m for m in convs if m.groups == m.in_channels > 1]
    assert len(convs) == 52 and len(depthwise) == 17
    norms = [m for m in torch_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 52 and all(m.eps == 1e-3 for m in norms)
    assert all(layer.epsilon == 1e-3 for layer in keras_model.layers
               if type(layer).__name__ == "BatchNormalization")


def test_batchnorm_statistics_are_not_trivial(twins):
    """Running mean and variance far from 0 and 1, gamma and beta random: parity exercises them."""
    torch_model, _ = twins
    norms = [m for m in torch_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    means = torch.cat([m.running_mean for m in norms])
    variances = torch.cat([m.running_var for m in norms])
    assert means.abs().mean() > 0.1
    assert (variances - 1).abs().mean() > 0.2 and variances.min() > 0
    gammas = torch.cat([m.weight for m in norms])
    assert gammas.std() > 0.1 and torch.cat([m.bias for m in norms]).std() > 0.1


def test_twins_agree_on_seeded_weights(twins, split):
    """Weights copied into keras.applications' MobileNetV2: a few images agree within the fp32
    tolerance, so padding, depthwise layout, BatchNorm order and epsilon all match."""
    torch_model, keras_model = twins
    x = split.x_test[:4]
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(keras_model({"image": x}, training=False).numpy(), expected,
                               atol=FP32_TOLERANCE, rtol=0)


def test_a_porting_mistake_shows_far_above_the_tolerance(spec, twins, split):
    """The gate would catch what the docs warn about: Keras' default BatchNorm epsilon."""
    torch_model, _ = twins
    keras_model = spec.build_keras()
    spec.copy_weights(torch_model, keras_model)
    keras_model.get_layer("block_5_depthwise_BN").epsilon = 1e-5
    x = split.x_test[:2]
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    outputs = keras_model({"image": x}, training=False).numpy()
    assert np.max(np.abs(outputs - expected)) > 10 * FP32_TOLERANCE


@pytest.mark.slow
def test_seeded_weights_do_not_depend_on_the_global_seed(twins):
    torch_model, _ = twins
    torch.manual_seed(12345)
    again = mnv2._seeded_state.__wrapped__()  # computed afresh
    for name, value in torch_model.state_dict().items():
        assert torch.equal(value, again[name]), name


def test_images_are_deterministic_8bit_pixels_in_0_1(split):
    assert split.x_test.shape == (64, 224, 224, 3) and split.x_test.dtype == np.float32
    assert split.x_train.shape == (128, 224, 224, 3)
    assert split.x_test.min() == 0.0 and split.x_test.max() == 1.0
    levels = split.x_test[:4] * 255
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    np.testing.assert_array_equal(mnv2.synthetic_images((1,), scenes=4), split.x_test[:4])
    assert np.all(split.y_train == -1)


def test_logits_are_spread_and_labels_are_the_reference_top1(twins, split):
    """Non-degenerate logits: finite, in a trained model's range, a clear top-1 that changes
    from image to image (so top-1 agreement means something)."""
    torch_model, _ = twins
    with torch.no_grad():
        logits = torch_model(torch.from_numpy(split.x_test)).numpy()
    np.testing.assert_array_equal(split.y_test, np.argmax(logits, axis=1))
    assert np.all(np.isfinite(logits)) and np.abs(logits).max() < 50
    assert logits.std(axis=1).min() > 0.2 and np.median(logits.max(axis=1)) > 4
    assert len(set(split.y_test)) >= 24
    top2 = np.sort(logits, axis=1)[:, -2:]
    assert np.median(top2[:, 1] - top2[:, 0]) > 0.3


# --- the real export ---------------------------------------------------------------------


# Quantized on the PyTorch side (PT2E calibration, then lowering): 78 s of mobilenet-v2's 245 s
# export, a third of this module; those paths are tested on digits-cnn's convolutions and on
# text-bert, and mobilenet-v2's fp32 file goes through each of their converters here.
SKIPPED = ("executorch-int8", "litert-torch-dynamic-int8", "litert-torch-int8")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """mobilenet-v2 exported for real, once for this module (about three minutes), every
    format but SKIPPED."""
    from deploybench.export import exporter

    root = tmp_path_factory.mktemp("mobilenet-export")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exporter, "FORMATS",
                      tuple(f for f in exporter.FORMATS if f.name not in SKIPPED))
        result = invoke("export", "--model", MODEL, "--out", str(root))
    assert result.exit_code == 0, result.output
    return root


@pytest.mark.slow
def test_every_artifact_passes_parity(exported):
    manifest = load_manifest(exported, MODEL)
    assert [a.format for a in manifest.artifacts] == [
        "savedmodel", *TFLITE, "torchscript", "mar", "exported-program", "aoti",
        "executorch-fp32", "litert-torch-fp32",
        "onnx-keras", "onnx-keras-int8", "onnx-torch", "onnx-torch-int8",
    ]
    assert manifest.inputs[0].name == "image" and manifest.inputs[0].shape == [None, 224, 224, 3]
    assert manifest.outputs[0].name == "logits" and manifest.outputs[0].shape == [None, 1000]
    assert manifest.tolerance == {"fp32_max_abs_diff": FP32_TOLERANCE,
                                  "min_top1_agreement": MIN_TOP1_AGREEMENT}
    assert manifest.golden["samples"] == 64 and manifest.golden["reference_accuracy"] == 1.0
    for artifact in manifest.artifacts:
        assert artifact.status == "ok", artifact
        if artifact.quantized:
            assert artifact.top1_agreement >= MIN_TOP1_AGREEMENT, artifact
        else:
            assert artifact.max_abs_diff <= FP32_TOLERANCE, artifact
            assert artifact.top1_agreement == 1.0, artifact
        assert artifact.accuracy == artifact.top1_agreement  # labels are the reference's top-1


@pytest.mark.slow
def test_fp32_artifacts_reproduce_the_reference_in_their_own_runtimes(exported):
    """Re-run a few golden images outside the exporter: SavedModel under its serving signature,
    the TFLite fp32 file under LiteRT, the TorchScript packed in the .mar."""
    from deploybench.export.formats import FORMATS

    manifest = load_manifest(exported, MODEL)
    golden = Golden.load(exported / manifest.golden["path"])
    runners = {f.name: f.runner for f in FORMATS}
    for fmt in FP32:
        path = exported / manifest.artifact(fmt).path
        outputs = in_batches(runners[fmt](path), golden.inputs[:4], manifest.max_rows)
        assert outputs.shape == (4, 1000)
        assert np.max(np.abs(outputs - golden.outputs[:4])) <= FP32_TOLERANCE, fmt


@pytest.mark.slow
def test_every_tflite_variant_is_edge_ready(exported):
    manifest = load_manifest(exported, MODEL)
    for variant in TFLITE:
        report = read_ops(exported / manifest.artifact(variant).path)
        assert report.edge_ready, (variant, report.verdict)
        assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED"} <= set(
            report.ops), (variant, report.ops)
        assert report.op_counts["DEPTHWISE_CONV_2D"] == 17


@pytest.mark.slow
def test_full_int8_quantizes_its_float_input_to_exactly_pixel_minus_128(exported):
    """The full-int8 variant takes float32 pixels / 255 like every artifact; its first op, a
    QUANTIZE calibrated on [0, 1], maps them losslessly onto int8 pixel - 128."""
    from ai_edge_litert.tools import flatbuffer_utils

    manifest = load_manifest(exported, MODEL)
    path = exported / manifest.artifact("tflite-int8").path
    model = runtimes.TFLiteModel(path)
    assert model.interpreter.get_input_details()[0]["dtype"] == np.float32
    assert model.interpreter.get_output_details()[0]["dtype"] == np.float32
    parsed = flatbuffer_utils.read_model(str(path))
    subgraph = parsed.subgraphs[0]
    (quantize,) = [op for op in subgraph.operators if op.inputs == subgraph.inputs]
    code = parsed.operatorCodes[quantize.opcodeIndex]
    assert flatbuffer_utils.get_builtin_code_from_operator_code(code) == (
        flatbuffer_utils.BuiltinOperator.QUANTIZE)
    quantized = subgraph.tensors[quantize.outputs[0]]
    assert flatbuffer_utils.type_to_name(quantized.type) == "INT8"
    assert quantized.quantization.scale[0] == pytest.approx(1 / 255)
    assert list(quantized.quantization.zeroPoint) == [-128]


def int8_size_ratio(exported: Path) -> float:
    manifest = load_manifest(exported, MODEL)
    return manifest.artifact("tflite-fp32").bytes / manifest.artifact("tflite-int8").bytes


@pytest.mark.slow
def test_full_int8_is_much_smaller_than_fp32(exported):
    # weights are 1 byte instead of 4; the per-channel scales (float32) and zero points (int64)
    # of every convolution's weights and bias add about 410 KB, 10% of the int8 file (both files
    # are stripped of tensor names; the classifier is per tensor): measured 3.517x
    assert int8_size_ratio(exported) >= 3.5


@pytest.mark.slow
def test_mar_declares_the_image_signature(exported):
    manifest = load_manifest(exported, MODEL)
    with zipfile.ZipFile(exported / manifest.artifact("mar").path) as archive:
        signature = json.loads(archive.read("signature.json"))
    assert signature["input_name"] == "image" and signature["input_shape"] == [224, 224, 3]
    assert signature["max_rows"] == 2
