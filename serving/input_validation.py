"""Input checks for every server the kit runs: a request is validated here before any
framework sees it, and a bad one is a ValueError naming the problem.

One file for TorchServe's handler (packed beside it in the .mar, so it imports nothing from
deploybench) and the KServe server (deploybench.serving.input_validation): the same request is
refused with the same words by both. `signature` is the model's signature.json: input_name,
input_shape (without the batch dimension) and max_rows.

Forms (TF Serving's REST predict body, and its binary counterpart):
  row form      {"instances": [row, ...]}, a row possibly {"<input name>": row}
  columnar form {"inputs": [row, ...]} or {"inputs": {"<input name>": [row, ...]}}
  .npy          one float32 array of shape (N, *input shape), no pickles
  tensor        an Open Inference Protocol input: name, shape, datatype, flat data (check_tensor)
"""

import io
import json

import numpy as np

try:  # a parser in C: 3-4x faster on a 224x224x3 image (3 MB of JSON) than json's
    import orjson
except ImportError:  # a TorchServe environment without it (the official image): json then
    orjson = None

NPY_TYPE = "application/x-npy"  # deploybench.serving.payload.NPY_CONTENT_TYPE
FLOAT32_TYPES = ("FP32",)  # the Open Inference Protocol's name for float32


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
    return check_finite(np.ascontiguousarray(array, dtype=np.float32))


def _named(mapping, name):
    if set(mapping) != {name}:
        raise ValueError(f"unknown input name(s) {sorted(mapping)}: this model takes {name!r}")
    return mapping[name]


def _expected(signature):
    return "(N, " + ", ".join(str(d) for d in signature["input_shape"]) + ")"


def check_tensor(name, shape, datatype, size, signature):
    """An Open Inference Protocol input before any data is converted: its name, datatype and
    shape against the signature, and `size` (its element count, None when not known yet)
    against the shape."""
    if name != signature["input_name"]:
        raise ValueError(f"unknown input name {name!r}: this model takes "
                         f"{signature['input_name']!r}")
    if datatype not in FLOAT32_TYPES:
        raise ValueError(f"wrong dtype: input {name!r} is {datatype}, expected FP32")
    if not isinstance(shape, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError(f"wrong shape: {shape!r} is not a list of sizes")
    _check_shape(shape, signature)
    _check_rows(shape[0], signature)
    if size is not None and size != int(np.prod(shape)):
        raise ValueError(f"wrong size: input {name!r} has {size} values, its shape "
                         f"{list(shape)} needs {int(np.prod(shape))}")


def check_finite(array):
    """A float32 batch with no NaN or Infinity in it."""
    if not np.all(np.isfinite(array)):
        row = int(np.argwhere(~np.isfinite(array))[0][0])
        raise ValueError(f"non-finite value (NaN or Infinity) in row {row}")
    return array


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
