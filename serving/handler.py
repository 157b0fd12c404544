"""TorchServe handler: TF Serving's REST predict body in, TF Serving's answer out.

It runs inside TorchServe's Python worker, packed into the .mar, so it imports nothing from
deploybench (its input checks come from input_validation.py, packed beside it). One payload
works against both servers:
  row form      {"instances": [row, ...]}  ->  {"predictions": [[logit, ...], ...]}
  columnar form {"inputs": [row, ...]}     ->  {"outputs": [[logit, ...], ...]}
A row may also be {"<input name>": row}, and "inputs" may be {"<input name>": [row, ...]}.
A model with several inputs (token ids and a mask) takes each row as {"<name>": value, ...},
or "inputs" as {"<name>": [row, ...], ...}.
The binary form: Content-Type application/x-npy, the body one .npy file holding an array of
shape (N, *input shape) -> {"predictions": ...}; no JSON to decode (3 MB for one 224x224x3
image), no pickles (allow_pickle=False). Several inputs: application/x-npz, an uncompressed
.npz of one .npy per input, named by it.

Every request of a batch is validated alone (input_validation.py): a bad one gets its own HTTP
400 with a JSON error naming the problem (TF Serving's {"error": "..."} shape), its neighbours
are answered. Requests of different lengths in one batch are padded to the longest (mask 0).
TorchServe loads the only class defined here as the handler, so errors are plain ValueErrors.
"""

import json
import logging
import os
import time

import torch

# packed beside this file in the .mar (TorchServe puts the model folder on sys.path); the
# KServe server imports the same file as deploybench.serving.input_validation
from input_validation import (
    NPY_TYPE,
    NPZ_TYPE,
    check_outputs,
    concatenate,
    decode_npy_body,
    decode_npz_body,
    decode_predict_body,
    error_text,
)

SIGNATURE_FILE = "signature.json"
JSON_TYPES = ("application/json", "application/x-www-form-urlencoded", "")

log = logging.getLogger(__name__)


class DeploybenchHandler:
    def __init__(self):
        self.model = None
        self.signature = None
        self.initialized = False

    def initialize(self, context):
        model_dir = context.system_properties["model_dir"]
        with open(os.path.join(model_dir, SIGNATURE_FILE)) as handle:
            self.signature = json.load(handle)
        threads = os.environ.get("DEPLOYBENCH_TORCH_THREADS")
        if threads:
            # The same intra-op thread count as TF Serving gets, set in one place (.env).
            torch.set_num_threads(int(threads))
            torch.set_num_interop_threads(1)
        serialized = context.manifest["model"]["serializedFile"]
        self.model = torch.jit.load(os.path.join(model_dir, serialized), map_location="cpu")
        self.model.eval()
        self.initialized = True

    def handle(self, data, context):
        answers = [None] * len(data)
        rows, forms, owners = [], [], []
        for index, request in enumerate(data):
            try:
                batch, form = self._decode(request, context, index)
            except ValueError as error:
                self._refuse(context, answers, index, error)
                continue
            rows.append(batch)
            forms.append(form)
            owners.append(index)
        if len(data) > 1:
            log.info("batch of %d requests, %d rejected", len(data), len(data) - len(rows))
        if rows:
            started = time.perf_counter()
            batch = concatenate(rows, self.signature)
            with torch.inference_mode():
                logits = self.model(*[torch.from_numpy(a) for a in batch.values()]).numpy()
            _count_batch(context, (time.perf_counter() - started) * 1000.0, len(rows))
            start = 0
            # no zip(strict=...): the official TorchServe image runs the handler on Python 3.9
            for index, request, form in zip(owners, rows, forms):  # noqa: B905
                count = len(next(iter(request.values())))
                part = logits[start : start + count]
                start += count
                try:
                    check_outputs(part)
                except ValueError as error:
                    self._refuse(context, answers, index, error)
                    continue
                key = "predictions" if form == "instances" else "outputs"
                answers[index] = {key: part.tolist()}
        # Encoded here, compact: TorchServe would json.dumps a dict with indent=2, which costs
        # more worker time and sends more bytes for nothing.
        for index, answer in enumerate(answers):
            context.set_response_content_type(index, "application/json")
            answers[index] = json.dumps(answer, separators=(",", ":"))
        return answers

    @staticmethod
    def _refuse(context, answers, index, error):
        """Request `index` answered 400 with its error, in TF Serving's error shape."""
        message = error_text(error)
        context.set_response_status(400, message, index)
        answers[index] = {"error": message}

    def _decode(self, request, context, index):
        body = request.get("body", request.get("data"))
        content_type = _content_type(context, index)
        media_type = content_type.split(";")[0].strip().lower()
        if media_type == NPY_TYPE:
            return decode_npy_body(body, self.signature), "instances"
        if media_type == NPZ_TYPE:
            return decode_npz_body(body, self.signature), "instances"
        if media_type not in JSON_TYPES:
            raise ValueError(f"unsupported Content-Type {content_type!r}: send "
                             f"application/json, {NPY_TYPE} or {NPZ_TYPE}")
        return decode_predict_body(body, self.signature)


def _count_batch(context, model_ms, requests):
    """The handler's counters on TorchServe's /metrics (serving/config/torchserve-metrics.yaml):
    the forward pass once per request it answered, those requests, one batch of that size."""
    metrics = getattr(context, "metrics", None)
    if metrics is None:
        return
    model = context.model_name
    try:
        metrics.get_metric("DeploybenchModelMs").add_or_update(model_ms * requests,
                                                               [model, "Model"])
        metrics.get_metric("DeploybenchModelRequests").add_or_update(requests, [model, "Model"])
        metrics.get_metric("DeploybenchBatches").add_or_update(1, [model, "Model",
                                                                   str(requests)])
    except Exception as error:  # noqa: BLE001 - a metrics config without them: answer anyway
        log.warning("handler metrics not recorded: %s", error)


def _content_type(context, index):
    try:
        header = context.get_request_header(index, "body") or {}
        return header.get("content-type", "") if isinstance(header, dict) else str(header)
    except (AttributeError, IndexError, KeyError, TypeError):
        return ""
