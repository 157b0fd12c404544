"""Run each artifact format in-process with its own runtime, on public-format inputs.

Export uses these for its parity gate; the edge stage uses them for its measurements and
baselines. Every runner takes float32 inputs in the public layout and returns float32 logits.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deploybench.errors import DeploybenchError


class ArtifactError(DeploybenchError):
    """An artifact that is missing, corrupt or not what its name says."""


def load_savedmodel(path: Path):  # noqa: ANN201
    """A callable running the SavedModel's serving_default signature (one input, one output)."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    (input_name,) = signature.structured_input_signature[1].keys()

    def predict(x: np.ndarray) -> np.ndarray:
        (output,) = signature(**{input_name: tf.constant(x)}).values()
        return output.numpy()

    return predict


def set_torch_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def load_torchscript(path: Path | bytes):  # noqa: ANN201
    """A callable running a TorchScript file (or its bytes, e.g. read out of a .mar)."""
    import io

    import torch

    source = io.BytesIO(path) if isinstance(path, bytes) else str(path)
    module = torch.jit.load(source, map_location="cpu").eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    return predict


class TFLiteModel:
    """A .tflite file under the LiteRT interpreter. Every exported variant takes and returns
    float32 (the full-int8 one quantizes and dequantizes inside, as part of the model), so
    inputs and outputs pass as they are; a file with other input or output types is refused."""

    def __init__(self, path: Path, threads: int | None = None, xnnpack: bool = True) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path}: no such TFLite file")
        resolver = (
            OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        try:
            self.interpreter = Interpreter(
                model_path=os.fspath(self.path),
                num_threads=threads,
                experimental_op_resolver_type=resolver,
            )
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ArtifactError(
                f"{self.path}: not a loadable TFLite model ({first_line})"
            ) from error
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._shape: tuple[int, ...] | None = tuple(self._input["shape"])
        for role, detail in (("input", self._input), ("output", self._output)):
            if np.dtype(detail["dtype"]) != np.float32:
                raise ArtifactError(
                    f"{self.path}: {role} is {np.dtype(detail['dtype'])}, not float32 "
                    "(every artifact takes and returns float32)"
                )

    def _resize(self, shape: tuple[int, ...]) -> None:
        if shape != self._shape:
            self.interpreter.resize_tensor_input(self._input["index"], list(shape))
            self.interpreter.allocate_tensors()
            self._input = self.interpreter.get_input_details()[0]
            self._output = self.interpreter.get_output_details()[0]
            self._shape = shape

    def set_input(self, x: np.ndarray) -> None:
        self._resize(tuple(x.shape))
        self.interpreter.set_tensor(self._input["index"], x.astype(np.float32, copy=False))

    def invoke(self) -> None:
        self.interpreter.invoke()

    def get_output(self) -> np.ndarray:
        return self.interpreter.get_tensor(self._output["index"])  # a copy

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.set_input(x)
        self.invoke()
        return self.get_output()

