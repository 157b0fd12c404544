"""The answer lines, from hand-made results: every figure they quote is one of the records'."""

from __future__ import annotations

from typing import Any

from deploybench.verdict import same_server_lines, server_lines


def step(target: str, framework: str, rps: float, p99: float, cpu: float,
         **fields: Any) -> dict[str, Any]:
    return {"kind": "load", "model": "digits-cnn", "target": target,
            "target_label": f"KServe-{framework}", "framework": framework.lower(),
            "software": "KServe", "protocol": "v2-binary", "protocol_label": "V2 binary",
            "scenario": "rate", "level": rps, "level_unit": "rps", "requests": 1000,
            "failures": 0, "wrong_answers": 0, "throughput_rps": rps, "passed": p99 <= 100,
            "latency_ms": {"p50": p99 / 3, "p99": p99}, "server_cpu_s_per_1k": cpu,
            "duration_s": 10.0} | fields


def server(target: str, framework: str, status: str, reason: str = "") -> dict[str, Any]:
    return {"kind": "server", "target": target, "target_label": target, "status": status,
            "framework": framework, "reason": reason}


def test_same_server_two_frameworks_quotes_both_rows_and_their_ratio():
    results = {"measurements": [
        step("kserve-pytorch", "PyTorch", 400.0, 20.0, 1.5),
        step("kserve-pytorch", "PyTorch", 800.0, 150.0, 1.4),  # over the bound: not the best
        step("kserve-tensorflow", "TensorFlow", 250.0, 30.0, 2.5),
        step("kserve-tensorflow", "TensorFlow", 375.0, 120.0, 2.5),  # failed a rate PyTorch passed
        server("TF Serving", "tensorflow", "unavailable", "no binary"),
        server("kserve-tensorflow", "tensorflow", "up"),
    ]}
    (line,) = same_server_lines(results)
    assert line.startswith("Same server, two frameworks (digits-cnn, KServe V2 binary, p99 "
                           "under 100 ms): PyTorch 400 req/s, 1.50 CPU-s per 1k requests; "
                           "TensorFlow 250 req/s, 2.50 CPU-s per 1k requests (1.6x)")
    assert "TF Serving could not run here" in line


def test_one_framework_alone_is_no_comparison():
    results = {"measurements": [step("kserve-pytorch", "PyTorch", 400.0, 20.0, 1.5)]}
    assert same_server_lines(results) == []


def test_no_winner_is_named_within_the_rate_search_resolution():
    # TensorFlow failed only above what PyTorch passed: the two rates' brackets overlap
    results = {"measurements": [
        step("kserve-pytorch", "PyTorch", 400.0, 20.0, 1.5),
        step("kserve-pytorch", "PyTorch", 800.0, 150.0, 1.4),
        step("kserve-tensorflow", "TensorFlow", 380.0, 30.0, 2.5),
        step("kserve-tensorflow", "TensorFlow", 760.0, 140.0, 2.5)]}
    (line,) = same_server_lines(results)
    assert "PyTorch 400 req/s" in line and "TensorFlow 380 req/s" in line
    assert "(no significant difference: within the rate search's resolution)" in line
    (headline,) = server_lines(results)
    assert "sustains" not in headline
    assert headline.startswith("Server, p99 under 100 ms (digits-cnn): no significant "
                               "difference between KServe-PyTorch V2 binary (400 req/s), "
                               "KServe-TensorFlow V2 binary (380 req/s)")


def test_a_noisy_step_names_no_winner_however_large_the_margin():
    results = {"measurements": [
        step("kserve-pytorch", "PyTorch", 800.0, 20.0, 1.5, noisy=True,
             noise=["other processes took 97% of a core (over 50%)"]),
        step("kserve-tensorflow", "TensorFlow", 200.0, 30.0, 2.5),
        step("kserve-tensorflow", "TensorFlow", 400.0, 130.0, 2.5)]}
    (headline,) = server_lines(results)
    assert "sustains" not in headline and "no significant difference" in headline
    assert "a noisy step" in headline
    assert "800 req/s" in headline and "200 req/s" in headline  # both figures, no ratio
    assert "4x" not in headline


def test_a_side_that_failed_only_under_noise_is_no_loser():
    """One side passes clean; the other never stays under the bound, but only while other
    processes took the machine: its failure says nothing about the server, so no winner."""
    results = {"measurements": [
        step("kserve-tensorflow", "TensorFlow", 120.0, 24.0, 2.5),
        step("kserve-pytorch", "PyTorch", 100.0, 180.0, 1.5, noisy=True,
             noise=["other processes took 97% of a core (over 50%)"])]}
    (headline,) = server_lines(results)
    assert "sustains" not in headline and "no significant difference" in headline
    assert "for KServe-PyTorch V2 binary" in headline
    assert "120 req/s" in headline and "KServe-PyTorch V2 binary never stayed under it" in headline
    # the same failure measured clean does decide
    results["measurements"][1].update(noisy=False, noise=[])
    (headline,) = server_lines(results)
    assert "KServe-TensorFlow V2 binary sustains 120 req/s" in headline


def test_closed_loop_rates_differ_beyond_their_counting_noise():
    closed = {"scenario": "sweep", "level": 4, "level_unit": "users"}
    results = {"measurements": [
        step("kserve-pytorch", "PyTorch", 500.0, 20.0, 1.5, **closed),
        step("kserve-tensorflow", "TensorFlow", 250.0, 30.0, 2.5, **closed)]}
    (headline,) = server_lines(results)
    assert "KServe-PyTorch V2 binary sustains 500 req/s" in headline
    # 5,000 and 2,500 answers: 2x, and the ratio's range from both counting intervals
    assert "2x KServe-TensorFlow V2 binary (250 req/s; 95% interval 1.9x-2.1x)" in headline
    # 502 and 500 answers per second over 10 s: within each other's counting noise
    results["measurements"][1] |= {"throughput_rps": 498.0}
    (headline,) = server_lines(results)
    assert "within the counting noise" in headline and "sustains" not in headline


def test_two_rate_searches_bound_the_ratio_by_their_brackets():
    results = {"measurements": [
        step("kserve-pytorch", "PyTorch", 400.0, 20.0, 1.5),
        step("kserve-pytorch", "PyTorch", 800.0, 150.0, 1.4),
        step("kserve-tensorflow", "TensorFlow", 100.0, 30.0, 2.5),
        step("kserve-tensorflow", "TensorFlow", 200.0, 130.0, 2.5)]}
    (headline,) = server_lines(results)
    # PyTorch's capacity in [400, 800), TensorFlow's in [100, 200): 2x to 8x
    assert ("KServe-PyTorch V2 binary sustains 400 req/s (p99 20.0 ms, open-loop Poisson "
            "arrivals), 4x KServe-TensorFlow V2 binary (100 req/s; the rate searches allow "
            "2x-8x)") in headline


def test_a_one_framework_model_is_not_set_beside_the_other_frameworks_edge_path():
    from deploybench.verdict import edge_lines

    lite = {"kind": "edge", "model": "mine", "threads": 1, "runtime": "litert",
            "framework": "tensorflow", "variant": "tflite-fp32", "edge_ready": True,
            "size_bytes": 3300, "latency_ms": {"p50": 0.0014}, "accuracy": 0.5}
    export = {"kind": "export", "model": "mine", "format": "tflite-fp32",
              "model_frameworks": ["tensorflow"]}
    (line,) = edge_lines({"measurements": [export, lite]})
    assert line.startswith("Edge (mine, 1 thread), TensorFlow -> LiteRT: tflite-fp32")
    # a zoo twin without its ExecuTorch rows is still said to lack them
    twin = [dict(lite, model="digits-cnn")]
    assert any("ExecuTorch) was not measured" in text
               for text in edge_lines({"measurements": twin}))


def test_runtimes_of_one_framework_are_not_called_tensorflows_figure():
    results = {"measurements": [
        step("kserve-pytorch", "PyTorch", 400.0, 20.0, 1.5),
        step("kserve-onnxruntime", "ONNX Runtime", 300.0, 20.0, 1.5) | {"framework": "pytorch"},
        server("TF Serving", "tensorflow", "unavailable", "no binary")]}
    (line,) = same_server_lines(results)
    assert line.startswith("Same server, 2 runtimes (digits-cnn, KServe V2 binary")
    assert "TensorFlow's serving figure" not in line


def test_a_verdict_row_gives_its_best_steps_own_figures_and_the_whole_run_apart():
    """A rate search's overload probe (failures at 800 req/s) stays out of the figures beside
    the best rate (400 req/s, no failure); the whole run's sum is its own, labelled, column."""
    from deploybench.report import context, template_environment
    from deploybench.verdict import verdict_table

    results = {"measurements": [
        step("kserve-pytorch", "PyTorch", 200.0, 15.0, 1.6, requests=500,
             server_peak_rss_bytes=300 * 2**20),
        step("kserve-pytorch", "PyTorch", 400.0, 20.0, 1.5, requests=1000,
             server_peak_rss_bytes=400 * 2**20),
        step("kserve-pytorch", "PyTorch", 800.0, 150.0, 1.4, requests=1500, failures=60,
             server_peak_rss_bytes=900 * 2**20)]}
    (row,) = verdict_table(results)
    assert (row["best_rps"], row["best_p99_ms"], row["requests"]) == (400.0, 20.0, 1000)
    assert row["failure_rate"] == 0 and row["wrong_rate"] == 0
    assert row["cpu_s_per_1k"] == 1.5 and row["peak_rss_mb"] == 400
    assert row["run"] == {"steps": 3, "requests": 3000, "failure_rate": 0.02,
                          "wrong_rate": 0.0, "saturated": False}
    env = template_environment()
    markdown = env.get_template("report.md.j2").render(**context(results), images=[])
    html = env.get_template("report.html.j2").render(**context(results), charts={},
                                                     plotly_js="", chart_config={})
    assert "| digits-cnn | KServe-PyTorch V2 binary | 400 | 20 | 1,000 | 0 |" in markdown
    assert "| 3 | 3,000 | 0.02 | 0 |" in markdown
    assert "whole run: every step of this server and protocol" in html


def test_with_a_tuned_profile_the_answers_say_each_servers_configuration() -> None:
    from deploybench.verdict import answer_lines

    servers = [{"kind": "server", "target": "torchserve", "target_label": "TorchServe",
                "status": "up", "configuration": {"batching": True, "max_batch_size": 4}},
               {"kind": "server", "target": "kserve-pytorch", "target_label": "KServe-PyTorch",
                "status": "up", "configuration": {"intra_op_threads": 1}}]
    tuned = {"environment": {"profile": {"source": "runs/tune/profile.json"}},
             "measurements": servers}
    (line,) = [line for line in answer_lines(tuned) if line.startswith("Configurations")]
    assert "runs/tune/profile.json" in line
    assert "TorchServe: batching=on max_batch_size=4; KServe-PyTorch: intra_op_threads=1" in line
    untuned = {"environment": {}, "measurements": servers}
    assert not any(line.startswith("Configurations") for line in answer_lines(untuned))
