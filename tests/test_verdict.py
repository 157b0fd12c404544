"""The answer lines, from hand-made results: every figure they quote is one of the records'."""

from __future__ import annotations

from typing import Any

from deploybench.verdict import same_server_lines


def step(target: str, framework: str, rps: float, p99: float, cpu: float) -> dict[str, Any]:
    return {"kind": "load", "model": "digits-cnn", "target": target,
            "target_label": f"KServe-{framework}", "framework": framework.lower(),
            "software": "KServe", "protocol": "v2-binary", "protocol_label": "V2 binary",
            "scenario": "rate", "level": rps, "level_unit": "rps", "requests": 1000,
            "failures": 0, "wrong_answers": 0, "throughput_rps": rps, "passed": True,
            "latency_ms": {"p50": p99 / 3, "p99": p99}, "server_cpu_s_per_1k": cpu}


def server(target: str, framework: str, status: str, reason: str = "") -> dict[str, Any]:
    return {"kind": "server", "target": target, "target_label": target, "status": status,
            "framework": framework, "reason": reason}


def test_same_server_two_frameworks_quotes_both_rows_and_their_ratio():
    results = {"measurements": [
        step("kserve-pytorch", "PyTorch", 400.0, 20.0, 1.5),
        step("kserve-pytorch", "PyTorch", 800.0, 150.0, 1.4),  # over the bound: not the best
        step("kserve-tensorflow", "TensorFlow", 250.0, 30.0, 2.5),
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
