"""text-bert: the BERT twin the hub libraries build (transformers, keras-hub), its offline data
set, and its real export through every format, with two int32 inputs of any length."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from deploybench.batch import Batch
from deploybench.export.exporter import in_batches
from deploybench.export.formats import FORMATS
from deploybench.golden import Golden
from deploybench.manifest import FP32_TOLERANCE, load_manifest
from deploybench.zoo import get_spec
from deploybench.zoo import text_bert as tb
from tests.conftest import invoke

MODEL = "text-bert"
CHANCE = 0.25  # four classes, balanced
MARGIN = 0.40  # the trained reference beats chance by at least this (measured: 0.78 vs 0.25)


@pytest.fixture(scope="module")
def spec():  # noqa: ANN201
    return get_spec(MODEL)


@pytest.fixture(scope="module")
def manifest(bert_root):  # noqa: ANN001, ANN201
    return load_manifest(bert_root, MODEL)


@pytest.fixture(scope="module")
def golden(bert_root, manifest) -> Golden:  # noqa: ANN001
    return Golden.of(bert_root, manifest)


@pytest.fixture(scope="module")
def reference(bert_root, spec):  # noqa: ANN001, ANN201
    """The trained PyTorch reference, as export saved it."""
    module = spec.build_torch()
    module.load_state_dict(torch.load(bert_root / MODEL / "reference.pt"))
    return module.eval()


def reference_logits(module, batch: Batch) -> np.ndarray:  # noqa: ANN001
    with torch.inference_mode():
        return module(*[torch.from_numpy(np.ascontiguousarray(a))
                        for a in batch.arrays.values()]).numpy()


# --- the data set and the tokenizer ---------------------------------------------------------


def test_corpus_tokenizer_and_split_are_the_same_in_a_fresh_process(spec):
    """Same installed versions, same corpus (its sha256), same vocabulary, same split."""
    from deploybench.zoo import docstrings

    code = ("import hashlib, json\n"
            "from deploybench.zoo import text_bert as tb\n"
            "split = tb.data()\n"
            "print(json.dumps({'corpus': tb.data_provenance()['corpus_sha256'],\n"
            "  'vocab': hashlib.sha256('\\n'.join(tb.vocabulary()).encode()).hexdigest(),\n"
            "  'ids': hashlib.sha256(split.x_test.arrays['input_ids'].tobytes()).hexdigest()}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONHASHSEED": "7"})
    assert done.returncode == 0, done.stderr[-2000:]
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    import hashlib

    split = spec.data()
    assert fresh["corpus"] == tb.data_provenance()["corpus_sha256"]
    assert fresh["vocab"] == hashlib.sha256("\n".join(tb.vocabulary()).encode()).hexdigest()
    assert fresh["ids"] == hashlib.sha256(split.x_test.arrays["input_ids"].tobytes()).hexdigest()
    assert set(docstrings.CLASSES) == {"numpy", "pandas", "scikit-learn", "torch"}


def test_rows_are_token_ids_with_a_mask_as_long_as_their_text(spec):
    split = spec.data()
    batch = split.x_test
    assert batch.names == ["input_ids", "attention_mask"] and batch.variable
    ids, mask = batch.arrays["input_ids"], batch.arrays["attention_mask"]
    assert ids.dtype == mask.dtype == np.int32 and ids.shape[1] == 64
    assert np.array_equal(mask.sum(axis=1), batch.lengths)
    assert np.all(ids[:, 0] == tb.vocabulary().index("[CLS]"))
    assert ids.max() < len(tb.vocabulary()) == 2000
    assert np.all(ids[mask == 0] == 0)  # padding is [PAD]
    assert 6 <= batch.lengths.min() and batch.lengths.max() <= 64
    assert len(set(batch.lengths.tolist())) > 20  # real, varied lengths
    # a few rows, as a client sends them: as long as the longest of them
    few = batch.rows(slice(0, 3))
    assert few.arrays["input_ids"].shape == (3, int(batch.lengths[:3].max()))


def test_keras_hub_tokenizer_gives_the_kit_s_ids():
    import keras_hub

    texts = ["Compute the arithmetic mean along the specified axis.",
             "Return a DataFrame with duplicate rows removed."]
    ours = tb.tokenize(texts)
    theirs = keras_hub.models.BertTokenizer(vocabulary=tb.vocabulary(), lowercase=True)(texts)
    for row, text_ids in enumerate(theirs):
        length = int(ours.lengths[row])
        # the kit's rows carry [CLS] ... [SEP] around the same pieces
        assert ours.arrays["input_ids"][row, 1:length - 1].tolist() == list(
            np.asarray(text_ids))


# --- the export ------------------------------------------------------------------------------


def test_the_trained_reference_beats_chance(manifest):
    assert manifest.golden["reference_accuracy"] >= CHANCE + MARGIN
    data = manifest.data
    assert data["corpus_sha256"] and set(data["library_versions"]) == {
        "numpy", "pandas", "scikit-learn", "torch"}


def test_manifest_declares_two_int32_inputs_of_dynamic_length(manifest):
    ids, mask = manifest.inputs
    assert (ids.name, ids.dtype, ids.shape, ids.dynamic, ids.high) == (
        "input_ids", "int32", [None, 64], [0], 2000)
    assert (mask.name, mask.dtype, mask.high) == ("attention_mask", "int32", 2)
    signature = manifest.signature()
    assert [i["name"] for i in signature["inputs"]] == ["input_ids", "attention_mask"]


def test_twins_agree_on_padded_batches_with_masks(bert_root, spec, reference, golden):
    """The Keras twin (keras-hub, weights carried through a transformers folder) gives the
    reference's logits on batches whose rows are of different lengths, padded and masked."""
    keras_model = spec.build_keras()
    spec.copy_weights(reference, keras_model)
    batch = golden.inputs.rows(slice(0, 32))
    assert len(set(batch.lengths.tolist())) > 5
    expected = reference_logits(reference, batch)
    got = keras_model({n: a for n, a in batch.arrays.items()}, training=False)["logits"]
    got = np.asarray(got)
    assert np.max(np.abs(got - expected)) < FP32_TOLERANCE
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    # padding more changes nothing: the mask hides it
    wider = reference_logits(reference, batch.padded(64))
    assert np.max(np.abs(wider - expected)) < 1e-5


def test_hub_folders_round_trip_to_identical_logits(bert_root, manifest, spec, reference,
                                                    golden):
    batch = golden.inputs.rows(slice(0, 16))
    folder = bert_root / manifest.artifact("transformers").path
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()}
    loaded = spec.load_hub_torch(folder)
    assert np.array_equal(reference_logits(loaded, batch), reference_logits(reference, batch))
    keras_model = spec.build_keras()
    spec.copy_weights(reference, keras_model)
    preset = spec.load_hub_keras(bert_root / manifest.artifact("keras-hub").path)
    inputs = dict(batch.arrays)
    assert np.array_equal(np.asarray(preset(inputs, training=False)["logits"]),
                          np.asarray(keras_model(inputs, training=False)["logits"]))
    # transformers' own tokenizer reads the exported folder and gives the kit's ids
    from transformers import AutoTokenizer

    text = "Compute the arithmetic mean along the specified axis."
    ids = AutoTokenizer.from_pretrained(str(folder))(text)["input_ids"]
    assert ids == tb.tokenize([text]).arrays["input_ids"][0, :len(ids)].tolist()


def test_every_format_has_a_row_and_refused_ones_name_their_figure(manifest):
    rows = {a.format: a for a in manifest.artifacts}
    expected = {f.name for f in FORMATS if f.applies(get_spec(MODEL))}
    assert set(rows) == expected and {"transformers", "keras-hub"} <= expected
    for artifact in rows.values():
        if artifact.status == "parity-failed":
            assert ("max abs diff" in artifact.reason or "accuracy drop" in artifact.reason
                    or "top-1" in artifact.reason), artifact
            assert artifact.sha256 is None
        elif artifact.status == "failed":
            assert artifact.reason
    core = ("savedmodel", "tflite-fp32", "torchscript", "mar", "exported-program", "aoti",
            "onnx-torch", "onnx-keras")
    assert all(rows[f].status == "ok" for f in core), {f: rows[f].reason for f in core}


def _shapes(golden: Golden, rows: int) -> dict[str, Batch]:
    """Batches at both ends: one short row, one row padded to the full 64 tokens, max_rows
    rows as long as their longest, and max_rows rows at the full length."""
    order = np.argsort(golden.inputs.lengths, kind="stable")
    short, many = order[:1], order[-rows:]
    return {"1 short": golden.inputs.rows(short),
            "1 full": golden.inputs.rows(short).padded(64),
            "max_rows": golden.inputs.rows(many),
            "max_rows full": golden.inputs.rows(order[:rows]).padded(64)}


def test_every_artifact_runs_at_batch_1_and_max_rows_at_short_and_full_lengths(
        bert_root, manifest, spec, reference, golden):
    formats = {f.name: f for f in FORMATS}
    for artifact in manifest.artifacts:
        if artifact.status != "ok":
            continue
        runner = formats[artifact.format].run(spec, bert_root / artifact.path)
        for label, batch in _shapes(golden, manifest.max_rows).items():
            got = runner(batch)
            expected = reference_logits(reference, batch)
            assert got.shape == expected.shape and got.dtype == np.float32, (artifact.format,
                                                                              label)
            if artifact.quantized:
                agreement = np.mean(got.argmax(1) == expected.argmax(1))
                assert len(batch) == 1 or agreement >= 0.8, (artifact.format, label, agreement)
            else:
                diff = float(np.max(np.abs(got - expected)))
                assert diff <= FP32_TOLERANCE, (artifact.format, label, diff)
        # the gate's own figures again, on the first 64 golden rows as the gate batches them
        rows = golden.inputs.rows(slice(0, 2 * manifest.max_rows))
        outputs = in_batches(runner, rows, manifest.max_rows)
        reference_rows = golden.outputs[:len(rows)]
        if artifact.quantized:
            assert np.mean(outputs.argmax(1) == reference_rows.argmax(1)) >= 0.9, artifact.format
        else:
            assert float(np.max(np.abs(outputs - reference_rows))) <= FP32_TOLERANCE


def test_edge_runs_every_edge_artifact_on_real_lengths_and_reports_latency_by_length(
        bert_root, manifest, tmp_path):
    """One thread, one process each: every edge runtime takes the two int32 inputs, answers as
    the gate said, and gives p50/p99 per length bucket; the report shows them."""
    run = tmp_path / "edge"
    result = invoke("edge", "--artifacts", str(bert_root), "--model", MODEL, "--threads", "1",
                    "--runs", "60", "--warmup", "5", "--repeats", "1", "--no-baselines",
                    "--out", str(run))
    assert result.exit_code == 0, result.output
    rows = [m for m in json.loads((run / "results.json").read_text())["measurements"]
            if m["kind"] == "edge"]
    published = {a.format for a in manifest.artifacts if a.status == "ok"
                 and a.runtime in ("litert", "executorch", "onnxruntime")}
    measured = {r["variant"] for r in rows if r["status"] == "ok"}
    assert published <= measured, (published, measured)
    for row in rows:
        if row["status"] != "ok":
            assert row["variant"] not in published, row
            continue
        buckets = row["latency_by_length_ms"]
        assert buckets and sum(b["samples"] for b in buckets) == 60, row["variant"]
        assert all(1 <= b["low"] <= b["high"] <= 64 for b in buckets)
        assert all(b["p50"] <= b["p99"] for b in buckets)
    report = invoke("report", str(run))
    assert report.exit_code == 0, report.output
    assert "latency against sequence length" in (run / "report.md").read_text()
