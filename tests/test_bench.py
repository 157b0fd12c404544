"""`deploybench bench` end to end on digits-mlp with short steps: the structure and arithmetic
of its figures (the figures themselves belong to the benchmark's own runs, not to a test)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from rich.console import Console

from deploybench.formatting import number
from deploybench.jobs.bench import BenchOptions, run_bench
from deploybench.serving import targets
from tests.servers import free_offset, port_free

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench_run(export_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    cpus = sorted(os.sched_getaffinity(0))
    offset = free_offset()
    options = BenchOptions(
        model="digits-mlp", artifacts=export_root, out=tmp_path_factory.mktemp("bench"),
        server_cpus=str(cpus[-1]), loadgen_cpus=str(cpus[0]), ceiling_seconds=1.0,
        step_seconds=1.5, warmup_seconds=0.5, max_batch_size=8, batch_timeout_ms=5,
        # a rate step's 300-request floor (what a p99 needs) stretched the low rates' steps to
        # 6 s; the figures' arithmetic needs no such floor
        min_requests=50,
        port_offset=offset,
        # TorchServe and KServe-PyTorch (held to the AOTInductor package), each with its binary
        # body: a second body adds two rate searches and nothing to the arithmetic
        pairs=tuple(targets.pairs("torchserve,kserve-pytorch", "npy,v2-binary")))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEPLOYBENCH_STATE_DIR", str(tmp_path_factory.mktemp("bench-state")))
        rows = run_bench(options, Console(file=io.StringIO(), width=200))
    assert port_free(8080 + offset), "bench left TorchServe running"
    results = json.loads((options.out / "results.json").read_text())
    return {"rows": rows, "results": results, "out": options.out}


def measurements(bench_run: dict, kind: str) -> list[dict]:
    return [m for m in bench_run["results"]["measurements"] if m["kind"] == kind]


def ceilings(bench_run: dict, fmt: str) -> dict[int, float]:
    """The ceiling per batch size: the mean of the runs before and after the servers."""
    runs: dict[int, list[float]] = {}
    for c in measurements(bench_run, "bench-ceiling"):
        if c["format"] == fmt:
            runs.setdefault(c["batch"], []).append(c["inferences_per_s"])
    assert all(len(both) == 2 for both in runs.values())
    return {batch: round(sum(both) / 2, 2) for batch, both in runs.items()}


def test_a_ceiling_for_what_each_server_serves_at_batch_1_and_the_bound(bench_run):
    rows = measurements(bench_run, "bench-ceiling")
    assert sorted((c["format"], c["batch"], c["when"]) for c in rows) == sorted(
        [("torchscript", b, w) for b in (1, 8) for w in ("before", "after")]
        + [("aoti", 1, w) for w in ("before", "after")])  # KServe: no batching, batch 1 only
    assert {c["format"]: c["framework"] for c in rows} == {
        "torchscript": "PyTorch", "aoti": "PyTorch"}
    for ceiling in rows:
        assert ceiling["inferences_per_s"] > 0 and ceiling["threads"] == 1
        assert ceiling["inferences_per_s"] == pytest.approx(
            ceiling["iterations"] * ceiling["batch"] / ceiling["seconds"], rel=0.01)


def test_torchserve_with_and_without_batching(bench_run):
    torch = ceilings(bench_run, "torchscript")
    rows = {(r["protocol"], r["batching"]): r for r in bench_run["rows"]
            if r["target"] == "torchserve"}
    assert set(rows) == {("npy", False), ("npy", True)}
    for (_, batching), row in rows.items():
        # batch 1 without batching; with it, the better of batch 1 and the bound
        expected = max(torch[1], torch[8]) if batching else torch[1]
        assert row["ceiling_rps"] == expected
        assert 0 <= row["ceiling_drift"] < 1
        assert row["max_rate_rps"], row  # digits-mlp meets a 100 ms p99 easily
        assert row["efficiency"] == round(row["max_rate_rps"] / expected, 3)
        assert row["saturated_rps"] > 0
        assert row["saturated_efficiency"] == round(row["saturated_rps"] / expected, 3)
        assert row["saturated_users"] == (16 if batching else 2)
        # a server with no overhead under the same bound: below the throughput ceiling
        assert 0 < row["ideal_rate_rps"] <= row["ceiling_rps"]
        assert row["bound_efficiency"] == round(row["max_rate_rps"] / row["ideal_rate_rps"], 3)
    on, off = rows[("npy", True)], rows[("npy", False)]
    assert on["batching_gain"] == round(on["max_rate_rps"] / off["max_rate_rps"], 2)


def test_kserve_is_held_to_the_aoti_ceiling_and_says_it_has_no_batching(bench_run):
    aoti = ceilings(bench_run, "aoti")
    rows = {r["batching"]: r for r in bench_run["rows"] if r["target"] == "kserve-pytorch"}
    off, on = rows[False], rows[True]
    assert off["protocol"] == "v2-binary" and off["ceiling_rps"] == aoti[1]
    assert off["max_rate_rps"] and off["efficiency"] == round(off["max_rate_rps"] / aoti[1], 3)
    assert off["saturated_efficiency"] == round(off["saturated_rps"] / aoti[1], 3)
    assert on["max_rate_rps"] is None and "offers no batching" in on["reason"]


def test_load_steps_are_answered_right_and_the_report_shows_them(bench_run):
    steps = measurements(bench_run, "load")
    saturation = [s for s in steps if s["scenario"].startswith("bench-saturation-")]
    assert len(saturation) == 3 and all(s["level_unit"] == "users" for s in saturation)
    assert all(s["wrong_answers"] == 0 for s in steps)
    searches = measurements(bench_run, "load-slo")
    assert {(s["protocol"], s["scenario"]) for s in searches} == {
        ("npy", f"bench-batching-{b}") for b in ("on", "off")} | {
        ("v2-binary", "bench-batching-off")}
    report = (bench_run["out"] / "report.md").read_text()
    assert "Serving efficiency" in report and "saturated" in report
    assert "ideal server under bound" in report
    for row in bench_run["rows"]:
        if row.get("max_rate_rps"):
            cells = [number(row[key]) for key in ("max_rate_rps", "ceiling_rps", "efficiency",
                                                "saturated_rps", "saturated_efficiency")]
            assert " | ".join(cells[:2]) in report and " | ".join(cells[3:]) in report
