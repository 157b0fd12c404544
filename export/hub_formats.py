"""The hub libraries' own folders, for a model the hubs build (text-bert): the PyTorch twin as a
transformers folder (`save_pretrained`: config.json, model.safetensors, the tokenizer and
vocab.txt) and the Keras twin as a keras-hub preset (`save_to_preset`, with its classifier
head), each read back the way the hubs read a folder (`from_pretrained`, `from_preset`) for the
parity gate: what a team that deploys from a hub folder, not from an exported graph, loads.

The folders are the model's own (its spec saves and loads them): these formats apply only to a
spec that declares `save_hub_torch` and `save_hub_keras`, and a model without them has no row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploybench import runtimes
from deploybench.export.context import ExportContext, Format, native_stderr_logged
from deploybench.export.torch_formats import quiet_torch
from deploybench.zoo.spec import ModelSpec

HUB_DIR = "hub"


def has_hub_folders(spec: ModelSpec) -> bool:
    return all(callable(getattr(spec, name, None)) for name in
               ("save_hub_torch", "load_hub_torch", "save_hub_keras", "load_hub_keras"))


def write_transformers(ctx: ExportContext) -> Path:
    folder = ctx.build_dir / HUB_DIR / "transformers"
    with quiet_torch():
        ctx.spec.save_hub_torch(ctx.torch_model, folder)
    return folder


def write_keras_hub(ctx: ExportContext) -> Path:
    folder = ctx.build_dir / HUB_DIR / "keras-hub"
    with native_stderr_logged("keras-hub's save_to_preset"):
        ctx.spec.save_hub_keras(ctx.keras_model, folder)
    return folder


def load_transformers(spec: Any, folder: Path) -> runtimes.TorchRunner:
    with quiet_torch():
        return runtimes.TorchRunner(spec.load_hub_torch(folder))


def load_keras_hub(spec: Any, folder: Path) -> runtimes.KerasRunner:
    return runtimes.KerasRunner(spec.load_hub_keras(folder))


FORMATS: tuple[Format, ...] = (
    Format("transformers", write_transformers, None, "pytorch", "torch",
           load=load_transformers, applies=has_hub_folders),
    Format("keras-hub", write_keras_hub, None, "tensorflow", "keras",
           load=load_keras_hub, applies=has_hub_folders),
)
