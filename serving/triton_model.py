"""The kit's model inside Triton's Python backend: one exported model in one runtime (the
SavedModel in TensorFlow, the AOTInductor package in torch), the same code for both, as
kserve_server.py is for KServe. Triton's backend stub imports it through the `model.py` that
serving/triton_server.py writes into each model's folder of the repository.

Triton's own front ends (C++) parse every protocol and check each input's datatype and rank
against config.pbtxt; what they cannot know (non-finite values, ids past the vocabulary, a
length past the model's longest, inputs of different lengths) is checked here, per request,
with the kit's one validation module, before the framework sees anything. A bad request gets
its own INVALID_ARG error (a 400 on REST, INVALID_ARGUMENT on gRPC) naming the problem, and the
other requests of its dynamic batch are answered as if it had not been there.

PyTriton's proxy is not used: it turns any exception of its callable into an error of the
whole batch, with status 500 and a traceback as the message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def parameters(model_config: dict[str, Any]) -> dict[str, str]:
    """config.pbtxt's `parameters` as plain strings."""
    return {key: value["string_value"]
            for key, value in (model_config.get("parameters") or {}).items()}


class TritonPythonModel:
    """Triton's Python backend interface: initialize, execute (a list of requests, several
    when the dynamic batcher joined them), finalize."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        from deploybench.serving.hosting import load_hosted

        self.pb = pb_utils
        given = parameters(json.loads(args["model_config"]))
        threads = int(given.get("threads", "1"))
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        manifest, _, backend = load_hosted(Path(given["artifacts"]), args["model_name"],
                                           given["runtime"], threads)
        self.signature = manifest.signature()
        self.output_name = manifest.outputs[0].name
        self.runner = backend.load()

    def _inputs(self, request: Any) -> dict[str, np.ndarray]:
        """One request's inputs, validated (ValueError names the problem)."""
        from deploybench.serving import input_validation as check

        arrays = {}
        for spec in check.inputs_of(self.signature):
            tensor = self.pb.get_input_tensor_by_name(request, spec["name"])
            if tensor is None:  # Triton requires every declared input; kept as a guard
                raise ValueError(f"missing input(s) [{spec['name']!r}]")
            array = np.ascontiguousarray(tensor.as_numpy())
            arrays[spec["name"]] = check.decode_tensor(
                spec["name"], list(array.shape), check.DATATYPES[spec["dtype"]], None,
                array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(),
                self.signature)
        return check.check_inputs(arrays, self.signature)

    def _refusal(self, error: ValueError) -> Any:
        from deploybench.serving.input_validation import error_text

        return self.pb.InferenceResponse(
            output_tensors=[],
            error=self.pb.TritonError(error_text(error), self.pb.TritonError.INVALID_ARG))

    def execute(self, requests: list[Any]) -> list[Any]:
        from deploybench.batch import Batch
        from deploybench.serving.input_validation import check_outputs, concatenate

        responses: list[Any] = [None] * len(requests)
        valid: list[tuple[int, dict[str, np.ndarray]]] = []
        for index, request in enumerate(requests):
            try:
                valid.append((index, self._inputs(request)))
            except ValueError as error:
                responses[index] = self._refusal(error)
        if valid:
            logits = self.runner.predict(Batch(concatenate([v for _, v in valid],
                                                           self.signature)))
            start = 0
            for index, arrays in valid:
                rows = next(iter(arrays.values())).shape[0]
                part = np.ascontiguousarray(logits[start:start + rows], dtype=np.float32)
                start += rows
                try:
                    check_outputs(part)
                except ValueError as error:
                    responses[index] = self._refusal(error)
                    continue
                responses[index] = self.pb.InferenceResponse(
                    output_tensors=[self.pb.Tensor(self.output_name, part)])
        return responses

    def finalize(self) -> None:
        self.runner = None
