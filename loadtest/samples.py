"""Request bodies from a model's golden samples, encoded once, and the check of every answer.

Every server speaking JSON gets the very same bytes (`payload.encode`, TF Serving's predict
body); the other encodings of payload.BODIES carry the same float32 rows: the .npy body
(`payload.encode_npy`), TF Serving's serialized gRPC PredictRequest and the Open Inference
Protocol's three. Every answer is compared
with the golden output of the rows it was sent (same argmax, within the manifest's tolerance).

Light on purpose: imported inside the locust process (numpy, the manifest, TF Serving's and the
Open Inference Protocol's protos without TensorFlow or KServe; never TensorFlow or torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploybench.batch import Batch
from deploybench.errors import DeploybenchError
from deploybench.golden import Golden
from deploybench.manifest import FP32_TOLERANCE, Manifest, load_manifest
from deploybench.order_statistics import length_buckets
from deploybench.serving import payload


class WrongAnswer(Exception):
    """A server answered, but not with the golden output: counted as a failure of its own."""


class NonFiniteAnswer(WrongAnswer):
    """An answer holding NaN or Infinity: wrong whatever it is compared with, so counted as
    wrong even where answers are not checked against golden outputs (`load --no-check`)."""


@dataclass(frozen=True)
class Samples:
    model: str
    batch_size: int
    tolerance: float
    input_name: str
    output_name: str
    # request bodies by encoding (payload.BODIES: json, npy, tfserving-grpc, oip-...), the same
    # rows in each; every server speaking TF Serving's JSON gets the very same bytes
    bodies: dict[str, list[bytes]]
    # golden outputs, one (batch_size, classes) array per body; None: answers not checked
    # (a model the kit did not export), only that each has a row per input row
    references: list[np.ndarray] | None
    count: int = 0
    # a text model's: the sequence-length bucket ("low-high") of each request's longest row,
    # so that latency can be told apart by length; None for fixed-shape inputs
    length_buckets: list[str] | None = None

    def __len__(self) -> int:
        return self.count or len(self.references or [])

    def length_bucket(self, index: int) -> str | None:
        return None if self.length_buckets is None else self.length_buckets[index]

    def check(self, index: int, outputs: np.ndarray) -> None:
        """Raise WrongAnswer unless `outputs` match the golden output of request `index`
        (NonFiniteAnswer for NaN or Infinity, golden output or not)."""
        if outputs.dtype.kind == "f" and not np.all(np.isfinite(outputs)):
            raise NonFiniteAnswer("non-finite logit (NaN or Infinity) in the answer")
        if self.references is None:
            if outputs.ndim < 1 or len(outputs) != self.batch_size:
                raise WrongAnswer(f"{len(outputs) if outputs.ndim else 0} rows for "
                                  f"{self.batch_size} sent")
            return
        ok, why = payload.matches_reference(outputs, self.references[index], self.tolerance)
        if not ok:
            if why.startswith("max abs diff"):  # one failure row, not one per distinct figure
                why = f"outside tolerance {self.tolerance:g}"
            raise WrongAnswer(why)

    def check_answer(self, index: int, body: str, answer: bytes) -> None:
        """Check the answer to request `index` sent with encoding `body` (payload.BODIES)."""
        self.check(index, payload.BODIES[body].answer(answer, self.output_name))


def load_samples(root: Path, model: str, batch_size: int = 1,
                 encodings: tuple[str, ...] = tuple(payload.BODIES)) -> Samples:
    """Every golden sample as a request of `batch_size` rows (the last partial batch dropped),
    in each of `encodings`."""
    if batch_size < 1:
        raise DeploybenchError(f"batch size must be at least 1, not {batch_size}")
    root = Path(root)
    manifest = load_manifest(root, model)
    if batch_size > manifest.max_rows:
        raise DeploybenchError(f"{model}: batch size {batch_size} > the servers' limit "
                               f"{manifest.max_rows} rows")
    golden = Golden.of(root, manifest)
    inputs, outputs = golden.inputs, golden.outputs
    count = len(inputs) // batch_size
    if count == 0:
        raise DeploybenchError(f"{model}: fewer golden samples than one batch of {batch_size}")
    batches = [slice(i * batch_size, (i + 1) * batch_size) for i in range(count)]
    input_name, output_name = manifest.inputs[0].name, manifest.outputs[0].name
    unknown = set(encodings) - set(payload.BODIES)
    if unknown:
        raise DeploybenchError(f"unknown request body {sorted(unknown)}; known: "
                               f"{', '.join(payload.BODIES)}")
    return Samples(
        model=model,
        batch_size=batch_size,
        tolerance=float(manifest.tolerance.get("fp32_max_abs_diff", FP32_TOLERANCE)),
        input_name=input_name,
        output_name=output_name,
        bodies={name: [payload.BODIES[name].encode(inputs[rows], model) for rows in batches]
                for name in encodings},
        references=[outputs[rows] for rows in batches],
        length_buckets=_length_buckets(inputs, batches, manifest) if inputs.variable else None,
    )


def _length_buckets(inputs: Batch, batches: list[slice], manifest: Manifest) -> list[str]:
    """Each request's length bucket, decided once here rather than per answer in locust."""
    longest = max(i.shape[1] for i in manifest.inputs if i.dynamic)
    buckets = length_buckets(longest)
    return [next(f"{low}-{high}" for low, high in buckets if low <= inputs[rows].width <= high)
            for rows in batches]


@dataclass(frozen=True)
class Signature:
    """What a server declares a model takes and answers (its metadata), for requests made
    without an export: `--unchecked-signature pixels:8x8x1:logits`."""

    input_name: str
    input_shape: tuple[int, ...]  # without the batch dimension
    output_name: str

    def to_option(self) -> str:
        return f"{self.input_name}:{'x'.join(map(str, self.input_shape))}:{self.output_name}"

    @classmethod
    def parse(cls, text: str) -> Signature:
        try:
            name, shape, output = text.split(":")
            return cls(name, tuple(int(d) for d in shape.split("x") if d), output)
        except ValueError:
            raise DeploybenchError(f"not a signature (NAME:D1xD2...:OUTPUT): {text!r}") from None


UNCHECKED_REQUESTS = 64  # distinct requests of random inputs when nothing was exported


def synthetic_samples(signature: Signature, model: str, batch_size: int = 1,
                      encodings: tuple[str, ...] = tuple(payload.BODIES)) -> Samples:
    """Requests of seeded random inputs (uniform in [0, 1)) of the declared shape, for a model
    the kit did not export: answers are not checked against anything, only counted."""
    rows = np.random.default_rng(0).random(
        (UNCHECKED_REQUESTS * batch_size, *signature.input_shape), dtype=np.float32)
    batches = [Batch.single(signature.input_name, rows[i * batch_size:(i + 1) * batch_size])
               for i in range(UNCHECKED_REQUESTS)]
    return Samples(
        model=model, batch_size=batch_size, tolerance=0.0,
        input_name=signature.input_name, output_name=signature.output_name,
        bodies={name: [payload.BODIES[name].encode(batch, model) for batch in batches]
                for name in encodings},
        references=None, count=UNCHECKED_REQUESTS,
    )
