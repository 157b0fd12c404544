"""`deploybench tune`: each server's best configuration under a p99 bound, so that servers
are compared each at its best rather than at their defaults.

For every server, the knobs its registry entry declares (serving/targets.py `Target.knobs`)
are searched in the spirit of Triton's Model Analyzer: a quick coordinate search, not brute
force. It starts from the default configuration (.env's values), then walks the knobs in
their declared order, trying each one's next value up and down (a knob that needs a switch,
such as the batch size, only while its switch is on), and moves to a candidate when its rate
beats the best so far by `min_gain`; it stops when a whole pass over the knobs moves nothing,
or when the server's share of the budget is spent (a probe already started runs to its end;
time a server leaves goes to the servers after it).

A probe is one configuration, started natively on the server's cores under the same CPU
limit as every other server (the limits are not a knob): a closed loop that keeps it busy
brackets the rate, then the open-loop rate search with early stopping (each step passes only
when its p99's 95% interval lies wholly under the bound) finds the highest rate under the
bound. A configuration that does not start, or dies, is a probe with its reason; the search
goes on. Every probe is a `tune-probe` record, each server's outcome a `tune` record, and the
best configurations a profile file (serving/profile.py) that serve, load, run and bench take.

    deploybench tune --model mobilenet-v2 --slo "p99<=100ms" --budget-minutes 12 --out runs/tune
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from deploybench import slo
from deploybench.errors import DeploybenchError, UsageError
from deploybench.formatting import DASH, fixed, times
from deploybench.formatting import configuration_text as describe
from deploybench.jobs.bench import BenchOptions, cpu_count, measure_load, saturation_scenario
from deploybench.jobs.writer import RunWriter
from deploybench.loadtest.runner import ServerGone
from deploybench.loadtest.scenarios import RateSearch, Scenario
from deploybench.manifest import load_manifest, verify_artifacts
from deploybench.records import to_record
from deploybench.report import write_reports
from deploybench.serving import targets
from deploybench.serving.manager import serve, stop
from deploybench.serving.profile import Profile, knob_values, write_profile
from deploybench.serving.targets import Knob, loopback_endpoints
from deploybench.settings import ServerSettings, load_settings

Values = dict[str, int | bool]
PROFILE_FILE = "profile.json"


@dataclass
class TuneOptions:
    model: str
    artifacts: Path
    out: Path
    servers: tuple[str, ...]
    bound_ms: float = 100.0
    budget_minutes: float = 10.0
    server_cpus: str = "1"  # taskset lists: every probe's server gets these cores ...
    loadgen_cpus: str = "0"  # ... and locust these
    step_seconds: float = 4.0
    warmup_seconds: float = 1.0
    # a step passes once its p99's interval lies under the bound, on at least this many
    # requests: the interval's top needs about 370 requests to exist at all
    min_requests: int = 400
    min_gain: float = 0.05  # a candidate must beat the best rate by this much to be taken
    port_offset: int = 0
    profile: Path | None = None  # where the profile goes (default: OUT/profile.json)

    @property
    def profile_path(self) -> Path:
        return self.profile or self.out / PROFILE_FILE

    def bench(self, values: Values) -> BenchOptions:
        """The bench's options for one probe: its scenarios, at these knob values."""
        return BenchOptions(
            model=self.model, artifacts=self.artifacts, out=self.out,
            server_cpus=self.server_cpus, loadgen_cpus=self.loadgen_cpus,
            step_seconds=self.step_seconds, warmup_seconds=self.warmup_seconds,
            bound_ms=self.bound_ms, min_requests=self.min_requests,
            max_batch_size=int(values.get("max_batch_size", 1)),
            port_offset=self.port_offset)


def p99_bound(text: str) -> float:
    """The p99 bound in ms of an `--slo` the tuner takes: one p99 gate, `p99<=X`."""
    gates = slo.parse(text)
    if len(gates) != 1 or gates[0].metric != "p99" or gates[0].op not in ("<=", "<"):
        raise UsageError(f"--slo {text!r}: the tuner searches under one p99 bound, e.g. "
                         "\"p99<=100ms\"")
    return gates[0].value


def protocol_of(server: str) -> str:
    """The protocol a server is tuned with: its first binary one (the cheapest bodies to
    decode, so the server's own cost shows), else its first."""
    protocols = targets.get(server).protocols
    return next((p for p in protocols if p.binary), protocols[0]).name


def candidates(knobs: tuple[Knob, ...], values: Values, max_threads: int) -> list[Values]:
    """The configurations one step from `values`, knob by knob in the declared order: each
    knob's next tried value up, then down; knobs whose switch is off left alone; no more
    threads than the server has cores."""
    found = []
    for knob in knobs:
        if knob.needs and not values.get(knob.needs):
            continue
        value = values[knob.setting]
        if knob.boolean:
            steps = [not value]
        else:
            tries = [v for v in knob.tries
                     if knob.setting != "intra_op_threads" or v <= max_threads]
            steps = [v for v in tries if v > value][:1] + [v for v in tries if v < value][-1:]
        found += [values | {knob.setting: step} for step in steps]
    return found


def search(saturated_rps: float | None, options: TuneOptions, name: str) -> Scenario:
    """The open-loop rate search of one probe, with early stopping: a step passes once its
    p99's interval lies under the bound on `min_requests` requests, fails at once when it lies
    over it. It starts at half the closed loop's saturated rate (the rate under a bound can
    only be lower when the loop keeps it busy) and climbs by 1.4 (up to 4 x that rate: two
    users may not keep a batching server busy), then bisects twice: fewer, shorter
    steps than the bench's search, which is what a budget of probes needs."""
    top = saturated_rps or 100.0
    return Scenario(name=name, kind="open", step_seconds=options.step_seconds,
                    warmup_seconds=options.warmup_seconds, rate_bound_ms=options.bound_ms,
                    search=RateSearch(start_rps=max(0.5, round(top / 2, 1)), growth=1.4,
                                      max_rps=max(1.0, round(top * 4, 1)), refine_steps=2),
                    early_stop=True, min_pass_requests=options.min_requests)


def probe(options: TuneOptions, server: str, protocol: str, base: ServerSettings,
          values: Values, number: int, console: Console, writer: RunWriter) -> dict[str, Any]:
    """One configuration of one server, measured; returned as its tune-probe row (also
    saved). The console shows which server and configuration run, then one line of result."""
    started = time.monotonic()
    bench = options.bench(values)
    settings = replace(base, **values)
    quiet = Console(quiet=True)  # the steps' own lines and tables: in results.json
    row: dict[str, Any] = {
        "kind": "tune-probe", **targets.get(server).describe(protocol), "model": options.model,
        "probe": number, "configuration": values, "bound_ms": options.bound_ms}
    name = f"tune-{server}-{number}"
    with console.status(f"{server} probe {number}: {describe(values)}"):
        row = measure_probe(options, bench, server, protocol, settings, name, row, started,
                            quiet, writer)
    console.print(f"{server} probe {number}: {describe(values)} -> {outcome_line(row)}",
                  highlight=False)
    return row


def measure_probe(options: TuneOptions, bench: BenchOptions, server: str, protocol: str,
                  settings: ServerSettings, name: str, row: dict[str, Any], started: float,
                  quiet: Console, writer: RunWriter) -> dict[str, Any]:
    try:
        deployment = serve(options.artifacts.resolve(), "native", [options.model],
                           options.out / "probes" / name, loopback_endpoints(options.port_offset),
                           (server,), settings, log=lambda text: None, cpus=options.server_cpus)
    except DeploybenchError as error:
        return finish(writer, row, started, status="failed", reason=str(error))
    try:
        status = deployment.status(server)
        if status is None or status.status != "up":
            # unavailable: the server cannot run here at all, whatever its configuration
            return finish(writer, row, started,
                          status="unavailable" if status and status.status == "unavailable"
                          else "failed", reason=status.reason if status else "not started")
        saturation = replace(saturation_scenario(bench, settings.batching),
                             name=f"{name}-saturation")
        steps = measure_load(bench, deployment, server, protocol, saturation, quiet, writer)
        saturated = max((m["throughput_rps"] for m in steps.measurements
                         if m.get("status") == "ok" and m.get("throughput_rps")), default=None)
        rates = measure_load(bench, deployment, server, protocol,
                             search(saturated, options, f"{name}-rate"), quiet, writer)
    except ServerGone as error:
        return finish(writer, row, started, status="failed", reason=error.reason)
    except DeploybenchError as error:  # the load generator could not measure it: said so
        return finish(writer, row, started, status="failed", reason=str(error))
    finally:
        stop(deployment)
    (outcome,) = rates.searches
    best = outcome["max_rate_rps"]
    step = next((m for m in rates.measurements
                 if m.get("passed") and m.get("level") == best), {})
    above = [t["rps"] for t in outcome["tried"]
             if not t["passed"] and (best is None or t["rps"] > best)]
    return finish(
        writer, row, started, status="ok" if best else "none-under-bound",
        reason=None if best else f"no rate met p99 <= {options.bound_ms:g} ms "
                                 f"({outcome['stopped_by']})",
        max_rate_rps=round(best, 2) if best else None, failed_rate_rps=min(above, default=None),
        p99_ms=(step.get("latency_ms") or {}).get("p99"),
        p99_ci95_ms=(step.get("latency_ci95_ms") or {}).get("p99"),
        saturated_rps=saturated, server_cpu_s_per_1k=step.get("server_cpu_s_per_1k"))


def outcome_line(row: dict[str, Any]) -> str:
    if row["status"] in ("failed", "unavailable"):
        return f"{row['status']}: {row['reason']}"
    if row["status"] != "ok":
        return row["reason"]
    low, high = row.get("p99_ci95_ms") or (None, None)
    return (f"{fixed(row['max_rate_rps'], 1)} req/s under p99 <= {row['bound_ms']:g} ms (p99 "
            f"{fixed(row['p99_ms'], 1)} ms, 95% [{fixed(low, 1)}, {fixed(high, 1)}]); "
            f"saturated {fixed(row.get('saturated_rps'), 1)} req/s; {row['seconds']:g} s")


def finish(writer: RunWriter, row: dict[str, Any], started: float, **fields: Any
           ) -> dict[str, Any]:
    row = row | {k: v for k, v in fields.items() if v is not None} | {
        "seconds": round(time.monotonic() - started, 1)}
    writer.add(to_record(row))
    return row


def score(row: dict[str, Any]) -> float:
    return row.get("max_rate_rps") or 0.0


def tune_server(options: TuneOptions, server: str, base: ServerSettings, budget_s: float,
                console: Console, writer: RunWriter) -> dict[str, Any]:
    """The coordinate search on one server within `budget_s`; returns its tune row."""
    started = time.monotonic()
    target = targets.get(server)
    protocol = protocol_of(server)
    default = knob_values(base, server)
    probes: dict[str, dict[str, Any]] = {}

    def run(values: Values) -> dict[str, Any]:
        row = probe(options, server, protocol, base, values, len(probes) + 1, console, writer)
        probes[describe(values)] = row
        return row

    best_values, best = default, run(default)
    stopped_by = "a whole pass over the knobs improved nothing"
    moved = bool(target.knobs) and best["status"] != "unavailable"
    if best["status"] == "unavailable":
        stopped_by = f"the server cannot run here: {best['reason']}"
    while moved:
        moved = False
        for knob_step in target.knobs:
            if time.monotonic() - started >= budget_s:
                stopped_by, moved = "its share of the budget was spent", False
                break
            for values in candidates((knob_step,), best_values, cpu_count(options.server_cpus)):
                if describe(values) in probes or time.monotonic() - started >= budget_s:
                    continue
                row = run(values)
                if score(row) > score(best) * (1 + options.min_gain):
                    best_values, best, moved = values, row, True
                    break
    if not target.knobs:
        stopped_by = "no knobs declared"
    default_rate = probes[describe(default)].get("max_rate_rps")
    row = {"kind": "tune", **target.describe(protocol), "model": options.model,
           "bound_ms": options.bound_ms, "default_configuration": default,
           "default_rate_rps": default_rate,
           **({"best_configuration": best_values, "best_rate_rps": best["max_rate_rps"]}
              if best.get("max_rate_rps") else {}),
           "gain": (round(best["max_rate_rps"] / default_rate, 2)
                    if default_rate and best.get("max_rate_rps") else None),
           "probes": len(probes), "seconds": round(time.monotonic() - started, 1),
           "budget_s": round(budget_s, 1), "stopped_by": stopped_by}
    writer.add(to_record({k: v for k, v in row.items() if v is not None}))
    return row


def run_tune(options: TuneOptions, console: Console) -> list[dict[str, Any]]:
    root = options.artifacts.resolve()
    manifest = load_manifest(root, options.model)
    verify_artifacts(root, manifest)
    startable = [s for s in options.servers if not targets.get(s).external]
    if not startable:
        raise UsageError("tune starts the servers it tunes: name servers the kit starts")
    writer = RunWriter(options.out)
    writer.set_environment(mode="native", tune={
        "model": options.model, "servers": startable, "bound_ms": options.bound_ms,
        "budget_minutes": options.budget_minutes, "server_cpus": options.server_cpus,
        "loadgen_cpus": options.loadgen_cpus, "step_seconds": options.step_seconds,
        "min_requests": options.min_requests, "min_gain": options.min_gain})
    base = replace(load_settings(), cpus=float(cpu_count(options.server_cpus)))
    deadline = time.monotonic() + options.budget_minutes * 60
    rows = []
    for index, server in enumerate(startable):
        # an even share of what is left: time a server leaves goes to those after it
        share = max(0.0, deadline - time.monotonic()) / (len(startable) - index)
        rows.append(tune_server(options, server, base, share, console, writer))
    profile = Profile(
        servers={r["target"]: r["best_configuration"] for r in rows
                 if r.get("best_configuration")},
        model=options.model, slo=f"p99<={options.bound_ms:g}ms",
        measured={r["target"]: {"protocol": r["protocol"], "rate_rps": r.get("best_rate_rps"),
                                "default_rate_rps": r.get("default_rate_rps")} for r in rows})
    write_profile(options.profile_path, profile)
    writer.set_environment(profile=str(options.profile_path))
    write_reports(options.out)
    console.print(render(rows, options))
    console.print(f"profile: {options.profile_path}; results: {options.out / 'results.json'}, "
                  f"report: {options.out / 'report.html'}", highlight=False)
    if not profile.servers:
        raise DeploybenchError("no server reached a rate under the bound in any configuration "
                               f"(see {options.out / 'results.json'})")
    return rows


def render(rows: list[dict[str, Any]], options: TuneOptions) -> Table:
    table = Table(title=f"tuned, {options.model}: p99 <= {options.bound_ms:g} ms, servers on "
                        f"CPUs {options.server_cpus}, locust on {options.loadgen_cpus}")
    for column in ("server", "default configuration", "rate (req/s)", "best configuration",
                   "rate (req/s)", "gain", "probes", "minutes"):
        table.add_column(column, justify="left" if "configuration" in column
                         or column == "server" else "right")
    for r in rows:
        table.add_row(
            r["target_label"] + " " + r["protocol_label"],
            describe(r["default_configuration"], "\n"),
            fixed(r["default_rate_rps"], 1) if r["default_rate_rps"] else "none",
            describe(r["best_configuration"], "\n") if r.get("best_configuration") else DASH,
            fixed(r["best_rate_rps"], 1) if r.get("best_rate_rps") else "none",
            times(r["gain"]) if r.get("gain") else DASH, str(r["probes"]),
            fixed(r["seconds"] / 60, 1))
    return table
