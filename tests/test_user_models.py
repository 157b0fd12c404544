"""Bring your own model: `deploybench import` of models built here as a user would, then the
kit's export (every format of the model's framework, parity against the model's own outputs),
and every error a user can hit, one line each, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deploybench.golden import Golden
from deploybench.manifest import Manifest, load_manifest
from tests import user_models
from tests.conftest import invoke


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "user-models"
    monkeypatch.setenv("DEPLOYBENCH_MODELS", str(folder))
    return folder


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """The users' files, built once for the module."""
    folder = tmp_path_factory.mktemp("user-files")
    return {"keras": user_models.keras_two_inputs(folder),
            "pt2": user_models.torch_export_program(folder),
            "factory": user_models.factory_module(folder),
            "inverse": user_models.keras_with_matrix_inverse(folder)}


def import_ok(*args: str) -> str:
    result = invoke("import", *args)
    assert result.exit_code == 0, result.output
    return result.output


def refused(home: Path, *args: str) -> str:
    """The import fails with exit 2, one line, and leaves nothing in the user folder."""
    result = invoke("import", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert not home.exists() or not [p for p in home.iterdir()], list(home.iterdir())
    return " ".join(result.output.split())  # rich may fold a long line: read it as one


def test_keras_import_lists_and_records_the_inputs(home: Path, made: dict) -> None:
    model, samples, labels = made["keras"]
    out = import_ok("mine", "--keras", str(model), "--samples", str(samples),
                    "--labels", str(labels), "--range", "ids=0:50")
    assert "imported mine" in out
    record = json.loads((home / "mine" / "model.json").read_text())
    assert [(i["name"], i["dtype"], i["shape"], i["high"]) for i in record["inputs"]] == [
        ("features", "float32", [8], None), ("ids", "int32", [6], 50.0)]
    assert record["output_width"] == 3 and record["rows"] == user_models.ROWS
    # the kit keeps its own copy: the user's file may change or go
    assert (home / "mine" / record["sources"][0]["path"]).is_file()
    listed = invoke("models").output
    assert any(line.split()[:2] == ["mine", "user"] for line in listed.splitlines())
    assert any(line.split()[:2] == ["digits-cnn", "zoo"] for line in listed.splitlines())


def test_import_errors_are_one_line_and_write_nothing(home: Path, made: dict,
                                                      tmp_path: Path) -> None:
    model, samples, labels = made["keras"]
    pt2, image_samples = made["pt2"]
    code, tokens = made["factory"]
    assert "not a Keras model file" in refused(home, "m", "--keras", str(pt2),
                                               "--samples", str(samples))
    assert "not a torch.export program" in refused(home, "m", "--torch-export", str(model),
                                                   "--samples", str(samples))
    assert "not a SavedModel folder" in refused(home, "m", "--savedmodel", str(tmp_path))
    assert "no such file" in refused(home, "m", "--keras", str(tmp_path / "gone.keras"))
    assert "is a zoo model's" in refused(home, "digits-cnn", "--keras", str(model),
                                         "--samples", str(samples))
    assert "cannot import" in refused(home, "m", "--torch-factory", "no_such_module:make",
                                      "--python-path", str(code), "--samples", str(tokens))
    assert "returned int, not a torch.nn.Module" in refused(
        home, "m", "--torch-factory", "user_bag:make_nothing", "--python-path", str(code),
        "--samples", str(tokens))
    training = refused(home, "m", "--torch-factory", "user_bag:make_training",
                       "--python-path", str(code), "--samples",
                       str(user_models.save_samples(tmp_path, {"input": np.zeros((8, 4),
                                                                                 np.float32)})))
    assert "training mode" in training and "Dropout" in training
    # samples that do not match the model's inputs: names, dtypes, shapes
    assert "no input 'features'" in refused(home, "m", "--keras", str(model), "--samples",
                                       str(image_samples))
    wrong_dtype = user_models.save_samples(tmp_path, {
        "features": np.zeros((10, 8), np.float64), "ids": np.zeros((10, 6), np.int32)},
        "f64.npz")
    assert "float64, the model takes float32" in refused(home, "m", "--keras", str(model),
                                                         "--samples", str(wrong_dtype))
    wrong_shape = user_models.save_samples(tmp_path, {
        "features": np.zeros((10, 7), np.float32), "ids": np.zeros((10, 6), np.int32)},
        "shape.npz")
    assert "shape" in refused(home, "m", "--keras", str(model), "--samples", str(wrong_shape))
    assert "outside [0, 5)" in refused(home, "m", "--keras", str(model), "--samples",
                                       str(samples), "--range", "ids=0:5")
    assert "labels must be" in refused(home, "m", "--keras", str(model), "--samples",
                                       str(samples), "--labels", str(samples))
    assert "need a range" in refused(home, "m", "--keras", str(model))


def test_a_name_taken_by_an_earlier_import_needs_replace(home: Path, made: dict) -> None:
    pt2, samples = made["pt2"]
    import_ok("net", "--torch-export", str(pt2), "--samples", str(samples))
    result = invoke("import", "net", "--torch-export", str(pt2), "--samples", str(samples))
    assert result.exit_code == 2 and "--replace" in result.output
    import_ok("net", "--torch-export", str(pt2), "--samples", str(samples), "--replace")
    assert sorted(p.name for p in home.iterdir()) == ["net"]  # no staging folder left


def exported(out: Path, name: str) -> tuple[dict, Manifest]:
    result = invoke("export", "--model", name, "--out", str(out))
    assert result.exit_code == 0, result.output
    return published(out, name)


def published(out: Path, name: str) -> tuple[dict, Manifest]:
    manifest = load_manifest(out, name)
    return {a.format: a for a in manifest.artifacts}, manifest


def test_keras_model_exports_every_tensorflow_path_with_parity(user_root: tuple) -> None:
    artifacts, manifest = published(user_root[0], "mine")  # imported with labels, --range
    assert manifest.source == "user" and manifest.frameworks == ["tensorflow"]
    assert {a.framework for a in artifacts.values()} == {"tensorflow"}
    assert {"savedmodel", "tflite-fp32", "tflite-int8", "onnx-keras"} <= set(artifacts)
    for fmt in ("savedmodel", "tflite-fp32", "onnx-keras"):
        assert artifacts[fmt].status == "ok", artifacts[fmt]
        assert artifacts[fmt].max_abs_diff <= manifest.tolerance["fp32_max_abs_diff"]
    assert manifest.golden["samples"] == 12  # a fifth of 60 rows held out
    assert [i.dtype for i in manifest.inputs] == ["float32", "int32"]
    assert [i.high for i in manifest.inputs] == [None, 50]


def test_torch_models_export_every_pytorch_path(user_root: tuple) -> None:
    artifacts, manifest = published(user_root[0], "net")
    assert manifest.frameworks == ["pytorch"]
    assert {a.framework for a in artifacts.values()} == {"pytorch"}
    for fmt in ("torchscript", "exported-program", "aoti", "executorch-fp32"):
        assert artifacts[fmt].status == "ok", artifacts[fmt]


def test_factory_with_int64_tokens_exports(home: Path, made: dict, tmp_path: Path) -> None:
    code, tokens = made["factory"]
    import_ok("bag", "--torch-factory", "user_bag:make", "--python-path", str(code),
              "--samples", str(tokens), "--range", "tokens=0:100")
    artifacts, manifest = exported(tmp_path / "artifacts", "bag")
    assert [(i.name, i.dtype, i.high) for i in manifest.inputs] == [("tokens", "int32", 100)]
    assert artifacts["exported-program"].status == "ok", artifacts["exported-program"]


def test_an_operator_a_converter_refuses_is_a_row_and_the_rest_publishes(
        home: Path, made: dict, tmp_path: Path) -> None:
    model, samples = made["inverse"]
    import_ok("inverse", "--keras", str(model), "--samples", str(samples))
    artifacts, _ = exported(tmp_path / "artifacts", "inverse")
    assert artifacts["savedmodel"].status == "ok"
    assert artifacts["tflite-fp32"].status == "failed"
    assert "MatrixInverse" in artifacts["tflite-fp32"].reason, artifacts["tflite-fp32"].reason


def test_a_savedmodel_without_samples_runs_on_seeded_random_inputs(
        home: Path, tmp_path: Path) -> None:
    """A SavedModel (its serving_default) and no samples: seeded random inputs within the
    declared range; the export still gates every artifact on the model's own outputs, and the
    manifest says accuracy means nothing."""
    folder = user_models.savedmodel_one_input(tmp_path)
    import_ok("plain", "--savedmodel", str(folder), "--range", "x=-1:1")
    record = json.loads((home / "plain" / "model.json").read_text())
    assert record["samples"] is None and record["rows"] > 0
    artifacts, manifest = exported(tmp_path / "artifacts", "plain")
    assert manifest.data["random_inputs"] is True
    assert "seeded random inputs" in manifest.golden["split"]
    for fmt in ("savedmodel", "tflite-fp32", "onnx-keras"):
        assert artifacts[fmt].status == "ok", artifacts[fmt]
    golden = Golden.of(tmp_path / "artifacts", manifest).inputs.only
    assert golden.min() >= -1 and golden.max() < 1


def test_a_keras_and_a_torch_model_together_export_both_frameworks(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same model in both frameworks: checked to agree at import (a pair that does not is
    refused), then the paths of both exported against the PyTorch model's outputs, the int8
    variants calibrated on the user's own calibration file; the report says two frameworks.
    One format per runtime family of each framework here (every format of each framework is
    exported for `mine` and `net` in the session's export)."""
    from deploybench.export import exporter
    from deploybench.jobs.run import export_rows
    from deploybench.records import record_dict
    from deploybench.verdict import comparison_lines

    keras_file, program, program_off, samples = user_models.twin_pair(tmp_path)
    assert "disagree" in refused(home, "pair", "--keras", str(keras_file), "--torch-export",
                                 str(program_off), "--samples", str(samples))
    calibration = user_models.save_samples(tmp_path, {"x": np.random.default_rng(8).normal(
        size=(40, 6)).astype(np.float32)}, "calibration.npz")
    import_ok("pair", "--keras", str(keras_file), "--torch-export", str(program),
              "--samples", str(samples), "--calibration", str(calibration))
    formats = ("savedmodel", "tflite-int8", "onnx-keras", "exported-program",
               "executorch-int8", "onnx-torch")
    monkeypatch.setattr(exporter, "FORMATS", tuple(f for f in exporter.FORMATS
                                                   if f.name in formats))
    artifacts, manifest = exported(tmp_path / "artifacts", "pair")
    assert manifest.frameworks == ["pytorch", "tensorflow"]
    assert sorted(artifacts) == sorted(formats)
    for fmt in formats:
        assert artifacts[fmt].status == "ok", artifacts[fmt]
    assert manifest.data["calibration"] == "calibration.npz"
    results = {"measurements": [record_dict(r) for r in export_rows(tmp_path / "artifacts",
                                                                 ["pair"])]}
    (line,) = comparison_lines(results)
    assert "your PyTorch and TensorFlow models, checked to agree" in line, line
