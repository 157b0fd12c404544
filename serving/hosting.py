"""What a model server built by the kit hosts in each runtime (KServe's and Triton's, the same
rule for both): the artifact format, in order of preference, and the in-process backend that
loads it (deploybench.runtimes.BACKENDS). Imports nothing heavy: Triton's backend stub runs it
in an environment of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

RUNTIME_FORMATS = {  # what each runtime serves, in order of preference
    "tensorflow": ("savedmodel",),
    "pytorch": ("aoti", "torchscript"),
    "onnxruntime": ("onnx-torch",),
}
RUNTIMES = {"savedmodel": "tensorflow", "aoti": "aoti", "torchscript": "torch",
            "onnx-torch": "onnxruntime"}
PLATFORMS = {"savedmodel": "tensorflow_savedmodel", "aoti": "pytorch_aoti",
             "torchscript": "pytorch_torchscript", "onnx-torch": "onnxruntime_onnx"}


def served_format(manifest: Any, runtime: str) -> str:
    """The first format of the runtime's preference that the export produced."""
    for fmt in RUNTIME_FORMATS[runtime]:
        if any(a.format == fmt and a.status == "ok" for a in manifest.artifacts):
            return fmt
    wanted = " or ".join(RUNTIME_FORMATS[runtime])
    raise SystemExit(f"{manifest.model}: no {wanted} artifact was exported")


def load_hosted(root: Path, name: str, runtime: str, threads: int) -> tuple[Any, str, Any]:
    """(manifest, format, runner): one exported model's artifact for `runtime`, its checksum
    verified, loaded and ready to run."""
    from deploybench import runtimes
    from deploybench.manifest import load_manifest, verify_artifacts

    manifest = load_manifest(root, name)
    fmt = served_format(manifest, runtime)
    verify_artifacts(root, manifest, [fmt])
    backend = runtimes.BACKENDS[RUNTIMES[fmt]](root / manifest.artifact(fmt).path, threads)
    return manifest, fmt, backend


def model_names(root: Path, text: str) -> list[str]:
    from deploybench.manifest import exported_models

    names = exported_models(root) if text == "all" else [n for n in text.split(",") if n]
    if not names:
        raise SystemExit(f"{root}: no exported model to serve")
    return names


def healthy(root: Path, models: str, port: int) -> bool:
    """Every model ready on the V2 model-ready endpoint (a container's healthcheck)."""
    import urllib.error
    import urllib.request

    for name in model_names(root, models):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{name}/ready",
                                        timeout=5) as answer:
                if answer.status != 200:
                    return False
        except (urllib.error.URLError, OSError):
            return False
    return True
