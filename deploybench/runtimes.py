"""Run each artifact format in-process with its own runtime, on public-format inputs: the one
way each format is loaded.

Export uses these for its parity gate, the edge stage for its measurements and baselines, the
load stage for its in-process ceiling. Every runner takes a Batch of the public inputs (float32
pixels, or int32 token ids and mask) and returns float32 logits, split so that only the
inference call can be timed: `set_input` (not timed), `run` (timed, like TFLite's
benchmark_model times only Invoke), `output` (not timed); `predict` (or calling the runner) does
all three. Inputs reach an artifact by name where it names them, else in the public order.

A backend (BACKENDS, by runtime name) imports its runtime and sets its threads (not timed as
load); its `load()` reads the artifact and makes it ready to run (timed as init).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deploybench.batch import Batch
from deploybench.errors import DeploybenchError

# what an artifact's inputs may be (the public dtypes) and its output must be
INPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.int32))


class ArtifactError(DeploybenchError):
    """An artifact that is missing, corrupt or not what its name says."""


def feeds(batch: Batch, names: list[str]) -> dict[str, np.ndarray]:
    """The batch's arrays under an artifact's own input names: by name where they match, the
    one array where the artifact takes one input, else refused."""
    if len(names) == 1 and len(batch.arrays) == 1:
        return {names[0]: batch.only}
    if sorted(names) != sorted(batch.names):
        raise ArtifactError(f"the artifact takes inputs {names}, the batch holds {batch.names}")
    return {name: batch.arrays[name] for name in names}


class Runner(Protocol):
    def set_input(self, x: Batch) -> None: ...

    def run(self) -> None: ...

    def output(self) -> np.ndarray: ...

    def info(self) -> dict[str, Any]:
        """What the runtime reports about how it ran (threads used, delegates applied)."""
        ...


class Backend(Protocol):
    def load(self) -> Runner: ...


class _Predicts:
    """`predict(x)` and `runner(x)`: set the input, run, read the output, in one call (the
    export's parity gate needs no split)."""

    def set_input(self, x: Batch) -> None:
        raise NotImplementedError

    def run(self) -> None:
        raise NotImplementedError

    def output(self) -> np.ndarray:
        raise NotImplementedError

    def predict(self, x: Batch) -> np.ndarray:
        self.set_input(x)
        self.run()
        return self.output()

    __call__ = predict


# --- TensorFlow (SavedModel) --------------------------------------------------------------


class TensorFlowRunner(_Predicts):
    """The SavedModel's serving_default signature (named inputs, one output)."""

    def __init__(self, signature: Any) -> None:
        import tensorflow as tf

        self._tf = tf
        self.signature = signature
        self.input_names = list(signature.structured_input_signature[1].keys())
        (self.output_name,) = signature.structured_outputs.keys()
        self._x: dict[str, Any] = {}
        self._y: Any = None

    def set_input(self, x: Batch) -> None:
        self._x = {name: self._tf.constant(array)
                   for name, array in feeds(x, self.input_names).items()}

    def run(self) -> None:
        self._y = self.signature(**self._x)

    def output(self) -> np.ndarray:
        return self._y[self.output_name].numpy()

    def info(self) -> dict[str, Any]:
        threading = self._tf.config.threading
        return {"runtime_threads": {
            "intra_op": threading.get_intra_op_parallelism_threads(),
            "inter_op": threading.get_inter_op_parallelism_threads(),
        }}


class KerasRunner(_Predicts):
    """A Keras model in process (a hub preset read back), called on the public inputs by name;
    its one output (a {name: logits} dict or a tensor) as float32."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.input_names = [t.name.split(":")[0] for t in model.inputs]
        self._x: Any = None
        self._y: Any = None

    def set_input(self, x: Batch) -> None:
        arrays = feeds(x, self.input_names)
        self._x = arrays if len(arrays) > 1 else next(iter(arrays.values()))

    def run(self) -> None:
        self._y = self.model(self._x, training=False)

    def output(self) -> np.ndarray:
        y = self._y
        if isinstance(y, dict):
            (y,) = y.values()
        return np.asarray(y, dtype=np.float32)

    def info(self) -> dict[str, Any]:
        return {}


def load_savedmodel(path: Path) -> TensorFlowRunner:
    """A SavedModel, ready to run its serving_default signature."""
    import tensorflow as tf

    return TensorFlowRunner(tf.saved_model.load(str(path)).signatures["serving_default"])


class TensorFlowBackend:
    """TensorFlow fixes its thread pools at first use, so each thread count needs a fresh
    process (the edge worker is one); `runtime_threads` records what TensorFlow reports back."""

    def __init__(self, path: Path, threads: int, xnnpack: bool | None = None) -> None:
        import tensorflow as tf

        # threads=n means n threads inside an op, ops one at a time: what TFLite's num_threads
        # means, so both figures are for the same thread budget
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        self.path = Path(path)

    def load(self) -> TensorFlowRunner:
        return load_savedmodel(self.path)


# --- torch (TorchScript) ------------------------------------------------------------------


class TorchRunner(_Predicts):
    def __init__(self, module: Any) -> None:
        import torch

        self._torch = torch
        self.module = module
        self._x: list[Any] = []
        self._y: Any = None

    def set_input(self, x: Batch) -> None:  # positional, in the public order
        self._x = [self._torch.from_numpy(np.ascontiguousarray(a)) for a in x.arrays.values()]

    def run(self) -> None:
        with self._torch.inference_mode():
            self._y = self.module(*self._x)

    def output(self) -> np.ndarray:
        return self._y.numpy()

    def info(self) -> dict[str, Any]:
        return {"runtime_threads": {
            "intra_op": self._torch.get_num_threads(),
            "inter_op": self._torch.get_num_interop_threads(),
        }}


def load_torchscript(path: Path | bytes) -> TorchRunner:
    """A TorchScript file (or its bytes, e.g. read out of a .mar), ready to run."""
    import torch

    source = io.BytesIO(path) if isinstance(path, bytes) else str(path)
    with warnings.catch_warnings():  # TorchScript is deprecated upstream (DESIGN.md)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        module = torch.jit.load(source, map_location="cpu").eval()
    return TorchRunner(module)


def load_exported_program(path: Path) -> TorchRunner:
    """A torch.export program (.pt2), run eagerly by torch: the reference's graph, as exported."""
    import torch

    with warnings.catch_warnings():  # torch.export's own internals (deprecated pytree classes)
        warnings.simplefilter("ignore", FutureWarning)
        return TorchRunner(torch.export.load(str(path)).module())


class AOTIPackage:
    """The models of an AOTInductor package: `model`, and one `rows_<low>_<high>` for each
    piece of the batch range that compiling kept out of it (export/torch_formats.py write_aoti); a
    batch runs on the model whose range holds it."""

    def __init__(self, path: Path) -> None:
        import zipfile

        from torch._inductor.package import load_package

        # every package checks its input's shape: a wrong one raises instead of running silently
        os.environ.setdefault("AOTI_RUNTIME_CHECK_INPUTS", "1")
        with zipfile.ZipFile(path) as archive:
            names = {Path(name).parts[3] for name in archive.namelist()
                     if Path(name).parts[1:3] == ("data", "aotinductor")
                     and len(Path(name).parts) > 4}
        self.model = load_package(str(path), "model")
        self.pieces = []  # (low, high, model)
        for name in sorted(names - {"model"}):
            _, low, high = name.split("_")
            self.pieces.append((int(low), int(high), load_package(str(path), name)))

    def __call__(self, *inputs: Any) -> Any:
        rows = inputs[0].shape[0]
        for low, high, model in self.pieces:
            if low <= rows <= high:
                return model(*inputs)
        return self.model(*inputs)


def aoti_model_name(low: int, high: int) -> str:
    return f"rows_{low}_{high}"


def aoti_lowest_batch(path: Path, one_row: tuple[Any, ...], high: int) -> int:
    """The fewest rows the package's `model` takes (its input check says), searched between 1
    and `high`, which it takes; every rows count from there to `high` is taken."""
    model = AOTIPackage(path).model

    def takes(rows: int) -> bool:
        try:
            model(*[x.repeat(rows, *([1] * (x.dim() - 1))) for x in one_row])
        except RuntimeError:
            return False
        return True

    low = 1
    while low < high:
        middle = (low + high) // 2
        if takes(middle):
            high = middle
        else:
            low = middle + 1
    return low


def load_aoti(path: Path) -> TorchRunner:
    """An AOTInductor package (.pt2), its compiled model(s) run through torch's runtime. Its
    kernels use OpenMP's pool, which torch.set_num_threads sizes."""
    import zipfile

    if not Path(path).is_file():
        raise ArtifactError(f"{path}: no such AOTInductor package")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return TorchRunner(AOTIPackage(Path(path)))
    except (RuntimeError, ValueError, KeyError, OSError, zipfile.BadZipFile) as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ArtifactError(
            f"{path}: not a loadable AOTInductor package ({first_line})") from error


def executorch_bindings() -> Any:
    """ExecuTorch's Python bindings (`portable_lib`), without its compiler. The bindings import
    `executorch.exir` for one warning class, and that package's __init__ loads the whole
    compiler (torch.export passes, torchao): ~7 s of the ~10 s a fresh process took to import
    the runtime, none of it the runtime's. Unless the compiler is loaded already, its package
    is registered without running its __init__ while the bindings import, then dropped, so a
    later `import executorch.exir` in the process loads it whole as usual."""
    import importlib.util
    import sys

    if "executorch.extension.pybindings.portable_lib" not in sys.modules \
            and "executorch.exir" not in sys.modules:
        spec = importlib.util.find_spec("executorch.exir")
        if spec is not None:
            sys.modules["executorch.exir"] = importlib.util.module_from_spec(spec)
            try:
                import executorch.extension.pybindings.portable_lib  # noqa: F401
            finally:
                del sys.modules["executorch.exir"]
    from executorch.extension.pybindings import portable_lib

    return portable_lib


class ExecuTorchRunner(_Predicts):
    """An ExecuTorch program (.pte) under ExecuTorch's runtime (its Python bindings)."""

    def __init__(self, path: Path) -> None:
        import torch

        executorch_bindings()
        from executorch.runtime import Runtime

        self._torch = torch
        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path}: no such ExecuTorch program")
        try:
            # the program must outlive its method: dropping it while the method runs crashes
            self.program = Runtime.get().load_program(self.path)
            self.method = self.program.load_method("forward")
        except (RuntimeError, ValueError) as error:
            first_line = (str(error).strip().splitlines() or [""])[0]
            raise ArtifactError(
                f"{self.path}: not a loadable ExecuTorch program ({first_line})") from error
        self._x: list[Any] = []
        self._y: Any = None

    def set_input(self, x: Batch) -> None:  # positional, in the public order
        self._x = [self._torch.from_numpy(np.ascontiguousarray(a)) for a in x.arrays.values()]

    def run(self) -> None:
        self._y = self.method.execute(self._x)

    def output(self) -> np.ndarray:
        return self._y[0].numpy().copy()

    def info(self) -> dict[str, Any]:
        threads = executorch_bindings()._threadpool_get_thread_count()
        return {"runtime_threads": {"threadpool": threads}}


def load_executorch(path: Path) -> ExecuTorchRunner:
    return ExecuTorchRunner(path)


class TorchBackend:
    """torch in process, at `threads` intra-op threads (one inter-op), on a TorchScript file."""

    def __init__(self, path: Path, threads: int, xnnpack: bool | None = None) -> None:
        import torch

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)  # only before any inter-op work: a fresh process
        except RuntimeError:
            pass  # recorded as reported by runtime_threads
        self.path = Path(path)

    def load(self) -> TorchRunner:
        return load_torchscript(self.path)


class TorchExportBackend(TorchBackend):
    """torch in process on the torch.export program, run eagerly: PyTorch's eager baseline."""

    def load(self) -> TorchRunner:
        return load_exported_program(self.path)


class AOTInductorBackend(TorchBackend):
    """torch in process on the AOTInductor package: PyTorch's compiled server path."""

    def load(self) -> TorchRunner:
        return load_aoti(self.path)


class ExecuTorchBackend:
    """ExecuTorch's runtime, its thread pool at `threads`. The pool is set before any program
    is loaded in the process (the edge worker's is fresh: resetting it after loading has
    deadlocked), and the runner reports the size the pool then has."""

    def __init__(self, path: Path, threads: int, xnnpack: bool | None = None) -> None:
        executorch_bindings()._unsafe_reset_threadpool(threads)
        self.path = Path(path)

    def load(self) -> ExecuTorchRunner:
        return ExecuTorchRunner(self.path)


# --- LiteRT (TFLite) ----------------------------------------------------------------------


class TFLiteModel(_Predicts):
    """A .tflite file under the LiteRT interpreter. Every exported variant takes the public
    inputs (float32, or int32 ids) and returns float32 (the full-int8 one quantizes and
    dequantizes inside, as part of the model), so inputs and outputs pass as they are; a file
    with other input or output types is refused. Inputs are matched by their signature names."""

    def __init__(self, path: Path, threads: int | None = None, xnnpack: bool = True) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.path = Path(path)
        self.threads, self.xnnpack = threads, xnnpack
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
        self._inputs = self._input_indices()
        self._output = self.interpreter.get_output_details()[0]
        self._shapes: dict[str, tuple[int, ...]] = {}
        details = {d["index"]: d for d in self.interpreter.get_input_details()}
        # a sequence length the file fixes (litert-torch converts at one length): shorter
        # rows are padded to it, their mask hiding the padding, as a phone app pads its input
        self._fixed_length = {name: int(details[index]["shape_signature"][1])
                              for name, index in self._inputs.items()
                              if len(details[index]["shape_signature"]) > 1
                              and details[index]["shape_signature"][1] > 0}
        for name, index in self._inputs.items():
            if np.dtype(details[index]["dtype"]) not in INPUT_DTYPES:
                raise ArtifactError(f"{self.path}: input {name!r} is "
                                    f"{np.dtype(details[index]['dtype'])}, not float32 or int32")
            self._shapes[name] = tuple(details[index]["shape"])
        if np.dtype(self._output["dtype"]) != np.float32:
            raise ArtifactError(f"{self.path}: output is {np.dtype(self._output['dtype'])}, "
                                "not float32 (every artifact returns float32)")

    def _input_indices(self) -> dict[str, int]:
        """Input tensor indices by the signature's names (the tensors' own names are the
        converter's); a file without a signature by its tensors' names."""
        signatures = self.interpreter.get_signature_list()
        if len(signatures) == 1:
            runner = self.interpreter.get_signature_runner(next(iter(signatures)))
            return {name: d["index"] for name, d in runner.get_input_details().items()}
        return {d["name"]: d["index"] for d in self.interpreter.get_input_details()}

    def set_input(self, x: Batch) -> None:
        lengths = {self._fixed_length[name] for name in x.variable if name in self._fixed_length}
        if len(lengths) == 1:
            x = x.padded(lengths.pop())
        arrays = feeds(x, list(self._inputs))
        changed = {name: a.shape for name, a in arrays.items() if a.shape != self._shapes[name]}
        for name, shape in changed.items():
            self.interpreter.resize_tensor_input(self._inputs[name], list(shape))
            self._shapes[name] = shape
        if changed:
            self.interpreter.allocate_tensors()
            self._output = self.interpreter.get_output_details()[0]
        for name, array in arrays.items():
            self.interpreter.set_tensor(self._inputs[name], np.ascontiguousarray(array))

    def run(self) -> None:
        self.interpreter.invoke()

    def output(self) -> np.ndarray:
        return self.interpreter.get_tensor(self._output["index"])  # a copy

    def info(self) -> dict[str, Any]:
        # The interpreter takes num_threads as given (it has no getter); the delegate nodes in
        # its graph show whether XNNPACK took part, in how many partitions, and which operators
        # it left to LiteRT's own kernels.
        try:
            nodes = self.interpreter._get_ops_details()
        except Exception:  # a private API: absent in some versions
            return {"runtime_threads": {"num_threads": self.threads},
                    "delegate_partitions": None}
        partitions = sum(1 for n in nodes if n.get("op_name") == "DELEGATE")
        return {"runtime_threads": {"num_threads": self.threads},
                "delegate_partitions": partitions,
                **(delegation(nodes) if self.xnnpack else {})}


def delegation(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The share of a .tflite's operators a delegate runs, and the operators left (by name).

    After delegation the interpreter lists the model's own nodes and then one DELEGATE node
    per partition, with the partition's boundary tensors as its inputs and outputs. A node
    belongs to a partition when it is reached walking back from the partition's outputs
    through the tensors that producing nodes write, stopping at the partition's inputs."""
    own = [n for n in nodes if n.get("op_name") != "DELEGATE"]
    producer = {int(t): n["index"] for n in own for t in n["outputs"]}
    delegated: set[int] = set()
    for partition in (n for n in nodes if n.get("op_name") == "DELEGATE"):
        boundary = {int(t) for t in partition["inputs"]}
        stack = [int(t) for t in partition["outputs"]]
        while stack:
            tensor = stack.pop()
            index = producer.get(tensor)
            if tensor in boundary or index is None or index in delegated:
                continue
            delegated.add(index)
            stack += [int(t) for t in nodes[index]["inputs"] if int(t) >= 0]
    left = sorted({n["op_name"] for n in own if n["index"] not in delegated})
    return {"delegated_share": round(len(delegated) / len(own), 4) if own else None,
            "non_delegated_ops": left}


class LiteRTBackend:
    def __init__(self, path: Path, threads: int, xnnpack: bool) -> None:
        import ai_edge_litert.interpreter  # noqa: F401  (import time is not load time)

        self.path, self.threads, self.xnnpack = Path(path), threads, xnnpack

    def load(self) -> TFLiteModel:
        # TFLiteModel builds the interpreter and allocates its tensors: load + allocate
        return TFLiteModel(self.path, threads=self.threads, xnnpack=self.xnnpack)


# --- ONNX Runtime -------------------------------------------------------------------------


def _onnxruntime_load_errors() -> tuple[type[Exception], ...]:
    """What ONNX Runtime raises for a file it cannot load: its own exception classes, each
    derived from Exception alone."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (state.Fail, state.InvalidArgument, state.InvalidGraph, state.InvalidProtobuf,
            state.NoSuchFile, state.NotImplemented, state.RuntimeException)


class ONNXRuntimeRunner(_Predicts):
    """An ONNX model under ONNX Runtime, on its CPU execution provider only, with ORT's default
    graph optimizations (all). `threads` means what it means for the other runtimes: that many
    threads inside an op, ops one at a time; None leaves ORT's own choice (one thread per
    physical core). The public inputs (float32 or int32) and one float32 output, as every
    artifact has; another model is refused."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path}: no such ONNX model")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no warnings on the terminal at load
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(os.fspath(self.path), options,
                                                providers=["CPUExecutionProvider"])
        except _onnxruntime_load_errors() as error:
            first_line = (str(error).strip().splitlines() or [""])[0]
            raise ArtifactError(
                f"{self.path}: not a loadable ONNX model ({first_line})") from error
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(outputs) != 1:
            raise ArtifactError(f"{self.path}: {len(outputs)} outputs (every artifact has one)")
        for arg in inputs:
            if arg.type not in ("tensor(float)", "tensor(int32)"):
                raise ArtifactError(f"{self.path}: input {arg.name!r} is {arg.type}, not "
                                    "float32 or int32")
        if outputs[0].type != "tensor(float)":
            raise ArtifactError(f"{self.path}: output is {outputs[0].type}, not float32 "
                                "(every artifact returns float32)")
        self.input_names = [arg.name for arg in inputs]
        self.output_name = outputs[0].name
        self._x: dict[str, np.ndarray] = {}
        self._y: np.ndarray | None = None

    def set_input(self, x: Batch) -> None:
        self._x = {name: np.ascontiguousarray(array)
                   for name, array in feeds(x, self.input_names).items()}

    def run(self) -> None:
        self._y = self.session.run([self.output_name], self._x)[0]

    def output(self) -> np.ndarray:
        return self._y  # a new array each run

    def info(self) -> dict[str, Any]:
        # as set; 0 is ORT's "its own choice", reported as None like an unset TFLite num_threads
        options = self.session.get_session_options()
        return {"runtime_threads": {"intra_op": options.intra_op_num_threads or None,
                                    "inter_op": options.inter_op_num_threads or None}}


def load_onnx(path: Path, threads: int | None = None) -> ONNXRuntimeRunner:
    return ONNXRuntimeRunner(path, threads)


class ONNXRuntimeBackend:
    """ONNX Runtime in process, at `threads` intra-op threads (ops one at a time)."""

    def __init__(self, path: Path, threads: int, xnnpack: bool | None = None) -> None:
        import onnxruntime  # noqa: F401  (import time is not load time)

        self.path, self.threads = Path(path), threads

    def load(self) -> ONNXRuntimeRunner:
        # the session reads the model, optimizes its graph and plans its memory: all init
        return ONNXRuntimeRunner(self.path, threads=self.threads)


BACKENDS: dict[str, type] = {
    "litert": LiteRTBackend,
    "tensorflow": TensorFlowBackend,
    "torch": TorchBackend,
    "torch-export": TorchExportBackend,
    "aoti": AOTInductorBackend,
    "executorch": ExecuTorchBackend,
    "onnxruntime": ONNXRuntimeBackend,
}

