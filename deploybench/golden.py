"""A model's golden samples (golden.npz): held-out inputs, their labels and the reference
model's outputs on them. The one reader of that file, for every stage.

Light on purpose: imported inside the locust process, so numpy and the core's errors only,
never torch or TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deploybench.batch import Batch
from deploybench.errors import DeploybenchError

if TYPE_CHECKING:
    from deploybench.manifest import Manifest

GOLDEN_FILE = "golden.npz"


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(outputs, axis=1) == labels))


@dataclass(frozen=True)
class Golden:
    """Held-out inputs, their labels and the reference model's outputs on them."""

    inputs: Batch
    labels: np.ndarray
    outputs: np.ndarray

    @property
    def accuracy(self) -> float:
        return accuracy(self.outputs, self.labels)

    def save(self, path: Path) -> None:
        np.savez_compressed(path, labels=self.labels, outputs=self.outputs,
                            **self.inputs.to_npz())

    @classmethod
    def load(cls, path: Path, model: str | None = None) -> Golden:
        """Read golden.npz; outputs as float32. A missing file, or one written before inputs
        were named, is a DeploybenchError that says to export `model` again."""
        path = Path(path)
        again = f"export {model or 'the model'} again"
        if not path.is_file():
            raise DeploybenchError(f"{path}: golden samples missing; {again}")
        with np.load(path) as data:
            try:
                inputs = Batch.from_npz(data)
            except KeyError:
                raise DeploybenchError(f"{path}: golden samples of an older layout; "
                                       f"{again}") from None
            return cls(inputs, data["labels"], data["outputs"].astype(np.float32, copy=False))

    @classmethod
    def of(cls, root: Path, manifest: Manifest) -> Golden:
        """The golden samples of an exported model (path from its manifest)."""
        return cls.load(Path(root) / manifest.golden["path"], manifest.model)
