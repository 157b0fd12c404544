"""Input checks for every server the kit runs: a request is validated here before any
framework sees it, and a bad one is a ValueError naming the problem.

One file for TorchServe's handler (packed beside it in the .mar, so it imports nothing from
deploybench) and the KServe server (deploybench.serving.input_validation): the same request is
refused with the same words by both. `signature` is the model's signature.json
(deploybench.manifest.signature_of): its inputs (name, shape without the batch axis, dtype,
dynamic axes, value range) and max_rows.

A decoded request is a dict of arrays by input name, in the model's input order: float32
pixels, or int32 token ids and their mask, whose sequence axis takes any length from 1 to the
shape's (one request is rectangular: a client pads its rows to the longest, mask 0).

Forms (TF Serving's REST predict body, and its binary counterparts):
  row form      {"instances": [row, ...]}, a row {"<input name>": value, ...} (required where
                the model has several inputs, optional for one)
  columnar form {"inputs": [row, ...]} (one input) or {"inputs": {"<input name>": [row, ...]}}
  .npy          one array of shape (N, *input shape), no pickles (one input)
  .npz          an uncompressed zip of one .npy per input, named by it (several inputs)
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
NPZ_TYPE = "application/x-npz"  # deploybench.serving.payload.NPZ_CONTENT_TYPE
# the Open Inference Protocol's datatype name of each public dtype
DATATYPES = {"float32": "FP32", "int32": "INT32"}
MAX_NPZ_MEMBERS = 16  # more than any model's inputs: a zip of thousands is refused unread


def inputs_of(signature):
    """The signature's inputs; a signature written before models had several is its one
    float32 input."""
    if "inputs" in signature:
        return signature["inputs"]
    return [{"name": signature["input_name"], "shape": list(signature["input_shape"]),
             "dtype": "float32", "dynamic": [], "high": None}]


def _input(name, signature):
    for spec in inputs_of(signature):
        if spec["name"] == name:
            return spec
    raise ValueError(f"unknown input name {name!r}: this model takes {_names(signature)}")


def _names(signature):
    names = [spec["name"] for spec in inputs_of(signature)]
    return repr(names[0]) if len(names) == 1 else str(names)


def decode_predict_body(body, signature):
    """The validated inputs ({name: array}) and the request form ('instances' or 'inputs')."""
    if body is None:
        raise ValueError("empty request body: send a JSON object with 'instances' or 'inputs'")
    if isinstance(body, (bytes, bytearray)):
        body = parse_json(body)
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object with 'instances' or 'inputs'")
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
    specs = inputs_of(signature)
    if form == "instances" and isinstance(value, list) and value and all(
        isinstance(row, dict) for row in value
    ):
        for row in value:
            check_input_names(list(row), signature)
        columns = {spec["name"]: [row[spec["name"]] for row in value] for spec in specs}
    elif form == "inputs" and isinstance(value, dict):
        check_input_names(list(value), signature)
        columns = {spec["name"]: value[spec["name"]] for spec in specs}
    elif len(specs) == 1:
        columns = {specs[0]["name"]: value}
    else:
        raise ValueError(f"this model takes several inputs {_names(signature)}: send each row "
                         "as an object of them ('instances'), or an object of lists ('inputs')")
    return check_inputs({name: _to_batch(column, _input(name, signature), signature)
                         for name, column in columns.items()}, signature), form


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
    """The validated inputs ({name: array}) of an .npy body (a model with one input)."""
    if isinstance(body, str):  # a text/* part TorchServe decoded: not ours to re-encode
        raise ValueError(f"an {NPY_TYPE} body must be binary .npy data")
    specs = inputs_of(signature)
    if len(specs) > 1:
        raise ValueError(f"this model takes several inputs {_names(signature)}: send an .npz "
                         f"({NPZ_TYPE}) with one array per input, not one .npy")
    if not body:
        raise ValueError(f"empty request body: send a {specs[0]['dtype']} .npy array of shape "
                         f"{_expected(specs[0])}")
    spec = specs[0]
    return check_inputs({spec["name"]: _read_npy(bytes(body), spec, signature, "the .npy body")},
                        signature)


def decode_npz_body(body, signature):
    """The validated inputs ({name: array}) of an .npz body: an uncompressed zip holding one
    .npy per input (`<name>.npy`). Each member's size is read from the zip's directory and its
    .npy header checked before any data is read."""
    import zipfile

    if isinstance(body, str):
        raise ValueError(f"an {NPZ_TYPE} body must be binary .npz data")
    if not body:
        raise ValueError(f"empty request body: send an .npz with the arrays {_names(signature)}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(bytes(body)))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise ValueError(f"malformed .npz body: {error}") from None
    if len(members) > MAX_NPZ_MEMBERS:
        raise ValueError(f"malformed .npz body: {len(members)} members")
    by_name = {}
    for member in members:
        if not member.filename.endswith(".npy"):
            raise ValueError(f"malformed .npz body: member {member.filename!r} is not an .npy")
        if member.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"malformed .npz body: member {member.filename!r} is compressed "
                             "(send np.savez, not savez_compressed)")
        by_name[member.filename[:-4]] = member
    check_input_names(list(by_name), signature)
    arrays = {}
    for spec in inputs_of(signature):
        member = by_name[spec["name"]]
        try:
            data = archive.read(member)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
            raise ValueError(f"malformed .npz body: member {member.filename!r}: {error}"
                             ) from None
        arrays[spec["name"]] = _read_npy(data, spec, signature, f"input {spec['name']!r}")
    return check_inputs(arrays, signature)


def _read_npy(body, spec, signature, what):
    """One .npy file's array, its header (dtype, shape) checked before numpy reads the data: a
    header declaring a huge shape would otherwise make it allocate that much memory first."""
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(stream)
    except Exception as error:  # noqa: BLE001 - numpy parses the header with Python's
        # tokenizer and literal_eval: any failure there (TokenError, SyntaxError, ...) is a
        # header that is not one
        raise ValueError(f"malformed .npy body ({what}): {type(error).__name__}: {error}"
                         ) from None
    if dtype.hasobject:
        raise ValueError(f"malformed .npy body ({what}): it holds Python objects, which need "
                         "pickles (allow_pickle=False)")
    expected_kind = "f" if spec["dtype"] == "float32" else "i"
    if dtype.kind != expected_kind or dtype.itemsize != 4:
        raise ValueError(f"wrong dtype: {what} holds {dtype.name}, expected {spec['dtype']}")
    _check_shape(shape, spec)
    _check_rows(shape[0], signature)
    data = body[stream.tell():]
    expected = int(np.prod(shape)) * 4
    if len(data) > expected:
        raise ValueError(f"malformed .npy body ({what}): {len(data) - expected} bytes after "
                         "the array")
    if len(data) < expected:
        raise ValueError(f"malformed .npy body ({what}): its header declares {expected} bytes "
                         f"of data, {len(data)} follow")
    array = np.frombuffer(data, dtype=dtype)
    array = array.reshape(shape, order="F" if fortran_order else "C")
    return _values(np.ascontiguousarray(array, dtype=np.dtype(spec["dtype"])), spec)


def check_input_names(names, signature):
    """The names of a request's inputs: exactly the model's inputs."""
    expected = [spec["name"] for spec in inputs_of(signature)]
    if not names:
        raise ValueError(f"missing input: this model takes {_names(signature)}")
    unknown = sorted(str(n) for n in names if n not in expected)
    if unknown and not any(n in expected for n in names):
        raise ValueError(f"unknown input name(s) {unknown}: this model takes "
                         f"{_names(signature)}")
    if unknown:
        raise ValueError(f"extra input(s) {unknown}, unknown input name(s) to this model: it "
                         f"takes {_names(signature)}")
    if len(names) != len(set(names)):
        raise ValueError(f"extra input(s): an input is given twice; this model takes "
                         f"{_names(signature)}")
    missing = [n for n in expected if n not in names]
    if missing:
        raise ValueError(f"missing input(s) {missing}: this model takes {_names(signature)}")


def _expected(spec):
    sizes = [f"1..{size}" if axis in spec["dynamic"] else str(size)
             for axis, size in enumerate(spec["shape"])]
    return "(N, " + ", ".join(sizes) + ")"


def check_tensor(name, shape, datatype, size, signature):
    """An Open Inference Protocol input before any data is converted: its name, datatype and
    shape against the signature, and `size` (its element count, None when not known yet)
    against the shape."""
    spec = _input(name, signature)
    wanted = DATATYPES[spec["dtype"]]
    if datatype != wanted:
        raise ValueError(f"wrong dtype: input {name!r} is {datatype}, expected {wanted}")
    if not isinstance(shape, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError(f"wrong shape: {shape!r} is not a list of sizes")
    _check_shape(shape, spec)
    _check_rows(shape[0], signature)
    needed = int(np.prod(shape, dtype=np.int64))
    if size is not None and size != needed:
        raise ValueError(f"wrong size: input {name!r} has {size} values, its shape "
                         f"{list(shape)} needs {needed}")


def decode_tensor(name, shape, datatype, data, raw, signature):
    """One validated input array from an Open Inference Protocol input: `data` (JSON numbers,
    flat or nested) or `raw` (little-endian bytes: the binary extension, gRPC). The inputs of
    one request are then checked together (check_inputs)."""
    spec = _input(name, signature)
    if raw is not None:
        if len(raw) % 4:
            raise ValueError(f"wrong size: {len(raw)} bytes is not a whole number of "
                             f"{spec['dtype']} values")
        check_tensor(name, shape, datatype, len(raw) // 4, signature)
        dtype = "<f4" if spec["dtype"] == "float32" else "<i4"
        return _values(np.frombuffer(raw, dtype=dtype).reshape(shape), spec)
    check_tensor(name, shape, datatype, None, signature)
    if not isinstance(data, list):
        raise ValueError(f"wrong dtype: input {name!r} data must be a list of numbers "
                         f"({datatype}), got {_kind(data)}")
    array = _numbers(data, f"data: input {name!r} must be a flat list of numbers or nested "
                           "lists of one shape")
    if array.size != int(np.prod(shape)):
        raise ValueError(f"wrong size: input {name!r} has {array.size} values, its shape "
                         f"{list(shape)} needs {int(np.prod(shape))}")
    return _convert(array.reshape(shape), spec)


def check_inputs(arrays, signature):
    """A request's decoded inputs together: every input present, the same number of rows in
    each, and inputs sharing a dynamic axis (token ids and their mask) equally long along it.
    Returns them in the model's input order."""
    check_input_names(list(arrays), signature)
    specs = inputs_of(signature)
    first = specs[0]["name"]
    for spec in specs[1:]:
        ours, theirs = arrays[spec["name"]].shape, arrays[first].shape
        if ours[0] != theirs[0]:
            raise ValueError(f"rows differ: input {spec['name']!r} has {ours[0]} rows, "
                             f"{first!r} has {theirs[0]}")
        shared = set(spec["dynamic"]) & set(specs[0]["dynamic"])
        if any(ours[axis + 1] != theirs[axis + 1] for axis in shared):
            raise ValueError(f"shape mismatch: input {spec['name']!r} is {tuple(ours)}, "
                             f"{first!r} is {tuple(theirs)}: they must be as long as each "
                             "other")
    return {spec["name"]: arrays[spec["name"]] for spec in specs}


def concatenate(requests, signature):
    """The inputs of several validated requests as one batch (a server's batch of requests):
    rows after rows, each dynamic axis padded with zeros to the longest request's length (a
    zero mask hides the padding from the model, so every request's answer stays its own)."""
    batch = {}
    for spec in inputs_of(signature):
        arrays = [request[spec["name"]] for request in requests]
        for axis in spec["dynamic"]:
            longest = max(a.shape[axis + 1] for a in arrays)
            arrays = [np.pad(a, [(0, longest - a.shape[axis + 1]) if i == axis + 1 else (0, 0)
                                 for i in range(a.ndim)]) for a in arrays]
        batch[spec["name"]] = np.concatenate(arrays)
    return batch


def _convert(array, spec):
    """A float64 array of JSON numbers as the input's dtype, every value checked."""
    if spec["dtype"] == "float32":
        return to_float32(array)
    if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
        raise ValueError(f"wrong dtype: input {spec['name']!r} takes integers (int32), got "
                         f"{_first_fraction(array)}")
    return _values(array, spec)


def _first_fraction(array):
    bad = array[~np.isfinite(array) | (array != np.round(array))]
    return repr(float(bad[0])) if bad.size else "a non-integer"


def _values(array, spec):
    """The input's values checked against its dtype and range: float32 finite; integers
    within [0, high) (token ids in the vocabulary, a mask 0 or 1)."""
    if spec["dtype"] == "float32":
        return check_finite(np.asarray(array, dtype=np.float32))
    high = spec.get("high")
    if array.size and array.min() < 0:
        raise ValueError(f"value out of range: input {spec['name']!r} holds "
                         f"{int(array.min())}; negative ids do not exist")
    if high is not None and array.size and array.max() >= high:
        raise ValueError(f"value out of range: input {spec['name']!r} holds "
                         f"{int(array.max())}, it takes 0..{high - 1}")
    return np.asarray(array, dtype=np.int32)


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


def _check_shape(shape, spec):
    if any(size < 0 for size in shape):
        raise ValueError(f"wrong shape: negative size in {tuple(shape)}")
    got = "(" + ", ".join(str(d) for d in shape) + ")"
    if len(shape) != len(spec["shape"]) + 1:
        raise ValueError(f"wrong shape: input {spec['name']!r} got {got}, expected "
                         f"{_expected(spec)}")
    for axis, (size, largest) in enumerate(zip(shape[1:], spec["shape"])):  # noqa: B905
        if axis not in spec["dynamic"]:
            if size != largest:
                raise ValueError(f"wrong shape: got {got}, expected {_expected(spec)}")
        elif size == 0:
            raise ValueError(f"empty input: {spec['name']!r} has length 0 ({got}); at least "
                             "one token is required")
        elif size > largest:
            raise ValueError(f"too long: input {spec['name']!r} has length {size} > the "
                             f"model's {largest} ({got})")


def _check_rows(count, signature):
    if count == 0:
        raise ValueError("empty input: at least one row is required")
    if count > signature["max_rows"]:
        raise ValueError(f"too many rows: {count} > max_rows {signature['max_rows']}")


def _to_batch(value, spec, signature):
    if not isinstance(value, list):
        raise ValueError(f"input must be a list of rows of shape {_expected(spec)}, "
                         f"got {_kind(value)}")
    _check_rows(len(value), signature)  # before numpy: an oversized list is refused cheaply
    array = _numbers(value, f"rows: every row of {spec['name']!r} must have one shape "
                            f"({_expected(spec)[4:]}")
    _check_shape(array.shape, spec)
    return _convert(array, spec)


def _check_numbers(value, depth=0):
    """Reject strings, objects and nulls anywhere in the nested lists."""
    if depth > 8:
        raise ValueError("input nested too deeply")
    for item in value:
        if isinstance(item, list):
            _check_numbers(item, depth + 1)
        elif item is None or isinstance(item, bool) or not isinstance(item, (int, float)):
            raise ValueError(f"wrong dtype: expected numbers, got {_kind(item)}")


def _kind(item):
    names = {dict: "an object", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(item), type(item).__name__)
