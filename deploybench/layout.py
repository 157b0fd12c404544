"""Where export puts things under its output folder (the export root), in one place.

    <root>/<model>                -> .builds/<model>-<stamp>   (symlink, swapped atomically)
    <root>/<model>/manifest.json, golden.npz, reference.pt, model.torchscript.pt, <model>.mar
    <root>/<model>/savedmodel/<version>/saved_model.pb      (TensorFlow Serving's layout)
    <root>/<model>/tflite/{fp32,fp16,dynamic-int8,int8}.tflite
    <root>/model-store/<model>.mar -> ../<model>/<model>.mar  (TorchServe's flat model store)
    <root>/models.config          (TF Serving model_config_list, paths as mounted at /models)
"""

from __future__ import annotations

from pathlib import Path

BUILDS = ".builds"
MODEL_STORE = "model-store"
MODELS_CONFIG = "models.config"
CONTAINER_ROOT = "/models"  # where docker-compose mounts the export root


def savedmodel_base(root: Path | str, model: str) -> str:
    return f"{root}/{model}/savedmodel"


def mar_path(root: Path, model: str) -> Path:
    return root / MODEL_STORE / f"{model}.mar"


def models_config_text(models: list[str], root: Path | str = CONTAINER_ROOT) -> str:
    """TF Serving's model_config_list, built with its own protos so it always parses."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for model in models:
        entry = config.model_config_list.config.add()
        entry.name = model
        entry.base_path = savedmodel_base(root, model)
        entry.model_platform = "tensorflow"
    return text_format.MessageToString(config)
