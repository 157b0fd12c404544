"""The one table of artifact formats, each runtime family's formats in its own module: a
format is a writer (into the staging folder, returning the path it wrote) and a runner of what
it wrote, for the parity gate (export/context.py declares them)."""

from __future__ import annotations

from deploybench.export import (
    hub_formats,
    litert_torch_formats,
    onnx_formats,
    tf_formats,
    torch_formats,
)
from deploybench.export.context import ExportContext, Format, native_stderr_logged

__all__ = ["FORMATS", "ExportContext", "Format", "native_stderr_logged"]

# Order matters: TFLite converts from the SavedModel; within each family, as its module says.
FORMATS: tuple[Format, ...] = (*tf_formats.FORMATS, *torch_formats.FORMATS,
                               *litert_torch_formats.FORMATS, *onnx_formats.FORMATS,
                               *hub_formats.FORMATS)
