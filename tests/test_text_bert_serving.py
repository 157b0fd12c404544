"""text-bert served for real (TorchServe natively with batching on, KServe for each framework and
runtime): golden answers through every protocol with two int32 inputs of real lengths, requests
of different lengths padded together in one server batch, the text model's bad inputs refused
by name, and a locust step replaying the test split's lengths with no wrong answer."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests

from deploybench.golden import Golden
from deploybench.manifest import FP32_TOLERANCE, load_manifest
from deploybench.serving import payload
from deploybench.serving.manager import Deployment, serve, stop
from deploybench.serving.targets import get, make_client
from tests.bad_input_checks import assert_fuzz, assert_matrix
from tests.conftest import invoke
from tests.servers import free_offset

MODEL = "text-bert"
SERVERS = ("torchserve", "kserve-tensorflow", "kserve-pytorch", "kserve-onnxruntime")
TEXT_CASES = ("id beyond the vocabulary", "negative id", "float ids",
              "longer than the model's maximum", "mask shorter than the ids")


@pytest.fixture(scope="module")
def offset() -> int:
    return free_offset()


@pytest.fixture(scope="module")
def deployment(bert_root: Path, tmp_path_factory: pytest.TempPathFactory,
               offset: int) -> Iterator[Deployment]:
    """Every server the kit runs natively, serving text-bert on loopback; TorchServe batching
    requests (up to 8, waiting up to 50 ms) so that requests of different lengths meet."""
    from deploybench.serving.targets import loopback_endpoints

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEPLOYBENCH_STATE_DIR", str(tmp_path_factory.mktemp("bert-state")))
        patch.setenv("BATCHING", "true")
        patch.setenv("BATCH_TIMEOUT_MS", "50")
        started = serve(bert_root, mode="native", models=[MODEL],
                        run_dir=tmp_path_factory.mktemp("bert-run"),
                        endpoints=loopback_endpoints(offset), servers=SERVERS,
                        log=lambda text: None)
        try:
            assert sorted(started.up()) == sorted(SERVERS), started.servers
            yield started
        finally:
            stop(started)


@pytest.fixture(scope="module")
def golden(bert_root: Path) -> Golden:
    return Golden.of(bert_root, load_manifest(bert_root, MODEL))


@pytest.mark.parametrize("target", SERVERS)
def test_every_protocol_answers_golden_rows_of_their_own_lengths(deployment, golden, target):
    lengths = golden.inputs.lengths
    shortest, longest = int(np.argmin(lengths)), int(np.argmax(lengths))
    for protocol in get(target).protocol_names:
        client = make_client(target, protocol, MODEL, deployment.endpoints_obj())
        try:
            for rows in ([shortest], [longest], list(range(8))):
                batch = golden.inputs.rows(np.array(rows))
                ok, why = payload.matches_reference(client.predict(batch),
                                                    golden.outputs[rows], FP32_TOLERANCE)
                assert ok, (protocol, rows, why)
        finally:
            client.close()


def test_torchserve_pads_requests_of_different_lengths_into_one_batch(deployment, golden):
    """Single-row requests of different lengths sent at once: TorchServe hands the handler
    several in one batch, which pads them to the longest; every answer is its own row's."""
    url = deployment.endpoints_obj().of("torchserve")["inference"]
    order = np.argsort(golden.inputs.lengths)
    picked = [int(i) for i in np.concatenate([order[:8], order[-8:]])]

    def ask(index: int) -> np.ndarray:
        body = payload.encode(golden.inputs.rows(slice(index, index + 1)))
        answer = requests.post(f"{url}/predictions/{MODEL}", data=body, timeout=60,
                               headers={"Content-Type": payload.JSON_CONTENT_TYPE})
        assert answer.status_code == 200, answer.text
        return payload.decode(answer.content)

    for _ in range(3):
        with ThreadPoolExecutor(len(picked)) as pool:
            answers = list(pool.map(ask, picked))
        for index, answer in zip(picked, answers, strict=True):
            ok, why = payload.matches_reference(answer, golden.outputs[index:index + 1],
                                                FP32_TOLERANCE)
            assert ok, (index, why)
    metrics = requests.get(deployment.endpoints_obj().metrics_url("torchserve"), timeout=10).text
    sizes = [int(size) for size in re.findall(r'DeploybenchBatches\S*\{[^}]*BatchSize="(\d+)"',
                                              metrics)]
    assert max(sizes) > 1, metrics[:2000]


@pytest.mark.parametrize("target", SERVERS)
def test_text_bad_inputs_and_fuzzed_bodies_are_refused_and_the_server_stays_up(deployment,
                                                                                 bert_root,
                                                                                 target):
    pids = [record.pid for record in deployment.processes]
    probes = assert_matrix(target, deployment.endpoints_obj(), bert_root, MODEL)
    for probe in probes:
        cases = {o.case: o for o in probe.outcomes}
        assert set(TEXT_CASES) <= set(cases), probe.protocol
        assert "non-finite value" not in cases  # token ids have no NaN
        for name in TEXT_CASES:
            assert cases[name].verdict in ("refused", "skipped"), (probe.protocol, name,
                                                                   cases[name])
        assert sum(cases[n].verdict == "refused" for n in TEXT_CASES) >= 4, probe.protocol
    # generated bodies drawn from the two-input signature: ids past the vocabulary, columns
    # under wrong names, .npz archives cut short; a refusal or an answer, never a 5xx or a drop
    assert_fuzz(target, deployment.endpoints_obj(), bert_root, MODEL)
    assert all(psutil.pid_exists(pid) for pid in pids)


def test_a_locust_step_replays_real_lengths_with_no_wrong_answer(deployment, bert_root, offset,
                                                                 tmp_path):
    run_dir = tmp_path / "load"
    result = invoke("load", "--no-calibrate", "--target", ",".join(SERVERS),
                    "--artifacts", str(bert_root), "--model", MODEL, "--users", "2",
                    "--step-seconds", "1.5", "--warmup-seconds", "0.5",
                    "--port-offset", str(offset), "--out", str(run_dir))
    assert result.exit_code == 0, result.output
    steps = [m for m in json.loads((run_dir / "results.json").read_text())["measurements"]
             if m["kind"] == "load"]
    assert {(m["target"], m["protocol"]) for m in steps} == {
        (t, p) for t in SERVERS for p in get(t).protocol_names}
    for step in steps:
        assert step["status"] == "ok" and step["requests"] > 0, step
        assert step["wrong_answers"] == 0 and step["failures"] == 0, step
        buckets = step["latency_by_length_ms"]  # the golden lengths, replayed
        assert len(buckets) >= 2 and sum(b["samples"] for b in buckets) == step["requests"]
