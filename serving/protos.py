"""TF Serving's gRPC protos without importing TensorFlow.

tensorflow-serving-api's generated modules import `tensorflow.core.framework.tensor_pb2`;
importing that the usual way runs `tensorflow/__init__.py` (seconds, and a TF runtime inside a
gevent load generator). The protos are plain files, so when TensorFlow is not already loaded we
register its package folders as empty namespace modules and import just the protos.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

_PACKAGES = ("tensorflow", "tensorflow.core", "tensorflow.core.framework",
             "tensorflow.core.protobuf", "tensorflow.core.example")


def _register_proto_packages() -> list[str]:
    if "tensorflow" in sys.modules:
        return []
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    for name in _PACKAGES:
        module = types.ModuleType(name)
        module.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
        sys.modules[name] = module
    return list(_PACKAGES)


_stubs = _register_proto_packages()

from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

# Drop the empty packages again: a later `import tensorflow` then loads the real one, which
# reuses the proto modules already imported.
for _name in _stubs:
    sys.modules.pop(_name, None)

__all__ = [
    "get_model_metadata_pb2", "get_model_status_pb2", "model_service_pb2_grpc", "predict_pb2",
    "prediction_service_pb2_grpc", "tensor_pb2", "tensor_shape_pb2", "types_pb2",
]
