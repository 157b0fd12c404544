"""`deploybench import`: check a user's model (and its samples) and keep a copy of both in the
user model folder, where the zoo finds it (deploybench/zoo/user.py). Everything is checked
before anything is written; the folder appears in one rename, or not at all."""

from __future__ import annotations

import datetime as dt
import inspect
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from deploybench.batch import Batch
from deploybench.export.context import native_stderr_logged
from deploybench.files import remove_tree, tree_sha256
from deploybench.zoo import user
from deploybench.zoo.user import (
    CALIBRATION_FILE,
    LABELS_FILE,
    RECORD_FILE,
    SAMPLES_FILE,
    SOURCE_DIR,
    InputRecord,
    Source,
    UserModelError,
    UserModelRecord,
)

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
MIN_SAMPLES = 5  # a held-out row, and some to calibrate on
INTEGER_DTYPES = ("int32", "int64")
PUBLIC_DTYPES = {"float32": "float32", "int32": "int32", "int64": "int32"}  # int64: narrowed
# the one output's name in every artifact and every server's answer, whatever the model calls
# it: the kit's clients and load generators read it by this name, as for a zoo model
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ImportRequest:
    """What the user gave `deploybench import`: at most one model per framework."""

    name: str
    keras: Path | None = None
    savedmodel: Path | None = None
    torch_export: Path | None = None
    torch_factory: str | None = None
    python_path: Path | None = None
    samples: Path | None = None
    labels: Path | None = None
    calibration: Path | None = None
    ranges: tuple[str, ...] = ()  # NAME=LOW:HIGH
    max_rows: int = 64
    description: str | None = None
    replace: bool = False


def import_model(request: ImportRequest, home: Path | None = None) -> user.UserModelSpec:
    """Check everything, then write the model's folder under `home` in one rename."""
    home = home or user.models_home()
    check_name(request, home)
    sources = given_sources(request)
    if any(s.framework == "tensorflow" for s in sources):
        # TensorFlow's C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL: to the log, as in export
        with native_stderr_logged("TensorFlow's start-up"):
            import tensorflow  # noqa: F401
    models = {s.kind: load_source(s) for s in sources}
    declared = [declared_inputs(kind, model) for kind, model in models.items()]
    samples = read_arrays(request.samples, "samples") if request.samples else None
    ranges = parse_ranges(request.ranges)
    inputs = resolve_inputs(declared, samples, ranges)
    if samples is not None:
        check_arrays(samples, inputs, str(request.samples), ranges)
        rows = len(next(iter(samples.values())))
        if rows < MIN_SAMPLES:
            raise UserModelError(f"{request.samples}: {rows} rows; give at least {MIN_SAMPLES} "
                                 f"(a fifth is held out as golden samples)")
    else:
        missing = [i.name for i in inputs if i.dtype == "int32" and i.high is None]
        if missing:
            raise UserModelError(f"without samples, integer inputs need a range to draw from: "
                                 f"give --range {missing[0]}=0:HIGH")
        rows = user.RANDOM_ROWS
    if request.calibration:
        check_arrays(read_arrays(request.calibration, "calibration inputs"), inputs,
                     str(request.calibration), ranges)
    probe = (user.public_batch(tuple(inputs), samples) if samples is not None
             else user.random_inputs(tuple(inputs), rows)).rows(slice(0, 4))
    outputs = {kind: check_outputs(kind, model, probe, tuple(inputs))
               for kind, model in models.items()}
    widths = {kind: output.shape[1] for kind, output in outputs.items()}
    if len(set(widths.values())) > 1:
        raise UserModelError(f"the models' outputs differ in width: {widths}")
    width = next(iter(widths.values()))
    if len(outputs) == 2:  # one per framework: the same model, or no comparison to make
        by_framework = {s.framework: outputs[s.kind] for s in sources}
        disagreement = user.twins_disagree(by_framework["pytorch"], by_framework["tensorflow"])
        if disagreement:
            raise UserModelError(f"the Keras and PyTorch models disagree on the samples' first "
                                 f"rows: {disagreement}; give two models of the same weights")
    if request.labels:
        check_labels(request.labels, rows, width)
    record = UserModelRecord(
        name=request.name,
        description=request.description or describe(sources, inputs, width),
        sources=tuple(sources), inputs=tuple(inputs), output_name=OUTPUT_NAME,
        output_width=width, rows=rows,
        samples=SAMPLES_FILE if request.samples else None,
        labels=LABELS_FILE if request.labels else None,
        calibration=CALIBRATION_FILE if request.calibration else None,
        samples_sha256=tree_sha256(request.samples) if request.samples else None,
        max_rows=request.max_rows,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    return write_folder(home, request, record)


def check_name(request: ImportRequest, home: Path) -> None:
    from deploybench.zoo import zoo_specs

    if not NAME.fullmatch(request.name):
        raise UserModelError(f"model name {request.name!r}: lower-case letters, digits, '.', "
                             f"'-' and '_' only, starting with a letter or digit")
    if request.name in zoo_specs():
        raise UserModelError(f"model name {request.name!r} is a zoo model's; choose another")
    if (home / request.name / RECORD_FILE).exists() and not request.replace:
        raise UserModelError(f"a user model {request.name!r} exists already "
                             f"({home / request.name}); give --replace to import it again")
    if request.max_rows < 1:
        raise UserModelError(f"--max-rows {request.max_rows}: at least 1")


def given_sources(request: ImportRequest) -> list[Source]:
    """The models given, one per framework at most, each path checked to exist."""
    given = [("keras", request.keras), ("savedmodel", request.savedmodel),
             ("torch-export", request.torch_export)]
    sources = []
    for kind, path in given:
        if path is None:
            continue
        if not Path(path).exists():
            raise UserModelError(f"{path}: no such file or folder (--{kind})")
        sources.append(Source(kind, str(Path(path).resolve())))
    if request.torch_factory:
        python_path = str((request.python_path or Path.cwd()).resolve())
        sources.append(Source("torch-factory", factory=request.torch_factory,
                              python_path=python_path))
    if not sources:
        raise UserModelError("no model given: --keras, --savedmodel, --torch-export or "
                             "--torch-factory")
    frameworks = [s.framework for s in sources]
    for framework in set(frameworks):
        if frameworks.count(framework) > 1:
            raise UserModelError(f"more than one {framework} model given: one per framework")
    if request.torch_factory and request.samples is None:
        raise UserModelError("a --torch-factory module needs --samples: its inputs' names, "
                             "shapes and dtypes are taken from them")
    return sources


def load_source(source: Source) -> Any:
    """The model itself, as given (a kind that does not match the path is an error)."""
    if source.framework == "pytorch":
        if source.kind == "torch-export":
            path = Path(source.path)
            if path.is_dir() or path.suffix != ".pt2":
                raise UserModelError(f"{path}: not a torch.export program (a .pt2 file from "
                                     f"torch.export.save)")
        return user.load_torch_source(source, None)
    path = Path(source.path)
    if source.kind == "keras" and (path.is_dir() or path.suffix != ".keras"):
        raise UserModelError(f"{path}: not a Keras model file (.keras)")
    if source.kind == "savedmodel" and not (path / "saved_model.pb").is_file():
        raise UserModelError(f"{path}: not a SavedModel folder (no saved_model.pb)")
    return user.load_tf_source(source, None)


@dataclass(frozen=True)
class Declared:
    """An input as the model declares it: None where the model does not say (a factory's
    shapes and dtypes, a dynamic axis)."""

    name: str
    shape: tuple[int | None, ...] | None
    dtype: str | None


def declared_inputs(kind: str, model: Any) -> list[Declared]:
    if kind == "keras":
        return [Declared(_keras_name(t), tuple(t.shape[1:]), str(t.dtype)) for t in model.inputs]
    if kind == "savedmodel":
        return [Declared(name, tuple(spec.shape[1:]), spec.dtype.name)
                for name, spec in model.signature.items()]
    if kind == "torch-export":
        return _exported_inputs(model)
    forward = inspect.signature(model.forward)
    return [Declared(name, None, None) for name, parameter in forward.parameters.items()
            if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)]


def _keras_name(tensor: Any) -> str:
    # a functional model's input tensor is named after its keras.Input (name=...)
    return str(tensor.name).split(":")[0]


def _exported_inputs(module: Any) -> list[Declared]:
    """A torch.export program's user inputs: the placeholders of its graph, named after the
    original forward's parameters, with their example shapes (a symbolic size: dynamic)."""
    inner = getattr(module, "model", module)  # behind WidenedInputs
    declared = []
    for node in inner.graph.nodes:
        if node.op != "placeholder":
            continue
        value = node.meta.get("val")
        if value is None or not hasattr(value, "shape"):
            continue
        shape = tuple(int(s) if str(s).lstrip("-").isdigit() else None for s in value.shape[1:])
        declared.append(Declared(node.name, shape, str(value.dtype).removeprefix("torch.")))
    return declared


def resolve_inputs(declared: list[list[Declared]], samples: dict[str, np.ndarray] | None,
                   ranges: dict[str, tuple[float, float]]) -> list[InputRecord]:
    """The public inputs: the models' own declarations, agreed between them, completed by the
    samples (a factory's shapes and dtypes, a dynamic axis' size)."""
    first = declared[0]
    for other in declared[1:]:
        if [d.name for d in other] != [d.name for d in first]:
            raise UserModelError(f"the models' inputs differ: {[d.name for d in first]} and "
                                 f"{[d.name for d in other]}; name them alike (the Keras "
                                 f"Input's name, the forward parameter's name)")
    inputs = []
    for position, entry in enumerate(first):
        shapes = [d[position].shape for d in declared if d[position].shape is not None]
        dtypes = [d[position].dtype for d in declared if d[position].dtype is not None]
        sample = None if samples is None else samples.get(entry.name)
        if samples is not None and sample is None:
            raise UserModelError(f"the samples have no input {entry.name!r} (they have: "
                                 f"{', '.join(samples)}; the model takes: "
                                 f"{', '.join(d.name for d in first)})")
        shape = _resolve_shape(entry.name, shapes, sample)
        dtype = dtypes[0] if dtypes else (str(sample.dtype) if sample is not None else None)
        if dtype not in PUBLIC_DTYPES:
            raise UserModelError(f"input {entry.name!r} is {dtype}: the kit carries float32, "
                                 f"int32 and int64 inputs")
        low, high = ranges.get(entry.name, (None, None))
        if dtype in INTEGER_DTYPES and low not in (None, 0):
            raise UserModelError(f"--range {entry.name}: an integer input's range starts at 0 "
                                 f"(ids, [0, HIGH))")
        inputs.append(InputRecord(entry.name, shape, PUBLIC_DTYPES[dtype], dtype, low, high))
    unknown = set(ranges) - {i.name for i in inputs}
    if unknown:
        raise UserModelError(f"--range names no input of the model: {', '.join(sorted(unknown))}")
    return inputs


def _resolve_shape(name: str, shapes: list[tuple[int | None, ...]],
                   sample: np.ndarray | None) -> tuple[int, ...]:
    if sample is not None:
        taken = tuple(int(s) for s in sample.shape[1:])
        for shape in shapes:
            if len(shape) != len(taken) or any(s is not None and s != t
                                               for s, t in zip(shape, taken, strict=True)):
                raise UserModelError(
                    f"samples {name!r} have shape (rows, {', '.join(map(str, taken))}), the "
                    f"model takes (rows, {', '.join('?' if s is None else str(s) for s in shape)})")
        return taken
    shape = shapes[0]
    if any(s is None for s in shape):
        raise UserModelError(f"input {name!r} has a dynamic axis: give --samples, whose shape "
                             f"fixes its size")
    return tuple(int(s) for s in shape)


def parse_ranges(texts: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    ranges = {}
    for text in texts:
        name, _, bounds = text.partition("=")
        try:
            low, high = (float(b) for b in bounds.split(":"))
        except ValueError:
            low = high = float("nan")
        if not name or not low < high:
            raise UserModelError(f"--range {text!r}: give NAME=LOW:HIGH with LOW < HIGH")
        ranges[name] = (low, high)
    return ranges


def read_arrays(path: Path, what: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise UserModelError(f"{path}: {what} must be an .npz of arrays named by the "
                                     f"model's inputs, not one array")
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as error:
        raise UserModelError(f"{path}: not readable {what} (.npz): {error}") from error


def check_arrays(arrays: dict[str, np.ndarray], inputs: list[InputRecord], where: str,
                 ranges: dict[str, tuple[float, float]]) -> None:
    """Names, dtypes, shapes, a row count shared by all, finite floats, integers in range."""
    names = [i.name for i in inputs]
    if sorted(arrays) != sorted(names):
        raise UserModelError(f"{where}: arrays {sorted(arrays)}, the model's inputs are "
                             f"{names}")
    rows = {len(a) for a in arrays.values()}
    if len(rows) != 1:
        raise UserModelError(f"{where}: the arrays disagree on the number of rows: "
                             f"{sorted(rows)}")
    for i in inputs:
        array = arrays[i.name]
        kind = str(array.dtype)
        if i.dtype == "float32" and kind != "float32":
            raise UserModelError(f"{where}: {i.name!r} is {kind}, the model takes float32")
        if i.dtype == "int32" and kind not in INTEGER_DTYPES:
            raise UserModelError(f"{where}: {i.name!r} is {kind}, the model takes integers "
                                 f"({i.model_dtype})")
        if tuple(array.shape[1:]) != i.shape:
            raise UserModelError(f"{where}: {i.name!r} has shape {tuple(array.shape)}, the "
                                 f"model takes (rows, {', '.join(map(str, i.shape))})")
        if i.dtype == "float32" and not np.all(np.isfinite(array)):
            raise UserModelError(f"{where}: {i.name!r} holds NaN or infinite values")
        if i.dtype == "int32" and array.size:
            low, high = int(array.min()), int(array.max())
            ceiling = ranges.get(i.name, (0, np.iinfo(np.int32).max + 1))[1]
            if low < 0 or high >= ceiling:
                raise UserModelError(f"{where}: {i.name!r} holds values {low}..{high}, "
                                     f"outside [0, {ceiling:.0f})")


def check_outputs(kind: str, model: Any, probe: Batch,
                  inputs: tuple[InputRecord, ...]) -> np.ndarray:
    """The model's output on the probe, after checking it answers the same twice (no dropout
    or batch statistics left in training mode) with one (rows, width) float output."""
    if kind in ("torch-export", "torch-factory"):
        training = _training_modules(model)
        if training:
            raise UserModelError(f"the PyTorch model is in training mode with {training}: "
                                 f"its outputs change between calls; call .eval() before "
                                 f"saving it")
    try:
        first = user.call_model(model, probe, inputs)
        second = user.call_model(model, probe, inputs)
    except UserModelError:
        raise
    except Exception as error:
        raise UserModelError(f"the {kind} model fails on the samples: {type(error).__name__}: "
                             f"{error}".splitlines()[0]) from error
    if first.ndim != 2 or len(first) != len(probe):
        raise UserModelError(f"the {kind} model's output has shape {first.shape}; the kit "
                             f"compares outputs of shape (rows, width)")
    if not np.allclose(first, second, rtol=1e-5, atol=1e-6, equal_nan=True):
        raise UserModelError(f"the {kind} model's outputs change between two calls on the same "
                             f"input: dropout or batch statistics left in training mode?")
    return first


def _training_modules(model: Any) -> str:
    """The dropout and batch-norm layers of a module left in training mode, named."""
    import torch

    kinds = (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm)
    names = [f"layer {name or '(the model)'} ({type(m).__name__})"
             for name, m in model.named_modules() if m.training and isinstance(m, kinds)]
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")


def check_labels(path: Path, rows: int, width: int) -> None:
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UserModelError(f"{path}: not readable labels (.npy): {error}") from error
    if not isinstance(labels, np.ndarray) or labels.ndim != 1 or len(labels) != rows:
        raise UserModelError(f"{path}: labels must be one integer per sample row ({rows})")
    if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= width:
        raise UserModelError(f"{path}: labels must be integers in [0, {width}) (the model's "
                             f"output width)")


def describe(sources: list[Source], inputs: list[InputRecord], width: int) -> str:
    given = " + ".join(s.kind for s in sources)
    taking = ", ".join(f"{i.name} {i.dtype}{list(i.shape)}" for i in inputs)
    return f"user model ({given}), inputs {taking}, output width {width}"


def write_folder(home: Path, request: ImportRequest,
                 record: UserModelRecord) -> user.UserModelSpec:
    """Copy the model and its files into a staging folder, then rename it into place."""
    home.mkdir(parents=True, exist_ok=True)
    staging = home / f".{request.name}.importing-{os.getpid()}"
    if staging.exists():  # an import killed midway
        remove_tree(staging)
    try:
        (staging / SOURCE_DIR).mkdir(parents=True)
        sources = []
        for source in record.sources:
            if source.path is None:
                sources.append(source)
                continue
            origin = Path(source.path)
            kept = Path(SOURCE_DIR) / origin.name
            if origin.is_dir():
                shutil.copytree(origin, staging / kept)
            else:
                shutil.copy2(origin, staging / kept)
            sources.append(replace(source, path=kept.as_posix(),
                                   sha256=tree_sha256(staging / kept)))
        for given, name in ((request.samples, SAMPLES_FILE), (request.labels, LABELS_FILE),
                            (request.calibration, CALIBRATION_FILE)):
            if given is not None:
                shutil.copy2(given, staging / name)
        record = replace(record, sources=tuple(sources))
        (staging / RECORD_FILE).write_text(record.to_json())
        target = home / request.name
        if target.exists():
            retired = home / f".{request.name}.replaced-{os.getpid()}"
            os.replace(target, retired)
            os.replace(staging, target)
            remove_tree(retired)
        else:
            os.replace(staging, target)
    except BaseException:
        if staging.exists():
            remove_tree(staging)
        raise
    return user.spec_of(home / request.name)
