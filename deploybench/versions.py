"""Versions of the packages a measurement depends on, recorded with every result."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = (
    "deploybench", "torch", "tensorflow", "keras", "ai-edge-litert", "executorch", "torchserve",
    "torch-model-archiver", "tensorflow-serving-api", "locust", "numpy",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
