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
        body = parse_json(body)
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


def parse_json(body):
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
    """A validated float32 batch from an .npy body. The header (dtype, shape) is checked
    before numpy reads the data: a header declaring a huge shape would otherwise make it
    allocate that much memory first."""
    if isinstance(body, str):  # a text/* part TorchServe decoded: not ours to re-encode
        raise ValueError(f"an {NPY_TYPE} body must be binary .npy data")
    if not body:
        raise ValueError(f"empty request body: send a float32 .npy array of shape "
                         f"{_expected(signature)}")
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(stream)
    except Exception as error:  # noqa: BLE001 - numpy parses the header with Python's
        # tokenizer and literal_eval: any failure there (TokenError, SyntaxError, ...) is a
        # header that is not one
        raise ValueError(f"malformed .npy body: {type(error).__name__}: {error}") from None
    if dtype.hasobject:
        raise ValueError("malformed .npy body: it holds Python objects, which need pickles "
                         "(allow_pickle=False)")
    if dtype.kind != "f" or dtype.itemsize != 4:
        raise ValueError(f"wrong dtype: the .npy array holds {dtype.name}, expected float32")
    _check_shape(shape, signature)
    _check_rows(shape[0], signature)
    data = body[stream.tell():]
    expected = int(np.prod(shape)) * 4
    if len(data) > expected:
        raise ValueError(f"malformed .npy body: {len(data) - expected} bytes after the array")
    if len(data) < expected:
        raise ValueError(f"malformed .npy body: its header declares {expected} bytes of data, "
                         f"{len(data)} follow")
    array = np.frombuffer(data, dtype=dtype)
    array = array.reshape(shape, order="F" if fortran_order else "C")
    return check_finite(np.ascontiguousarray(array, dtype=np.float32))


def _named(mapping, name):
    check_input_names(list(mapping), {"input_name": name})
    return mapping[name]


def check_input_names(names, signature):
    """The names of a request's inputs: exactly the model's one input."""
    name = signature["input_name"]
    if not names:
        raise ValueError(f"missing input: this model takes one input {name!r}")
    unknown = sorted(str(n) for n in names if n != name)
    if name not in names:
        raise ValueError(f"unknown input name(s) {unknown}: this model takes {name!r}")
    if unknown or len(names) > 1:
        raise ValueError(f"extra input(s) {unknown or [name]}: this model takes one input "
                         f"{name!r}")


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
    needed = shape[0] * _row_size(signature)
    if size is not None and size != needed:
        raise ValueError(f"wrong size: input {name!r} has {size} values, its shape "
                         f"{list(shape)} needs {needed}")


def decode_tensor(name, shape, datatype, data, raw, signature):
    """A validated float32 batch from an Open Inference Protocol input: `data` (JSON numbers,
    flat or nested) or `raw` (little-endian float32 bytes: the binary extension, gRPC)."""
    if raw is not None:
        if len(raw) % 4:
            raise ValueError(f"wrong size: {len(raw)} bytes is not a whole number of "
                             "float32 values")
        check_tensor(name, shape, datatype, len(raw) // 4, signature)
        return check_finite(np.frombuffer(raw, dtype="<f4").reshape(shape))
    check_tensor(name, shape, datatype, None, signature)
    if not isinstance(data, list):
        raise ValueError(f"wrong dtype: input {name!r} data must be a list of numbers (FP32), "
                         f"got {_kind(data)}")
    array = _numbers(data, f"data: input {name!r} must be a flat list of numbers or nested "
                           "lists of one shape")
    if array.size != int(np.prod(shape)):
        raise ValueError(f"wrong size: input {name!r} has {array.size} values, its shape "
                         f"{list(shape)} needs {int(np.prod(shape))}")
    return to_float32(array.reshape(shape))


def _numbers(value, ragged):
    """Nested lists of JSON numbers as a float64 array, or a ValueError naming what else is
    there: strings (numpy would read "1.5" as a number), booleans, nulls, objects, ragged
    rows (`ragged` says what they must be)."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        _check_numbers(value)  # names a wrong dtype; past it, the rows can only be ragged
        raise ValueError(f"ragged {ragged}") from None
    if array.dtype.kind not in "fiu":  # strings, booleans, objects (None, huge integers)
        _check_numbers(value)
        try:
            return array.astype(np.float64)  # integers beyond int64 that numpy kept whole
        except (OverflowError, TypeError, ValueError):
            raise ValueError("value out of float32 range: an integer beyond float32's "
                             "magnitudes") from None
    _check_no_booleans(value, array)
    return array.astype(np.float64, copy=False)


def _check_no_booleans(value, array):
    """numpy reads a mix of booleans and numbers as numbers (1.0, 0.0): look for booleans
    where the array holds 0 or 1 only, one lookup each; where there are many such places, one
    walk of the whole nested lists costs less (a walk: about 20 ms for a 224x224x3 image)."""
    places = np.argwhere((array == 0) | (array == 1))
    if len(places) * 10 > array.size:
        _check_numbers(value)
        return
    for place in places:
        item = value
        for index in place:
            item = item[index]
        if isinstance(item, bool):
            raise ValueError("wrong dtype: expected numbers (float32), got a boolean")


def to_float32(array):
    """`array` (float64, from JSON numbers) as float32, every value checked after the
    conversion: a finite float64 beyond float32's range would become Infinity."""
    check_finite(array)
    with np.errstate(over="ignore"):  # an overflow is looked for just below, and named
        batch = array.astype(np.float32)
    if not np.all(np.isfinite(batch)):
        row = _first_bad_row(batch)
        raise ValueError(f"value out of float32 range in row {row}: float32 holds magnitudes "
                         f"up to {float(np.finfo(np.float32).max):.4g}")
    return batch


def check_outputs(logits):
    """A model's answer to a valid request, refused when it holds NaN or Infinity: finite
    inputs near float32's limits can overflow inside the model, and such an answer is garbage
    (the request's values were too large for the model's float32 arithmetic)."""
    if not np.all(np.isfinite(logits)):
        raise ValueError(f"non-finite output: the model's answer to row "
                         f"{_first_bad_row(logits)} is NaN or Infinity (its input values "
                         "overflow the model's float32 arithmetic)")
    return logits


def error_text(error, limit=300):
    """An error message fit for an HTTP status line and a log: ASCII (TorchServe's worker
    counts a message's characters where its frontend reads bytes: a non-ASCII one desyncs
    their stream and kills the worker), one line, at most `limit` characters (a message may
    quote the request)."""
    text = " ".join(str(error).split()).encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_finite(array):
    """A float32 batch with no NaN or Infinity in it."""
    if not np.all(np.isfinite(array)):
        raise ValueError(f"non-finite value (NaN or Infinity) in row {_first_bad_row(array)}")
    return array


def _first_bad_row(array):
    return int(np.argwhere(~np.isfinite(array))[0][0])


def _row_size(signature):
    return int(np.prod(signature["input_shape"], dtype=np.int64))


def _check_shape(shape, signature):
    if any(size < 0 for size in shape):
        raise ValueError(f"wrong shape: negative size in {tuple(shape)}")
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
    array = _numbers(value, f"rows: every row must have shape {tuple(signature['input_shape'])}")
    _check_shape(array.shape, signature)
    return to_float32(array)


def _check_numbers(value, depth=0):
    """Reject strings, objects and nulls anywhere in the nested lists."""
    if depth > 8:
        raise ValueError("input nested too deeply")
    for item in value:
        if isinstance(item, list):
            _check_numbers(item, depth + 1)
        elif item is None or isinstance(item, bool) or not isinstance(item, (int, float)):
            raise ValueError(f"wrong dtype: expected numbers (float32), got {_kind(item)}")


def _kind(item):
    names = {dict: "an object", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(item), type(item).__name__)
