"""The TensorFlow family's formats: the SavedModel (TF Serving, KServe-TensorFlow) and the TFLite
variants the LiteRT interpreter runs, converted from it."""

from __future__ import annotations

from collections.abc import Callable
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


def write_savedmodel(ctx: ExportContext) -> Path:
    """A SavedModel whose serving_default takes the public inputs by name (dynamic batch, and
    dynamic length where an input has one) and returns `<output_name>`."""
    import keras

    serve, signature = keras_endpoint(ctx)
    archive = keras.export.ExportArchive()
    # a Keras model, or a user's SavedModel loaded back (zoo/user.py: its module holds the
    # variables)
    archive.track(getattr(ctx.keras_model, "module", ctx.keras_model))
    archive.add_endpoint(name="serving_default", fn=serve, input_signature=signature)
    archive.write_out(str(ctx.savedmodel_dir), verbose=False)
    return ctx.savedmodel_dir


def keras_endpoint(ctx: ExportContext) -> tuple[Callable[..., Any], list[Any]]:
    """The Keras twin as one function of the public inputs (positional, in order) returning
    {output name: logits}, and its input signature: dynamic batch, and dynamic length where an
    input has one. The SavedModel's serving_default and tf2onnx's input are both this."""
    import tensorflow as tf

    spec, model = ctx.spec, ctx.keras_model
    inputs = spec.public_inputs()
    names = [i.name for i in inputs]

    def serve(*tensors: Any) -> dict[str, Any]:
        x = tensors[0] if len(tensors) == 1 else dict(zip(names, tensors, strict=True))
        y = model(x, training=False)
        if isinstance(y, dict):  # a model with a named output ({"logits": ...}): that one
            (y,) = y.values()
        return {spec.output_name: y}

    signature = [
        tf.TensorSpec((None, *[None if axis in i.dynamic else size
                               for axis, size in enumerate(i.shape)]),
                      tf.dtypes.as_dtype(i.dtype), name=i.name)
        for i in inputs
    ]
    return serve, signature


def _tflite(ctx: ExportContext, variant: str) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(ctx.savedmodel_dir), signature_keys=["serving_default"]
    )
    # Builtin ops only: a model that needs Flex ops does not run on a plain LiteRT runtime.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic-int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        def representative_data():  # noqa: ANN202 - inputs by their signature names
            for row in ctx.calibration_rows():
                yield dict(row.arrays)

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_data
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # Convolutions per channel, the classifier (FULLY_CONNECTED) per tensor, as TFLite's
        # 8-bit quantization spec has it: per-channel parameters cost a float32 scale and an
        # int64 zero point per output channel of the weights and of the bias (24 KB for
        # mobilenet-v2's 1000 classes), and measured no better there (top-1 agreement 0.969
        # with a per-tensor classifier, 0.953 per channel; all-per-tensor fell to 0.906).
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
        # Input and output stay float32, the public signature of every artifact: the converter
        # puts a QUANTIZE after the input and a DEQUANTIZE before the output, and everything in
        # between runs in int8.
    # the converter's C++ prints its quantization settings to stderr ("fully_quantize: 0, ...")
    with native_stderr_logged(f"TFLiteConverter ({variant})"):
        return converter.convert()


def strip_debug_strings(model: bytes) -> bytes:
    """The model without its debug strings, as a release build ships it.

    What TFLite's own strip_strings tool removes (tensor names, subgraph names, the model
    description), but the signature defs are kept: they map the public names (`serving_default`,
    its input and output) to tensor indices, not to tensor names, so they still work, and a
    signature runner finds the model's input and output by them. Operators, weights, quantization
    parameters and the other metadata are rewritten unchanged, so the model computes exactly
    what it did. Tensor names are the largest part of a .tflite file that is neither weights
    nor quantization parameters (30 KB, 0.7%, of mobilenet-v2's full-int8 file).
    """
    from ai_edge_litert.tools import flatbuffer_utils

    parsed = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    signatures = parsed.signatureDefs
    flatbuffer_utils.strip_strings(parsed)  # also drops the signature defs
    parsed.signatureDefs = signatures
    return bytes(flatbuffer_utils.convert_object_to_bytearray(parsed))


def tflite_writer(variant: str) -> Callable[[ExportContext], Path]:
    def write(ctx: ExportContext) -> Path:
        # every variant is stripped the same way, so their sizes compare fairly; the file
        # written is the final one (the manifest's sha256 and size, and the parity gate, are
        # of exactly these bytes)
        path = ctx.build_dir / "tflite" / f"{variant}.tflite"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(strip_debug_strings(_tflite(ctx, variant)))
        return path

    write.__name__ = f"write_tflite_{variant}"
    return write


def run_tflite(path: Path) -> Callable[[Batch], np.ndarray]:
    return runtimes.TFLiteModel(path).predict


TFLITE_VARIANTS = ("fp32", "fp16", "dynamic-int8", "int8")


FORMATS: tuple[Format, ...] = (
    Format("savedmodel", write_savedmodel, runtimes.load_savedmodel, "tensorflow", "tensorflow"),
    *(
        Format(f"tflite-{variant}", tflite_writer(variant), run_tflite, "tensorflow", "litert",
               precision=variant)
        for variant in TFLITE_VARIANTS
    ),
)
