"""The HTML report's charts from hand-made results: each point carries its exact figures and
interval (what a hover shows); the page draws them in Chromium in tests/test_pipeline.py."""

from __future__ import annotations

from deploybench.charts import charts
from tests.test_compare import BASE, edge, export, results, step


def test_servers_chart_one_series_per_server_and_scenario_with_intervals():
    rate = step(400, 30.0, (25.0, 36.0), 398.0, [390, 398, 405], scenario="rate",
                level_unit="rps")
    made = charts(results([*BASE["measurements"], rate]), 100.0)
    servers = made["servers"]
    names = [trace["name"] for trace in servers["data"]]
    assert names == ["digits-mlp · TorchServe .npy (rate)", "digits-mlp · TorchServe .npy (sweep)"]
    sweep = servers["data"][1]
    assert sweep["x"] == [500.0, 700.0] and sweep["y"] == [10.0, 20.0]
    assert sweep["error_y"]["array"] == [1.0, 2.0] and sweep["error_y"]["arrayminus"] == [1.0, 2.0]
    assert sweep["text"][0] == "2 users: 500 req/s, p99 10 ms [9, 11], 0 failed"
    assert servers["layout"]["shapes"][0]["y0"] == 100.0  # the bound
    assert servers["data"][0]["mode"] == "markers"  # probes out of order: no line


def test_edge_and_export_charts_carry_size_latency_and_parity_on_hover():
    made = charts(results([edge(1, 0.10, (0.09, 0.11)) | {"size_bytes": 409_600},
                           export("tflite-int8", 110_000, 0.94) | {"framework": "tensorflow",
                                                                  "max_abs_diff": 0.02}]), 100)
    assert set(made) == {"edge", "export"}  # nothing loaded: no servers or latency chart
    (point,) = made["edge"]["data"]
    assert point["name"] == "litert (edge)" and point["x"] == [400.0]
    assert point["text"][0].startswith("digits-mlp tflite-fp32 on litert: p50 0.1 ms "
                                       "[0.09, 0.11], 400 KiB, accuracy 0.95")
    (bars,) = made["export"]["data"]
    assert bars["text"] == ["digits-mlp tflite-int8: 107.4 KiB, ok; max abs diff 0.02, "
                            "accuracy 0.94"]
