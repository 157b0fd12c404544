"""results.json as typed records: every kind round-trips through the one writer, and a file that
does not fit (an older schema, a wrong type, an unknown kind or field) is one line naming the
record and the field. No server, no locust: the records come from the producers' own builders
fed made-up figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from deploybench import slo
from deploybench.errors import DeploybenchError
from deploybench.jobs.writer import RunWriter
from deploybench.loadtest import histogram
from deploybench.loadtest import measurement as measure
from deploybench.loadtest.process import LocustOutput, LocustRun
from deploybench.manifest import Artifact
from deploybench.records import (
    KINDS,
    SCHEMA,
    ExportRecord,
    ServerRecord,
    record_dict,
    to_record,
)
from deploybench.results import RESULTS_FILE, read_results
from deploybench.serving.faults import ContainerCrash, Rollover, WorkerKill
from deploybench.serving.targets import Endpoints
from tests.conftest import invoke


def load_step(tmp_path: Path, level: float, rate_per_user: float = 0.0) -> dict[str, Any]:
    """A step as loadtest/measurement.py builds it from locust's summary."""
    run = LocustRun(target="torchserve", protocol="rest", model="digits-mlp",
                    export_root=tmp_path, endpoints=Endpoints(), users=int(level) or 1,
                    warmup_seconds=1.0, measure_seconds=3.0, prefix=tmp_path / f"step-{level:g}",
                    rate_per_user=rate_per_user)
    recorded = histogram.new()
    for ms in (2.0, 3.0, 4.0, 9.0):
        histogram.record_ms(recorded, ms)
    tally = {"requests": 4, "failures": 0, "wrong_answers": 0, "scheduled": 4, "errors": {},
             "timeline": [[1, 0, 2.0], [1, 0, 3.0], [2, 0, 13.0]],
             "histogram": histogram.encode(recorded),
             "service_histogram": histogram.encode(recorded)}
    summary = {"window": {"seconds": 3.0, "start": 0.0, "end": 3.0}, "requests": {"x": tally},
               "loadgen": {"cpu_percent": 12.5, "cpu_warnings": 0}, "in_flight_at_end": {}}
    output = LocustOutput(0, summary, "", 4.0, run.files())
    unit = "rps" if rate_per_user else "users"
    return measure.build(run, output, "sweep" if not rate_per_user else "rate", level, unit,
                         tmp_path, "http://127.0.0.1:8080")


def edge_row(kind: str = "edge") -> dict[str, Any]:
    from deploybench.edge.bench import new_row

    return new_row(kind=kind, model="digits-mlp", variant="tflite-fp32", runtime="litert",
                   threads=1, xnnpack=True, status="ok", path="digits-mlp/tflite/fp32.tflite",
                   size_bytes=4096, edge_ready=True, verdict="edge-ready: builtin ops only",
                   ops=["FULLY_CONNECTED"], op_counts={"FULLY_CONNECTED": 2},
                   non_builtin_ops=[], runs=20, warmup=2, import_ms=3.5,
                   import_memory_bytes=1024, init_ms=1.2, first_ms=0.3,
                   latency_ms={"p50": 0.01, "p90": 0.02, "p99": 0.03, "mean": 0.01,
                               "min": 0.01, "max": 0.05},
                   peak_memory_growth_bytes=0, retained_memory_growth_bytes=0,
                   memory_method="vmhwm", samples=360, accuracy=0.97, reference_accuracy=0.97,
                   accuracy_drop=0.0, top1_agreement=1.0, max_abs_diff=1e-6,
                   finite_outputs=True, runtime_threads={"num_threads": 1},
                   delegate_partitions=1)


def every_kind(tmp_path: Path) -> list[Any]:
    """One record of every kind, each from its producer's builder where one is cheap."""
    from deploybench.jobs.bench import BenchOptions, summarize
    from deploybench.jobs.loadgen import verdict
    from deploybench.loadtest import calibration, server_metrics
    from deploybench.serving import targets
    from tests.test_server_metrics import pages as tfserving_pages

    closed = load_step(tmp_path, 2)
    closed["server_metrics"] = server_metrics.step_figures(
        targets.get("tfserving").time_metrics, tfserving_pages(), "digits-mlp", 3.0)
    open_loop = load_step(tmp_path, 20.0, rate_per_user=20.0)
    ok, why = measure.rate_passes(open_loop, 100.0, 0.8)
    open_loop.update(passed=ok, verdict=why, rate_bound_ms=100.0)
    gone = measure.aborted(load_step(tmp_path, 4), "torchserve went away during the step")
    capacity = load_step(tmp_path, 16) | {"kind": "loadgen-capacity",
                                          "target": "replay-endpoint", "note": "replay"}
    rate_slo = {"kind": "load-slo", "target": "torchserve", "protocol": "rest",
           "model": "digits-mlp", "scenario": "rate", "rate_bound_ms": 100.0,
           "max_rate_rps": 20.0, "tried": [{"rps": 20.0, "passed": True}],
           "stopped_by": "fixed rates", "p99_ms_at_max": 9.0, "loadgen_saturated": False}
    artifact = Artifact(format="tflite-fp32", path="digits-mlp/tflite/fp32.tflite",
                        sha256="0" * 64, bytes=4096, max_abs_diff=1e-6)
    export = ExportRecord(model="digits-mlp", tolerance=1e-4, reference_accuracy=0.97,
                          min_top1_agreement=None,
                          **{k: v for k, v in vars(artifact).items() if k != "sha256"})
    kill = WorkerKill("digits-mlp", "SIGKILL", 1234, 1.7e9, recovery_s=1.5, new_pid=1240,
                      probes=3, probe_errors={"503": 2}, status="recovered")
    rollover = Rollover("digits-mlp", "1", "2", "digits-mlp-v2.mar", 1.7e9, registered_s=2.0,
                        default_s=2.1, finished_at=1.7e9 + 3, steps=["POST /models -> 200"])
    ceiling = {"kind": "bench-ceiling", "model": "digits-mlp", "framework": "PyTorch",
               "format": "torchscript", "cpus": "1", "runtime": "torch", "batch": 1,
               "threads": 1, "iterations": 100, "seconds": 1.0, "inferences_per_s": 100.0,
               "batch_latency_ms": 10.0, "when": "before"}
    options = BenchOptions(model="digits-mlp", artifacts=tmp_path, out=tmp_path)
    bench = summarize([], {}, options)[0]
    check = verdict([capacity], [closed], "TorchServe") | {"target": "torchserve",
                                                            "server": "TorchServe at http://x"}
    return [
        export, ServerRecord(target="torchserve", status="up", reason="", mode="native"),
        to_record(closed), to_record(open_loop), to_record(gone), to_record(rate_slo),
        to_record(capacity), to_record(edge_row()), to_record(edge_row("inprocess")),
        kill.measurement(scenario="sweep", level=2), rollover.measurement(failed_requests=0),
        to_record(ceiling), to_record(bench), to_record(check),
        *slo.records(slo.decide(slo.parse("p50<=1000ms"), [closed])),
        *(to_record(spread) for spread in measure.spreads(
            [closed | {"repeat": 1}, closed | {"repeat": 2, "throughput_rps": 1.0}], 2)),
        to_record(calibration.record("digits-mlp", closed,
                                     {"p50": 0.05, "p90": 0.06, "p99": 0.09})),
        to_record({"kind": "loadgen-cost", "endpoint": "replay endpoint",
                   "model": "digits-mlp", "round": 1, "connections": 1, "generator": "wrk",
                   "status": "failed", "reason": "wrk is not installed"}),
        to_record({"kind": "tune-probe", "target": "torchserve", "protocol": "npy",
                   "model": "digits-mlp", "probe": 1, "phase": "screen",
                   "configuration": {"batching": True}, "status": "ok", "bound_ms": 100.0,
                   "screen_rps": 1400.0, "screen_users": 16, "p99_ms": 30.0,
                   "p99_ci95_ms": [25.0, None], "saturated_rps": 1500.0, "seconds": 10.0}),
        to_record({"kind": "tune-probe", "target": "torchserve", "protocol": "npy",
                   "model": "digits-mlp", "probe": 2, "phase": "confirm",
                   "configuration": {"batching": True}, "status": "ok", "bound_ms": 100.0,
                   "max_rate_rps": 900.0, "failed_rate_rps": 1000.0, "p99_ms": 20.0,
                   "p99_ci95_ms": [18.0, 23.0], "seconds": 30.0}),
        to_record({"kind": "tune", "target": "torchserve", "protocol": "npy",
                   "model": "digits-mlp", "bound_ms": 100.0,
                   "default_configuration": {"batching": False}, "default_rate_rps": 400.0,
                   "screened_configuration": {"batching": True},
                   "best_configuration": {"batching": True}, "best_rate_rps": 900.0,
                   "gain": 2.25, "probes": 2, "seconds": 60.0, "budget_s": 60.0,
                   "stopped_by": "a whole pass over the knobs improved nothing"}),
        ContainerCrash("torchserve", "digits-mlp", "deploybench_torchserve_1", 1.7e9,
                       exit_code=137, restarts=1, recovery_s=4.1, probes=9,
                       status="recovered").measurement("torchserve"),
    ]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder written by the writer, one record of every kind."""
    folder = tmp_path / "run"
    writer = RunWriter(folder)
    writer.set_environment(mode="native")
    for record in every_kind(tmp_path):
        writer.add(record)
    writer.note("a note")
    return folder


def data_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / RESULTS_FILE).read_text())


def test_every_kind_round_trips(run_dir: Path) -> None:
    data = data_of(run_dir)
    assert data["schema"] == SCHEMA == "deploybench.results/3"
    assert {m["kind"] for m in data["measurements"]} == set(KINDS)
    assert read_results(run_dir / RESULTS_FILE).dump() == data
    # opening it again and saving changes nothing
    RunWriter(run_dir).save()
    assert data_of(run_dir) == data
    closed, open_loop = data["measurements"][2:4]
    # users stay an int and a rate a float; fields a closed loop never sets are not written
    assert closed["level"] == 2 and isinstance(closed["level"], int)
    assert isinstance(open_loop["level"], float) and open_loop["passed"] is True
    assert "scheduled_rps" not in closed and "passed" not in closed
    assert open_loop["latency_ms"]["p99"] == pytest.approx(9.0, rel=0.01)
    # an edge row keeps every field, blanks included, in the order the edge stage declares
    from deploybench.edge.bench import FIELDS

    edge = next(m for m in data["measurements"] if m["kind"] == "edge")
    assert list(edge) == list(FIELDS) and edge["error"] is None
    assert data["notes"] == ["a note"] and data["environment"]["mode"] == "native"


def test_report_of_a_valid_file(run_dir: Path) -> None:
    result = invoke("report", str(run_dir))
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.md").is_file() and (run_dir / "report.html").is_file()
    # the breakdown of the step that carries the server's own figures, and its bars
    assert "Where the time goes" in (run_dir / "report.md").read_text()
    assert (run_dir / "plots" / "where_time_goes.png").is_file()


def test_an_older_file_whose_records_fit_is_read_and_upgraded(run_dir: Path) -> None:
    """A run written by an earlier deploybench (schema /1: the same records without the
    registry's labels, nor the edge rows' framework, precision and intervals) still reports;
    adding to it saves it as today's schema."""
    data = data_of(run_dir)
    data["schema"] = "deploybench.results/1"
    for record in data["measurements"]:
        if "target" in record:  # the fields the registry added
            for field in ("target_label", "protocol_label", "framework"):
                record.pop(field, None)
        if record["kind"] in ("edge", "inprocess"):
            for field in ("framework", "precision", "latency_ci95_ms"):
                record.pop(field, None)
    (run_dir / RESULTS_FILE).write_text(json.dumps(data))
    result = invoke("report", str(run_dir))
    assert result.exit_code == 0, result.output
    RunWriter(run_dir).note("added")
    assert data_of(run_dir)["schema"] == SCHEMA


def _set(path: list[Any], value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


BAD = {
    "older schema": (lambda data: (_set(["schema"], "deploybench.results/1")(data),
                                   _set(["measurements", 2, "throughput"], 3.0)(data)),
                     "schema deploybench.results/1 (an older deploybench's) does not fit "
                     "deploybench.results/3: measurement 2 (kind load): throughput: Extra inputs "
                     "are not permitted; run it again"),
    "newer schema": (_set(["schema"], "deploybench.results/4"),
                     "schema deploybench.results/4 is newer than this deploybench's "
                     "deploybench.results/3; update deploybench to read it"),
    "wrong type": (_set(["measurements", 2, "latency_ms", "p99"], "fast"),
                   "measurement 2 (kind load): latency_ms.p99: Input should be a valid number"),
    "unknown kind": (_set(["measurements", 0, "kind"], "colour"),
                     "measurement 0 (kind colour): kind: unknown kind 'colour' (known: "
                     "'export', 'server', 'load',"),
    "unknown field": (_set(["measurements", 7, "colour"], "red"),
                      "measurement 7 (kind edge): colour: Extra inputs are not permitted"),
    "nested list": (_set(["measurements", 5, "tried", 0, "rps"], None),
                    "measurement 5 (kind load-slo): tried[0].rps: Input should be a valid number"),
    "fault field": (_set(["measurements", 9, "recovery_s"], "soon"),
                    "measurement 9 (kind fault): recovery_s: Input should be a valid number"),
    "top level": (_set(["partial"], "yes"), "partial: Input should be a valid boolean"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_file_that_does_not_fit_is_one_line(run_dir: Path, case: str) -> None:
    change, expected = BAD[case]
    path = run_dir / RESULTS_FILE
    data = data_of(run_dir)
    change(data)
    path.write_text(json.dumps(data))
    result = invoke("report", str(run_dir))
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {path}: {expected}"), line
    with pytest.raises(DeploybenchError) as info:  # the writer refuses it too
        RunWriter(run_dir)
    assert str(info.value) == line.removeprefix("error: ")


def test_a_file_that_is_not_results_at_all(tmp_path: Path) -> None:
    path = tmp_path / RESULTS_FILE
    for text, expected in (("{", "not valid JSON"), ("[]", "not a deploybench results file"),
                           ('{"schema": "deploybench.manifest/1"}',
                            "not a deploybench results file (schema deploybench.manifest/1)")):
        path.write_text(text)
        result = invoke("report", str(tmp_path))
        assert result.exit_code == 1
        (line,) = result.output.strip().splitlines()
        assert expected in line


def test_the_writer_saves_each_record_as_it_comes(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path)
    assert data_of(tmp_path)["measurements"] == []  # created at once
    writer.set_partial(True)
    step = load_step(tmp_path, 1)
    writer.add(to_record(step))
    saved = data_of(tmp_path)  # what a run killed now would leave
    assert saved["partial"] is True and saved["measurements"] == [record_dict(to_record(step))]
    assert saved["measurements"][0]["requests"] == step["requests"]


def test_a_misspelt_field_is_caught_where_it_is_made(tmp_path: Path) -> None:
    step = load_step(tmp_path, 1)
    with pytest.raises(ValidationError, match="throughput_rsp"):
        to_record(step | {"throughput_rsp": 1.0})
    with pytest.raises(TypeError, match="not a typed record"):
        RunWriter(tmp_path).add(step)  # type: ignore[arg-type]
