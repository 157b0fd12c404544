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

from deploybench.errors import DeploybenchError

if TYPE_CHECKING:
    from deploybench.manifest import Manifest

GOLDEN_FILE = "golden.npz"


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(outputs, axis=1) == labels))


@dataclass(frozen=True)
class Golden:
    """Held-out inputs, their labels and the reference model's outputs on them."""

    inputs: np.ndarray
    labels: np.ndarray
    outputs: np.ndarray

    @property
    def accuracy(self) -> float:
        return accuracy(self.outputs, self.labels)

    def save(self, path: Path) -> None:
        np.savez_compressed(path, inputs=self.inputs, labels=self.labels, outputs=self.outputs)

    @classmethod
    def load(cls, path: Path, model: str | None = None) -> Golden:
        """Read golden.npz; inputs and outputs as float32, what every request and runtime
        takes. A missing file is a DeploybenchError that says to export `model` again."""
        path = Path(path)
        if not path.is_file():
            raise DeploybenchError(f"{path}: golden samples missing; export "
                                   f"{model or 'the model'} again")
        with np.load(path) as data:
            return cls(data["inputs"].astype(np.float32, copy=False), data["labels"],
                       data["outputs"].astype(np.float32, copy=False))

    @classmethod
    def of(cls, root: Path, manifest: Manifest) -> Golden:
        """The golden samples of an exported model (path from its manifest)."""
        return cls.load(Path(root) / manifest.golden["path"], manifest.model)
