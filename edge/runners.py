"""One runner per runtime, split so that only the inference call is timed.

A backend imports its runtime and sets its threads (not timed as load); `load()` reads the
artifact and makes it ready to run (timed as init); a runner then takes the input
(`set_input`, not timed), runs (`run`, timed, like TFLite's benchmark_model times only
Invoke) and hands back float32 logits (`output`, not timed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deploybench.runtimes import TFLiteModel


class Runner(Protocol):
    def set_input(self, x: np.ndarray) -> None: ...

    def run(self) -> None: ...

    def output(self) -> np.ndarray: ...

    def info(self) -> dict[str, Any]:
        """What the runtime reports about how it ran (threads used, delegates applied)."""
        ...


class Backend(Protocol):
    def load(self) -> Runner: ...


# --- LiteRT ------------------------------------------------------------------------------


class LiteRTRunner:
    def __init__(self, model: TFLiteModel, threads: int, xnnpack: bool) -> None:
        self.model = model
        self.threads = threads
        self.xnnpack = xnnpack

    def set_input(self, x: np.ndarray) -> None:
        self.model.set_input(x)

    def run(self) -> None:
        self.model.invoke()

    def output(self) -> np.ndarray:
        return self.model.get_output()

    def info(self) -> dict[str, Any]:
        # The interpreter takes num_threads as given (it has no getter); the delegate nodes in
        # its graph show whether XNNPACK took part, and in how many partitions.
        try:
            nodes = self.model.interpreter._get_ops_details()
            partitions: int | None = sum(1 for n in nodes if n.get("op_name") == "DELEGATE")
        except Exception:  # a private API: absent in some versions
            partitions = None
        return {"runtime_threads": {"num_threads": self.threads},
                "delegate_partitions": partitions}


class LiteRTBackend:
    def __init__(self, path: Path, threads: int, xnnpack: bool) -> None:
        import ai_edge_litert.interpreter  # noqa: F401  (import time is not load time)

        self.path, self.threads, self.xnnpack = Path(path), threads, xnnpack

    def load(self) -> LiteRTRunner:
        # TFLiteModel builds the interpreter and allocates its tensors: load + allocate
        model = TFLiteModel(self.path, threads=self.threads, xnnpack=self.xnnpack)
        return LiteRTRunner(model, self.threads, self.xnnpack)


# --- TensorFlow (SavedModel, in process) --------------------------------------------------


class TensorFlowRunner:
    def __init__(self, signature: Any) -> None:
        import tensorflow as tf

        self._tf = tf
        self.signature = signature
        (self.input_name,) = signature.structured_input_signature[1].keys()
        (self.output_name,) = signature.structured_outputs.keys()
        self._x: Any = None
        self._y: Any = None

    def set_input(self, x: np.ndarray) -> None:
        self._x = self._tf.constant(x)

    def run(self) -> None:
        self._y = self.signature(**{self.input_name: self._x})

    def output(self) -> np.ndarray:
        return self._y[self.output_name].numpy()

    def info(self) -> dict[str, Any]:
        threading = self._tf.config.threading
        return {"runtime_threads": {
            "intra_op": threading.get_intra_op_parallelism_threads(),
            "inter_op": threading.get_inter_op_parallelism_threads(),
        }}


class TensorFlowBackend:
    """TensorFlow fixes its thread pools at first use, so each thread count needs a fresh
    process (the worker is one); `runtime_threads` records what TensorFlow reports back."""

    def __init__(self, path: Path, threads: int, xnnpack: bool | None = None) -> None:
        import tensorflow as tf

        # threads=n means n threads inside an op, ops one at a time: what TFLite's num_threads
        # means, so both figures are for the same thread budget
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        self.path = Path(path)

    def load(self) -> TensorFlowRunner:
        import tensorflow as tf

        return TensorFlowRunner(tf.saved_model.load(str(self.path)).signatures["serving_default"])


# --- torch (TorchScript, in process) ------------------------------------------------------


class TorchRunner:
    def __init__(self, module: Any) -> None:
        import torch

        self._torch = torch
        self.module = module
        self._x: Any = None
        self._y: Any = None

    def set_input(self, x: np.ndarray) -> None:
        self._x = self._torch.from_numpy(np.ascontiguousarray(x))

    def run(self) -> None:
        with self._torch.inference_mode():
            self._y = self.module(self._x)

    def output(self) -> np.ndarray:
        return self._y.numpy()

    def info(self) -> dict[str, Any]:
        return {"runtime_threads": {
            "intra_op": self._torch.get_num_threads(),
            "inter_op": self._torch.get_num_interop_threads(),
        }}


class TorchBackend:
    def __init__(self, path: Path, threads: int, xnnpack: bool | None = None) -> None:
        import torch

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)  # only before any inter-op work: a fresh process
        except RuntimeError:
            pass  # recorded as reported by runtime_threads
        self.path = Path(path)

    def load(self) -> TorchRunner:
        import warnings

        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            module = torch.jit.load(str(self.path), map_location="cpu").eval()
        return TorchRunner(module)


BACKENDS: dict[str, type] = {
    "litert": LiteRTBackend,
    "tensorflow": TensorFlowBackend,
    "torch": TorchBackend,
}
