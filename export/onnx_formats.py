"""ONNX artifacts from both twins, run by ONNX Runtime: the PyTorch twin through torch.onnx's
exporter (torch.export underneath), the Keras twin through tf2onnx, and each fp32 file
statically quantized to int8 by ONNX Runtime's own quantizer.

Every file has the public signature of every artifact, whatever its converter names things:
the model's inputs by name and dtype and output `spec.output_name` (float32), the batch
dimension dynamic and named `batch` (a dynamic length `axis1`). Each is one self-contained
file (no external data), moved into place only once finished. The converters are separate
tools the kit's own paths do not need: the formats are optional (a converter that is
missing or fails is a failed row)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from deploybench import runtimes
from deploybench.export.context import (
    ExportContext,
    Format,
    native_stderr_logged,
)
from deploybench.export.tf_formats import keras_endpoint
from deploybench.export.torch_formats import batch_example, quiet_torch

ONNX_DIR = "onnx"
# The newest opset tf2onnx 1.17 converts to (torch.onnx's exporter writes 20): the nearer the
# two twins' opsets, the fewer differences between their files that are only the converter's.
TF2ONNX_OPSET = 18


def onnx_path(ctx: ExportContext, twin: str, precision: str) -> Path:
    return ctx.build_dir / ONNX_DIR / f"{twin}-{precision}.onnx"


def _write(ctx: ExportContext, path: Path, convert: Callable[[Path], None]) -> Path:
    """`convert(staged)` writes the model to `staged`, in a temporary folder inside the build
    folder (for any other files it needs too; removed after); the model is then given the
    public signature and moved to `path`: nothing half-written is ever at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ctx.build_dir) as work:
        staged = Path(work) / path.name
        convert(staged)
        public_signature(staged, [i.name for i in ctx.spec.public_inputs()],
                         ctx.spec.output_name)
        os.replace(staged, path)
    return path


def public_signature(path: Path, input_names: list[str], output_name: str) -> None:
    """Name the model's inputs (in order) and its one output as the model's signature does,
    and their symbolic dimensions `batch` and `axis<n>` (tf2onnx names them `unk__<n>`,
    another n on each end); drop the opset imports no node uses (ONNX Runtime's optimizer, run
    before quantizing, declares every domain it knows)."""
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedOpsetsPass

    model = ir.load(path)
    graph = model.graph
    if len(graph.inputs) != len(input_names) or len(graph.outputs) != 1:
        raise ValueError(f"{len(graph.inputs)} inputs and {len(graph.outputs)} outputs, "
                         f"where the model has {len(input_names)} and one")
    values = [*zip(graph.inputs, input_names, strict=True), (graph.outputs[0], output_name)]
    for value, name in values:
        value.name = name  # the IR links values, not names: every use follows
        if value.shape is not None:
            value.shape = ir.Shape([
                ("batch" if axis == 0 else f"axis{axis}")
                if isinstance(size, ir.SymbolicDim) else size
                for axis, size in enumerate(value.shape)])
    RemoveUnusedOpsetsPass()(model)
    ir.save(model, path)


def write_onnx_torch(ctx: ExportContext) -> Path:
    """torch.onnx's exporter (dynamo: torch.export, then ONNX), for the same batch range as
    the exported program (1 to max_rows)."""
    import torch

    spec = ctx.spec
    example, dynamic = batch_example(ctx)

    def convert(staged: Path) -> None:
        # verbose=False: no progress lines on stdout; torch's own warnings (torchvision's ops
        # not registered, deprecated pytree classes) go to the log
        with quiet_torch(), native_stderr_logged("torch.onnx's exporter"):
            torch.onnx.export(ctx.torch_model.eval(), example, str(staged), dynamo=True,
                              external_data=False, verbose=False,
                              input_names=[i.name for i in spec.public_inputs()],
                              output_names=[spec.output_name], dynamic_shapes=dynamic)

    return _write(ctx, onnx_path(ctx, "torch", "fp32"), convert)


def write_onnx_keras(ctx: ExportContext) -> Path:
    """tf2onnx from the Keras twin, traced through the same endpoint as the SavedModel's
    serving_default, with a dynamic batch dimension."""
    import tensorflow as tf
    from tf2onnx import convert as tf2onnx_convert

    endpoint, signature = keras_endpoint(ctx)
    serve = tf.function(endpoint, input_signature=signature)

    def convert(staged: Path) -> None:
        # tf2onnx logs through Python's logging (the log file); TensorFlow's C++ to fd 2
        with native_stderr_logged("tf2onnx"):
            tf2onnx_convert.from_function(serve, input_signature=signature,
                                          opset=TF2ONNX_OPSET, output_path=str(staged))

    return _write(ctx, onnx_path(ctx, "keras", "fp32"), convert)


def int8_writer(twin: str) -> Callable[[ExportContext], Path]:
    """ONNX Runtime's static int8 quantization of the twin's fp32 ONNX file (written just
    before), calibrated one sample at a time on the same representative training samples as the
    full-int8 TFLite variant and the int8 ExecuTorch program.

    QDQ format (QuantizeLinear/DequantizeLinear pairs around standard operators, which ONNX
    Runtime fuses into int8 kernels): what ORT recommends on CPU, and still a standard ONNX
    model any runtime can read. Int8 activations (asymmetric, MinMax calibration) and int8
    weights, symmetric and per output channel, with int32 biases: the scheme TFLite's full-int8
    variant and XNNPACK's quantizer use, so the three int8 artifacts compare. Full 8-bit
    weights: reduce_range (7 bits) is ORT's remedy for the saturation of its 8-bit kernels on
    x86 CPUs without VNNI, where the accuracy gate would show it. Float32 in and out: a
    QuantizeLinear after the input and a DequantizeLinear before the output, as in TFLite."""

    def write(ctx: ExportContext) -> Path:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        fp32 = onnx_path(ctx, twin, "fp32")
        if not fp32.is_file():
            raise FileNotFoundError(f"no fp32 ONNX file of the {twin} twin to quantize "
                                    f"(onnx-{twin} was not written)")

        class Calibration(CalibrationDataReader):
            def __init__(self) -> None:
                self.samples: Iterator[Any] = (
                    dict(row.arrays) for row in ctx.calibration_rows())

            def get_next(self) -> dict[str, Any] | None:
                return next(self.samples, None)

        def convert(staged: Path) -> None:
            prepared = staged.with_name("prepared.onnx")
            with native_stderr_logged(f"ONNX Runtime's int8 quantization of onnx-{twin}"):
                # shape inference and ORT's basic graph optimizations (MatMul + Add -> Gemm,
                # so a bias is quantized to int32 with its layer, not as an activation)
                # ORT's symbolic shape inference cannot follow a dynamic sequence length
                # through attention ("Incomplete symbolic shape inference"): ONNX's own shape
                # inference then, which is what the quantizer needs
                dynamic = any(i.dynamic for i in ctx.spec.public_inputs())
                # where symbolic shape inference is incomplete, ORT saves what it got as
                # sym_shape_infer_temp.onnx (+ external data files) in the current folder:
                # the staging folder then, removed with it
                source, target = fp32.resolve(), prepared.resolve()  # before the chdir
                with contextlib.chdir(staged.parent):
                    quant_pre_process(source, target, skip_symbolic_shape=dynamic)
                quantize_static(prepared, staged, Calibration(), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QInt8,
                                weight_type=QuantType.QInt8)

        return _write(ctx, onnx_path(ctx, twin, "int8"), convert)

    write.__name__ = f"write_onnx_{twin}_int8"
    return write


# Order matters: each int8 variant quantizes its twin's fp32 file, written just before it.
FORMATS: tuple[Format, ...] = (
    Format("onnx-keras", write_onnx_keras, runtimes.load_onnx, "tensorflow", "onnxruntime",
           optional=True),
    Format("onnx-keras-int8", int8_writer("keras"), runtimes.load_onnx, "tensorflow",
           "onnxruntime", precision="int8", optional=True),
    Format("onnx-torch", write_onnx_torch, runtimes.load_onnx, "pytorch", "onnxruntime",
           optional=True),
    Format("onnx-torch-int8", int8_writer("torch"), runtimes.load_onnx, "pytorch",
           "onnxruntime", precision="int8", optional=True),
)
