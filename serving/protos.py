"""TF Serving's gRPC protos without importing TensorFlow.

tensorflow-serving-api's generated modules import `tensorflow.core.framework.tensor_pb2`;
importing that the usual way runs `tensorflow/__init__.py` (seconds, and a TF runtime inside a
gevent load generator). The protos are plain files: package_stubs.py imports just them.
"""

from __future__ import annotations

import numpy as np

from deploybench.batch import Batch
from deploybench.serving.package_stubs import empty_packages

with empty_packages("tensorflow", "tensorflow.core", "tensorflow.core.framework",
                    "tensorflow.core.protobuf", "tensorflow.core.example"):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

__all__ = [
    "get_model_metadata_pb2", "get_model_status_pb2", "model_service_pb2_grpc", "predict_pb2",
    "predict_outputs", "predict_request", "prediction_service_pb2_grpc", "tensor_pb2",
    "tensor_proto", "tensor_shape_pb2", "tensor_to_array", "types_pb2",
]

SIGNATURE = "serving_default"


# numpy dtype -> TF Serving's, for the dtypes a public input or output may have
DTYPES = {np.dtype(np.float32): types_pb2.DT_FLOAT, np.dtype(np.int32): types_pb2.DT_INT32}


def tensor_proto(batch: np.ndarray) -> tensor_pb2.TensorProto:
    """A float32 or int32 batch as a TensorProto, built without TensorFlow."""
    array = np.ascontiguousarray(batch)
    if array.dtype not in DTYPES:
        array = array.astype(np.float32)
    proto = tensor_pb2.TensorProto(dtype=DTYPES[array.dtype])
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    proto.tensor_content = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return proto


def tensor_to_array(proto: tensor_pb2.TensorProto) -> np.ndarray:
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype="<f4").reshape(shape).copy()
    return np.asarray(proto.float_val, dtype=np.float32).reshape(shape)


def predict_request(rows: Batch, model: str) -> bytes:
    """A serialized PredictRequest for `rows`, every input under its name: the gRPC body of
    the load generator."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = SIGNATURE
    for name, array in rows.arrays.items():
        request.inputs[name].CopyFrom(tensor_proto(array))
    return request.SerializeToString()


def predict_outputs(response: bytes, output_name: str) -> np.ndarray:
    """The named output of a serialized PredictResponse."""
    from deploybench.serving.payload import PredictionError

    message = predict_pb2.PredictResponse.FromString(response)
    if output_name not in message.outputs:
        raise PredictionError(
            f"answer has no output {output_name!r} (has {sorted(message.outputs)})")
    return tensor_to_array(message.outputs[output_name])
