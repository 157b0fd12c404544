"""Where the time goes, from the servers' own metrics (loadtest/server_metrics.py).

TF Serving cannot run here, so its scrape is checked against two recorded pages in its
exposition format (tests/data/tfserving-metrics-*.txt: the lines tensorflow_serving/util/
prometheus_exporter.cc writes for the metrics util.cc and batching_session.cc declare, bucket
limits printed with six significant digits as absl::StrCat does), whose difference is known:
1,000 digits-mlp requests, half in the request-latency bucket (1102, 1983.59] us and half in
(1983.59, 3570.47] us, summing to 2.2 s; every model run in (612.22, 1102] us, summing to 0.8 s;
every queue wait under 100 us, summing to 50 ms; 400 batches of 1 row and 150 of 3-4 rows.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from deploybench.loadtest import server_metrics
from deploybench.serving import targets

DATA = Path(__file__).with_name("data")


def pages(target: str = "tfserving") -> dict:
    return {"url": f"http://127.0.0.1:8501/{target}",
            "before": {"text": (DATA / "tfserving-metrics-before.txt").read_text()},
            "after": {"text": (DATA / "tfserving-metrics-after.txt").read_text()}}


def test_tfserving_page_yields_the_step_figures() -> None:
    figures = server_metrics.step_figures(targets.get("tfserving").time_metrics, pages(),
                                          "digits-mlp", client_mean_ms=3.0)
    assert figures["available"] and figures["missing"] == []
    request = figures["request_ms"]
    assert request["count"] == 1000 and request["source"] == "histogram"
    assert request["mean"] == pytest.approx(2.2)
    # the median request lies at the top of the first half's bucket; the p99 98% into the next
    assert request["p50"] == pytest.approx(1.98359, abs=1e-4)
    assert request["p50_bucket"] == pytest.approx([1.102, 1.98359], abs=1e-4)
    assert request["p99"] == pytest.approx(1.98359 + (3.57047 - 1.98359) * 0.98, abs=1e-4)
    assert request["p99_bucket"] == pytest.approx([1.98359, 3.57047], abs=1e-4)
    model = figures["model_ms"]
    assert model["mean"] == pytest.approx(0.8)
    assert model["p50"] == pytest.approx((0.61222 + 1.102) / 2, abs=1e-4)
    queue = figures["queue_ms"]
    assert queue["mean"] == pytest.approx(0.05) and queue["p50_bucket"] == [0.0, 0.1]
    # TF Serving counts rows per batch
    assert figures["batch_sizes"] == {"<=1": 400, "<=4": 150}
    assert figures["batch_counts"] == "rows"
    split = figures["breakdown_ms"]
    assert split["outside_server"] == pytest.approx(0.8)
    assert split["server_other"] == pytest.approx(2.2 - 0.8 - 0.05)
    assert split["server_whole"] == "published"


def test_another_models_requests_are_not_counted() -> None:
    figures = server_metrics.step_figures(targets.get("tfserving").time_metrics, pages(),
                                          "digits-cnn", client_mean_ms=3.0)
    # digits-cnn had no request in the window; the batching figures carry no model label
    assert figures["request_ms"]["count"] == 0 and figures["request_ms"]["mean"] is None
    assert "model time: :tensorflow:serving:runtime_latency not on the page for model " \
           "digits-cnn" in figures["missing"]


def test_histogram_quantile_follows_prometheus() -> None:
    buckets = {0.1: 10.0, 0.2: 30.0, 0.4: 40.0, math.inf: 40.0}
    assert server_metrics.quantile(0.5, buckets) == pytest.approx((0.15, 0.1, 0.2))
    assert server_metrics.quantile(0.375, buckets) == pytest.approx((0.125, 0.1, 0.2))
    assert server_metrics.quantile(0.25, buckets) == pytest.approx((0.1, 0.0, 0.1))
    # past the last finite bound: the bound itself, the bucket open-ended
    assert server_metrics.quantile(0.99, {1.0: 5.0, math.inf: 10.0}) == (1.0, 1.0, math.inf)
    assert server_metrics.quantile(0.5, {math.inf: 0.0}) is None


def test_a_server_without_a_whole_request_figure_names_it() -> None:
    kserve = targets.get("kserve-tensorflow").time_metrics
    page = ("# TYPE request_predict_seconds histogram\n"
            'request_predict_seconds_bucket{model_name="m",le="0.005"} %d\n'
            'request_predict_seconds_bucket{model_name="m",le="+Inf"} %d\n'
            'request_predict_seconds_sum{model_name="m"} %s\n'
            'request_predict_seconds_count{model_name="m"} %d\n')
    figures = server_metrics.step_figures(kserve, {
        "url": "u", "before": {"text": page % (0, 0, "0", 0)},
        "after": {"text": page % (100, 100, "0.3", 100)}}, "m", client_mean_ms=5.0)
    assert figures["model_ms"]["mean"] == pytest.approx(3.0)
    assert figures["model_ms"]["p50_bucket"] == [0.0, 5.0]  # prometheus_client's 5 ms bucket
    assert "request time: not published by this server" in figures["missing"]
    assert "queue time: not published by this server" in figures["missing"]
    split = figures["breakdown_ms"]
    assert split["server_whole"] == "sum of the parts"
    assert split["outside_server"] == pytest.approx(2.0) and split["server_other"] is None


@pytest.mark.parametrize(("before", "after", "named"), [
    ({"error": "ConnectionError: refused"}, {"error": "ConnectionError: refused"},
     "the metrics page before the step: ConnectionError: refused"),
    ({"text": "<html>not metrics</html>"}, {"text": "{not: prometheus}"},
     "the metrics page before the step: not a Prometheus metrics page"),
])
def test_a_page_that_cannot_be_read_is_named(before: dict, after: dict, named: str) -> None:
    figures = server_metrics.step_figures(targets.get("tfserving").time_metrics,
                                          {"url": "u", "before": before, "after": after},
                                          "digits-mlp", client_mean_ms=3.0)
    assert figures["available"] is False
    assert any(line.startswith(named) for line in figures["missing"]), figures["missing"]
    assert "breakdown_ms" not in figures


# --- against real TorchServe ----------------------------------------------------------------------

# TorchServe's model time against the same TorchScript alone in a loop (the in-process
# ceiling). digits-mlp's forward pass takes 0.03 ms hot in a loop, 0.3 ms in the same process
# after a 3 ms idle gap, and 1-2 ms in TorchServe's worker between requests (its caches cold
# after the frontend and the load generator ran), measured on these machines: a model this
# small is held to "no faster than alone, at most 100x"; a 21 ms mobilenet-v2 agrees within
# about 1.2x (README, "Where the time goes").
MODEL_TIME_FACTOR = 100.0


@pytest.fixture(scope="module")
def torchserve(export_root: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from tests.servers import native_torchserve

    with native_torchserve(export_root, ["digits-mlp"], tmp_path_factory.mktemp("sm-state"),
                           tmp_path_factory.mktemp("sm-serve")) as deployment:
        yield deployment


def load_step(out: Path) -> dict:
    import json

    from tests.conftest import invoke

    result = invoke("load", "--no-calibrate", "--target", "torchserve", "--protocol", "rest",
                    "--model", "digits-mlp", "--users", "2", "--step-seconds", "3",
                    "--warmup-seconds", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    (step,) = json.loads((out / "results.json").read_text())["measurements"]
    assert step["status"] == "ok" and step["failures"] == 0
    return step


@pytest.mark.slow
def test_a_torchserve_step_yields_the_breakdown(torchserve, export_root: Path,
                                                tmp_path: Path) -> None:
    import os

    from deploybench.jobs.bench import BenchOptions, measure_ceiling

    step = load_step(tmp_path / "run")
    figures = step["server_metrics"]
    assert figures["available"], figures["missing"]
    assert figures["url"] == torchserve.endpoints["torchserve_metrics"] + "/metrics"
    assert figures["missing"] == []
    request, queue, model = (figures[f"{part}_ms"] for part in ("request", "queue", "model"))
    # the server counted the window's requests, give or take those in flight at its edges (2
    # users, each edge) and those completed while each edge's metrics page was being fetched
    # (about 10 ms each on a quiet machine, up to ~50 ms beside a busy test worker: a few
    # requests at this rate; TorchServe reads the handler's counters from the worker's log
    # lines, a little later)
    slack = 4 + math.ceil(step["throughput_rps"] * 0.05)
    assert abs(request["count"] - step["requests"]) <= slack, (request["count"], slack)
    assert abs(model["count"] - request["count"]) <= 4
    # TorchServe publishes counters: means only, stated as such
    assert request["source"] == "counter (mean only)" and "p99" not in request
    client = step["latency_ms"]["mean"]
    assert 0 < queue["mean"] + model["mean"] <= request["mean"] <= client
    split = figures["breakdown_ms"]
    assert split["client"] == client and split["outside_server"] > 0
    assert split["server_other"] >= 0
    # no batching by default: every batch one request
    assert figures["batch_counts"] == "requests"
    (size, batches), = figures["batch_sizes"].items()
    assert size == "1" and abs(batches - model["count"]) <= 4
    # the model time is the forward pass: no faster than the framework alone, within a factor
    cpus = f"0-{min(os.cpu_count() or 1, 2) - 1}"
    alone = measure_ceiling(BenchOptions(model="digits-mlp", artifacts=export_root,
                                         out=tmp_path, server_cpus=cpus, ceiling_seconds=2),
                            "torch", 1)["batch_latency_ms"]
    assert alone * 0.5 <= model["mean"] <= alone * MODEL_TIME_FACTOR, (model["mean"], alone)


@pytest.mark.slow
def test_a_metrics_page_that_is_down_or_garbage_leaves_the_load_figures(
        torchserve, tmp_path: Path) -> None:
    """The metrics endpoint answers garbage, then not at all: the step is measured as ever and
    its record names what is missing."""
    import http.server
    import threading

    class Garbage(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            body = b"<html>this is not a metrics page</html>\n{{{"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    garbage_url = f"http://127.0.0.1:{server.server_address[1]}"
    endpoints = dict(torchserve.endpoints)
    try:
        for url, named in ((garbage_url, "not a Prometheus metrics page"),
                           ("http://127.0.0.1:9", "ConnectionError")):
            torchserve.endpoints["torchserve_metrics"] = url
            torchserve.save()
            step = load_step(tmp_path / url.rsplit(":", 1)[1])
            assert step["requests"] > 0 and step["latency_ms"]["p99"] > 0
            figures = step["server_metrics"]
            assert figures["available"] is False and "breakdown_ms" not in figures
            assert any(named in line for line in figures["missing"]), figures["missing"]
    finally:
        torchserve.endpoints.clear()
        torchserve.endpoints.update(endpoints)
        torchserve.save()
        server.shutdown()
        server.server_close()
