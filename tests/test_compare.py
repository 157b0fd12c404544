"""`deploybench compare` on hand-made results: what is matched, how a change is judged, the
gates' grammar and the exit codes (real runs are compared in tests/test_loadtest.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from deploybench.compare import compare, figures, parse_gates
from deploybench.errors import UsageError
from deploybench.records import SCHEMA
from tests.conftest import invoke


def step(level: float, p99: float, interval: tuple[float, float], rps: float,
         thirds: list[float], **fields: Any) -> dict[str, Any]:
    return {"kind": "load", "target": "torchserve", "target_label": "TorchServe",
            "protocol": "npy", "protocol_label": ".npy", "model": "digits-mlp",
            "scenario": "sweep", "level": level, "level_unit": "users",
            "endpoint": "http://127.0.0.1:8080", "batch_size": 1, "users": int(level),
            "warmup_s": 1, "locust_files": {}, "status": "ok", "requests": 1000,
            "failures": 0, "wrong_answers": 0, "throughput_rps": rps,
            "latency_ms": {"p50": p99 / 3, "p90": p99 / 2, "p95": p99 / 1.5, "p99": p99,
                           "p99_9": p99 * 1.2},
            "latency_ci95_ms": {"p50": [p99 / 3.3, p99 / 2.7], "p90": [p99 / 2.2, p99 / 1.8],
                                "p99": list(interval)},
            "stability": {"stable": True, "window_rps": thirds,
                          "window_mean_ms": [1.0, 1.0, 1.0]}} | fields


def export(fmt: str, size: int, accuracy: float) -> dict[str, Any]:
    return {"kind": "export", "model": "digits-mlp", "tolerance": 1e-4, "format": fmt,
            "path": f"digits-mlp/{fmt}", "status": "ok", "quantized": fmt.endswith("int8"),
            "bytes": size, "accuracy": accuracy}


def edge(repeat: int, p50: float, interval: tuple[float, float]) -> dict[str, Any]:
    return {"kind": "edge", "model": "digits-mlp", "variant": "tflite-fp32", "runtime": "litert",
            "threads": 1, "xnnpack": True, "batch": 1, "status": "ok", "repeat": repeat,
            "latency_ms": {"p50": p50, "p90": p50 * 1.2, "p95": p50 * 1.3, "p99": p50 * 1.5,
                           "p99_9": p50 * 2},
            "latency_ci95_ms": {"p50": list(interval), "p99": [p50 * 1.4, p50 * 1.6]},
            "accuracy": 0.95}


def results(measurements: list[dict[str, Any]], **environment: Any) -> dict[str, Any]:
    return {"schema": SCHEMA, "created": "2026-12-06T00:00:00+00:00", "partial": False,
            "notes": [], "measurements": measurements,
            "environment": {"versions": {"torch": "2.13.0"}, "cpu_count": 2, "mode": "native",
                            "stage_seconds": {"load": 10.0}} | environment}


BASE = results([step(2, 10.0, (9.0, 11.0), 500.0, [490, 500, 510]),
                step(4, 20.0, (18.0, 22.0), 700.0, [690, 700, 710]),
                export("tflite-fp32", 400_000, 0.95), export("tflite-int8", 110_000, 0.94),
                edge(1, 0.10, (0.09, 0.11)), edge(2, 0.12, (0.11, 0.13))])
GATES = parse_gates("p99:+10%,throughput:-5%,accuracy:-1pt")


def test_every_figure_is_matched_by_what_was_measured_and_repeats_are_taken_together():
    found = figures(BASE)
    p99 = found[("load", "digits-mlp", "torchserve", "npy", "sweep", 2, "users", None, "p99")]
    assert (p99.value, p99.interval) == (10.0, (9.0, 11.0))
    rate = found[("load", "digits-mlp", "torchserve", "npy", "sweep", 2, "users", None,
                  "throughput")]
    assert (rate.value, rate.interval) == (500.0, (490, 510))  # the window's thirds
    # an open-loop step: its p99 is the server's, its rate the generator's offer
    open_loop = figures(results([step(100, 8.0, (7.0, 9.0), 104.0, [99, 104, 108],
                                      scenario="rate", level_unit="rps")]))
    assert {key[-1] for key in open_loop} == {"p50", "p90", "p99"}
    size = found[("export", "digits-mlp", "tflite-int8", "size")]
    assert size.exact and size.value == 110_000
    # two fresh processes: their median, and an interval over both
    p50 = found[("edge", "digits-mlp", "tflite-fp32", "litert", 1, True, "p50")]
    assert p50.value == pytest.approx(0.11) and p50.interval == (0.09, 0.13)


def test_the_same_figures_are_no_regression():
    comparison = compare(BASE, copy.deepcopy(BASE), GATES, "a", "b")
    assert comparison.exit_error() is None
    assert not comparison.only_base and not comparison.only_new
    assert comparison.environment == []
    assert {c.decision for c in comparison.changes if c.gate} == {"pass"}


def test_a_slower_step_whose_interval_clears_the_base_is_a_named_regression():
    new = copy.deepcopy(BASE)
    new["measurements"][0] = step(2, 14.0, (13.0, 15.0), 480.0, [470, 480, 490])
    comparison = compare(BASE, new, GATES, "a", "b")
    (regression,) = comparison.decided("regression")
    assert regression.metric == "p99" and regression.relative == pytest.approx(0.4)
    assert "TorchServe .npy sweep 2 users" in regression.label
    assert regression.why == "95% intervals do not overlap"
    error = comparison.exit_error()
    assert error.exit_code == 5 and "p99:+10%" in str(error)
    # throughput fell 4%: within its gate
    (rate,) = [c for c in comparison.changes
               if c.metric == "throughput" and "sweep 2 users" in c.label]
    assert rate.decision == "pass"


def test_a_change_beyond_the_gate_within_overlapping_intervals_is_inconclusive():
    new = copy.deepcopy(BASE)
    new["measurements"][0] = step(2, 11.5, (9.5, 14.0), 500.0, [490, 500, 510])
    comparison = compare(BASE, new, GATES, "a", "b")
    assert comparison.decided("regression") == []
    (unsure,) = comparison.decided("inconclusive")
    assert unsure.metric == "p99" and unsure.why == "95% intervals overlap"
    assert comparison.exit_error().exit_code == 6


def test_an_exact_figure_that_changed_is_a_regression_and_one_run_only_figures_are_listed():
    new = copy.deepcopy(BASE)
    new["measurements"][3] = export("tflite-int8", 110_000, 0.90)  # 4 points down
    del new["measurements"][1]
    new["environment"]["versions"] = {"torch": "2.14.0"}
    comparison = compare(BASE, new, GATES, "a", "b")
    (regression,) = comparison.decided("regression")
    assert (regression.metric, regression.why) == ("accuracy", "exact figure (same inputs)")
    assert any("sweep 4 users" in label for label in comparison.only_base)
    assert comparison.environment == [{"key": "versions.torch", "base": "2.13.0",
                                       "new": "2.14.0"}]  # stage times are not compared


@pytest.mark.parametrize(("text", "said"), [
    ("p99:-10%", "a lower p99 is no regression; write p99:+10%"),
    ("throughput:+5%", "a higher throughput is no regression; write throughput:-5%"),
    ("accuracy:-1%", "accuracy changes in points (pt)"),
    ("latency:+5%", "METRIC one of p50, p90, p99, throughput, accuracy, size"),
    ("p99<=10ms", "cannot read 'p99<=10ms'"),
])
def test_a_gate_that_cannot_mean_a_regression_is_refused(text: str, said: str):
    with pytest.raises(UsageError, match="--fail-on") as info:
        parse_gates(text)
    assert said in str(info.value)


def write_run(folder: Path, data: dict[str, Any]) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(data))
    return folder


def test_the_command_writes_both_reports_and_junit_and_exits_by_the_gates(tmp_path: Path):
    base = write_run(tmp_path / "base", BASE)
    slower = copy.deepcopy(BASE)
    slower["measurements"][0] = step(2, 14.0, (13.0, 15.0), 500.0, [490, 500, 510])
    new = write_run(tmp_path / "new", slower)
    junit = tmp_path / "compare.xml"
    result = invoke("compare", str(base), str(new), "--junit", str(junit))
    assert result.exit_code == 5, result.output
    assert "regression: load digits-mlp TorchServe .npy sweep 2 users p99 10 -> 14" in (
        result.output)
    markdown = (new / "compare.md").read_text()
    assert "**1 regression(s)** beyond the gates" in markdown
    assert "| load digits-mlp TorchServe .npy sweep 2 users | p99 | 10 | [9, 11] | 14 | " \
           "[13, 15] | +40.0% | yes | p99:+10% | regression |" in markdown
    assert "regression" in (new / "compare.html").read_text()
    assert json.loads((new / "compare.json").read_text())["changes"]
    xml = junit.read_text()
    assert xml.count("<testcase") == sum(1 for c in json.loads(
        (new / "compare.json").read_text())["changes"] if c["gate"])
    assert xml.count("<failure") == 1
    # a looser gate: the same change passes
    out = tmp_path / "loose"
    result = invoke("compare", str(base), str(new), "--fail-on", "p99:+50%", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "compare.html").is_file()


def test_a_folder_without_results_or_a_broken_file_is_one_line_and_exit_2(tmp_path: Path):
    base = write_run(tmp_path / "base", BASE)
    result = invoke("compare", str(base), str(tmp_path / "nothing"))
    assert result.exit_code == 2 and "no results.json" in result.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.json").write_text('{"schema": "deploybench.results/3", "measur')
    result = invoke("compare", str(base), str(broken))
    assert result.exit_code == 2 and "not valid JSON" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (broken / "compare.md").exists()


def test_the_comparison_page_opens_offline_in_chromium_with_the_regression_first(
        tmp_path: Path, test_artifacts: Path):
    from tests.browser import chromium_page

    base = write_run(tmp_path / "base", BASE)
    slower = copy.deepcopy(BASE)
    slower["measurements"][0] = step(2, 14.0, (13.0, 15.0), 500.0, [490, 500, 510])
    new = write_run(tmp_path / "new", slower)
    assert invoke("compare", str(base), str(new)).exit_code == 5
    errors: list[str] = []
    fetched: list[str] = []
    page_uri = (new / "compare.html").as_uri()
    with chromium_page() as page:
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda r: fetched.append(r.url))
        page.goto(page_uri)
        first = page.locator(".answer").inner_text()
        flagged = page.locator("tr.regression").all_inner_texts()
        page.screenshot(path=str(test_artifacts / "compare.png"), full_page=True)
    assert errors == [] and fetched == [page_uri]
    assert first.startswith("1 regression(s) beyond the gates")
    (row,) = flagged
    assert "load digits-mlp TorchServe .npy sweep 2 users" in row and "+40.0%" in row
