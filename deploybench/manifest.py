"""manifest.json: what export wrote for one model, and how each artifact did on parity.

Later stages read artifacts only through the manifest, and check each file's sha256 first.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploybench.errors import DeploybenchError
from deploybench.files import atomic_write_json, tree_sha256

SCHEMA = "deploybench.manifest/1"
MANIFEST_FILE = "manifest.json"

# fp32 artifacts must reproduce the reference logits to this absolute difference. Logits of
# the digits models are O(10); fp32 kernels that only reorder sums differ by ~1e-6 there,
# while any real porting mistake (a transposed kernel, a wrong flatten order) shows as O(1).
FP32_TOLERANCE = 1e-4
# Quantized variants are judged by the held-out accuracy they lose, in points of accuracy.
MAX_ACCURACY_DROP = 0.02
# PyTorch's legacy path: TorchScript is deprecated upstream and TorchServe, which the .mar is
# for, is archived; kept because TorchServe still needs them and teams still run it
LEGACY_FORMATS = frozenset({"torchscript", "mar"})


def format_label(fmt: str) -> str:
    """An artifact format as the reports name it: the legacy ones say so."""
    return f"{fmt} (legacy)" if fmt in LEGACY_FORMATS else fmt


@dataclass
class TensorSpec:
    """A public input or output: `shape` with the batch axis first (None); the axes listed in
    `dynamic` (counted after the batch axis, as the zoo's Input does) take any size from 1 to
    the one given; integer inputs take values in [0, high)."""

    name: str
    shape: list[int | None]
    dtype: str
    dynamic: list[int] = field(default_factory=list)
    high: int | None = None


def signature_of(inputs: list[TensorSpec], output_name: str, max_rows: int) -> dict[str, Any]:
    """What a server checks a request against (serving/input_validation.py): every input's
    name, shape without the batch axis, dtype, dynamic axes and value range, and the most rows
    a request may carry. `input_name` and `input_shape` are the first input's."""
    return {
        "input_name": inputs[0].name,
        "input_shape": list(inputs[0].shape[1:]),
        "inputs": [{"name": t.name, "shape": list(t.shape[1:]), "dtype": t.dtype,
                    "dynamic": list(t.dynamic), "high": t.high} for t in inputs],
        "output_name": output_name,
        "max_rows": max_rows,
    }


@dataclass
class Artifact:
    format: str
    path: str  # relative to the export root
    status: str = "ok"  # ok | failed (export error) | parity-failed (refused, not published)
    quantized: bool = False
    # the matrix the report draws: the twin it was converted from, the runtime that runs it
    # (deploybench.runtimes.BACKENDS) and its precision; None in manifests written before
    framework: str | None = None
    runtime: str | None = None
    precision: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    export_seconds: float | None = None
    max_abs_diff: float | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None
    top1_agreement: float | None = None
    reason: str | None = None
    # ExecuTorch programs: the share of operator nodes XNNPACK runs, and the operators left to
    # the portable CPU kernels (their readiness, as edge_ready is a .tflite's)
    delegated_share: float | None = None
    non_delegated_ops: list[str] | None = None


@dataclass
class Manifest:
    model: str
    version: int
    description: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    golden: dict[str, Any]
    tolerance: dict[str, float]
    versions: dict[str, str | None]
    created: str
    max_rows: int
    artifacts: list[Artifact] = field(default_factory=list)
    # where the data came from, for a data set built here (a corpus' sha256, its sources'
    # versions); None for data sets that ship in a package
    data: dict[str, Any] | None = None
    # the frameworks the model has a side in (a twin: both; a user's model: one or both), and
    # where the model came from: the zoo, or a user's import
    frameworks: list[str] = field(default_factory=lambda: ["pytorch", "tensorflow"])
    source: str = "zoo"
    schema: str = SCHEMA

    def artifact(self, fmt: str) -> Artifact:
        for artifact in self.artifacts:
            if artifact.format == fmt:
                return artifact
        raise DeploybenchError(f"{self.model}: the manifest has no {fmt} artifact")

    def signature(self) -> dict[str, Any]:
        """What a server checks a request against (signature_of)."""
        return signature_of(self.inputs, self.outputs[0].name, self.max_rows)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("schema") != SCHEMA:
            raise DeploybenchError(f"not a deploybench manifest (schema {data.get('schema')!r})")
        data = dict(data)
        data["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
        data["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
        data["artifacts"] = [Artifact(**a) for a in data["artifacts"]]
        return cls(**data)


def manifest_path(root: Path, model: str) -> Path:
    return root / model / MANIFEST_FILE


def load_manifest(root: Path, model: str) -> Manifest:
    path = manifest_path(root, model)
    if not path.is_file():
        raise DeploybenchError(f"{path}: no manifest; run `deploybench export --model {model}`")
    try:
        return Manifest.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError) as error:
        raise DeploybenchError(f"{path}: unreadable manifest ({error})") from error


def exported_models(root: Path) -> list[str]:
    """Models with a published manifest under the export root."""
    return sorted(p.parent.name for p in root.glob(f"*/{MANIFEST_FILE}"))


def verify_artifacts(root: Path, manifest: Manifest, formats: list[str] | None = None) -> None:
    """Refuse an artifact that is missing, truncated or tampered with, or that export did not
    publish (failed, or refused by the parity gate)."""
    for artifact in manifest.artifacts:
        if formats is not None and artifact.format not in formats:
            continue
        if artifact.status != "ok":
            if formats is None:
                continue
            raise DeploybenchError(f"{manifest.model}: {artifact.format} was not published "
                                   f"({artifact.status}: {artifact.reason})")
        path = root / artifact.path
        if not path.exists():
            raise DeploybenchError(f"{path}: artifact missing ({artifact.format})")
        if tree_sha256(path) != artifact.sha256:
            raise DeploybenchError(
                f"{path}: sha256 does not match the manifest ({artifact.format}); "
                "the artifact was changed or truncated after export, export it again"
            )
