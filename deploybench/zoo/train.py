"""Train (or seed) the PyTorch reference of a twin and compute its golden samples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploybench.zoo.spec import ModelSpec

GOLDEN_FILE = "golden.npz"


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
    def load(cls, path: Path) -> Golden:
        with np.load(path) as data:
            return cls(data["inputs"], data["labels"], data["outputs"])


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(outputs, axis=1) == labels))


def train_reference(spec: ModelSpec, progress: callable | None = None):  # noqa: ANN201
    """The reference PyTorch model (trained, or seeded when the spec has no training), in eval
    mode, and its golden samples on the held-out split."""
    import torch

    seed = spec.training.seed if spec.training else 0
    torch.manual_seed(seed)
    np.random.seed(seed)
    split = spec.data()
    model = spec.build_torch()
    if spec.training is not None:
        cfg = spec.training
        generator = torch.Generator().manual_seed(cfg.seed)
        x = torch.from_numpy(split.x_train)
        y = torch.from_numpy(split.y_train)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
        loss_fn = torch.nn.CrossEntropyLoss()
        model.train()
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), cfg.batch_size):
                batch = order[start : start + cfg.batch_size]
                optimizer.zero_grad()
                loss_fn(model(x[batch]), y[batch]).backward()
                optimizer.step()
            if progress:
                progress(epoch + 1, cfg.epochs)
    model.eval()
    with torch.no_grad():
        outputs = model(torch.from_numpy(split.x_test)).numpy()
    return model, split, Golden(split.x_test, split.y_test, outputs)
