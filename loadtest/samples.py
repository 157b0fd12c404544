"""Request bodies from a model's golden samples, encoded once, and the check of every answer.

Both REST servers get the very same bytes (`payload.encode`, TF Serving's predict body); the
binary forms carry the same float32 rows: TorchServe's .npy body (`payload.encode_npy`) and TF
Serving's serialized gRPC PredictRequest. Every answer is compared
with the golden output of the rows it was sent (same argmax, within the manifest's tolerance).

Light on purpose: imported inside the locust process (numpy, the manifest, TF Serving's protos
without TensorFlow; never TensorFlow or torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploybench.errors import DeploybenchError
from deploybench.manifest import FP32_TOLERANCE, load_manifest
from deploybench.serving import payload

SIGNATURE = "serving_default"


class WrongAnswer(Exception):
    """A server answered, but not with the golden output: counted as a failure of its own."""


@dataclass(frozen=True)
class Samples:
    model: str
    batch_size: int
    tolerance: float
    input_name: str
    output_name: str
    rest_bodies: list[bytes]  # identical bytes for TF Serving REST and TorchServe
    npy_bodies: list[bytes]  # the same rows as .npy files, for TorchServe's binary body
    references: list[np.ndarray]  # golden outputs, one (batch_size, classes) array per body
    grpc_bodies: list[bytes] | None = None  # serialized PredictRequest, when asked for

    def __len__(self) -> int:
        return len(self.rest_bodies)

    def check(self, index: int, outputs: np.ndarray) -> None:
        """Raise WrongAnswer unless `outputs` match the golden output of request `index`."""
        ok, why = payload.matches_reference(outputs, self.references[index], self.tolerance)
        if not ok:
            if why.startswith("max abs diff"):  # one failure row, not one per distinct figure
                why = f"outside tolerance {self.tolerance:g}"
            raise WrongAnswer(why)

    def check_rest(self, index: int, body: bytes) -> None:
        self.check(index, payload.decode(body))


def golden_arrays(root: Path, model: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and reference outputs from golden.npz (path from the manifest)."""
    manifest = load_manifest(root, model)
    path = root / manifest.golden["path"]
    if not path.is_file():
        raise DeploybenchError(f"{path}: golden samples missing; export {model} again")
    with np.load(path) as data:
        return data["inputs"].astype(np.float32), data["outputs"].astype(np.float32)


def load_samples(root: Path, model: str, batch_size: int = 1, grpc: bool = False) -> Samples:
    """Every golden sample as a request of `batch_size` rows (the last partial batch dropped)."""
    if batch_size < 1:
        raise DeploybenchError(f"batch size must be at least 1, not {batch_size}")
    root = Path(root)
    manifest = load_manifest(root, model)
    if batch_size > manifest.max_rows:
        raise DeploybenchError(f"{model}: batch size {batch_size} > the servers' limit "
                               f"{manifest.max_rows} rows")
    inputs, outputs = golden_arrays(root, model)
    count = len(inputs) // batch_size
    if count == 0:
        raise DeploybenchError(f"{model}: fewer golden samples than one batch of {batch_size}")
    batches = [slice(i * batch_size, (i + 1) * batch_size) for i in range(count)]
    input_name, output_name = manifest.inputs[0].name, manifest.outputs[0].name
    grpc_bodies = None
    if grpc:
        grpc_bodies = [grpc_request(model, input_name, inputs[rows]) for rows in batches]
    return Samples(
        model=model,
        batch_size=batch_size,
        tolerance=float(manifest.tolerance.get("fp32_max_abs_diff", FP32_TOLERANCE)),
        input_name=input_name,
        output_name=output_name,
        rest_bodies=[payload.encode(inputs[rows]) for rows in batches],
        npy_bodies=[payload.encode_npy(inputs[rows]) for rows in batches],
        references=[outputs[rows] for rows in batches],
        grpc_bodies=grpc_bodies,
    )


def grpc_request(model: str, input_name: str, rows: np.ndarray) -> bytes:
    """A serialized TF Serving PredictRequest for `rows` (built without TensorFlow)."""
    from deploybench.serving import protos
    from deploybench.serving.clients import tensor_proto

    request = protos.predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = SIGNATURE
    request.inputs[input_name].CopyFrom(tensor_proto(rows, protos))
    return request.SerializeToString()


def grpc_outputs(response: bytes, output_name: str) -> np.ndarray:
    """The named output of a serialized PredictResponse."""
    from deploybench.serving import protos
    from deploybench.serving.clients import tensor_to_array

    message = protos.predict_pb2.PredictResponse.FromString(response)
    if output_name not in message.outputs:
        raise payload.PredictionError(
            f"answer has no output {output_name!r} (has {sorted(message.outputs)})")
    return tensor_to_array(message.outputs[output_name])
