"""Users' own models, built and saved here as a user would (not taken from the zoo): a Keras
functional model with a float and an integer input, a torch.export program, a factory module,
and a model with an operator TFLite's builtins lack; each with its samples and labels."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

ROWS = 60
VOCABULARY = 50


def keras_two_inputs(folder: Path) -> tuple[Path, Path, Path]:
    """(model.keras, samples.npz, labels.npy): `features` float32 (8,) and `ids` int32 (6,)
    in [0, 50) -> 3 classes; weights seeded."""
    import keras

    keras.utils.set_random_seed(0)
    features = keras.Input((8,), name="features", dtype="float32")
    ids = keras.Input((6,), name="ids", dtype="int32")
    embedded = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(VOCABULARY, 4)(ids))
    joined = keras.layers.Concatenate()([keras.layers.Dense(8, activation="relu")(features),
                                         embedded])
    model = keras.Model([features, ids], keras.layers.Dense(3, name="scores")(joined))
    path = folder / "two_inputs.keras"
    model.save(path)
    generator = np.random.default_rng(1)
    samples = {"features": generator.normal(size=(ROWS, 8)).astype(np.float32),
               "ids": generator.integers(0, VOCABULARY, (ROWS, 6), dtype=np.int32)}
    return path, save_samples(folder, samples), save_labels(folder, 3)


def torch_export_program(folder: Path) -> tuple[Path, Path]:
    """(model.pt2, samples.npz): a small conv net on `image` float32 (8, 8, 1) -> 4 classes,
    saved with torch.export.save with a dynamic batch."""
    import torch

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.head = torch.nn.Linear(4 * 8 * 8, 4)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.conv(image.permute(0, 3, 1, 2)))
            return self.head(torch.flatten(x, 1))

    generator = np.random.default_rng(2)
    samples = {"image": generator.uniform(size=(ROWS, 8, 8, 1)).astype(np.float32)}
    example = (torch.from_numpy(samples["image"][:2]),)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(Net().eval(), example, dynamic_shapes=({0: batch},))
    path = folder / "net.pt2"
    torch.export.save(program, str(path))
    return path, save_samples(folder, samples, "images.npz")


FACTORY_MODULE = """
import torch


class Bag(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(100, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(tokens).mean(dim=1))


def make() -> torch.nn.Module:
    torch.manual_seed(0)
    return Bag().eval()


def make_training() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5)).train()


def make_nothing():
    return 42
"""


def factory_module(folder: Path) -> tuple[Path, Path]:
    """(the folder holding user_bag.py, samples.npz): `tokens` int64 (10,) in [0, 100)."""
    code = folder / "factory"
    code.mkdir(exist_ok=True)
    (code / "user_bag.py").write_text(textwrap.dedent(FACTORY_MODULE))
    generator = np.random.default_rng(3)
    samples = {"tokens": generator.integers(0, 100, (ROWS, 10), dtype=np.int64)}
    return code, save_samples(folder, samples, "tokens.npz")


def keras_with_matrix_inverse(folder: Path) -> tuple[Path, Path]:
    """A Keras model using a matrix inverse (MatrixInverse: no TFLite builtin, so every TFLite
    conversion refuses it) on `matrix` float32 (3, 3) -> 3 outputs."""
    import keras

    keras.utils.set_random_seed(0)
    matrix = keras.Input((3, 3), name="matrix")
    flat = keras.layers.Flatten()(keras.ops.linalg.inv(matrix))
    model = keras.Model(matrix, keras.layers.Dense(3)(flat))
    path = folder / "inverse.keras"
    model.save(path)
    generator = np.random.default_rng(4)
    base = np.eye(3, dtype=np.float32) * 2
    samples = {"matrix": (base + generator.normal(scale=0.2, size=(ROWS, 3, 3)))
               .astype(np.float32)}
    return path, save_samples(folder, samples, "matrices.npz")


def save_samples(folder: Path, arrays: dict[str, np.ndarray],
                 name: str = "samples.npz") -> Path:
    path = folder / name
    np.savez(path, **arrays)
    return path


def save_labels(folder: Path, classes: int) -> Path:
    path = folder / "labels.npy"
    np.save(path, np.random.default_rng(5).integers(0, classes, ROWS))
    return path


def savedmodel_one_input(folder: Path) -> Path:
    """A SavedModel folder (Keras' export): `x` float32 (5,) -> 2 outputs."""
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((5,), name="x")
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Dense(4, activation="tanh")(x)))
    path = folder / "plain_savedmodel"
    model.export(str(path), format="tf_saved_model", verbose=False)
    return path


def twin_pair(folder: Path) -> tuple[Path, Path, Path, Path]:
    """(pair.keras, pair.pt2, pair_off.pt2, samples.npz): one small dense net on `x` float32
    (6,) -> 3 classes in both frameworks, the Keras weights copied into the PyTorch module;
    pair_off.pt2 is that module with one output bias moved (a model that disagrees)."""
    import keras
    import torch

    keras.utils.set_random_seed(6)
    x = keras.Input((6,), name="x")
    hidden = keras.layers.Dense(5, activation="relu")
    out = keras.layers.Dense(3)
    model = keras.Model(x, out(hidden(x)))
    keras_path = folder / "pair.keras"
    model.save(keras_path)

    class Pair(torch.nn.Module):  # forward's parameter named as the Keras input
        def __init__(self) -> None:
            super().__init__()
            self.hidden, self.out = torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.hidden(x)))

    net = Pair()
    with torch.no_grad():
        for linear, dense in ((net.hidden, hidden), (net.out, out)):
            kernel, bias = dense.get_weights()
            linear.weight.copy_(torch.from_numpy(kernel.T))
            linear.bias.copy_(torch.from_numpy(bias))
    generator = np.random.default_rng(7)
    samples = {"x": generator.normal(size=(ROWS, 6)).astype(np.float32)}
    example = (torch.from_numpy(samples["x"][:2]),)
    batch = torch.export.Dim("batch", min=1, max=64)
    paths = []
    for name, shift in (("pair.pt2", 0.0), ("pair_off.pt2", 0.5)):
        with torch.no_grad():
            net.out.bias[0] += shift
        program = torch.export.export(net.eval(), example, dynamic_shapes=({0: batch},))
        torch.export.save(program, str(folder / name))
        paths.append(folder / name)
    return keras_path, paths[0], paths[1], save_samples(folder, samples, "pair.npz")
