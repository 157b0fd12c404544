"""The PyTorch twin converted to LiteRT by litert-torch: the same runtime as the Keras twin's
TFLite variants (tf_formats.py), reached from the other framework.

What litert-torch 0.10 does by itself, and what is done here after it:
- Names: the module is wrapped so that it takes `<input_name>=` and returns
  {`<output_name>`: logits}; litert-torch names the signature def's tensors after those keys,
  under `serving_default`, the Keras twin's signature exactly. The wrapper adds no operator.
- Layout: the twin takes the public NHWC input and permutes to NCHW itself; litert-torch's layout
  pass folds that permute (and the one before Flatten) into NHWC kernels, so no TRANSPOSE stands
  at the input and `to_channel_last_io` is not needed (mobilenet-v2 keeps one, before its
  global average pooling).
- Batch: litert-torch cannot convert a dynamic batch (its JAX-bridged lowerings need concrete
  shapes: `view` and `mm` fail; its own test suite says so), so the model is converted at a batch
  of one and the file is then marked batch-agnostic (`_relax_batch`): the input's and output's
  shape signature get -1 in front, and a RESHAPE's constant target shape gets -1 for the
  batch, which is what the TFLite converter writes for the Keras twin's unknown batch. LiteRT
  then resizes the input to any batch (deploybench.runtimes.TFLiteModel does) and every kernel
  prepares itself for it; the parity gate runs batches of 1 and of max_rows.
- int8 I/O: litert-torch removes the input's QUANTIZE and the output's DEQUANTIZE of a static
  int8 model and has no option to keep them (no inference_input_type/output_type), so
  `_float_io` puts them back as the first and last operators, with the quantization parameters
  calibration gave those tensors: the same graph the TFLite converter makes for the Keras
  twin's int8 variant (float32 in and out, int8 in between). What runs in int8 is unchanged.
- Quantization: PT2E with litert-torch's quantizer (symmetric int8, weights per channel). Its
  convolution annotator knows `conv2d` with numeric padding only, so a "same"-padded
  convolution (digits-cnn's) is rewritten to its numeric padding before annotating
  (`_explicit_same_padding`), the same computation; otherwise it stays float.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deploybench.batch import Batch
from deploybench.export.context import (
    ExportContext,
    Format,
    native_stderr_logged,
)
from deploybench.export.tf_formats import run_tflite, strip_debug_strings
from deploybench.export.torch_formats import quiet_torch

OUTPUT_DIR = "litert-torch"
EXPORT_BATCH = 1  # the batch litert-torch converts at; the file is then made batch-agnostic
VARIANTS = ("fp32", "dynamic-int8", "int8")


def litert_torch_writer(variant: str) -> Callable[[ExportContext], Path]:
    """A writer of the twin converted by litert-torch at `variant`'s precision: builtin ops
    only, float32 in and out, debug strings stripped like the Keras twin's .tflite files."""

    def write(ctx: ExportContext) -> Path:
        with _quiet(f"litert-torch's {variant} conversion"):
            converted = _convert(ctx, variant)
        model = _relax_batch(_float_io(converted) if variant == "int8" else converted)
        path = ctx.build_dir / OUTPUT_DIR / f"{variant}.tflite"
        path.parent.mkdir(parents=True, exist_ok=True)
        # the manifest's sha256 and size, and the parity gate, are of exactly these bytes;
        # written aside first, so no half-written file ever has the final name
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(strip_debug_strings(model))
        os.replace(partial, path)
        return path

    write.__name__ = f"write_litert_torch_{variant.replace('-', '_')}"
    return write


@contextlib.contextmanager
def _quiet(what: str) -> Iterator[None]:
    """litert-torch prints a progress line per step to stdout, its imports (torchao, JAX, the
    MLIR converter) warn through Python, torch's loggers and C++: all of it goes to the log."""
    previous = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"  # read at every step, not at import
    try:
        with quiet_torch(), native_stderr_logged(what):
            yield
    finally:
        if previous is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = previous


def _import_litert_torch() -> Any:
    try:
        import litert_torch
    except ImportError as error:
        raise RuntimeError(f"litert-torch is not installed (import litert_torch: {error})"
                           ) from error
    return litert_torch


def _convert(ctx: ExportContext, variant: str) -> bytes:
    """The converter's own flatbuffer of the named module, at EXPORT_BATCH rows."""
    import torch

    litert_torch = _import_litert_torch()
    spec = ctx.spec
    named = _named(ctx.torch_model.eval(), [i.name for i in spec.public_inputs()],
                   spec.output_name)
    full = ctx.full_batch(EXPORT_BATCH)
    example = _tensors(full)
    if variant == "fp32":
        return litert_torch.convert(named, sample_kwargs=example).model_content()

    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(
        is_per_channel=True, is_dynamic=variant == "dynamic-int8"))
    captured = _explicit_same_padding(torch.export.export(named, (), example).module())
    prepared = prepare_pt2e(captured, quantizer)
    # static: the activations' ranges, from the same samples, one at a time, as tflite-int8;
    # dynamic: one pass, so the per-channel weight observers have seen the weights
    # (a text row padded to the length the model is converted at: its mask keeps it the same)
    rows = list(ctx.calibration_rows()) if variant == "int8" else [ctx.x_train.rows(slice(1))]
    with torch.no_grad():
        for row in rows:
            prepared(**_tensors(row.padded(full.width) if row.variable else row))
    # fold_quantize=False: the converter reads the weights' quantize/dequantize pairs itself
    quantized = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
    quantized.training = False  # what litert-torch checks (it warns on a training module)
    return litert_torch.convert(quantized, sample_kwargs=example,
                                quant_config=QuantConfig(pt2e_quantizer=quantizer)
                                ).model_content()


def _tensors(batch: Batch) -> dict[str, Any]:
    import torch

    return {name: torch.from_numpy(np.ascontiguousarray(array))
            for name, array in batch.arrays.items()}


def _named(module: Any, input_names: list[str], output_name: str) -> Any:
    """`module` taking its inputs by keyword and returning {`<output_name>`: ...}:
    litert-torch names the signature's inputs after the keywords and its output after the key."""
    import torch

    class Named(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
            return {output_name: self.module(*[inputs[name] for name in input_names])}

    return Named().eval()


def _explicit_same_padding(graph: Any) -> Any:
    """`conv2d(padding="same")` as `conv2d` with its numeric padding where the two are the
    same computation (stride 1, odd kernel: the padding is symmetric), so the quantizer, which
    annotates only the numeric form, quantizes the convolution."""
    import torch

    same = torch.ops.aten.conv2d.padding
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.target != same:
            continue
        x, weight, bias, *rest = node.args
        stride, padding, dilation, groups = (*rest, *(None,) * (4 - len(rest)))[:4]
        stride, dilation = list(stride or [1, 1]), list(dilation or [1, 1])
        kernel = weight.meta["val"].shape[2:] if "val" in weight.meta else None
        if padding != "same" or kernel is None or set(stride) != {1} or any(
                k % 2 == 0 for k in kernel):
            continue
        if len(dilation) == 1:
            dilation = dilation * len(kernel)
        pad = [d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True)]
        node.target = torch.ops.aten.conv2d.default
        node.args = (x, weight, bias, stride, pad, dilation, groups or 1)
    graph.recompile()
    return graph


def _opcode_index(model: Any, builtin: int, version: int) -> int:
    """The index of `builtin`'s operator code in the model, added if missing."""
    from ai_edge_litert import schema_py_generated as schema

    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)  # the byte field older readers use
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _float_io(model_bytes: bytes) -> bytes:
    """A QUANTIZE after every integer input and a DEQUANTIZE before every integer output, as
    part of the model: the public tensors become float32, each with the scale and zero point
    the integer tensor it feeds (or is fed by) has, and the signature defs point at them."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    integer = {schema.TensorType.INT8, schema.TensorType.UINT8, schema.TensorType.INT16}
    quantize = _opcode_index(model, schema.BuiltinOperator.QUANTIZE, 1)
    dequantize = _opcode_index(model, schema.BuiltinOperator.DEQUANTIZE, 2)
    for index, subgraph in enumerate(model.subgraphs):
        inputs = [t for t in subgraph.inputs if subgraph.tensors[t].type in integer]
        outputs = [t for t in subgraph.outputs if subgraph.tensors[t].type in integer]
        moved = {t: _float_twin(subgraph, t) for t in [*inputs, *outputs]}
        head = [_operator(quantize, moved[t], t) for t in inputs]
        tail = [_operator(dequantize, t, moved[t]) for t in outputs]
        subgraph.operators = [*head, *subgraph.operators, *tail]
        subgraph.inputs = [moved.get(t, t) for t in subgraph.inputs]
        subgraph.outputs = [moved.get(t, t) for t in subgraph.outputs]
        for signature in model.signatureDefs or []:
            if signature.subgraphIndex == index:
                for entry in [*signature.inputs, *signature.outputs]:
                    entry.tensorIndex = moved.get(entry.tensorIndex, entry.tensorIndex)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _float_twin(subgraph: Any, index: int) -> int:
    """A float32 tensor of the integer tensor's shape, appended; its index."""
    from ai_edge_litert import schema_py_generated as schema

    twin = copy.deepcopy(subgraph.tensors[index])
    twin.type = schema.TensorType.FLOAT32
    twin.quantization = None
    twin.buffer = 0  # the empty buffer: an activation, not a constant
    subgraph.tensors.append(twin)
    return len(subgraph.tensors) - 1


def _operator(opcode: int, source: int, target: int) -> Any:
    from ai_edge_litert import schema_py_generated as schema

    operator = schema.OperatorT()
    operator.opcodeIndex, operator.inputs, operator.outputs = opcode, [source], [target]
    return operator


def _relax_batch(model_bytes: bytes) -> bytes:
    """The model converted at EXPORT_BATCH rows, declared and made batch-agnostic: -1 for the
    batch in the shape signature of every input and output, and in the constant target shape
    of every RESHAPE that keeps the batch as its first dimension (its input's and its output's
    first dimension are the batch). No other operator of these models holds the batch."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    reshape = {i for i, code in enumerate(model.operatorCodes)
               if max(code.builtinCode, code.deprecatedBuiltinCode)
               == schema.BuiltinOperator.RESHAPE}
    for subgraph in model.subgraphs:
        tensors = subgraph.tensors
        for index in {*subgraph.inputs, *subgraph.outputs}:
            tensor = tensors[index]
            shape = [int(d) for d in tensor.shape]
            if shape and shape[0] == EXPORT_BATCH:
                tensor.shapeSignature = np.array([-1, *shape[1:]], dtype=np.int32)
        for operator in subgraph.operators:
            if operator.opcodeIndex not in reshape or len(operator.inputs) < 2:
                continue
            source, target = tensors[operator.inputs[0]], tensors[operator.outputs[0]]
            if source.shape[0] != EXPORT_BATCH or target.shape[0] != EXPORT_BATCH:
                continue
            shape_tensor = tensors[operator.inputs[1]]
            data = model.buffers[shape_tensor.buffer].data
            if shape_tensor.type != schema.TensorType.INT32 or data is None:
                continue  # computed at run time: nothing fixed to relax
            shape = np.frombuffer(bytes(data), dtype=np.int32).copy()
            if shape.size and shape[0] == EXPORT_BATCH:
                shape[0] = -1
                # a buffer of its own: the converter may share one between equal constants
                buffer = schema.BufferT()
                buffer.data = np.frombuffer(shape.tobytes(), dtype=np.uint8)
                model.buffers.append(buffer)
                shape_tensor.buffer = len(model.buffers) - 1
            options = operator.builtinOptions
            if getattr(options, "newShape", None) is not None and len(options.newShape) and \
                    options.newShape[0] == EXPORT_BATCH:
                options.newShape = [-1, *list(options.newShape)[1:]]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


# Optional: litert-torch is a converter the kit's own paths do not need; a missing or failing
# one leaves failed rows and the model's other formats still publish.
FORMATS: tuple[Format, ...] = tuple(
    Format(f"litert-torch-{variant}", litert_torch_writer(variant), run_tflite, "pytorch",
           "litert", precision=variant, optional=True)
    for variant in VARIANTS
)
