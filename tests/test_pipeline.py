"""`deploybench run` end to end in native mode with short durations, and its report."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from deploybench.report import write_reports
from tests.browser import chromium_page
from tests.conftest import invoke
from tests.servers import free_offset

# what the report's framework-or-runtime lines need (both twins on LiteRT at fp32 and int8,
# ExecuTorch at both, ONNX Runtime for each twin); the other edge formats add only time here
EDGE_VARIANTS = ("tflite-fp32,tflite-int8,litert-torch-fp32,litert-torch-int8,executorch-fp32,"
                 "executorch-int8,onnx-keras,onnx-torch")


@pytest.fixture(scope="module")
def run_dir(export_root, tmp_path_factory):
    """One real run: reuses the session's export, serves natively, loads, measures the edge."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("DEPLOYBENCH_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    out = tmp_path_factory.mktemp("run")
    result = invoke(
        "run", "--artifacts", str(export_root), "--no-export", "--mode", "native",
        "--model", "digits-mlp", "--servers", "tfserving,torchserve,kserve-tensorflow",
        "--users", "2", "--step-seconds", "1.5",
        "--warmup-seconds", "0.5", "--rate-bound-ms", "100", "--edge-runs", "50",
        "--edge-threads", "1", "--edge-repeats", "2", "--edge-variants", EDGE_VARIANTS,
        "--port-offset", str(free_offset()), "--out", str(out),
    )
    monkeypatch.undo()
    assert result.exit_code == 0, result.output
    return out


def results_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_results_hold_load_edge_and_inprocess_measurements(run_dir):
    results = results_of(run_dir)
    kinds = {m["kind"] for m in results["measurements"]}
    assert {"export", "server", "loadgen-calibration", "load", "edge", "inprocess"} <= kinds
    assert results["partial"] is False
    load = [m for m in results["measurements"] if m["kind"] == "load"]
    assert {m["scenario"] for m in load} == {"sweep", "rate"}
    # each server's JSON body (the same bytes to both) and its binary one in the sweep, the
    # binary one alone in the rate search
    assert {(m["target"], m["protocol"]) for m in load if m["scenario"] == "sweep"} == {
        ("torchserve", "rest"), ("torchserve", "npy"), ("kserve-tensorflow", "v1"),
        ("kserve-tensorflow", "v2-binary")}
    assert {(m["target"], m["protocol"]) for m in load if m["scenario"] == "rate"} == {
        ("torchserve", "npy"), ("kserve-tensorflow", "v2-binary")}
    assert set(results["environment"]["stage_seconds"]) >= {"export", "serve", "load", "edge"}
    # each rate search started at half the busiest rate its server's sweep reached
    for search in (m for m in results["measurements"] if m["kind"] == "load-slo"):
        busiest = max(m["throughput_rps"] for m in load if m["scenario"] == "sweep"
                      and m["target"] == search["target"])
        assert search["tried"][0]["rps"] == float(f"{busiest / 2:.2g}"), search
    for step in load:
        assert step["wrong_answers"] == 0
        assert step["throughput_rps"] > 0
        assert step["server_cpu_s_per_1k"] > 0 and step["server_peak_rss_bytes"] > 0
        # closed-loop steps must be clean; the rate search probes past capacity, where
        # TorchServe sheds load (503) and the step is marked failed, not hidden
        if step["scenario"] == "sweep" or step["passed"]:
            assert step["failures"] == 0
    assert results["environment"]["mode"] == "native"
    assert results["environment"]["limits"]["intra_op_threads"] >= 1


def test_tf_serving_appears_with_its_reason(run_dir):
    servers = {m["target"]: m for m in results_of(run_dir)["measurements"]
               if m["kind"] == "server"}
    assert servers["torchserve"]["status"] == "up"
    assert servers["tfserving"]["status"] == "unavailable"
    assert "tensorflow_model_server is not on PATH" in servers["tfserving"]["reason"]
    for report in ("report.md", "report.html"):
        text = (run_dir / report).read_text()
        assert "TF Serving could not be measured here" in text
        assert "tensorflow_model_server is not on PATH" in text


def test_reports_carry_the_measured_numbers(run_dir):
    results = results_of(run_dir)
    markdown = (run_dir / "report.md").read_text()
    html = (run_dir / "report.html").read_text()
    sweep = [m for m in results["measurements"]
             if m["kind"] == "load" and m["scenario"] == "sweep"]
    for step in sweep:
        requests = f"{step['requests']:,}"
        assert requests in markdown and requests in html
    # the leader first, as the winner or at the head of a tie within the uncertainty
    answer = re.search(r"\(digits-mlp\): (?:no significant difference between )?(.+?) "
                       r"(?:sustains |\()([\d,.]+) req/s", markdown)
    assert answer, markdown[:2000]
    # each server and protocol's best under the bound (open-loop steps where it has them),
    # and the line leads with the best of all
    best: dict[str, float] = {}
    for pair in {(m["target"], m["protocol"]) for m in sweep}:
        steps = [m for m in results["measurements"] if m["kind"] == "load"
                 and (m["target"], m["protocol"]) == pair and not m["failures"]
                 and m["latency_ms"]["p99"] <= 100 and m.get("passed", True)]
        open_loop = [m for m in steps if m["level_unit"] == "rps"]
        top = max(open_loop or steps, key=lambda m: m["throughput_rps"])
        best[f"{top['target_label']} {top['protocol_label']}"] = top["throughput_rps"]
    leader = max(best, key=best.get)
    assert answer.group(1) == leader
    assert float(answer.group(2).replace(",", "")) == pytest.approx(best[leader], rel=0.01)
    assert "Edge (digits-mlp" in markdown and "Export and parity (digits-mlp)" in markdown
    # PyTorch's formats side by side, TorchScript and its .mar marked as the legacy path
    for text in (markdown, html):
        assert "torchscript (legacy)" in text and "mar (legacy)" in text
        assert re.search(r"in-process p50: savedmodel [\d.]+ ms, torchscript \(legacy\) "
                         r"[\d.]+ ms, exported-program [\d.]+ ms, aoti [\d.]+ ms", text)
    assert "exported-program (legacy)" not in markdown
    # one file: no script or style fetched from anywhere (plotly.js is inlined)
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", html)


def test_report_command_rebuilds_the_same_report(run_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(run_dir / "results.json", copy / "results.json")
    result = invoke("report", str(copy))
    assert result.exit_code == 0, result.output
    for name in ("report.md", "report.html"):
        assert (copy / name).read_text() == (run_dir / name).read_text()


def test_the_report_draws_the_framework_runtime_matrix_from_two_processes_a_row(run_dir):
    """The edge stage measured each row in two fresh processes (run's default); the report's
    matrix and its answer lines read both."""
    edge = [m for m in results_of(run_dir)["measurements"] if m["kind"] == "edge"]
    assert {m["repeat"] for m in edge} == {1, 2}
    assert {m["variant"] for m in edge} == set(EDGE_VARIANTS.split(","))
    assert {(m["runtime"], m["framework"]) for m in edge} == {
        ("litert", "tensorflow"), ("litert", "pytorch"), ("executorch", "pytorch"),
        ("onnxruntime", "tensorflow"), ("onnxruntime", "pytorch")}
    html = (run_dir / "report.html").read_text()
    assert "Framework or runtime: every twin on every runtime that takes it" in html
    assert "<caption>digits-mlp, 1 thread</caption>" in html
    assert "over 2 processes" in html
    assert "Same runtime, two frameworks (digits-mlp, LiteRT fp32, 1 thread)" in html
    assert "Same framework, two runtimes (digits-mlp, PyTorch twin, fp32, 1 thread)" in html
    assert "Framework or runtime (digits-mlp, int8, 1 thread): PyTorch on ExecuTorch" in html


def test_report_of_a_missing_run_is_a_clear_error(tmp_path):
    result = invoke("report", str(tmp_path / "nothing-here"))
    assert result.exit_code != 0
    assert "no results.json" in result.output


def distinct_colours(png: bytes) -> int:
    from io import BytesIO

    from PIL import Image

    return len(Image.open(BytesIO(png)).convert("RGB").getcolors(1 << 24) or [])


def test_the_report_opens_offline_with_every_chart_drawn_and_hover_shows_values(
        run_dir, test_artifacts):
    """Headless Chromium: no console error, no request beyond the file itself, every chart
    drawn (a screenshot of each section is not blank), the first screen holds the answer
    lines then one chart per scenario, and hovering a servers point shows its figures."""
    errors: list[str] = []
    fetched: list[str] = []
    with chromium_page() as page:
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda r: fetched.append(r.url))
        page.goto((run_dir / "report.html").as_uri())
        drawn = page.eval_on_selector_all(
            ".chart", "els => els.map(e => [e.id, e.querySelectorAll('.main-svg').length])")
        order = page.eval_on_selector_all(
            ".first-screen > ul.answer, .first-screen .chart",
            "els => els.map(e => e.id || e.className)")
        page.screenshot(path=str(test_artifacts / "report.png"))  # the first screen
        shots = {name: page.locator(f"#section-{name}").screenshot()
                 for name in ("servers", "edge", "export", "latency")}
        point = page.locator("#chart-servers .scatterlayer .trace .points path").first
        point.hover(force=True)
        hover = page.locator("#chart-servers .hoverlayer .hovertext")
        hover.first.wait_for()
        shown = " ".join(hover.all_text_contents())  # SVG text: no rendered inner text
        page.screenshot(path=str(test_artifacts / "report-hover.png"))
    assert errors == []
    assert [url for url in fetched if url != (run_dir / "report.html").as_uri()] == []
    assert [name for name, svgs in drawn if not svgs] == [], drawn
    assert {name for name, _ in drawn} == {"chart-servers", "chart-edge", "chart-export",
                                           "chart-latency"}
    assert order == ["answer", "chart-servers", "chart-edge", "chart-export"]
    for name, png in shots.items():
        assert distinct_colours(png) > 20, name  # axes, series, labels: not a blank box
    # the hovered point is a measured step: its rate and p99 as the results hold them
    steps = [m for m in results_of(run_dir)["measurements"] if m["kind"] == "load"]
    assert re.search(r"[\d.]+ req/s, p99 [\d.]+ ms \[[\d.?]+, [\d.?]+\]", shown), shown
    assert any(f"{m['throughput_rps']:.4g} req/s" in shown for m in steps), shown


def test_partial_results_are_reported_as_partial(run_dir, tmp_path):
    results = results_of(run_dir)
    results["partial"] = True
    results["notes"].append("partial run: stopped during load: interrupted (Ctrl-C)")
    (tmp_path / "results.json").write_text(json.dumps(results))
    write_reports(tmp_path)
    assert "Partial run" in (tmp_path / "report.md").read_text()
    assert "stopped during load" in (tmp_path / "report.html").read_text()
