"""The PyTorch family's formats: TorchScript and its .mar (TorchServe), and torch.export's
program, compiled ahead of time for servers (AOTInductor) and lowered for phones (ExecuTorch)."""

from __future__ import annotations

import contextlib
import json
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deploybench import runtimes
from deploybench.batch import Batch
from deploybench.export.context import (
    ExportContext,
    Format,
    native_stderr_logged,
)
from deploybench.zoo.train import torch_inputs

HANDLER = Path(__file__).resolve().parent.parent / "serving" / "handler.py"
INPUT_VALIDATION = HANDLER.with_name("input_validation.py")  # the handler imports it
SIGNATURE_FILE = "signature.json"
AOTI_FILE = "model.aoti.pt2"  # an AOTInductor package

def write_torchscript(ctx: ExportContext) -> Path:
    """TorchScript by tracing: the module takes the public (channels-last) input itself.

    torch 2.13 deprecates TorchScript in favour of torch.export; TorchServe 0.12 still loads
    TorchScript, so this stays the serving format, and a torch.export format can sit beside it.
    """
    import warnings

    import torch

    example = tuple(torch.from_numpy(np.ascontiguousarray(a))
                    for a in ctx.full_batch(2).arrays.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        # transformers' SDPA code turns a tensor into a Python boolean (whether to attend
        # causally): always false with a mask given, so nothing the trace bakes in matters
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(ctx.torch_model.eval(), example)
        torch.jit.save(traced, str(ctx.torchscript_path))
    return ctx.torchscript_path


def write_mar(ctx: ExportContext) -> Path:
    """A TorchServe archive: the TorchScript file, our handler (with the input checks it
    imports) and the input signature."""
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    spec = ctx.spec
    signature = ctx.build_dir / SIGNATURE_FILE
    signature.write_text(json.dumps({"model": spec.name, **spec.signature()}, indent=2))
    generate_model_archive(ModelArchiverConfig(
        model_name=spec.name,
        handler=str(HANDLER),
        version=str(ctx.version),
        serialized_file=str(ctx.torchscript_path),
        extra_files=f"{signature},{INPUT_VALIDATION}",
        export_path=str(ctx.build_dir),
        force=True,
    ))
    signature.unlink()
    return ctx.build_dir / f"{spec.name}.mar"


def run_mar(path: Path) -> Callable[[Batch], np.ndarray]:
    """Run the serialized model packed inside the .mar, as TorchServe will load it."""
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        serialized = archive.read(manifest["model"]["serializedFile"])
    return runtimes.load_torchscript(serialized)


def write_exported_program(ctx: ExportContext) -> Path:
    """torch.export of the reference module, with a dynamic batch dimension (1 to the model's
    max_rows): the program PyTorch's server and edge paths are made from."""
    import torch

    example, dynamic = batch_example(ctx)
    with quiet_torch():
        program = torch.export.export(ctx.torch_model.eval(), example, dynamic_shapes=dynamic)
        torch.export.save(program, str(ctx.exported_program_path))
    return ctx.exported_program_path


def write_aoti(ctx: ExportContext) -> Path:
    """An AOTInductor package for CPU servers, compiled from the exported program, covering the
    same batch range (1 to max_rows), with the machine's C++ compiler.

    Compiling picks each convolution's kernel for the batch sizes in the range, and aten's
    choice depends on the batch: NNPACK only above 15 rows, oneDNN for a 1x1 convolution only
    above one row. Each such choice keeps part of the range out of the compiled model (digits-cnn:
    16 to 64 rows; mobilenet-v2: 2 rows only). So the package holds one model per piece of the
    range: the first compiled for the whole range (named `model`, what aoti_load_package loads),
    then, while rows at the bottom are left out, one for them (named `rows_<low>_<high>`); the
    runner picks the model whose range holds the batch (runtimes.AOTIPackage)."""
    import torch
    from torch._inductor.package import package_aoti
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    compiler_check()
    path = ctx.build_dir / AOTI_FILE
    top = max(ctx.spec.max_rows, 1)
    # Inductor's cache kept in the build folder for the compile and dropped after it: nothing
    # compiled for another export (or another torch) can end up in this package
    with quiet_torch(), tempfile.TemporaryDirectory(dir=ctx.build_dir) as cache, \
            temporary_cache_dir(cache), torch.backends.nnpack.flags(enabled=False):
        program = torch.export.load(str(ctx.exported_program_path))
        example = program.example_inputs[0]
        models: dict[str, Any] = {}
        high = top
        while high >= 1:
            piece = program if high == top else _export_rows(ctx, program.module(), example,
                                                             high)
            files = _aoti_compile(piece)
            package_aoti(str(path), {"model": files})  # alone first: which rows does it take?
            with native_stderr_logged("AOTInductor's input check"):
                low = runtimes.aoti_lowest_batch(path, tuple(x[:1] for x in example), high)
            models["model" if high == top else runtimes.aoti_model_name(low, high)] = files
            high = low - 1
        package_aoti(str(path), models)
    return path


def _export_rows(ctx: ExportContext, module: Any, example: tuple[Any, ...], high: int) -> Any:
    """The program again, for batches of 1 to `high` rows (a fixed batch of one when high is
    1), with its example batch at the top of that range."""
    import torch

    rows = tuple(x[:1].repeat(high, *([1] * (x.dim() - 1))) for x in example)
    return torch.export.export(module, rows, dynamic_shapes=dynamic_shapes(ctx.spec, high))


def _aoti_compile(program: Any) -> list[Any]:
    """AOTInductor's files for one exported program (what package_aoti packs as one model)."""
    import torch

    args, kwargs = program.example_inputs
    return torch._inductor.aot_compile(program.module(), args, kwargs,
                                       options={"aot_inductor.package": True})


def compiler_check() -> str:
    """The C++ compiler AOTInductor will use, or an error naming the ones it tried."""
    from torch._inductor import config, cpp_builder, exc

    try:
        return cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        searched = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (
            config.cpp.cxx,)
        names = ", ".join(str(name) for name in searched if name)
        raise RuntimeError(f"AOTInductor needs a C++ compiler and none works here (tried "
                           f"{names}): install g++ (`make setup` does) or set CXX") from None


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """torch.export's save/load and ExecuTorch's lowering warn about their own internals
    (deprecated pytree classes, ...): nothing a user can act on, kept out of the terminal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def batch_example(ctx: ExportContext) -> tuple[tuple[Any, ...], Any]:
    """Example inputs at the top of the model's range (max_rows rows, every dynamic axis at its
    largest size), and their dynamic dimensions for torch.export; a smaller example narrows the
    range the export keeps when a permute stands in front of a convolution (DESIGN.md)."""
    import torch

    rows = max(ctx.spec.max_rows, 1)
    example = tuple(torch.from_numpy(np.ascontiguousarray(a))
                    for a in ctx.full_batch(rows).arrays.values())
    return example, dynamic_shapes(ctx.spec, rows)


def dynamic_shapes(spec: Any, rows: int) -> tuple[dict[int, Any], ...] | None:
    """torch.export's dynamic dimensions of the public inputs: the batch (1..rows; fixed when
    rows is 1) and each dynamic axis, one Dim per axis position shared by every input that has
    it (token ids and their mask are as long as each other)."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=rows) if rows > 1 else None
    axes: dict[int, Any] = {}
    shapes = []
    for spec_input in spec.public_inputs():
        dims = {0: batch} if batch is not None else {}
        for axis in spec_input.dynamic:
            size = spec_input.shape[axis]
            dims[axis + 1] = axes.setdefault(axis, torch.export.Dim(f"axis{axis + 1}", min=1,
                                                                     max=size))
        shapes.append(dims or None)
    return None if all(d is None for d in shapes) else tuple(shapes)


def executorch_writer(variant: str) -> Callable[[ExportContext], Path]:
    """An ExecuTorch program (.pte) lowered to XNNPACK: fp32, or int8 quantized with PT2E
    (XNNPACK's quantizer, symmetric int8, weights per channel), calibrated on the same
    representative training samples as the full-int8 TFLite variant. Float32 in and out, like
    every artifact. Also records how much of the program XNNPACK took (its readiness)."""

    def write(ctx: ExportContext) -> Path:
        with quiet_torch(), native_stderr_logged(f"ExecuTorch's {variant} lowering"):
            return _write_executorch(ctx, variant)

    write.__name__ = f"write_executorch_{variant}"
    return write


def _write_executorch(ctx: ExportContext, variant: str) -> Path:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackPartitioner,
    )
    from executorch.exir import to_edge_transform_and_lower

    example, dynamic = batch_example(ctx)
    model = ctx.torch_model.eval()
    if variant == "int8":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        captured = torch.export.export(model, example, dynamic_shapes=dynamic).module()
        quantizer = XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(captured, quantizer)
        with torch.no_grad():
            for row in ctx.calibration_rows():
                prepared(*torch_inputs(row))
        model = convert_pt2e(prepared)
    program = torch.export.export(model, example, dynamic_shapes=dynamic)
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    ctx.readiness[f"executorch-{variant}"] = delegation(edge)
    path = ctx.build_dir / "executorch" / f"{variant}.pte"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(edge.to_executorch().buffer)
    return path


def delegation(edge: Any) -> dict[str, Any]:
    """How much of a lowered program XNNPACK runs: the share of its operator nodes delegated,
    and the operators left to ExecuTorch's portable CPU kernels (by name)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge.exported_program().graph_module)
    # operators only: `getitem` (a delegate's outputs) and `sym_size` (a dynamic dimension's
    # size) are the graph's bookkeeping, not kernels
    operators = {op: counts for op, counts in info.delegation_by_operator.items()
                 if op.startswith("aten_")}
    delegated = sum(counts.delegated for counts in operators.values())
    total = delegated + sum(counts.non_delegated for counts in operators.values())
    left = sorted(op.removeprefix("aten_") for op, counts in operators.items()
                  if counts.non_delegated > 0)
    return {"delegated_share": round(delegated / total, 4) if total else None,
            "non_delegated_ops": left}


# Order matters: the .mar packs the TorchScript file, AOTInductor compiles the exported program.
FORMATS: tuple[Format, ...] = (
    Format("torchscript", write_torchscript, runtimes.load_torchscript, "pytorch", "torch"),
    Format("mar", write_mar, run_mar, "pytorch", "torch"),
    # PyTorch's current path: torch.export ...
    Format("exported-program", write_exported_program, runtimes.load_exported_program,
           "pytorch", "torch-export"),
    # ... compiled ahead of time for servers (from the exported program's file) ...
    Format("aoti", write_aoti, runtimes.load_aoti, "pytorch", "aoti"),
    # ... and ExecuTorch for phones
    *(Format(f"executorch-{variant}", executorch_writer(variant), runtimes.load_executorch,
             "pytorch", "executorch", precision=variant) for variant in ("fp32", "int8")),
)
