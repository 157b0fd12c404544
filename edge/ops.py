"""Mobile readiness: the operators a .tflite file needs, read from its flatbuffer, and a verdict.

A model is edge-ready only if every operator is a TFLite builtin. Ops converted with
SELECT_TF_OPS are custom ops named `Flex<TF op>`: a plain LiteRT runtime cannot run them (the
interpreter fails at allocation asking for the Flex delegate), so they are found by reading the
operator codes, never by trying to run the model.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from deploybench.runtimes import ArtifactError

TFLITE_IDENTIFIER = b"TFL3"  # the flatbuffer file identifier, at bytes 4..8
FLEX_PREFIX = "Flex"


@dataclass(frozen=True)
class OpsReport:
    """The operators of one .tflite file."""

    ops: list[str]  # distinct operator names, in the model's operator-code order
    op_counts: dict[str, int]  # how many nodes use each operator, over every subgraph
    flex_ops: list[str] = field(default_factory=list)  # e.g. FlexMatrixDeterminant
    custom_ops: list[str] = field(default_factory=list)  # other custom ops (not Flex)
    unknown_ops: list[str] = field(default_factory=list)  # builtin codes this schema lacks

    @property
    def non_builtin_ops(self) -> list[str]:
        return [*self.flex_ops, *self.custom_ops, *self.unknown_ops]

    @property
    def edge_ready(self) -> bool:
        return not self.non_builtin_ops

    @property
    def verdict(self) -> str:
        if self.edge_ready:
            return "edge-ready: builtin ops only"
        parts = []
        if self.flex_ops:
            parts.append(f"needs Flex (SELECT_TF_OPS) ops {', '.join(self.flex_ops)}")
        if self.custom_ops:
            parts.append(f"needs custom ops {', '.join(self.custom_ops)}")
        if self.unknown_ops:
            parts.append(f"uses builtin codes this LiteRT does not know: "
                         f"{', '.join(self.unknown_ops)}")
        return "not edge-ready: " + "; ".join(parts)


def builtin_names() -> dict[int, str]:
    """Builtin operator code -> name, from the schema's BuiltinOperator enum."""
    from ai_edge_litert.tools.flatbuffer_utils import BuiltinOperator

    return {
        code: name for name, code in vars(BuiltinOperator).items()
        if not name.startswith("_") and isinstance(code, int)
    }


def check_tflite_file(path: Path) -> None:
    """Refuse a missing file, a file that is not a TFLite flatbuffer, or a corrupt one.

    The interpreter's constructor runs the flatbuffer verifier without allocating anything, so
    a truncated or garbled file is caught here, before the Python reader walks its offsets.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if not path.is_file():
        raise ArtifactError(f"{path}: no such TFLite file")
    with path.open("rb") as handle:
        head = handle.read(8)
    if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
        raise ArtifactError(f"{path}: not a TFLite model (no TFL3 flatbuffer identifier)")
    try:
        Interpreter(
            model_path=os.fspath(path),
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    except (ValueError, RuntimeError) as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ArtifactError(f"{path}: corrupt TFLite model ({first_line})") from error


def read_ops(path: Path) -> OpsReport:
    """The operators `path` needs, and whether each is a builtin."""
    from ai_edge_litert.tools import flatbuffer_utils

    path = Path(path)
    check_tflite_file(path)
    try:
        model = flatbuffer_utils.read_model(os.fspath(path))
    except Exception as error:  # the flatbuffer reader raises whatever struct/numpy raise
        raise ArtifactError(f"{path}: corrupt TFLite model ({error})") from error
    names = builtin_names()
    custom_code = flatbuffer_utils.BuiltinOperator.CUSTOM
    code_names: list[str] = []
    flex: list[str] = []
    custom: list[str] = []
    unknown: list[str] = []
    for opcode in model.operatorCodes:
        # builtin codes above 127 live in builtinCode; older files only set the deprecated byte
        code = max(opcode.builtinCode or 0, opcode.deprecatedBuiltinCode or 0)
        if code == custom_code:
            raw = opcode.customCode or b""
            name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            (flex if name.startswith(FLEX_PREFIX) else custom).append(name)
        elif code in names:
            name = names[code]
        else:
            name = f"BUILTIN_{code}"
            unknown.append(name)
        code_names.append(name)
    counts: Counter[str] = Counter()
    for subgraph in model.subgraphs:
        for operator in subgraph.operators or []:
            counts[code_names[operator.opcodeIndex]] += 1
    distinct = list(dict.fromkeys(code_names))
    return OpsReport(
        ops=distinct,
        op_counts={name: counts[name] for name in distinct},
        flex_ops=list(dict.fromkeys(flex)),
        custom_ops=list(dict.fromkeys(custom)),
        unknown_ops=list(dict.fromkeys(unknown)),
    )
