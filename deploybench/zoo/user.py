"""The zoo's second source: models a user imported (`deploybench import`), kept in a folder
outside the package. Each is a ModelSpec like a zoo model, so every stage treats it the same;
only its reference differs: not trained here, but the user's own model, loaded from the copy
kept in its folder, and its golden samples are a held-out part of the user's samples with that
model's own outputs as the reference.

A user model folder holds `model.json` (the record below), the copy of the model (`source/`),
and the samples, labels and calibration inputs it was imported with.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploybench.batch import Batch
from deploybench.errors import UsageError
from deploybench.golden import Golden
from deploybench.zoo.spec import Input, ModelSpec, Reference, Split

if TYPE_CHECKING:
    import torch

RECORD_FILE = "model.json"
SAMPLES_FILE = "samples.npz"
LABELS_FILE = "labels.npy"
CALIBRATION_FILE = "calibration.npz"
SOURCE_DIR = "source"
# the kinds of model a user gives, and the framework each belongs to
SOURCE_KINDS = {"keras": "tensorflow", "savedmodel": "tensorflow",
                "torch-export": "pytorch", "torch-factory": "pytorch"}
GOLDEN_SHARE = 0.2  # the held-out part of the samples that becomes the golden samples
MAX_GOLDEN = 256
RANDOM_ROWS = 320  # seeded random inputs, where a user gives no samples
RANDOM_SEED = 0


def models_home() -> Path:
    """Where imported models live: $DEPLOYBENCH_MODELS, else the user's data folder."""
    if os.environ.get("DEPLOYBENCH_MODELS"):
        return Path(os.environ["DEPLOYBENCH_MODELS"]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "deploybench" / "models"


@dataclass(frozen=True)
class Source:
    """One imported model: its kind (SOURCE_KINDS), the copy in the folder (`path`, relative to
    it; a factory has none), and for a factory its `module:function` and where it imports from."""

    kind: str
    path: str | None = None
    sha256: str | None = None
    factory: str | None = None
    python_path: str | None = None

    @property
    def framework(self) -> str:
        return SOURCE_KINDS[self.kind]


@dataclass(frozen=True)
class InputRecord:
    """A public input: shape without the batch axis; `model_dtype` is what the model itself
    takes where that differs from the public dtype (int64 narrowed to int32 on the wire);
    `low`/`high` the declared value range ([low, high) for integers), None where undeclared."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    model_dtype: str
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class UserModelRecord:
    """model.json: what `deploybench import` found and checked."""

    name: str
    description: str
    sources: tuple[Source, ...]
    inputs: tuple[InputRecord, ...]
    output_name: str
    output_width: int
    rows: int  # sample rows (or seeded random rows)
    samples: str | None  # file names in the folder, None where not given
    labels: str | None
    calibration: str | None
    samples_sha256: str | None
    max_rows: int = 64
    created: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> UserModelRecord:
        data = json.loads(text)
        data["sources"] = tuple(Source(**s) for s in data["sources"])
        data["inputs"] = tuple(InputRecord(**{**i, "shape": tuple(i["shape"])})
                               for i in data["inputs"])
        return cls(**data)


class UserModelError(UsageError):
    """A user model that cannot be imported or loaded (one line, naming the problem)."""


@dataclass(frozen=True, kw_only=True)
class UserModelSpec(ModelSpec):
    """A user's model as the zoo declares a model (ModelSpec), read from its folder."""

    folder: Path
    record: UserModelRecord
    layers: tuple = ()
    training: None = None
    data: Callable[[], Split] = field(default=lambda: None)  # replaced by split()

    @property
    def frameworks(self) -> tuple[str, ...]:
        return tuple(sorted({s.framework for s in self.record.sources}))

    @property
    def has_labels(self) -> bool:
        return self.record.labels is not None

    @property
    def random_inputs(self) -> bool:
        return self.record.samples is None

    @property
    def source(self) -> str:
        return "user"

    @property
    def gate_by_agreement(self) -> bool:
        return not self.has_labels  # without labels, accuracy means nothing

    def golden_split(self) -> str:
        what = ("seeded random inputs" if self.random_inputs
                else f"{self.record.samples}, every {round(1 / GOLDEN_SHARE)}th row")
        labels = ("the user's labels" if self.has_labels
                  else "labels are the reference's own top-1 (no labels given)")
        return f"held-out: {what}; {labels}"

    def fp32_tolerance(self, reference_outputs: np.ndarray) -> float:
        """FP32_TOLERANCE relative to the outputs' scale: 1e-4 x max(1, largest |output|),
        so a model whose outputs are in the thousands is held to the same relative error as
        one whose outputs are logits, and one of small outputs to 1e-4 absolute."""
        return output_tolerance(reference_outputs)

    def reference(self, progress: Callable[[str], None]) -> Reference:
        """The user's own model(s), loaded from the folder's copy; the golden samples are its
        outputs on the held-out rows. With both frameworks given, the PyTorch model is the
        reference (as for a zoo twin) and the Keras one must agree with it."""
        split = self.split()
        progress("loading the user's model")
        torch_model = self.build_torch() if "pytorch" in self.frameworks else None
        keras_model = self.build_keras() if "tensorflow" in self.frameworks else None
        golden_inputs = split.x_test
        outputs = {framework: predict(model, golden_inputs, self.record.inputs, self.max_rows)
                   for framework, model in (("pytorch", torch_model),
                                            ("tensorflow", keras_model)) if model is not None}
        reference = outputs.get("pytorch", outputs.get("tensorflow"))
        if len(outputs) == 2:
            disagreement = twins_disagree(outputs["pytorch"], outputs["tensorflow"])
            if disagreement:
                from deploybench.errors import ParityError

                raise ParityError(f"{self.name}: the Keras and PyTorch models disagree on the "
                                  f"held-out samples: {disagreement}")
        labels = split.y_test if self.has_labels else np.argmax(reference, axis=1)
        golden = Golden(golden_inputs, labels, reference.astype(np.float32))
        return Reference(torch_model, keras_model, self.calibration_inputs(split), golden)

    def public_inputs(self) -> tuple[Input, ...]:
        return tuple(
            Input(i.name, i.shape, i.dtype,
                  high=int(i.high) if i.dtype == "int32" and i.high is not None else None)
            for i in self.record.inputs)

    def source_of(self, framework: str) -> Source | None:
        return next((s for s in self.record.sources if s.framework == framework), None)

    def samples(self) -> Batch:
        """The user's samples in public dtypes, or the seeded random inputs."""
        if self.record.samples is None:
            return random_inputs(self.record.inputs, self.record.rows)
        with np.load(self.folder / self.record.samples) as data:
            return public_batch(self.record.inputs, {k: data[k] for k in data.files})

    def split(self) -> Split:
        """Held-out rows (the golden samples) and the rest; labels are the user's, or zeros
        until the reference's own top-1 replaces them (export/exporter.py)."""
        batch = self.samples()
        labels = (np.load(self.folder / self.record.labels).astype(np.int64)
                  if self.record.labels else np.zeros(len(batch), np.int64))
        held = held_out_rows(len(batch))
        rest = np.setdiff1d(np.arange(len(batch)), held)
        return Split(batch.rows(rest), labels[rest], batch.rows(held), labels[held])

    def calibration_inputs(self, split: Split) -> Batch:
        if self.record.calibration is None:
            return split.x_train
        with np.load(self.folder / self.record.calibration) as data:
            return public_batch(self.record.inputs, {k: data[k] for k in data.files})

    def build_torch(self) -> torch.nn.Module:
        source = self.source_of("pytorch")
        if source is None:
            raise UserModelError(f"{self.name} has no PyTorch model")
        return load_torch_source(source, self.folder, self.record.inputs)

    def build_keras(self) -> Any:
        source = self.source_of("tensorflow")
        if source is None:
            raise UserModelError(f"{self.name} has no TensorFlow model")
        return load_tf_source(source, self.folder)

    def data_provenance(self) -> dict[str, Any]:
        return {
            "source": "user",
            "models": [asdict(s) for s in self.record.sources],
            "samples": ("seeded random inputs within the declared ranges (accuracy means "
                        "nothing)" if self.random_inputs else self.record.samples),
            "random_inputs": self.random_inputs,
            "samples_sha256": self.record.samples_sha256,
            "rows": self.record.rows,
            "labels": self.record.labels,
            "calibration": self.record.calibration or "the samples that are not held out",
        }


def output_tolerance(reference_outputs: np.ndarray) -> float:
    """FP32_TOLERANCE relative to the outputs' scale: 1e-4 x max(1, largest |output|)."""
    from deploybench.manifest import FP32_TOLERANCE

    finite = reference_outputs[np.isfinite(reference_outputs)]
    scale = float(np.max(np.abs(finite))) if finite.size else 1.0
    return FP32_TOLERANCE * max(1.0, scale)


def twins_disagree(torch_outputs: np.ndarray, keras_outputs: np.ndarray) -> str:
    """Why a user's PyTorch and Keras models are not the same model on the same inputs (their
    largest difference over the tolerance of the PyTorch outputs' scale), or ''."""
    tolerance = output_tolerance(torch_outputs)
    diff = float(np.max(np.abs(keras_outputs - torch_outputs)))
    if diff <= tolerance:
        return ""
    return f"max abs diff {diff:.3g} > {tolerance:.3g} (1e-4 x the largest output, at least 1)"


def predict(model: Any, batch: Batch, inputs: tuple[InputRecord, ...], rows: int) -> np.ndarray:
    """A PyTorch module's or a Keras model's (or SavedModel's) outputs, `rows` at a time."""
    parts = []
    for start in range(0, len(batch), max(rows, 1)):
        part = batch.rows(slice(start, start + rows))
        parts.append(call_model(model, part, inputs))
    return np.concatenate(parts)


def call_model(model: Any, batch: Batch, inputs: tuple[InputRecord, ...]) -> np.ndarray:
    """One call of the user's model on a batch: its one output as float32 numpy."""
    arrays = {i.name: batch.arrays[i.name].astype(i.model_dtype, copy=False) for i in inputs}
    if hasattr(model, "parameters") and hasattr(model, "forward"):  # a torch.nn.Module
        import torch

        from deploybench.zoo.train import torch_inputs

        with torch.no_grad():
            output = model(*torch_inputs(Batch(arrays)))
        return output_array(output)
    x = next(iter(arrays.values())) if len(arrays) == 1 else arrays
    return output_array(model(x, training=False))


def output_array(output: Any) -> np.ndarray:
    """The one output of a model call, whatever holds it (a tensor, a one-entry dict or
    sequence), as float32 numpy."""
    if isinstance(output, dict):
        if len(output) != 1:
            raise UserModelError(f"the model returns {len(output)} outputs "
                                 f"({', '.join(map(str, output))}); the kit compares one")
        (output,) = output.values()
    if isinstance(output, list | tuple):
        if len(output) != 1:
            raise UserModelError(f"the model returns {len(output)} outputs; the kit "
                                 f"compares one")
        (output,) = output
    if hasattr(output, "detach"):
        output = output.detach().cpu().numpy()
    return np.asarray(output, dtype=np.float32)


def held_out_rows(rows: int) -> np.ndarray:
    """The golden rows: every fifth row (a fixed, spread-out share; at least one)."""
    count = min(MAX_GOLDEN, max(1, round(rows * GOLDEN_SHARE)))
    return np.unique(np.linspace(0, rows - 1, count).round().astype(int))


def public_batch(inputs: tuple[InputRecord, ...], arrays: dict[str, np.ndarray]) -> Batch:
    """The named arrays in the model's input order and public dtypes."""
    return Batch({i.name: np.ascontiguousarray(arrays[i.name]).astype(i.dtype, copy=False)
                  for i in inputs})


def random_inputs(inputs: tuple[InputRecord, ...], rows: int) -> Batch:
    """Seeded inputs within each input's declared range (floats [0, 1) where none)."""
    generator = np.random.default_rng(RANDOM_SEED)
    arrays = {}
    for i in inputs:
        low = 0.0 if i.low is None else i.low
        if i.dtype == "int32":
            arrays[i.name] = generator.integers(int(low), int(i.high), (rows, *i.shape),
                                                dtype=np.int32)
        else:
            high = 1.0 if i.high is None else i.high
            arrays[i.name] = generator.uniform(low, high, (rows, *i.shape)).astype(np.float32)
    return Batch(arrays)


# --- loading each kind of model ---------------------------------------------------------------


def call_factory(factory: str, python_path: str | None) -> Any:
    """`module:function` imported (from `python_path` first) and called."""
    module_name, _, function_name = factory.partition(":")
    if not module_name or not function_name:
        raise UserModelError(f"factory {factory!r}: give it as module:function")
    if python_path and python_path not in sys.path:
        sys.path.insert(0, python_path)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's code: any error is theirs, named in one line
        raise UserModelError(f"factory {factory!r}: cannot import {module_name}: "
                             f"{type(error).__name__}: {error}") from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UserModelError(f"factory {factory!r}: {module_name} has no function "
                             f"{function_name}")
    try:
        return function()
    except Exception as error:
        raise UserModelError(f"factory {factory!r} failed: {type(error).__name__}: "
                             f"{error}") from error


def load_torch_source(source: Source, folder: Path | None,
                      inputs: tuple[InputRecord, ...] | None = None) -> torch.nn.Module:
    """The user's PyTorch model as a module taking the public inputs, positional, in order;
    int64 inputs narrowed to int32 on the wire are widened back before the model sees them."""
    import torch

    if source.kind == "torch-export":
        path = Path(folder) / source.path if folder else Path(source.path)
        try:
            module = torch.export.load(str(path)).module()
        except Exception as error:
            raise UserModelError(f"{path}: not a torch.export program (torch.export.save): "
                                 f"{type(error).__name__}: {error}".splitlines()[0]) from error
    else:
        module = call_factory(source.factory, source.python_path)
        if not isinstance(module, torch.nn.Module):
            raise UserModelError(f"factory {source.factory!r} returned "
                                 f"{type(module).__name__}, not a torch.nn.Module")
    if inputs is None:
        return module
    return UserModule(module, [i.model_dtype == "int64" for i in inputs])


def UserModule(model: torch.nn.Module, widened: list[bool]) -> torch.nn.Module:  # noqa: N802
    """The user's module behind a forward of exactly its public inputs, positional (what every
    export path traces: torch.export cannot take *args), widening int32 inputs to the int64
    the model takes. train()/eval() stop here: a torch.export program's module refuses them,
    and the import checked the model is in eval mode already."""
    import torch

    names = [f"input_{n}" for n in range(len(widened))]
    passed = ", ".join(f"{name}.long()" if wide else name
                       for name, wide in zip(names, widened, strict=True))
    namespace: dict[str, Any] = {}
    exec(  # noqa: S102 - a forward with one named parameter per input, built from counts only
        f"def forward(self, {', '.join(names)}):\n    return self.model({passed})\n", namespace)

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def train(self, mode: bool = True) -> torch.nn.Module:
            self.training = mode
            return self

        forward = namespace["forward"]

    return Wrapped()


def load_tf_source(source: Source, folder: Path | None) -> Any:
    """The user's TensorFlow model: a Keras model as it is, or a SavedModel's serving_default
    as a Keras-like callable (export/tf_formats.py's endpoint calls either the same way)."""
    path = Path(folder) / source.path if folder else Path(source.path)
    if source.kind == "keras":
        import keras

        try:
            return keras.saving.load_model(path, compile=False)
        except Exception as error:
            raise UserModelError(f"{path}: not a Keras model file (.keras): "
                                 f"{type(error).__name__}: {error}".splitlines()[0]) from error
    return SavedModelCallable.load(path)


class SavedModelCallable:
    """A SavedModel's serving_default, called like a Keras model: one array, or a dict of
    arrays by input name, each cast to the dtype the signature takes; returns its one output.
    `module` is what the SavedModel writer and tf2onnx track."""

    def __init__(self, module: Any, function: Any) -> None:
        self.module = module
        self.function = function
        # name -> tf.TensorSpec, in the signature's (sorted) order
        self.signature = dict(sorted(function.structured_input_signature[1].items()))

    @classmethod
    def load(cls, path: Path) -> SavedModelCallable:
        import tensorflow as tf

        try:
            module = tf.saved_model.load(str(path))
        except Exception as error:
            raise UserModelError(f"{path}: not a SavedModel folder: "
                                 f"{type(error).__name__}: {error}".splitlines()[0]) from error
        function = module.signatures.get("serving_default")
        if function is None:
            raise UserModelError(f"{path}: the SavedModel has no serving_default signature "
                                 f"(it has: {', '.join(module.signatures) or 'none'})")
        return cls(module, function)

    def __call__(self, x: Any, training: bool = False) -> Any:
        import tensorflow as tf

        arrays = x if isinstance(x, dict) else {next(iter(self.signature)): x}
        outputs = self.function(**{name: tf.cast(arrays[name], spec.dtype)
                                   for name, spec in self.signature.items()})
        (output,) = outputs.values()
        return output


# --- the folder of imported models ------------------------------------------------------------


def spec_of(folder: Path) -> UserModelSpec:
    """The spec of the user model kept in `folder` (its model.json)."""
    path = folder / RECORD_FILE
    try:
        record = UserModelRecord.from_json(path.read_text())
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise UserModelError(f"{path}: unreadable user model record ({error}); import the "
                             f"model again") from error
    first = record.inputs[0]
    return UserModelSpec(
        name=record.name, description=record.description, input_shape=first.shape,
        num_classes=record.output_width, input_name=first.name,
        output_name=record.output_name, min_accuracy=None, max_rows=record.max_rows,
        folder=folder, record=record)


def user_specs(home: Path | None = None) -> dict[str, UserModelSpec]:
    """Every imported model, by name (a folder without a readable record is skipped)."""
    home = home or models_home()
    specs = {}
    for record in sorted(home.glob(f"*/{RECORD_FILE}")):
        try:
            spec = spec_of(record.parent)
        except UserModelError:
            continue
        specs[spec.name] = spec
    return specs
