"""TorchServe handler: TF Serving's REST predict body in, TF Serving's answer out.

It runs inside TorchServe's Python worker, packed into the .mar, so it imports nothing from
deploybench. One payload works against both servers:
  row form      {"instances": [row, ...]}  ->  {"predictions": [[logit, ...], ...]}
  columnar form {"inputs": [row, ...]}     ->  {"outputs": [[logit, ...], ...]}
A row may also be {"<input name>": row}, and "inputs" may be {"<input name>": [row, ...]}.
The binary form: Content-Type application/x-npy, the body one .npy file holding a float32 array
of shape (N, *input shape) -> {"predictions": ...}; no JSON to decode (3 MB for one 224x224x3
image), no pickles (allow_pickle=False).

Every request of a batch is validated alone: a bad one gets its own HTTP 400 with a JSON error
naming the problem (TF Serving's {"error": "..."} shape), its neighbours are answered.
TorchServe loads the only class defined here as the handler, so errors are plain ValueErrors.
"""

import io
import json
import logging
import os

import numpy as np
import torch

try:  # a parser in C: 3-4x faster on a 224x224x3 image (3 MB of JSON) than json's
    import orjson
except ImportError:  # a TorchServe environment without it (the official image): json then
    orjson = None

SIGNATURE_FILE = "signature.json"
JSON_TYPES = ("application/json", "application/x-www-form-urlencoded", "")
NPY_TYPE = "application/x-npy"  # deploybench.serving.payload.NPY_CONTENT_TYPE

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
                message = str(error)
                context.set_response_status(400, message, index)
                answers[index] = {"error": message}
                continue
            rows.append(batch)
            forms.append(form)
            owners.append(index)
        if len(data) > 1:
            log.info("batch of %d requests, %d rejected", len(data), len(data) - len(rows))
        if rows:
            with torch.inference_mode():
                logits = self.model(torch.from_numpy(np.concatenate(rows))).numpy()
            start = 0
            # no zip(strict=...): the official TorchServe image runs the handler on Python 3.9
            for index, batch, form in zip(owners, rows, forms):  # noqa: B905
                part = logits[start : start + len(batch)].tolist()
                start += len(batch)
                key = "predictions" if form == "instances" else "outputs"
                answers[index] = {key: part}
        # Encoded here, compact: TorchServe would json.dumps a dict with indent=2, which costs
        # more worker time and sends more bytes for nothing.
        for index, answer in enumerate(answers):
            context.set_response_content_type(index, "application/json")
            answers[index] = json.dumps(answer, separators=(",", ":"))
        return answers

    def _decode(self, request, context, index):
        body = request.get("body", request.get("data"))
        content_type = _content_type(context, index)
        media_type = content_type.split(";")[0].strip().lower()
        if media_type == NPY_TYPE:
            return decode_npy_body(body, self.signature), "instances"
        if media_type not in JSON_TYPES:
            raise ValueError(f"unsupported Content-Type {content_type!r}: send "
                             f"application/json or {NPY_TYPE}")
        return decode_predict_body(body, self.signature)


def _content_type(context, index):
    try:
        header = context.get_request_header(index, "body") or {}
        return header.get("content-type", "") if isinstance(header, dict) else str(header)
    except (AttributeError, IndexError, KeyError, TypeError):
        return ""


def decode_predict_body(body, signature):
    """A validated float32 batch and the request form ('instances' or 'inputs')."""
    if body is None:
        raise ValueError("empty request body: send a JSON object with 'instances' or 'inputs'")
    if isinstance(body, (bytes, bytearray)):
        body = _parse_json(body)
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object with 'instances' or 'inputs'")
    name = signature["input_name"]
    signature_name = body.get("signature_name", "serving_default")
    if signature_name != "serving_default":
        raise ValueError(f"unknown signature_name {signature_name!r}: only 'serving_default'")
    if ("instances" in body) == ("inputs" in body):
        found = ", ".join(sorted(body)) or "none"
        raise ValueError(
            f"request must have exactly one of 'instances' or 'inputs' (keys found: {found})"
        )
    form = "instances" if "instances" in body else "inputs"
    value = body[form]
    if form == "instances" and isinstance(value, list) and value and all(
        isinstance(row, dict) for row in value
    ):
        value = [_named(row, name) for row in value]
    elif form == "inputs" and isinstance(value, dict):
        value = _named(value, name)
    return _to_batch(value, signature), form


def _parse_json(body):
    """The JSON body as Python objects. TorchServe hands it over undecoded
    (decode_input_request=false in config.properties), so the fast parser does the work; the
    standard one takes what orjson refuses: it names the problem as json does, and reads
    NaN/Infinity, which the checks below then refuse by name."""
    if orjson is not None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"malformed JSON: {error}") from None


def decode_npy_body(body, signature):
    """A validated float32 batch from an .npy body."""
    if isinstance(body, str):  # a text/* part TorchServe decoded: not ours to re-encode
        raise ValueError(f"an {NPY_TYPE} body must be binary .npy data")
    if not body:
        raise ValueError(f"empty request body: send a float32 .npy array of shape "
                         f"{_expected(signature)}")
    stream = io.BytesIO(body)
    try:
        array = np.lib.format.read_array(stream, allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        raise ValueError(f"malformed .npy body: {error}") from None
    if stream.tell() != len(body):
        raise ValueError(f"malformed .npy body: {len(body) - stream.tell()} bytes after the array")
    if array.dtype.kind != "f" or array.dtype.itemsize != 4:
        raise ValueError(f"wrong dtype: the .npy array holds {array.dtype.name}, "
                         f"expected float32")
    _check_shape(array.shape, signature)
    _check_rows(len(array), signature)
    if not np.all(np.isfinite(array)):
        row = int(np.argwhere(~np.isfinite(array))[0][0])
        raise ValueError(f"non-finite value (NaN or Infinity) in row {row}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _named(mapping, name):
    if set(mapping) != {name}:
        raise ValueError(f"unknown input name(s) {sorted(mapping)}: this model takes {name!r}")
    return mapping[name]


def _expected(signature):
    return "(N, " + ", ".join(str(d) for d in signature["input_shape"]) + ")"


def _check_shape(shape, signature):
    if len(shape) < 1 or tuple(shape[1:]) != tuple(signature["input_shape"]):
        got = "(" + ", ".join(str(d) for d in shape) + ")"
        raise ValueError(f"wrong shape: got {got}, expected {_expected(signature)}")


def _check_rows(count, signature):
    if count == 0:
        raise ValueError("empty input: at least one row is required")
    if count > signature["max_rows"]:
        raise ValueError(f"too many rows: {count} > max_rows {signature['max_rows']}")


def _to_batch(value, signature):
    if not isinstance(value, list):
        raise ValueError(f"input must be a list of rows of shape {_expected(signature)}, "
                         f"got {_kind(value)}")
    _check_rows(len(value), signature)  # before numpy: an oversized list is refused cheaply
    try:
        array = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        _check_numbers(value)  # names a wrong dtype; past it, the rows can only be ragged
        shape = tuple(signature["input_shape"])
        raise ValueError(f"ragged rows: every row must have shape {shape}") from None
    _check_shape(array.shape, signature)
    if not np.all(np.isfinite(array)):
        _check_numbers(value)  # a null also turns into NaN: name it
        row = int(np.argwhere(~np.isfinite(array))[0][0])
        raise ValueError(f"non-finite value (NaN or Infinity) in row {row}")
    batch = array.astype(np.float32)
    if not np.all(np.isfinite(batch)):
        raise ValueError("value out of float32 range")
    return batch


def _check_numbers(value, depth=0):
    """Reject strings, objects and nulls anywhere in the nested lists."""
    if depth > 8:
        raise ValueError("input nested too deeply")
    for item in value:
        if isinstance(item, list):
            _check_numbers(item, depth + 1)
        elif item is None or not isinstance(item, (int, float)):
            raise ValueError(f"wrong dtype: expected numbers (float32), got {_kind(item)}")


def _kind(item):
    names = {dict: "an object", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(item), type(item).__name__)
