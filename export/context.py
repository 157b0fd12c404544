"""What every artifact format shares: the context its writer gets, the declaration of a format
(how to write it, how to run what was written, for the parity gate), and the capture of what
native libraries write to the terminal. Each runtime family has its own module of formats
(tf_formats.py: SavedModel and TFLite/LiteRT; torch_formats.py: TorchScript, .mar, torch.export,
AOTInductor, ExecuTorch; litert_torch_formats.py: the PyTorch twin on LiteRT; onnx_formats.py:
ONNX from both twins, for ONNX Runtime); formats.py holds the one table of them all."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploybench.batch import Batch
from deploybench.zoo.spec import ModelSpec

TORCHSCRIPT_FILE = "model.torchscript.pt"
EXPORTED_PROGRAM_FILE = "model.exported.pt2"  # torch.export.save
REPRESENTATIVE_SAMPLES = 200  # the calibration samples of every int8 variant

log = logging.getLogger("deploybench.export.formats")


@dataclass
class ExportContext:
    """What every format function needs: the model, its twins and where to write."""

    spec: ModelSpec
    torch_model: Any
    keras_model: Any
    x_train: Batch
    build_dir: Path  # the model's staging folder
    version: int = 1
    # per format, what its writer learnt of how the target runs it (ExecuTorch's delegation)
    readiness: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def savedmodel_dir(self) -> Path:
        # TF Serving's layout: <base path>/<version>/saved_model.pb
        return self.build_dir / "savedmodel" / str(self.version)

    @property
    def torchscript_path(self) -> Path:
        return self.build_dir / TORCHSCRIPT_FILE

    @property
    def exported_program_path(self) -> Path:
        return self.build_dir / EXPORTED_PROGRAM_FILE

    def calibration_rows(self) -> Iterator[Batch]:
        """The representative samples every int8 variant is calibrated on, one row at a time
        (a text row as long as its own tokens)."""
        for row in range(min(REPRESENTATIVE_SAMPLES, len(self.x_train))):
            yield self.x_train.rows(slice(row, row + 1))

    def full_batch(self, rows: int) -> Batch:
        """`rows` training rows (repeated as needed), variable-length inputs at their largest
        size: an example at the top of every dynamic range."""
        picked = self.x_train.rows(np.resize(np.arange(len(self.x_train)), rows))
        if not picked.variable:
            return picked
        return picked.padded(max(i.shape[0] for i in self.spec.public_inputs() if i.dynamic))


@dataclass(frozen=True)
class Format:
    """One artifact format: its writer, the runner of what it wrote (for the parity gate), and
    where it sits in the matrix the report draws: the twin it is converted from (`framework`),
    the runtime that runs it (a key of deploybench.runtimes.BACKENDS) and its precision.

    A format is `optional` where its converter is a separate tool the kit does not need for
    its own paths (litert-torch, the ONNX converters): when the converter is missing or fails,
    the format is a failed row with its reason and the model's other formats still publish.
    A parity failure never publishes, optional or not."""

    name: str
    write: Callable[[ExportContext], Path]
    runner: Callable[[Path], Callable[[Batch], np.ndarray]] | None
    framework: str  # tensorflow | pytorch
    runtime: str
    precision: str = "fp32"  # fp32 | fp16 | dynamic-int8 | int8
    optional: bool = False
    # a format only the model's own code reads back (a hub folder): its runner takes the spec
    load: Callable[[ModelSpec, Path], Callable[[Batch], np.ndarray]] | None = None
    # the models the format exists for (a hub folder: models a hub library builds)
    applies: Callable[[ModelSpec], bool] = lambda spec: True

    @property
    def quantized(self) -> bool:
        return self.precision != "fp32"

    def run(self, spec: ModelSpec, path: Path) -> Callable[[Batch], np.ndarray]:
        """What runs the written artifact, for the parity gate."""
        if self.load is not None:
            return self.load(spec, path)
        return self.runner(path)


@contextlib.contextmanager
def native_stderr_logged(what: str) -> Iterator[None]:
    """C++ libraries write to file descriptor 2 themselves (ExecuTorch's cpuinfo probe,
    AOTInductor's input check): what they write goes to the log, not the terminal."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                log.info("%s wrote to stderr:\n%s", what, text)

