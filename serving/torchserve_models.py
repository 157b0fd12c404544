"""TorchServe's per-model settings (its `models` config line), built in one place for both
ways the kit starts TorchServe: natively (serving/native.py) and in the compose image
(docker/torchserve/entrypoint.py, which runs Python 3.9 without deploybench installed and
imports this file from a read-only mount). Standard library only, Python 3.9 syntax."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

RESPONSE_TIMEOUT_S = 120  # seconds a worker may take for one batch before TorchServe kills it


class MarError(Exception):
    """A .mar that cannot be read."""


def mar_model(mar: Path) -> tuple[str, str]:
    """(model name, version) from a .mar's own manifest (MAR-INF/MANIFEST.json)."""
    try:
        with zipfile.ZipFile(mar) as archive:
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise MarError(f"{mar}: not a readable .mar ({error})") from error
    return manifest["modelName"], str(manifest.get("modelVersion", "1.0"))


def models_json(mars: dict[str, tuple[str, str]], batch_size: int, delay_ms: int,
                workers: int = 1) -> str:
    """The `models` setting for {model name: (version, .mar file name)}: `workers` workers
    per model, TorchServe's batching as given (batch_size 1: off)."""
    config = {
        name: {
            version: {
                "defaultVersion": True,
                "marName": mar,
                "minWorkers": workers,
                "maxWorkers": workers,
                "batchSize": batch_size,
                "maxBatchDelay": delay_ms,
                "responseTimeout": RESPONSE_TIMEOUT_S,
            }
        }
        for name, (version, mar) in mars.items()
    }
    return json.dumps(config, separators=(",", ":"))
