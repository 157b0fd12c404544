"""deploybench.golden: the one reader of golden.npz, light enough for the locust process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from deploybench.batch import Batch
from deploybench.errors import DeploybenchError
from deploybench.golden import GOLDEN_FILE, Golden


def sample(tmp_path: Path) -> Path:
    outputs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])  # float64 on purpose
    inputs = Batch.single("x", np.arange(6, dtype=np.float32).reshape(3, 2))
    golden = Golden(inputs, np.array([1, 0, 0]), outputs)
    (tmp_path / "m").mkdir()
    golden.save(tmp_path / "m" / GOLDEN_FILE)
    return tmp_path / "m" / GOLDEN_FILE


def test_round_trip_gives_float32_inputs_and_outputs(tmp_path: Path) -> None:
    golden = Golden.load(sample(tmp_path))
    assert golden.inputs.only.dtype == golden.outputs.dtype == np.float32
    assert golden.inputs.names == ["x"]
    np.testing.assert_array_equal(golden.labels, [1, 0, 0])
    assert golden.accuracy == pytest.approx(2 / 3)


def test_of_reads_the_path_the_manifest_names(tmp_path: Path) -> None:
    sample(tmp_path)
    manifest = SimpleNamespace(model="m", golden={"path": f"m/{GOLDEN_FILE}"})
    assert len(Golden.of(tmp_path, manifest).inputs) == 3


def test_a_missing_file_says_which_model_to_export_again(tmp_path: Path) -> None:
    manifest = SimpleNamespace(model="digits-cnn", golden={"path": f"digits-cnn/{GOLDEN_FILE}"})
    with pytest.raises(DeploybenchError, match="golden samples missing; export digits-cnn again"):
        Golden.of(tmp_path, manifest)


def test_the_reader_and_the_locust_side_stay_free_of_torch_and_tensorflow() -> None:
    code = ("import sys, deploybench.golden, deploybench.loadtest.samples; "
            "print(sorted({'torch', 'tensorflow', 'keras', 'sklearn'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.strip() == "[]"
