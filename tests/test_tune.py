"""`deploybench tune` against real TorchServe and KServe on digits-mlp with a tiny budget, and
tuned profiles: `serve --profile` starts each server with exactly the profile's values (read
back from the server itself), and a bad profile is refused in one line before anything starts."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from rich.console import Console

from deploybench.jobs.tune import TuneOptions, candidates, run_tune
from deploybench.results import read_results
from deploybench.serving import targets
from deploybench.serving.manager import Deployment
from deploybench.serving.profile import knob_values, load_profile
from deploybench.settings import load_settings
from tests.conftest import invoke
from tests.servers import free_offset

MODEL = "digits-mlp"
QUIET = Console(quiet=True)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DEPLOYBENCH_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def test_candidates_step_each_knob_once_up_and_down_and_skip_switched_off_ones() -> None:
    knobs = targets.get("torchserve").knobs
    default = {"batching": False, "max_batch_size": 8, "batch_timeout_ms": 5, "workers": 1,
               "intra_op_threads": 2}
    steps = [{k: v for k, v in c.items() if default[k] != v}
             for c in candidates(knobs, default, max_threads=2)]
    # batching off: its batch size and wait do not matter, and are not tried
    assert steps == [{"intra_op_threads": 1}, {"batching": True}, {"workers": 2}]
    on = default | {"batching": True}
    steps = [{k: v for k, v in c.items() if on[k] != v}
             for c in candidates(knobs, on, max_threads=4)]
    assert steps == [{"intra_op_threads": 4}, {"intra_op_threads": 1}, {"batching": False},
                     {"max_batch_size": 16}, {"max_batch_size": 4}, {"batch_timeout_ms": 10},
                     {"batch_timeout_ms": 2}, {"workers": 2}]


@pytest.mark.slow
def test_tune_records_every_probe_a_crashing_configuration_included_and_writes_a_profile(
        export_root: Path, tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TorchServe's default configuration (batching off) is made unstartable (its config names
    an inference address with no port, which TorchServe refuses at start): that probe is
    recorded as failed with TorchServe's reason, and the search goes on from it."""
    torchserve = targets.get("torchserve")

    def refuses_batching_off(setup: Any) -> Any:
        if not setup.settings.batching:
            setup = replace(setup, overrides={"inference_address": "http://127.0.0.1:x"})
        return torchserve.native(setup)

    monkeypatch.setitem(targets._TARGETS, "torchserve", replace(torchserve,
                                                                native=refuses_batching_off))
    # servers `serve` started are someone else's: the tune keeps its own state
    state.mkdir(parents=True)
    (state / "serving.json").write_text('{"servers": "started by deploybench serve"}')
    out = tmp_path / "tune"
    options = TuneOptions(MODEL, export_root, out, ("torchserve", "kserve-pytorch"),
                          budget_minutes=0.8, step_seconds=0.5, warmup_seconds=0.3,
                          port_offset=free_offset(), server_cpus="1", loadgen_cpus="0")
    rows = run_tune(options, QUIET)
    assert (state / "serving.json").read_text() == '{"servers": "started by deploybench serve"}'
    assert os.environ["DEPLOYBENCH_STATE_DIR"] == str(state)

    measurements = [m.model_dump(exclude_unset=True)
                    for m in read_results(out / "results.json").measurements]
    probes = [m for m in measurements if m["kind"] == "tune-probe"]
    defaults = {s: knob_values(load_settings(), s) for s in ("torchserve", "kserve-pytorch")}
    for server in defaults:
        mine = [p for p in probes if p["target"] == server]
        screens = [p for p in mine if p["phase"] == "screen"]
        assert screens[0]["configuration"] == defaults[server]  # the search starts at .env's
        assert [p["probe"] for p in mine] == list(range(1, len(mine) + 1))
        assert len({json.dumps(p["configuration"], sort_keys=True) for p in screens}) == len(
            screens)
        for p in screens:
            if p["status"] == "ok":  # a closed-loop step whose p99 met the bound
                assert 0 < p["screen_rps"] <= p["saturated_rps"] and p["screen_users"] >= 1
                assert p["p99_ms"] <= p["bound_ms"] and p["server_cpu_s_per_1k"] > 0
        confirms = [p for p in mine if p["phase"] == "confirm"]
        assert confirms and all(p["probe"] > screens[-1]["probe"] for p in confirms)
        for p in confirms:  # a rate whose p99 interval lies wholly under the bound
            assert p["status"] == "ok", p
            assert p["max_rate_rps"] > 0 and p["p99_ci95_ms"][1] <= p["bound_ms"]
            assert p["server_cpu_s_per_1k"] > 0
    crashed, *after = [p for p in probes if p["target"] == "torchserve"]
    assert crashed["status"] == "failed" and crashed.get("screen_rps") is None
    assert "exited" in crashed["reason"], crashed["reason"]
    # the search went on from it, knob by knob: every batching-off step crashed too, and
    # the batching-on step was measured
    assert all(p["status"] == "failed" for p in after if not p["configuration"]["batching"])
    (started, *_) = [p for p in after if p["configuration"]["batching"]]
    assert started["configuration"] == defaults["torchserve"] | {"batching": True}
    assert started["status"] == "ok", started

    tuned = {r["target"]: r for r in rows}
    assert {m["target"] for m in measurements if m["kind"] == "tune"} == set(defaults)
    profile = load_profile(out / "profile.json")
    assert tuned["torchserve"].get("default_rate_rps") is None  # its default never started
    for server, row in tuned.items():
        assert row["default_configuration"] == defaults[server]
        assert row["probes"] == len([p for p in probes if p["target"] == server])
        confirms = {json.dumps(p["configuration"], sort_keys=True): p["max_rate_rps"]
                    for p in probes if p["target"] == server and p["phase"] == "confirm"}
        # the answer is a confirmed rate: the default's unless the pick beat it by the gain
        assert confirms[json.dumps(row["best_configuration"], sort_keys=True)] == row[
            "best_rate_rps"]
        assert row["best_rate_rps"] >= (row.get("default_rate_rps") or 0)
        # confirmed: the default (when it started) and the screen's pick, the best screen
        # but for the minimum gain
        screened = {json.dumps(p["configuration"], sort_keys=True): p.get("screen_rps") or 0
                    for p in probes if p["target"] == server and p["phase"] == "screen"}
        pick = json.dumps(row["screened_configuration"], sort_keys=True)
        assert pick in confirms
        assert screened[pick] * (1 + options.min_gain) >= max(screened.values())
        assert max(confirms.values()) <= row["best_rate_rps"] * (1 + options.min_gain) + 1e-9
        assert profile.servers[server] == row["best_configuration"]
        assert profile.measured[server]["rate_rps"] == row["best_rate_rps"]
    report = (out / "report.md").read_text()
    assert "## Tuned configurations" in report and "batching=on" in report


def test_a_server_that_cannot_run_here_is_one_unavailable_probe_and_no_profile_entry(
        export_root: Path, tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deploybench.errors import DeploybenchError
    from deploybench.serving.native import ServerUnavailable

    def no_binary(setup: Any) -> Any:
        raise ServerUnavailable("no tensorflow_model_server in this test")

    monkeypatch.setitem(targets._TARGETS, "tfserving",
                        replace(targets.get("tfserving"), native=no_binary))
    out = tmp_path / "tune"
    with pytest.raises(DeploybenchError, match="no server reached a rate"):
        run_tune(TuneOptions(MODEL, export_root, out, ("tfserving",), budget_minutes=1,
                             port_offset=free_offset()), QUIET)
    measurements = [m.model_dump(exclude_unset=True)
                    for m in read_results(out / "results.json").measurements]
    (probe,) = [m for m in measurements if m["kind"] == "tune-probe"]
    assert probe["status"] == "unavailable"
    assert "no tensorflow_model_server in this test" in probe["reason"]
    (tuned,) = [m for m in measurements if m["kind"] == "tune"]
    assert tuned["probes"] == 1 and tuned["stopped_by"].startswith("the server cannot run here")
    assert load_profile(out / "profile.json").servers == {}


def test_serve_with_a_profile_runs_each_server_with_exactly_its_values(
        export_root: Path, tmp_path: Path, state: Path) -> None:
    """Read back from the servers themselves: TorchServe's management API for its workers and
    batching, KServe's process arguments for its threads."""
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"servers": {
        "torchserve": {"workers": 2, "batching": True, "max_batch_size": 4,
                       "batch_timeout_ms": 7},
        "kserve-pytorch": {"intra_op_threads": 1}}}))
    offset = free_offset()
    started = invoke("serve", "--artifacts", str(export_root), "--mode", "native", "--model",
                     MODEL, "--servers", "torchserve,kserve-pytorch", "--port-offset",
                     str(offset), "--run-dir", str(tmp_path / "serve"), "--profile",
                     str(profile))
    try:
        assert started.exit_code == 0, started.output
        deployment = Deployment.load()
        assert deployment is not None and sorted(deployment.up()) == ["kserve-pytorch",
                                                                      "torchserve"]
        management = deployment.endpoints_obj().torchserve_management
        (model,) = requests.get(f"{management}/models/{MODEL}", timeout=10).json()
        assert (model["minWorkers"], model["maxWorkers"], len(model["workers"])) == (2, 2, 2)
        assert (model["batchSize"], model["maxBatchDelay"]) == (4, 7)
        (kserve,) = [p for p in deployment.processes if p.name == "kserve-pytorch"]
        arguments = psutil.Process(kserve.pid).cmdline()
        assert arguments[arguments.index("--threads") + 1] == "1"
        assert deployment.configurations["torchserve"]["workers"] == 2
        assert deployment.configurations["kserve-pytorch"] == {"intra_op_threads": 1}

        # load checks the running servers against a profile: another one is refused ...
        other = tmp_path / "other.json"
        other.write_text(json.dumps({"servers": {"torchserve": {"workers": 1}}}))
        load = ["load", "--target", "torchserve", "--protocol", "npy", "--model", MODEL,
                "--users", "1", "--step-seconds", "0.5", "--warmup-seconds", "0",
                "--no-calibrate"]
        refused = invoke(*load, "--out", str(tmp_path / "refused"), "--profile", str(other))
        assert refused.exit_code == 2, refused.output
        assert "torchserve runs with workers=2, the profile says workers=1" in refused.output
        assert not (tmp_path / "refused").exists()
        # ... and the one they run with is recorded in the run
        loaded = invoke(*load, "--out", str(tmp_path / "load"), "--profile", str(profile))
        assert loaded.exit_code == 0, loaded.output
        recorded = json.loads((tmp_path / "load" / "results.json").read_text())
        assert recorded["environment"]["profile"]["servers"]["torchserve"]["workers"] == 2
    finally:
        assert invoke("stop").exit_code == 0


@pytest.mark.parametrize(("servers", "said"), [
    ({"tfserving-x": {}}, "unknown server 'tfserving-x'; known: tfserving, torchserve"),
    ({"kserve-pytorch": {"workers": 2}},
     "kserve-pytorch has no knob 'workers'; its knobs: intra_op_threads"),
    ({"torchserve": {"max_batch_size": 0}}, "torchserve: max_batch_size=0: out of range [1, 256]"),
    ({"torchserve": {"batching": "yes"}}, "torchserve: batching='yes': expected true or false"),
    ({"torchserve": {"workers": 2.5}}, "torchserve: workers=2.5: expected a whole number"),
])
def test_a_bad_profile_is_refused_in_one_line_before_anything_starts(
        tmp_path: Path, state: Path, servers: dict[str, Any], said: str) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"servers": servers}))
    for command in (["serve", "--mode", "native", "--run-dir", str(tmp_path / "serve")],
                    ["run", "--out", str(tmp_path / "run"), "--no-export"]):
        result = invoke(*command, "--profile", str(profile))
        assert result.exit_code == 2, result.output
        assert said in result.output and f"--profile {profile}" in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "serve").exists() and not (tmp_path / "run").exists()
    assert Deployment.load() is None


def test_load_with_a_profile_and_no_servers_running_says_how_to_start_them(
        tmp_path: Path, state: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"servers": {"torchserve": {"workers": 2}}}))
    result = invoke("load", "--out", str(tmp_path / "load"), "--target", "torchserve",
                    "--profile", str(profile))
    assert result.exit_code == 2, result.output
    assert f"start them with `deploybench serve --profile {profile}`" in result.output
    assert not (tmp_path / "load").exists()


def test_bench_with_a_profile_runs_each_server_in_its_batching_pass_with_its_own_bound(
        tmp_path: Path) -> None:
    from deploybench.jobs.bench import BenchOptions
    from deploybench.serving.profile import Profile

    pairs = (("torchserve", "npy"), ("kserve-pytorch", "v2-binary"), ("triton-pytorch",
                                                                         "v2-binary"))
    plain = BenchOptions(MODEL, tmp_path, tmp_path, pairs=pairs)
    assert plain.servers(False) == ("torchserve", "kserve-pytorch", "triton-pytorch")
    assert plain.servers(True) == ("torchserve", "triton-pytorch")
    tuned = BenchOptions(MODEL, tmp_path, tmp_path, pairs=pairs, profile=Profile(servers={
        "torchserve": {"batching": True, "max_batch_size": 16},
        "triton-pytorch": {"batching": False}}))
    assert tuned.servers(False) == ("kserve-pytorch", "triton-pytorch")
    assert tuned.servers(True) == ("torchserve",)
    assert (tuned.max_batch("torchserve"), tuned.max_batch("triton-pytorch")) == (16, 4)
