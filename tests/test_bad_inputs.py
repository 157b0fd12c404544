"""The bad-input matrix itself (serving/bad_inputs.py) and the shared validation behind every
decoder (serving/input_validation.py), without servers; and the load stage's count of answers
holding NaN or Infinity, against a real OIP endpoint that answers them. The matrix and the
fuzzer against every real server live beside each server's fixtures (test_kserve.py,
test_serving.py, test_fake_tfserving.py, test_docker.py)."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from deploybench.batch import Batch
from deploybench.loadtest.samples import NonFiniteAnswer, Samples, WrongAnswer
from deploybench.serving import bad_inputs, oip, payload, targets
from deploybench.serving import input_validation as validation
from deploybench.serving.bad_inputs import CASES, ENCODERS, Encoded, Skip
from deploybench.verdict import answer_lines
from tests.conftest import invoke
from tests.fuzz_bodies import STRATEGIES

SIGNATURE = {"input_name": "pixels", "input_shape": [8, 8, 1], "max_rows": 64}
MLP = {"input_name": "pixels", "input_shape": [64], "max_rows": 64}


def test_every_request_body_has_an_encoder_and_a_fuzz_strategy() -> None:
    """A protocol gets the matrix and the fuzzer by declaring its body."""
    assert set(ENCODERS) == set(payload.BODIES) == set(STRATEGIES)
    for target in targets.targets().values():
        for protocol in target.protocols:
            for case, _ in protocol.by_design:
                assert case in bad_inputs.CASE_NAMES, (target.name, case)


# a text model's: token ids and their mask, int32, up to 64 long
TEXT = {"inputs": [{"name": "input_ids", "shape": [64], "dtype": "int32", "dynamic": [0],
                    "high": 2000},
                   {"name": "attention_mask", "shape": [64], "dtype": "int32", "dynamic": [0],
                    "high": 2}],
        "max_rows": 32}
TEXT_CASES = {"id beyond the vocabulary", "negative id", "float ids",
              "longer than the model's maximum", "mask shorter than the ids"}


@pytest.mark.parametrize("signature", [SIGNATURE, TEXT], ids=["pixels", "text"])
@pytest.mark.parametrize("body", sorted(payload.BODIES))
def test_each_case_is_encoded_or_skipped_by_name(body: str, signature) -> None:
    for case in bad_inputs.cases_for(signature):
        encoded = bad_inputs.encode(case, body, signature, "m")
        if isinstance(encoded, Skip):
            assert len(encoded.reason) > 20, (body, case.name)
        else:
            assert isinstance(encoded, Encoded) and encoded.body, (body, case.name)


@pytest.mark.parametrize("signature", [MLP, TEXT], ids=["pixels", "text"])
def test_every_case_is_expressed_by_some_protocol_and_no_protocol_skips_most(signature) -> None:
    cases = bad_inputs.cases_for(signature)
    for case in cases:
        assert any(isinstance(bad_inputs.encode(case, body, signature, "m"), Encoded)
                   for body in payload.BODIES), case.name
    for body in payload.BODIES:
        skipped = [c.name for c in cases
                   if isinstance(bad_inputs.encode(c, body, signature, "m"), Skip)]
        assert len(skipped) <= 6, (body, skipped)


def test_the_cases_are_the_model_s_own() -> None:
    """No NaN in token ids, no vocabulary for pixels: each model gets the defects its inputs
    can have, every other case alike."""
    pixels = {c.name for c in bad_inputs.cases_for(MLP)}
    text = {c.name for c in bad_inputs.cases_for(TEXT)}
    assert not pixels & TEXT_CASES and TEXT_CASES <= text
    assert {"non-finite value", "value beyond float32"} <= pixels - text
    assert pixels - {"non-finite value", "value beyond float32"} <= text


def test_a_text_case_completes_the_request_with_a_good_mask() -> None:
    """The case is about the ids; the mask beside them is good and as long, so the defect
    is the only one."""
    (case,) = [c for c in CASES if c.name == "id beyond the vocabulary"]
    encoded = bad_inputs.encode(case, "json", TEXT, "m")
    body = json.loads(encoded.body)["inputs"]
    assert body["input_ids"] == [[2000] + [1] * 7] and body["attention_mask"] == [[1] * 8]
    with pytest.raises(ValueError, match="out of range.*2000.*0..1999"):
        validation.decode_predict_body(json.loads(encoded.body), TEXT)


def test_valid_text_requests_decode_alike_in_every_form() -> None:
    ids = np.array([[2, 57, 3, 0], [2, 9, 11, 3]], dtype=np.int32)
    mask = (ids > 0).astype(np.int32)
    mask[1] = 1
    batch = Batch({"input_ids": ids, "attention_mask": mask})
    by_rows, _ = validation.decode_predict_body(json.loads(payload.encode(batch)), TEXT)
    by_columns, _ = validation.decode_predict_body(
        json.loads(payload.encode(batch, payload.COLUMNAR_FORM)), TEXT)
    by_npz = validation.decode_npz_body(payload.encode_npy(batch), TEXT)
    for decoded in (by_rows, by_columns, by_npz):
        assert list(decoded) == ["input_ids", "attention_mask"]
        assert decoded["input_ids"].dtype == np.int32
        assert np.array_equal(decoded["input_ids"], ids)
        assert np.array_equal(decoded["attention_mask"], mask)
    assert payload.binary_content_type(payload.encode_npy(batch)) == payload.NPZ_CONTENT_TYPE
    merged = validation.concatenate([by_rows, {"input_ids": ids[:1, :2],
                                               "attention_mask": mask[:1, :2]}], TEXT)
    assert merged["input_ids"].shape == (3, 4)
    assert merged["attention_mask"][2].tolist() == [1, 1, 0, 0]  # padded, masked out


def test_the_json_bodies_carry_a_value_beyond_float32_as_a_number() -> None:
    """The issue's case: 1e39, a finite JSON number that overflows float32."""
    (case,) = [c for c in CASES if c.name == "value beyond float32"]
    for body in ("json", "oip-json"):
        encoded = bad_inputs.encode(case, body, MLP, "m")
        assert isinstance(encoded, Encoded)
        assert b"1e+39" in encoded.body, encoded.body[:200]


def test_npy_files_are_numpy_s_own_and_their_defects_are_the_header_s() -> None:
    array = np.arange(128, dtype=np.float32).reshape(2, 64)
    assert np.array_equal(np.load(io.BytesIO(bad_inputs.npy_file(array))), array)
    with pytest.raises(ValueError):
        np.load(io.BytesIO(bad_inputs.npy_file(array, shape=(3, 64))))
    refused = {
        "huge": (bad_inputs.npy_file(array[:1], shape=(2**40, 64)), "too many rows"),
        "negative": (bad_inputs.npy_file(array[:1], shape=(-1, 64)), "negative"),
        "header beyond the body": (bad_inputs.npy_file(array, header_length=60_000),
                                   "malformed .npy"),
        "header cut short": (bad_inputs.npy_file(array, header_length=1), "malformed .npy"),
    }
    for name, (body, words) in refused.items():
        with pytest.raises(ValueError, match=words):
            validation.decode_npy_body(body, MLP)
        assert name


def test_the_binary_encoders_length_header_is_the_json_header_s() -> None:
    (good,) = [c for c in CASES if c.name == "wrong rank"]
    encoded = bad_inputs.encode(good, "oip-binary", MLP, "m")
    assert isinstance(encoded, Encoded)
    assert int(encoded.headers[oip.HEADER_LENGTH]) == oip.binary_header_length(encoded.body)


# --- the shared validation: values checked after conversion, in every decoder -------------------

@pytest.mark.parametrize(("data", "words"), [
    ([1e39] * 64, "float32 range"),
    ([0.5] * 63 + [-1e39], "float32 range"),
    ([10**40] + [0.5] * 63, "float32 range"),
    ([True] + [0.5] * 63, "wrong dtype"),
    (["0.5"] * 64, "wrong dtype"),
    ([None] * 64, "wrong dtype"),
    ([[0.5] * 64, [0.5]], "ragged"),
])
def test_open_inference_protocol_json_data_is_checked_as_float32(data, words) -> None:
    with pytest.raises(ValueError, match=words):
        validation.decode_tensor("pixels", [1, 64], "FP32", data, None, MLP)


@pytest.mark.parametrize(("rows", "words"), [
    ([[1e39] * 64], "float32 range"),
    ([[True] + [0.5] * 63], "wrong dtype"),
    ([["0.5"] * 64], "wrong dtype"),
    ([[False] * 64], "wrong dtype"),
])
def test_tf_serving_json_rows_are_checked_as_float32(rows, words) -> None:
    with pytest.raises(ValueError, match=words):
        validation.decode_predict_body({"instances": rows}, MLP)


def test_a_valid_request_decodes_to_the_same_float32_batch_in_every_form() -> None:
    rows = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    batch = Batch.single("pixels", rows)
    (by_json,) = validation.decode_predict_body(json.loads(payload.encode(batch)), MLP)[0].values()
    (by_npy,) = validation.decode_npy_body(payload.encode_npy(batch), MLP).values()
    by_data = validation.decode_tensor("pixels", [3, 64], "FP32", rows.ravel().tolist(), None,
                                       MLP)
    by_raw = validation.decode_tensor("pixels", [3, 64], "FP32", None, rows.tobytes(), MLP)
    for batch in (by_json, by_npy, by_data, by_raw):
        assert batch.dtype == np.float32 and np.array_equal(batch, rows)


def test_input_names_are_named_missing_unknown_or_extra() -> None:
    for names, words in (([], "missing input"), (["image"], "unknown input name"),
                         (["pixels", "image"], "extra input"), (["pixels", "pixels"],
                                                                "extra input")):
        with pytest.raises(ValueError, match=words):
            validation.check_input_names(names, MLP)
    validation.check_input_names(["pixels"], MLP)


def test_a_non_finite_output_is_refused_and_error_text_fits_a_status_line() -> None:
    with pytest.raises(ValueError, match="non-finite output.*row 1"):
        validation.check_outputs(np.array([[0.0, 1.0], [np.inf, 0.0]], np.float32))
    text = validation.error_text("unknown signature_name ['d\u00f9']\nsecond line" + "x" * 400)
    assert text.isascii() and "\n" not in text and len(text) <= 300
    assert "\\xf9" in text


# --- the load stage: answers holding NaN or Infinity are wrong, checked or not ------------------

def test_samples_count_a_non_finite_answer_as_wrong_with_or_without_a_reference() -> None:
    unchecked = Samples("m", 1, 0.0, "pixels", "logits", {}, None, count=1)
    with pytest.raises(NonFiniteAnswer, match="non-finite"):
        unchecked.check(0, np.array([[np.nan, 0.0]], np.float32))
    unchecked.check(0, np.array([[1.0, 0.0]], np.float32))
    checked = Samples("m", 1, 1e-4, "pixels", "logits", {}, [np.zeros((1, 2), np.float32)])
    with pytest.raises(NonFiniteAnswer):
        checked.check(0, np.array([[np.inf, 0.0]], np.float32))
    assert issubclass(NonFiniteAnswer, WrongAnswer)


class NaNServer:
    """A real Open Inference Protocol REST endpoint whose every answer is NaN logits: a server
    answering garbage with a 200, as KServe-PyTorch did for 1e39."""

    def __init__(self) -> None:
        metadata = {"name": "garbage", "inputs": [{"name": "pixels", "shape": [-1, 64],
                                                   "datatype": "FP32"}],
                    "outputs": [{"name": "logits", "shape": [-1, 10], "datatype": "FP32"}]}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, data: object) -> None:
                body = json.dumps(data, allow_nan=True).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                self._send({"ready": True} if self.path.endswith("/ready") else metadata)

            def do_POST(self) -> None:  # noqa: N802
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                rows = request["inputs"][0]["shape"][0]
                self._send({"model_name": "garbage", "outputs": [
                    {"name": "logits", "shape": [rows, 10], "datatype": "FP32",
                     "data": [float("nan")] * (rows * 10)}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> NaNServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def nan_server() -> Iterator[NaNServer]:
    with NaNServer() as server:
        yield server


def test_a_foreign_endpoint_answering_nan_has_every_answer_wrong_and_named(nan_server,
                                                                          tmp_path: Path):
    """`--no-check`: nothing to compare with, yet NaN logits are wrong answers, counted as
    such, and the report's answer lines name the server."""
    run = tmp_path / "run"
    result = invoke("load", "--no-calibrate", "--target", "oip", "--url", nan_server.url,
                    "--protocol", "v2-rest", "--model", "garbage", "--no-check",
                    "--artifacts", str(tmp_path / "none"), "--users", "1",
                    "--step-seconds", "1", "--warmup-seconds", "0.3", "--out", str(run))
    assert result.exit_code == 0, result.output
    results = json.loads((run / "results.json").read_text())
    (step,) = [m for m in results["measurements"] if m["kind"] == "load"]
    assert step["requests"] > 0 and step["answers_checked"] is False
    assert step["wrong_answers"] == step["nonfinite_answers"] == step["requests"]
    assert step["throughput_rps"] == 0
    (line,) = [line for line in answer_lines(results) if "NaN or Infinity" in line]
    assert "OIP endpoint V2 REST" in line and str(step["requests"]) in line
    report = invoke("report", str(run))
    assert report.exit_code == 0, report.output
    assert "NaN or Infinity" in (run / "report.md").read_text()
