"""Load testing with locust: real native TorchServe, the TF Serving test double, exact
percentiles, answers checked under load, scenarios as data, and a clear stop when a target is
not there."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from deploybench.errors import UsageError
from deploybench.jobs.writer import RunWriter
from deploybench.loadtest import histogram
from deploybench.loadtest import measurement as measure
from deploybench.loadtest.process import LOCUSTFILE, LocustOutput, LocustRun
from deploybench.loadtest.runner import LoadPlan, LoadRun, check_reachable
from deploybench.loadtest.scenarios import (
    RateSearch,
    Scenario,
    load_scenario,
    search_rate,
    search_start,
)
from deploybench.serving.manager import Deployment
from deploybench.serving.targets import Endpoints
from tests.conftest import invoke
from tests.servers import free_offset, native_torchserve

pytestmark = pytest.mark.slow

REQUIRED = ("kind", "target", "protocol", "model", "scenario", "level", "duration_s",
            "requests", "failures", "wrong_answers", "throughput_rps", "latency_ms",
            "loadgen_saturated")
PERCENTILES = ("p50", "p90", "p95", "p99", "p99_9")


@pytest.fixture(scope="module")
def torchserve(export_root: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Deployment]:
    """Real TorchServe, natively, on free ports; its state where `deploybench load` finds it."""
    with native_torchserve(export_root, ["digits-mlp", "digits-cnn"],
                           tmp_path_factory.mktemp("load-state"),
                           tmp_path_factory.mktemp("load-serve")) as deployment:
        yield deployment


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def assert_sound(measurement: dict) -> None:
    for key in REQUIRED:
        assert key in measurement, key
    assert measurement["kind"] == "load" and measurement["status"] == "ok", measurement
    assert measurement["requests"] > 0 and measurement["throughput_rps"] > 0
    assert measurement["failures"] == 0, measurement["errors"]
    assert measurement["wrong_answers"] == 0
    latency = measurement["latency_ms"]
    assert set(PERCENTILES) <= set(latency)
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"]
    assert latency["p99"] <= latency["p99_9"] <= latency["max"]
    assert isinstance(measurement["loadgen_saturated"], bool)
    assert measurement["heavy_modules_in_locust"] == []  # no TensorFlow, no torch in locust


def test_sweep_against_real_torchserve(torchserve: Deployment, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # --target all: TF Serving is not running (no binary here), so it is skipped and noted
    result = invoke("load", "--target", "all", "--protocol", "rest", "--scenario", "sweep",
                    "--users", "1,2", "--step-seconds", "2", "--warmup-seconds", "1",
                    "--model", "digits-mlp", "--out", str(run_dir))
    assert result.exit_code == 0, result.output
    data = results(run_dir)
    assert any("skipped tfserving/rest is not reachable" in note for note in data["notes"])
    assert data["environment"]["mode"] == "native"
    assert data["environment"]["load_generator"]["tool"] == "locust"
    assert {"versions", "cpu_model", "cpu_count", "limits"} <= set(data["environment"])
    # first, the load generator's own time per request, against a trivial local endpoint
    calibration, *steps = data["measurements"]
    assert calibration["kind"] == "loadgen-calibration" and calibration["status"] == "ok"
    assert calibration["requests"] > 100 and calibration["failures"] == 0
    client, floor = calibration["client_latency_ms"], calibration["floor_latency_ms"]
    assert 0 < floor["p50"] <= floor["p99"] and 0 < client["p50"] <= client["p99"]
    assert calibration["overhead_p50_ms"] == pytest.approx(client["p50"] - floor["p50"],
                                                           abs=1e-3)
    assert "load generator's own time per request" in result.output
    assert [m["level"] for m in steps] == [1, 2]
    for step in steps:
        assert_sound(step)
        assert (step["target"], step["protocol"], step["model"]) == (
            "torchserve", "rest", "digits-mlp")
        assert step["scenario"] == "sweep" and step["level_unit"] == "users"
        assert 1.9 < step["duration_s"] < 2.5  # the window, warm-up left out
        assert step["endpoint"] == torchserve.endpoints["torchserve_inference"]
        # locust's own files are kept beside results.json
        for key in ("csv_stats", "csv_history", "csv_failures", "html", "json", "log"):
            assert (run_dir / step["locust_files"][key]).is_file(), key
        assert "torchserve/rest digits-mlp" in (run_dir / step["locust_files"]["html"]
                                               ).read_text()
        # locust's own (rounded) count agrees with ours, up to its slightly longer window
        assert step["locust"]["requests"] >= step["requests"] * 0.9
        # where the CPU went in the window: the server's processes are accounted for
        cpu = step["cpu"]
        assert cpu["cores"] >= 1 and cpu["machine_percent"] > 0 and cpu["server_percent"] > 0
        assert cpu["locust_percent"] == step["loadgen_cpu_percent"]
    assert "torchserve/rest digits-mlp" in result.output


def test_binary_npy_body_under_load(torchserve: Deployment, tmp_path: Path) -> None:
    """TorchServe's binary body, through the CLI: every answer checked, none wrong."""
    run_dir = tmp_path / "run"
    result = invoke("load", "--no-calibrate",
                    "--target", "torchserve", "--protocol", "npy", "--scenario", "sweep",
                    "--users", "2", "--step-seconds", "2", "--warmup-seconds", "0.5",
                    "--model", "digits-cnn", "--out", str(run_dir))
    assert result.exit_code == 0, result.output
    (step,) = results(run_dir)["measurements"]
    assert_sound(step)
    assert (step["target"], step["protocol"]) == ("torchserve", "npy")
    assert step["wrong_answers"] == 0
    assert "torchserve/npy digits-cnn" in (run_dir / step["locust_files"]["html"]).read_text()


def test_request_bodies_carry_the_same_rows(export_root: Path) -> None:
    from deploybench.golden import Golden
    from deploybench.loadtest.samples import load_samples
    from deploybench.manifest import load_manifest

    samples = load_samples(export_root, "digits-cnn", batch_size=3)
    inputs = Golden.of(export_root, load_manifest(export_root, "digits-cnn")).inputs
    assert len(samples.bodies["json"]) == len(samples.bodies["npy"]) == len(inputs) // 3
    for index in (0, len(samples) - 1):
        rows = inputs[index * 3 : (index + 1) * 3].only
        from_json = np.asarray(json.loads(samples.bodies["json"][index])["instances"], np.float32)
        from_npy = np.load(io.BytesIO(samples.bodies["npy"][index]), allow_pickle=False)
        assert from_npy.dtype == np.float32
        np.testing.assert_array_equal(from_json, rows)
        np.testing.assert_array_equal(from_npy, rows)


def test_rate_scenario_reports_scheduled_and_completed(torchserve: Deployment,
                                                       tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = invoke("load", "--no-calibrate",
                    "--target", "torchserve", "--protocol", "rest", "--scenario", "rate",
                    "--rates", "20,40", "--step-seconds", "2", "--warmup-seconds", "0.5",
                    "--model", "digits-cnn", "--rate-bound-ms", "500", "--out", str(run_dir))
    assert result.exit_code == 0, result.output
    measurements = results(run_dir)["measurements"]
    steps = [m for m in measurements if m["kind"] == "load"]
    assert [m["level"] for m in steps] == [20, 40]
    for step in steps:
        assert_sound(step)
        assert step["scenario"] == "rate" and step["level_unit"] == "rps"
        # Poisson arrivals around the target rate; every one of them either answered in the
        # window or still in flight at its end (a busy machine may fall behind, never lose any)
        assert 0.4 * step["level"] < step["scheduled_rps"] < 1.8 * step["level"]
        seconds = step["duration_s"]
        assert (step["completed_rps"] * seconds + step["in_flight_at_end"]
                >= 0.8 * step["scheduled_rps"] * seconds), step
        # latency counts from the scheduled send time: never below the service time
        assert step["latency_ms"]["p50"] >= step["service_latency_ms"]["p50"]
        assert step["rate_bound_ms"] == 500 and isinstance(step["passed"], bool)
    (slo,) = [m for m in measurements if m["kind"] == "load-slo"]
    assert slo["target"] == "torchserve" and slo["model"] == "digits-cnn"
    assert [t["rps"] for t in slo["tried"]] == [20, 40]
    passed = [t["rps"] for t in slo["tried"] if t["passed"]]
    assert slo["max_rate_rps"] == (max(passed) if passed else None)


def test_unreachable_target_fails_before_any_load(export_root: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOYBENCH_STATE_DIR", str(tmp_path / "state"))
    run_dir = tmp_path / "run"
    result = invoke("load", "--no-calibrate",
                    "--target", "torchserve", "--artifacts", str(export_root),
                    "--port-offset", str(free_offset()), "--out", str(run_dir))
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "torchserve/rest is not reachable" in lines[0] and "nothing answers" in lines[0]
    assert not (run_dir / "results.json").exists() and not (run_dir / "locust").exists()


def tfserving_plan(export_root: Path, fake, run_dir: Path, **scenario) -> LoadPlan:  # noqa: ANN001
    endpoints = Endpoints(tfserving_rest=fake.rest_url, tfserving_grpc=fake.grpc_target)
    plan = LoadPlan([("tfserving", "rest"), ("tfserving", "grpc")], ["digits-mlp"],
                    export_root, endpoints, load_scenario("sweep", **scenario), run_dir,
                    mode="test double (tests/fake_tfserving.py), not TF Serving")
    check_reachable(plan, skip_unreachable=False)
    return plan


def test_tfserving_rest_and_grpc_users_against_the_double(export_root: Path,
                                                          tmp_path: Path) -> None:
    from tests.fake_tfserving import FakeTFServing

    with FakeTFServing(export_root, models=["digits-mlp"]) as fake:
        plan = tfserving_plan(export_root, fake, tmp_path, levels=[2], step_seconds=2,
                              warmup_seconds=0.5)
        measurements = LoadRun(plan, Console(file=io.StringIO()), RunWriter(tmp_path).add).run()
    assert [(m["target"], m["protocol"]) for m in measurements] == [
        ("tfserving", "rest"), ("tfserving", "grpc")]
    for measurement in measurements:
        assert_sound(measurement)
    assert measurements[1]["endpoint"] == fake.grpc_target


def test_wrong_answers_are_counted(export_root: Path, tmp_path: Path) -> None:
    """A double that perturbs its outputs: every answer is a failure of its own kind."""
    from tests.fake_tfserving import FakeTFServing

    with FakeTFServing(export_root, models=["digits-mlp"], perturb=0.5) as fake:
        plan = tfserving_plan(export_root, fake, tmp_path, levels=[1], step_seconds=1.5,
                              warmup_seconds=0.5)
        measurements = LoadRun(plan, Console(file=io.StringIO()), RunWriter(tmp_path).add).run()
    for measurement in measurements:
        assert measurement["status"] == "ok" and measurement["requests"] > 0
        assert measurement["wrong_answers"] == measurement["failures"] == measurement["requests"]
        assert measurement["throughput_rps"] == 0  # correct answers per second
        assert all(reason.startswith("WrongAnswer") for reason in measurement["errors"])
        assert measurement["latency_ms"]["p50"] is None  # no correct answer to time
        failures_csv = (tmp_path / measurement["locust_files"]["csv_failures"]).read_text()
        assert "WrongAnswer" in failures_csv


def test_distributed_master_and_worker(torchserve: Deployment, export_root: Path,
                                       tmp_path: Path) -> None:
    """--master/--worker: the worker ships its HDR histogram with its stats; the master adds."""
    port = free_offset() + 5557
    summary = tmp_path / "summary.json"
    common = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    master = subprocess.Popen(
        [*common, "--master", "--headless", "--expect-workers", "1", "-u", "2", "-r", "2",
         "-t", "30s", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
         "--export-root", str(export_root), "--model", "digits-mlp",
         "--torchserve-url", torchserve.endpoints["torchserve_inference"],
         "--warmup-seconds", "0.5", "--measure-seconds", "2", "--summary-file", str(summary),
         "TorchServeRESTUser"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    worker = subprocess.Popen(
        [*common, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        output, _ = master.communicate(timeout=60)
        worker.wait(timeout=20)
    finally:
        for process in (master, worker):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert master.returncode == 0, output.decode(errors="replace")[-2000:]
    data = json.loads(summary.read_text())
    assert data["role"] == "master" and data["loadgen"]["workers_reported"] == 1
    (tally,) = data["requests"].values()
    assert tally["requests"] > 0 and tally["failures"] == 0
    merged = histogram.decode(tally["histogram"])
    assert merged.get_total_count() == tally["requests"]


def test_locustfile_runs_alone_against_the_installed_kit(torchserve: Deployment,
                                                        export_root: Path,
                                                        tmp_path: Path) -> None:
    """As the compose locust image runs it: the locustfile copied on its own, away from the
    checkout, importing deploybench as an installed package (no sys.path manipulation)."""
    alone = tmp_path / "elsewhere" / "locustfile.py"
    alone.parent.mkdir()
    shutil.copyfile(LOCUSTFILE, alone)
    assert "sys.path" not in alone.read_text()
    summary = tmp_path / "summary.json"
    command = [sys.executable, "-m", "locust", "-f", str(alone), "--headless", "-u", "1", "-r", "1",
               "-t", "20s", "--export-root", str(export_root),
               "--torchserve-url", torchserve.endpoints["torchserve_inference"],
               "--measure-seconds", "1", "--summary-file", str(summary), "TorchServeRESTUser"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(summary.read_text())
    (tally,) = data["requests"].values()
    assert tally["requests"] > 0 and tally["failures"] == 0


# -- no server needed ---------------------------------------------------------------------------

def test_hdr_percentiles_are_exact_to_three_digits() -> None:
    values_ms = np.random.default_rng(0).lognormal(mean=1.5, sigma=0.8, size=20_000)
    recorded = histogram.new()
    for value in values_ms:
        histogram.record_ms(recorded, float(value))
    figures = histogram.latency_ms(histogram.decode(histogram.encode(recorded)))
    for key, percentile in histogram.PERCENTILES.items():
        exact = float(np.percentile(values_ms, percentile, method="inverted_cdf"))
        assert abs(figures[key] - exact) <= 0.002 * exact + 0.001, (key, figures[key], exact)
    merged = histogram.merge([histogram.encode(recorded), histogram.encode(recorded)])
    assert merged.get_total_count() == 2 * len(values_ms)
    assert histogram.latency_ms(histogram.new())["p99"] is None


def test_scenarios_are_data(tmp_path: Path) -> None:
    sweep = load_scenario("sweep")
    assert sweep.kind == "closed" and sweep.levels == (1, 2, 4, 8, 16, 32)
    assert load_scenario("sweep", levels=[1, 4], step_seconds=3).levels == (1, 4)
    rate = load_scenario("rate")
    assert rate.kind == "open" and rate.search is not None and rate.rate_bound_ms == 100
    assert load_scenario("rate", levels=[50.0]).search is None  # fixed rates replace the search
    path = tmp_path / "slo.json"
    path.write_text(json.dumps({"kind": "open", "rate_bound_ms": 50,
                                "search": {"start_rps": 10, "max_rps": 80}}))
    custom = load_scenario(str(path))
    assert custom.name == "slo" and custom.search == RateSearch(start_rps=10, max_rps=80)
    yaml_path = tmp_path / "mine.yaml"
    yaml_path.write_text("kind: closed\nlevels: [3, 6]\nstep_seconds: 4\n")
    assert load_scenario(str(yaml_path)).levels == (3, 6)
    for bad in ({"kind": "closed"}, {"kind": "open"}, {"kind": "sideways", "levels": [1]},
                {"kind": "closed", "levels": [1], "colour": "red"}):
        path.write_text(json.dumps(bad))
        with pytest.raises(UsageError):
            load_scenario(str(path))
    # searches that could never end, or start outside their own range
    for search in ({"growth": 1}, {"min_rps": 0}, {"start_rps": 100, "max_rps": 50},
                   {"start_rps": 1, "min_rps": 2}):
        path.write_text(json.dumps({"kind": "open", "search": search}))
        with pytest.raises(UsageError, match="growth > 1"):
            load_scenario(str(path))
    with pytest.raises(UsageError, match="unknown scenario"):
        load_scenario("nonsense")


def test_rate_search_steps_up_then_bisects() -> None:
    capacity = 130.0
    outcome = search_rate(RateSearch(start_rps=25, growth=2, max_rps=1000, refine_steps=3),
                          lambda rate: rate <= capacity)
    rates = [rate for rate, _ in outcome.tried]
    assert rates[:4] == [25, 50, 100, 200]  # step up until the first failure
    assert outcome.first_failed_rps is not None and outcome.best_rps is not None
    assert 100 <= outcome.best_rps <= capacity < outcome.first_failed_rps
    assert len(rates) == 4 + 3
    nothing = search_rate(RateSearch(start_rps=25, min_rps=2), lambda rate: False)
    assert nothing.best_rps is None and "down to 3.12 rps failed" in nothing.stopped_by
    assert [rate for rate, _ in nothing.tried] == [25, 12.5, 6.25, 3.12]
    capped = search_rate(RateSearch(start_rps=25, max_rps=60), lambda rate: True)
    assert capped.best_rps == 60 and "max_rps" in capped.stopped_by


def test_a_rate_search_starts_at_half_the_busiest_clean_closed_loop_step() -> None:
    def step(target: str, rps: float, **more: Any) -> dict[str, Any]:
        return {"target": target, "model": "m", "status": "ok", "level_unit": "users",
                "throughput_rps": rps, "failures": 0, "wrong_answers": 0} | more

    starts = search_start([
        step("a", 300.0), step("a", 913.0), step("a", 5000.0, failures=3),
        step("a", 4000.0, wrong_answers=1), step("a", 6000.0, level_unit="rps"),
        step("b", 1.2), step("c", 0.0, status="failed")])
    # 913 / 2 to two significant figures; b's half-rate under 1 and c's failure: no start
    assert starts == {("a", "m"): 460.0}


def test_open_loop_steps_last_until_enough_requests_for_a_p99() -> None:
    scenario = Scenario("s", "open", levels=(5.0,), step_seconds=8, min_requests=300)
    assert scenario.measure_seconds(100) == 8  # 800 requests in the step anyway
    assert scenario.measure_seconds(20) == 15  # 300 requests
    assert scenario.measure_seconds(2) == 32  # at most 4 x step_seconds
    assert Scenario("s", "open", levels=(5.0,), step_seconds=8).measure_seconds(2) == 8
    # early stopping: a step ends once decided, at the latest when a pass could be decided
    early = Scenario("e", "open", levels=(5.0,), early_stop=True, min_pass_requests=400,
                     max_step_seconds=30)
    assert early.measure_seconds(100) == 30  # 400 requests in 4 s: decided well before
    assert early.measure_seconds(10) == 50  # 400 requests take 40 s, and a quarter more
    assert early.measure_seconds(1) == 120  # at most 4 x max_step_seconds
    closed = Scenario("c", "closed", levels=(4,), step_seconds=8, min_requests=300)
    assert closed.measure_seconds(4) == 8  # users, not a rate
    with pytest.raises(UsageError, match="min_requests"):
        Scenario("s", "open", levels=(5.0,), min_requests=-1)


def test_rate_search_steps_down_when_the_start_is_too_high() -> None:
    capacity = 7.0
    outcome = search_rate(RateSearch(start_rps=25, growth=2, refine_steps=3),
                          lambda rate: rate <= capacity)
    assert [rate for rate, _ in outcome.tried][:3] == [25, 12.5, 6.25]
    assert 6.25 <= outcome.best_rps <= capacity < outcome.first_failed_rps <= 12.5
    assert len(outcome.tried) == 3 + 3
    assert "bracketed" in outcome.stopped_by


def test_a_busy_locust_is_flagged_saturated(tmp_path: Path) -> None:
    """Locust's own warning in its log, its flag, or our window CPU over 90 % all count."""
    run = LocustRun(target="torchserve", protocol="rest", model="digits-mlp",
                    export_root=tmp_path, endpoints=Endpoints(), users=4, warmup_seconds=1,
                    measure_seconds=2, prefix=tmp_path / "step")
    tally = {"requests": 10, "failures": 0, "wrong_answers": 0, "scheduled": 0, "errors": {},
             "timeline": [], "histogram": histogram.encode(histogram.new()),
             "service_histogram": histogram.encode(histogram.new())}

    def flagged(cpu: float | None, warning: bool = False, log: str = "") -> bool:
        summary = {"window": {"seconds": 2.0}, "requests": {"x": tally},
                   "loadgen": {"cpu_percent": cpu, "cpu_warnings": 0},
                   "locust_cpu_warning": warning}
        output = LocustOutput(0, summary, log, 3.0, run.files())
        return measure.build(run, output, "sweep", 4, "users", tmp_path, "")[
            "loadgen_saturated"]

    assert not flagged(40.0)
    assert flagged(95.0)
    assert flagged(None, warning=True)
    assert flagged(10.0, log="WARNING/root: CPU usage above 90%! This may constrain ...")


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    result = invoke("load", "--no-calibrate", "--target", "torchserve", "--protocol", "grpc",
                    "--out", str(tmp_path))
    assert result.exit_code == 2 and "does not speak grpc" in result.output
    result = invoke("load", "--no-calibrate",
                    "--scenario", "rate", "--users", "1,2", "--out", str(tmp_path))
    assert result.exit_code != 0 and "--users is for a closed-loop sweep" in result.output


def short_run(run_dir: Path, export_root: Path) -> Path:
    """A real short run: one TorchServe load step (3 s: its thirds give throughput a range)
    and one edge measurement (1,000 runs: enough for both bounds of its p99's interval; the
    CNN's tens of microseconds, not the MLP's two, which a busy neighbour's scheduling
    swamps), into one run folder."""
    loaded = invoke("load", "--no-calibrate", "--target", "torchserve", "--protocol", "npy",
                    "--scenario", "sweep", "--users", "2", "--step-seconds", "3",
                    "--warmup-seconds", "0.5", "--model", "digits-mlp", "--out", str(run_dir))
    assert loaded.exit_code == 0, loaded.output
    measured = invoke("edge", "--artifacts", str(export_root), "--model", "digits-cnn",
                      "--variants", "tflite-fp32", "--threads", "1", "--runs", "1000",
                      "--warmup", "10", "--repeats", "1", "--no-baselines", "--out", str(run_dir))
    assert measured.exit_code == 0, measured.output
    return run_dir


def scaled(run_dir: Path, out: Path, factor: float, spread: float | None = None) -> Path:
    """A copy of a run whose load and edge latencies (and their intervals) are `factor` times
    the measured ones; with `spread`, each interval [figure / spread, figure * spread] instead
    (wide enough to hold the base's figure: the change cannot be told from noise)."""
    data = results(run_dir)
    for row in data["measurements"]:
        if row["kind"] in ("load", "edge") and row.get("latency_ms"):
            for key, value in row["latency_ms"].items():
                row["latency_ms"][key] = value * factor
            for key, bounds in row["latency_ci95_ms"].items():
                middle = row["latency_ms"].get(key)
                row["latency_ci95_ms"][key] = (
                    [None if b is None else b * factor for b in bounds]
                    if spread is None or middle is None else [middle / spread, middle * spread])
    out.mkdir()
    (out / "results.json").write_text(json.dumps(data))
    return out


def test_compare_two_real_runs_then_a_slower_copy_then_an_undecidable_one(
        torchserve: Deployment, export_root: Path, tmp_path: Path) -> None:
    """Two real runs of one configuration compare clean (gates sized for a 2-core machine
    shared with another test worker: p50 and throughput, which its scheduling moves least);
    a copy with every latency 3x is a regression, named, exit 5; a copy 25% slower whose
    intervals overlap the base's is inconclusive, exit 6."""
    base = short_run(tmp_path / "base", export_root)
    again = short_run(tmp_path / "again", export_root)
    same = invoke("compare", str(base), str(again), "--fail-on",
                  "p50:+100%,throughput:-50%,accuracy:-1pt")
    assert same.exit_code == 0, same.output
    compared = json.loads((again / "compare.json").read_text())
    metrics = {(c["label"].split()[0], c["metric"]) for c in compared["changes"]}
    assert {("load", "p99"), ("load", "throughput"), ("edge", "p50"), ("edge", "accuracy")
            } <= metrics
    assert not compared["only_base"] and not compared["only_new"]

    slower = scaled(base, tmp_path / "slower", 3.0)
    found = invoke("compare", str(base), str(slower), "--fail-on", "p50:+10%,p99:+10%")
    assert found.exit_code == 5, found.output
    assert "regression: load digits-mlp TorchServe" in found.output
    assert "regression: edge digits-cnn tflite-fp32" in found.output
    named = json.loads((slower / "compare.json").read_text())
    assert {c["label"].split()[0] for c in named["changes"] if c["decision"] == "regression"
            } == {"load", "edge"}

    unsure = scaled(base, tmp_path / "unsure", 1.25, spread=2.0)
    undecided = invoke("compare", str(base), str(unsure), "--fail-on", "p99:+10%")
    assert undecided.exit_code == 6, undecided.output
    assert "inconclusive" in undecided.output
