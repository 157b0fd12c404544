"""`deploybench load`: run a scenario against the servers, one headless locust process per step,
and hand one typed record per step to the caller's sink (the run's writer keeps them in
RUN_DIR/results.json).

Why one locust process per step rather than one LoadTestShape run: each level gets fresh
connections, fresh locust stats (its own CSV and HTML report, directly comparable with the
measurement), its own CPU-saturation verdict (locust's flag is per run), and a crash or a
stuck server spoils one step, not the sweep. The cost is about a second of locust start-up per
step, outside every measurement window.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from deploybench.errors import DeploybenchError
from deploybench.formatting import fixed
from deploybench.loadtest import measurement as measure
from deploybench.loadtest import server_metrics
from deploybench.loadtest.cpu import CpuSampler
from deploybench.loadtest.process import LocustRun, run_locust
from deploybench.loadtest.samples import Signature
from deploybench.loadtest.scenarios import Scenario, search_rate
from deploybench.manifest import load_manifest
from deploybench.records import Sink, to_record
from deploybench.results import RESULTS_FILE
from deploybench.serving import oip, targets
from deploybench.serving.input_validation import DATATYPES
from deploybench.serving.payload import PredictionError
from deploybench.serving.targets import Endpoints, host_port, make_client
from deploybench.serving.usage import Observer

PROBE_TIMEOUT_S = 5.0
WATCH_INTERVAL_S = 1.0  # how often a running step checks that its server is still there
WATCH_MISSES = 2  # refused connections in a row that mean the server is gone


class ServerGone(DeploybenchError):
    """The server went away during a load step: the step is failed and the run ends (a dead
    server's figures would only measure connection refusals)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # the failed step's own words, for the run's notes


@dataclass
class LoadPlan:
    pairs: list[tuple[str, str]]  # (target, protocol)
    models: list[str]
    root: Path
    endpoints: Endpoints
    scenario: Scenario
    run_dir: Path
    mode: str  # how the servers run: docker | native | external (not started by us)
    skipped: list[str] = field(default_factory=list)
    # each server's CPU and memory, read around every step, and whether it is coming back
    # when it refuses connections (Deployment.observers)
    observers: dict[str, Observer] = field(default_factory=dict)
    loadgen_cpus: str | None = None  # taskset CPU list for locust (benchmarks)
    # > 0: locust as a master and this many workers in compose's loadtest profile (docker mode)
    locust_workers: int = 0
    repeats: int = 1  # the whole plan this many times: the spread across them is a figure too
    # first, the load generator's own time per request (loadtest/calibration.py)
    calibrate: bool = True
    # models the kit did not export (`load --no-check`): the signature the server declares
    unchecked: dict[str, Signature] = field(default_factory=dict)
    # (target, model) -> the rate its search starts at, where known better than the
    # scenario's (`run`: from its closed-loop sweep, scenarios.search_start)
    search_starts: dict[tuple[str, str], float] = field(default_factory=dict)


class ServerWatch:
    """Called while a step runs: None while the target's port accepts connections (or it is
    coming back: a container restarting under its restart policy), else why
    the server is gone. Only a refused connection counts (WATCH_MISSES in a row): a slow or
    overloaded server is a measurement, not a reason to stop."""

    def __init__(self, address: str, interval: float = WATCH_INTERVAL_S,
                 misses: int = WATCH_MISSES,
                 coming_back: Callable[[], bool] | None = None) -> None:
        self.host, self.port = host_port(address)
        self.coming_back = coming_back
        self.interval, self.needed = interval, misses
        self.misses, self.last = 0, time.monotonic()

    def __call__(self) -> str | None:
        now = time.monotonic()
        if now - self.last < self.interval:
            return None
        self.last = now
        try:
            with socket.create_connection((self.host, self.port or 80), timeout=2.0):
                self.misses = 0
                return None
        except ConnectionRefusedError:
            self.misses += 1
        except OSError:  # a timeout or a full backlog: busy, not gone
            return None
        if self.misses < self.needed or (self.coming_back and self.coming_back()):
            return None
        return f"nothing answers at {self.host}:{self.port} any more (connection refused)"


def probe(target: str, protocol: str, model: str, endpoints: Endpoints) -> str | None:
    """None when the server answers and `model` is ready; else why not, in a few words."""
    host, port = host_port(endpoints.address(target, protocol))
    try:
        with socket.create_connection((host, port or 80), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as error:
        return f"nothing answers at {host}:{port} ({error.strerror or error})"
    client = make_client(target, protocol, model, endpoints, timeout=PROBE_TIMEOUT_S)
    try:
        ready = client.ready()
    finally:
        client.close()
    if not ready:
        return f"{host}:{port} answers, but model {model} is not ready there"
    return None


def reachable_pairs(pairs: list[tuple[str, str]], models: list[str], endpoints: Endpoints,
                    skip_unreachable: bool) -> tuple[list[tuple[str, str]], list[str]]:
    """The (target, protocol) pairs whose server answers with every model ready, and a line
    for each that does not; one of those stops everything unless `skip_unreachable`, and so
    does none reachable."""
    reachable, skipped = [], []
    for target, protocol in pairs:
        reasons = [why for model in models
                   if (why := probe(target, protocol, model, endpoints))]
        if not reasons:
            reachable.append((target, protocol))
            continue
        message = f"{target}/{protocol} is not reachable: {reasons[0]}"
        if not skip_unreachable:
            raise DeploybenchError(
                f"{message}; start it with `deploybench serve` (or pass --port-offset)")
        skipped.append(message)
    if not reachable:
        raise DeploybenchError("no target is reachable: " + "; ".join(skipped)
                               + "; start the servers with `deploybench serve`")
    return reachable, skipped


def check_reachable(plan: LoadPlan, skip_unreachable: bool) -> None:
    """Before any load: every (target, protocol, model) answers, or the run stops with one
    line. With --target all, an unreachable target is skipped (and noted) instead."""
    plan.pairs, skipped = reachable_pairs(plan.pairs, plan.models, plan.endpoints,
                                          skip_unreachable)
    plan.skipped.extend(skipped)


def check_signatures(plan: LoadPlan, check: bool) -> None:
    """Before any load, for every Open Inference Protocol pair: read the model's metadata. With
    answers checked, the signature it declares must be the export's (one line naming both
    when it is not); without (`--no-check`), it is what the requests are made of."""
    for target, protocol in plan.pairs:
        if not targets.get(target).protocol(protocol).body.startswith("oip-"):
            continue
        for model in plan.models:
            client = make_client(target, protocol, model, plan.endpoints,
                                 timeout=PROBE_TIMEOUT_S)
            try:
                metadata = client.metadata()
            except (PredictionError, ValueError) as error:
                raise DeploybenchError(f"{target}/{protocol}: cannot read {model}'s metadata: "
                                       f"{error}") from None
            finally:
                client.close()
            outputs = metadata.get("outputs") or [{}]
            if check:
                declared = [(name, shape[1:], datatype)
                            for name, shape, datatype in oip.metadata_inputs(metadata)]
                expected = [(t.name, [-1 if axis in t.dynamic else size
                                      for axis, size in enumerate(t.shape[1:])],
                             DATATYPES[t.dtype])
                            for t in load_manifest(plan.root, model).inputs]
                if declared != expected:
                    raise DeploybenchError(
                        f"{target}/{protocol}: {model} there takes {_inputs_text(declared)}, "
                        f"the exported {model} takes {_inputs_text(expected)}: not the same "
                        "model (--no-check measures a model the kit did not export)")
                continue
            name, shape, datatype = oip.metadata_signature(metadata)
            declared = f"{name} {[int(d) for d in shape]} {datatype}"
            if datatype != "FP32" or any(int(d) < 1 for d in shape[1:]):
                raise DeploybenchError(f"{target}/{protocol}: {model} takes {declared}; the "
                                       "kit sends FP32 tensors of a fixed shape past the batch")
            plan.unchecked[model] = Signature(name, tuple(int(d) for d in shape[1:]),
                                              outputs[0].get("name", "output-0"))


def _inputs_text(inputs: list[tuple[str, list[int], str]]) -> str:
    return ", ".join(f"{name} {[-1, *shape]} {datatype}" for name, shape, datatype in inputs)


def _prefix(plan: LoadPlan, target: str, protocol: str, model: str, level: float,
            repeat: int = 1) -> Path:
    label = f"{level:g}{'u' if plan.scenario.kind == 'closed' else 'rps'}"
    if plan.repeats > 1:
        label += f"-r{repeat}"
    name = re.sub(r"[^A-Za-z0-9_.-]", "_",
                  f"{target}-{protocol}-{model}-{plan.scenario.name}-{label}")
    return plan.run_dir / "locust" / name


class LoadRun:
    """Runs a plan step by step, handing each step's record to `emit` as soon as it is
    measured. The environment, the notes and the partial flag are the caller's (see
    deploybench/jobs/stages.py)."""

    def __init__(self, plan: LoadPlan, console: Console, emit: Sink) -> None:
        self.plan = plan
        self.console = console
        self.emit = emit
        self.measurements: list[dict[str, Any]] = []
        self.searches: list[dict[str, Any]] = []  # each rate search's outcome (kind load-slo)
        self.failed_steps = 0
        self.repeat = 1

    def run(self) -> list[dict[str, Any]]:
        plan = self.plan
        for note in plan.skipped:
            self.console.print(f"[yellow]skipped[/yellow] {note}", highlight=False)
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            self.progress = progress
            for self.repeat in range(1, plan.repeats + 1):
                for target, protocol in plan.pairs:
                    for model in plan.models:
                        if plan.scenario.kind == "closed":
                            for users in plan.scenario.levels:
                                self.step(target, protocol, model, users, int(users), 0.0)
                        else:
                            self.open_loop(target, protocol, model)
        if plan.repeats > 1:
            for spread in measure.spreads(self.measurements, plan.repeats):
                self.emit(to_record(spread))
                if spread["noisy"]:
                    self.console.print(f"[yellow]noisy across repeats[/yellow] "
                                       f"{spread['target']}/{spread['protocol']} "
                                       f"{spread['model']} {spread['level']:g} "
                                       f"{spread['level_unit']}: {spread['why']}",
                                       highlight=False)
        for table in summary_tables(self.measurements):
            self.console.print(table)
        return self.measurements

    def open_loop(self, target: str, protocol: str, model: str) -> None:
        scenario = self.plan.scenario
        users = max(scenario.open_loop_users, 1)

        def passes(rate: float) -> bool:
            return self.step(target, protocol, model, rate, users, rate / users)["passed"]

        if scenario.search is None:
            tried = [(rate, passes(rate)) for rate in scenario.levels]
            best = max((rate for rate, ok in tried if ok), default=None)
            stopped_by = "fixed rates"
        else:
            start = self.plan.search_starts.get((target, model))
            search = replace(scenario.search, start_rps=start) if start else scenario.search
            outcome = search_rate(search, passes)
            tried, best, stopped_by = outcome.tried, outcome.best_rps, outcome.stopped_by
        steps = [m for m in self.measurements if m.get("scenario") == scenario.name
                 and (m["target"], m["protocol"], m["model"]) == (target, protocol, model)
                 and m.get("repeat", 1) == self.repeat]
        best_step = next((m for m in steps if m.get("passed") and m["level"] == best), None)
        result = {
            "kind": "load-slo", **targets.get(target).describe(protocol), "model": model,
            "scenario": scenario.name, "rate_bound_ms": scenario.rate_bound_ms,
            "max_rate_rps": best,
            "tried": [{"rps": rate, "passed": ok, **({"inconclusive": True} if any(
                m["level"] == rate and str(m.get("verdict", "")).startswith("inconclusive")
                for m in steps) else {})} for rate, ok in tried],
            "stopped_by": stopped_by,
            "p99_ms_at_max": best_step["latency_ms"]["p99"] if best_step else None,
            "loadgen_saturated": any(m.get("loadgen_saturated") for m in steps),
        }
        self.searches.append(result)
        self.emit(to_record(result))
        shown = f"{best:g} rps" if best is not None else "none"
        self.console.print(
            f"{target}/{protocol} {model}: highest rate with p99 <= "
            f"{scenario.rate_bound_ms:g} ms: [bold]{shown}[/bold] ({stopped_by})",
            highlight=False)

    def step(self, target: str, protocol: str, model: str, level: float, users: int,
             rate_per_user: float) -> dict[str, Any]:
        plan, scenario = self.plan, self.plan.scenario
        run = LocustRun(
            target=target, protocol=protocol, model=model, export_root=plan.root,
            endpoints=plan.endpoints, users=users, warmup_seconds=scenario.warmup_seconds,
            measure_seconds=scenario.measure_seconds(level),
            prefix=_prefix(plan, target, protocol, model, level, self.repeat),
            rate_per_user=rate_per_user, batch_size=scenario.batch_size,
            cpus=plan.loadgen_cpus, workers=plan.locust_workers,
            metrics_url=plan.endpoints.metrics_url(target) or "",
            extra_args=(["--unchecked-signature", plan.unchecked[model].to_option()]
                        if model in plan.unchecked else [])
            + (["--decide-p99-ms", f"{scenario.rate_bound_ms:g}",
                "--min-pass-requests", str(scenario.min_pass_requests),
                "--min-pass-seconds", f"{scenario.step_seconds:g}"]
               if scenario.kind == "open" and scenario.early_stop else []),
        )
        unit = scenario.level_unit
        total = scenario.warmup_seconds + scenario.measure_seconds(level)
        task = self.progress.add_task(
            f"{target}/{protocol} {model} {scenario.name} {level:g} {unit}", total=total)
        endpoint = plan.endpoints.address(target, protocol)
        observer = plan.observers.get(target)
        with CpuSampler(observer.usage if observer else None) as sampler:
            output = run_locust(run, tick=lambda elapsed: self.progress.update(
                task, completed=min(elapsed, total)),
                watch=ServerWatch(endpoint, coming_back=observer and observer.coming_back))
        self.progress.remove_task(task)
        result = measure.build(run, output, scenario.name, level, unit, plan.run_dir, endpoint)
        result["answers_checked"] = model not in plan.unchecked
        if output.aborted:
            result = measure.aborted(result, f"{target} went away during the step: "
                                             f"{output.aborted}")
        elif result["status"] == "ok" and output.summary:
            window = output.summary["window"]
            cpu = sampler.window(window["start"], window["end"], result["loadgen_cpu_percent"])
            result["cpu"] = cpu
            # the verdict table's cost figures: server CPU per 1,000 answers, peak memory
            if cpu and cpu["server_cpu_seconds"] is not None and result["requests"]:
                result["server_cpu_s_per_1k"] = round(
                    cpu["server_cpu_seconds"] / result["requests"] * 1000, 4)
            result["server_peak_rss_bytes"] = cpu["server_peak_rss_bytes"] if cpu else None
            result["noise"] = measure.noise_reasons(result)
            result["noisy"] = bool(result["noise"])
            result["server_metrics"] = server_metrics.step_figures(
                targets.get(target).time_metrics, output.summary.get("server_metrics"), model,
                (result.get("latency_ms") or {}).get("mean"))
            if plan.locust_workers:
                result["server_metrics"]["missing"].append(
                    "distributed locust in compose reads no server metrics")
        if scenario.kind == "open" and not output.aborted:
            # an open-loop step's verdict is part of its record, judged before it is kept
            ok, why = measure.rate_passes(result, scenario.rate_bound_ms,
                                          scenario.min_completed_ratio)
            result.update(passed=ok, verdict=why, rate_bound_ms=scenario.rate_bound_ms)
        if plan.repeats > 1:
            result["repeat"] = self.repeat
        self.measurements.append(result)
        self.emit(to_record(result))
        self.console.print(step_line(result), highlight=False)
        if result["status"] != "ok":
            self.failed_steps += 1
        if output.aborted:
            raise ServerGone(
                f"{target}/{protocol} {model} {scenario.name} {level:g} {unit}: "
                f"{result['reason']}; the step is marked failed, results so far in "
                f"{plan.run_dir / RESULTS_FILE}", result["reason"])
        return result


def load_generator() -> dict[str, Any]:
    try:
        version = metadata.version("locust")
    except metadata.PackageNotFoundError:
        version = None
    return {"tool": "locust", "version": version, "processes": 1,
            "per_step": "one headless locust process per step",
            "latency": "HDR histogram, microsecond resolution, 3 significant digits"}


def step_line(m: dict[str, Any]) -> str:
    head = f"{m['target']}/{m['protocol']} {m['model']} {m['level']:g} {m['level_unit']}"
    if m["status"] != "ok":
        return f"[red]failed[/red] {head}: {m['reason']}"
    lat = m["latency_ms"]
    text = (f"{head}: {m['throughput_rps']:.1f} rps, p50 {fixed(lat['p50'], unit=' ms')}, "
            f"p99 {fixed(lat['p99'], unit=' ms')}, p99.9 {fixed(lat['p99_9'], unit=' ms')}, "
            f"{m['failures']} failures "
            f"({m['wrong_answers']} wrong answers)")
    if "scheduled_rps" in m:
        text += f", scheduled {m['scheduled_rps']} / completed {m['completed_rps']} rps"
    if m.get("noisy"):
        text += f" [yellow]noisy: {'; '.join(m['noise'])}[/yellow]"
    elif m["loadgen_saturated"]:
        text += " [yellow]load generator saturated[/yellow]"
    return text


def summary_tables(measurements: list[dict[str, Any]]) -> list[Table]:
    """One table per target, protocol and model (fits an 80-column terminal)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for m in measurements:
        groups.setdefault(f"{m['target']}/{m['protocol']} {m['model']} ({m['scenario']})",
                          []).append(m)
    tables = []
    for title, rows in groups.items():
        table = Table(title=f"{title}: latency in ms, exact (HDR)")
        for column in ("level", "rps", "p50", "p90", "p99", "p99.9", "fail", "wrong",
                       "loadgen"):
            table.add_column(column, justify="right", no_wrap=True)
        for m in rows:
            unit = "users" if m["level_unit"] == "users" else "rps"
            if m["status"] != "ok":
                table.add_row(f"{m['level']:g} {unit}", "failed", *[""] * 7)
                continue
            lat = m["latency_ms"]
            verdict = "" if "passed" not in m else (" ok" if m["passed"] else " over")
            table.add_row(
                f"{m['level']:g} {unit}", f"{m['throughput_rps']:.1f}",
                *[fixed(lat[k]) for k in ("p50", "p90")], fixed(lat["p99"]) + verdict,
                fixed(lat["p99_9"]), str(m["failures"]), str(m["wrong_answers"]),
                "SATURATED" if m["loadgen_saturated"] else "ok",
            )
        tables.append(table)
    return tables
