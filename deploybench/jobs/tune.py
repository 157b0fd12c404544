"""`deploybench tune`: each server's best configuration under a p99 bound, so that servers
are compared each at its best rather than at their defaults.

For every server, the knobs its registry entry declares (serving/targets.py `Target.knobs`)
are searched in the spirit of Triton's Model Analyzer: a quick coordinate search, not brute
force, in two phases.

Screen. Each configuration is started natively on the server's cores under the same CPU limit
as every other server (the limits are not a knob) and swept with a closed loop of 1, 2, 4, ...
users (up to twice what it can run at once); its score is the highest throughput of a step
whose p99 met the bound, as Model Analyzer ranks configurations. The search starts from the
default configuration (.env's values), walks the knobs in their declared order, trying each
one's next value up and down (a knob that needs a switch, such as the batch size, only while
its switch is on), and moves to a candidate when its score beats the best by `min_gain`; it
stops when a whole pass over the knobs moves nothing, or when the screen's half of the
server's share of the budget is spent (a probe already started runs to its end).

Confirm. The default, the screen's pick and the best other screened configuration are then
each measured with the open-loop rate search with early stopping (each step passes only when
its p99's 95% interval lies wholly under the bound): the tuner's answer is the best of them by
that rate, never by the screen's (the default stays unless beaten by `min_gain`). A closed
loop waits for each answer before it sends the next, so it cannot show the queueing that
bursts of independent clients cause (it ranks batching higher than the open loop does); it
ranks configurations cheaply, and the open loop says what each server sustains. Time a
server leaves goes to the servers after it.

A configuration that does not start, or dies, is a probe with its reason; the search goes on.
Every probe is a `tune-probe` record, each server's outcome a `tune` record, and the best
configurations a profile file (serving/profile.py) that serve, load, run and bench take.

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
from deploybench.jobs.bench import BenchOptions, cpu_count, measure_load
from deploybench.jobs.writer import RunWriter
from deploybench.loadtest.runner import ServerGone
from deploybench.loadtest.scenarios import RateSearch, Scenario
from deploybench.manifest import load_manifest, verify_artifacts
from deploybench.records import to_record
from deploybench.report import write_reports
from deploybench.serving import targets
from deploybench.serving.manager import private_state, serve, stop
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
    # an open-loop step whose p99 interval still straddles the bound after this long (or
    # after the time min_requests take at its rate) counts as failed
    max_step_seconds: float = 30.0
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


def screen_levels(values: Values) -> tuple[int, ...]:
    """The closed loop's users for a screen: 1, 2, 4, ... up to twice the requests the
    configuration can run at once (its workers times its batch), so that the top level keeps
    every worker and batch full."""
    top = 2 * int(values.get("workers", 1)) * (
        int(values.get("max_batch_size", 1)) if values.get("batching") else 1)
    levels = [1]
    while levels[-1] < top:
        levels.append(min(2 * levels[-1], top))
    return tuple(levels)


def screen_scenario(values: Values, options: TuneOptions, name: str) -> Scenario:
    return Scenario(name=name, kind="closed", levels=screen_levels(values),
                    step_seconds=options.step_seconds, warmup_seconds=options.warmup_seconds)


def search(saturated_rps: float | None, options: TuneOptions, name: str) -> Scenario:
    """The open-loop rate search of a confirming probe, with early stopping: a step passes
    once its p99's interval lies under the bound on `min_requests` requests, fails at once
    when it lies over it, and counts as failed when still undecided after `max_step_seconds`.
    It starts at half the screen's saturated rate (the rate under a bound can only be lower
    than a closed loop's busiest) and climbs by 1.4 (up to 4 x that rate: the screen's users
    may not have kept a batching server busy), or steps down by 1.4 to an eighth of it (below,
    none under the bound: the configuration is no contender), then bisects twice: fewer,
    shorter steps than the bench's search, which is what a budget needs."""
    top = saturated_rps or 100.0
    return Scenario(name=name, kind="open", step_seconds=options.step_seconds,
                    warmup_seconds=options.warmup_seconds, rate_bound_ms=options.bound_ms,
                    search=RateSearch(start_rps=max(0.5, round(top / 2, 1)), growth=1.4,
                                      max_rps=max(1.0, round(top * 4, 1)),
                                      min_rps=max(0.5, round(top / 8, 1)), refine_steps=2),
                    early_stop=True, min_pass_requests=options.min_requests,
                    max_step_seconds=max(options.step_seconds, options.max_step_seconds))


def probe(options: TuneOptions, server: str, protocol: str, base: ServerSettings,
          values: Values, number: int, phase: str, console: Console, writer: RunWriter,
          saturated_rps: float | None = None) -> dict[str, Any]:
    """One configuration of one server, screened (closed loop) or confirmed (open-loop rate
    search); returned as its tune-probe row (also saved). The console shows which server,
    phase and configuration run, then one line of result."""
    started = time.monotonic()
    quiet = Console(quiet=True)  # the steps' own lines and tables: in results.json
    row: dict[str, Any] = {
        "kind": "tune-probe", **targets.get(server).describe(protocol), "model": options.model,
        "probe": number, "phase": phase, "configuration": values,
        "bound_ms": options.bound_ms}
    name = f"tune-{server}-{number}-{phase}"
    scenario = (screen_scenario(values, options, name) if phase == "screen"
                else search(saturated_rps, options, name))
    with console.status(f"{server} probe {number} ({phase}): {describe(values)}"):
        row = measure_probe(options, server, protocol, replace(base, **values), values,
                            scenario, row, started, quiet, writer)
    console.print(f"{server} probe {number} ({phase}): {describe(values)} -> "
                  f"{outcome_line(row)}", highlight=False)
    return row


def measure_probe(options: TuneOptions, server: str, protocol: str, settings: ServerSettings,
                  values: Values, scenario: Scenario, row: dict[str, Any], started: float,
                  quiet: Console, writer: RunWriter) -> dict[str, Any]:
    bench = options.bench(values)
    try:
        deployment = serve(options.artifacts.resolve(), "native", [options.model],
                           options.out / "probes" / scenario.name,
                           loopback_endpoints(options.port_offset), (server,), settings,
                           log=lambda text: None, cpus=options.server_cpus)
    except DeploybenchError as error:
        return finish(writer, row, started, status="failed", reason=str(error))
    try:
        status = deployment.status(server)
        if status is None or status.status != "up":
            # unavailable: the server cannot run here at all, whatever its configuration
            return finish(writer, row, started,
                          status="unavailable" if status and status.status == "unavailable"
                          else "failed", reason=status.reason if status else "not started")
        run = measure_load(bench, deployment, server, protocol, scenario, quiet, writer)
    except ServerGone as error:
        return finish(writer, row, started, status="failed", reason=error.reason)
    except DeploybenchError as error:  # the load generator could not measure it: said so
        return finish(writer, row, started, status="failed", reason=str(error))
    finally:
        stop(deployment)
    figures = screened(run, options) if scenario.kind == "closed" else confirmed(run, options)
    return finish(writer, row, started, **figures)


def screened(run: Any, options: TuneOptions) -> dict[str, Any]:
    """A screen's score: the highest throughput of a closed-loop step whose p99 met the
    bound (its point estimate: a few seconds' steps leave the p99's interval open; the
    confirm's search is the rigorous one), with that step's figures."""
    steps = [m for m in run.measurements if m.get("status") == "ok" and m.get("throughput_rps")
             and not m.get("failures") and not m.get("wrong_answers")]
    saturated = max((m["throughput_rps"] for m in steps), default=None)
    under = [m for m in steps if (m.get("latency_ms") or {}).get("p99", 1e12) <= options.bound_ms]
    if not under:
        return {"status": "none-under-bound" if steps else "failed",
                "reason": (f"no closed-loop step met p99 <= {options.bound_ms:g} ms" if steps
                           else "no step answered every request correctly"),
                "saturated_rps": saturated}
    best = max(under, key=lambda m: m["throughput_rps"])
    return {"status": "ok", "screen_rps": round(best["throughput_rps"], 2),
            "screen_users": int(best["level"]), **step_figures(best),
            "saturated_rps": saturated}


def confirmed(run: Any, options: TuneOptions) -> dict[str, Any]:
    """A confirm's answer: the highest rate under the bound, the lowest failed rate above it,
    and the passing step's figures."""
    (outcome,) = run.searches
    best = outcome["max_rate_rps"]
    step = next((m for m in run.measurements if m.get("passed") and m.get("level") == best), {})
    above = [t["rps"] for t in outcome["tried"]
             if not t["passed"] and (best is None or t["rps"] > best)]
    return {"status": "ok" if best else "none-under-bound",
            "reason": None if best else (f"no rate met p99 <= {options.bound_ms:g} ms "
                                         f"({outcome['stopped_by']})"),
            "max_rate_rps": round(best, 2) if best else None,
            "failed_rate_rps": min(above, default=None), **step_figures(step)}


def step_figures(step: dict[str, Any]) -> dict[str, Any]:
    return {"p99_ms": (step.get("latency_ms") or {}).get("p99"),
            "p99_ci95_ms": (step.get("latency_ci95_ms") or {}).get("p99"),
            "server_cpu_s_per_1k": step.get("server_cpu_s_per_1k")}


def outcome_line(row: dict[str, Any]) -> str:
    if row["status"] in ("failed", "unavailable"):
        return f"{row['status']}: {row['reason']}"
    if row["status"] != "ok":
        return row["reason"]
    low, high = row.get("p99_ci95_ms") or (None, None)
    p99 = f"p99 {fixed(row['p99_ms'], 1)} ms, 95% [{fixed(low, 1)}, {fixed(high, 1)}]"
    if row["phase"] == "screen":
        return (f"{fixed(row['screen_rps'], 1)} req/s at {row['screen_users']} users ({p99}); "
                f"saturated {fixed(row.get('saturated_rps'), 1)} req/s; {row['seconds']:g} s")
    return (f"{fixed(row['max_rate_rps'], 1)} req/s under p99 <= {row['bound_ms']:g} ms "
            f"({p99}); {row['seconds']:g} s")


def finish(writer: RunWriter, row: dict[str, Any], started: float, **fields: Any
           ) -> dict[str, Any]:
    row = row | {k: v for k, v in fields.items() if v is not None} | {
        "seconds": round(time.monotonic() - started, 1)}
    writer.add(to_record(row))
    return row


SCREEN_SHARE = 0.5  # of a server's budget, for the screen; the confirms have the rest


def tune_server(options: TuneOptions, server: str, base: ServerSettings, budget_s: float,
                console: Console, writer: RunWriter) -> dict[str, Any]:
    """The coordinate search on one server within `budget_s`, screened then confirmed;
    returns its tune row."""
    started = time.monotonic()
    target = targets.get(server)
    protocol = protocol_of(server)
    default = knob_values(base, server)
    screens: dict[str, dict[str, Any]] = {}
    numbered = iter(range(1, 10_000))

    def screen(values: Values) -> dict[str, Any]:
        row = probe(options, server, protocol, base, values, next(numbered), "screen",
                    console, writer)
        screens[describe(values)] = row
        return row

    def spent() -> bool:
        return time.monotonic() - started >= budget_s * SCREEN_SHARE

    best_values, best = default, screen(default)
    stopped_by = "a whole pass over the knobs improved nothing"
    moved = bool(target.knobs) and best["status"] != "unavailable"
    if best["status"] == "unavailable":
        stopped_by = f"the server cannot run here: {best['reason']}"
    while moved:
        moved = False
        for knob_step in target.knobs:
            if spent():
                stopped_by, moved = "the screen's share of the budget was spent", False
                break
            for values in candidates((knob_step,), best_values, cpu_count(options.server_cpus)):
                if describe(values) in screens or spent():
                    continue
                row = screen(values)
                if (row.get("screen_rps") or 0.0) > (best.get("screen_rps") or 0.0) * (
                        1 + options.min_gain):
                    best_values, best, moved = values, row, True
                    break
    if not target.knobs:
        stopped_by = "no knobs declared"

    # confirm, each by the open-loop rate search: the default, the screen's pick, and the best
    # other screen (a closed loop ranks batching higher than open-loop bursts do)
    runner_up = max((r for key, r in screens.items() if r.get("screen_rps")
                     and key not in (describe(default), describe(best_values))),
                    key=lambda r: r["screen_rps"], default=None)
    confirms = {}
    for values in dict.fromkeys((describe(default), describe(best_values),
                                 *([describe(runner_up["configuration"])] if runner_up else []))):
        if screens[values]["status"] == "ok":
            confirms[values] = probe(
                options, server, protocol, base, screens[values]["configuration"],
                next(numbered), "confirm", console, writer,
                saturated_rps=screens[values].get("saturated_rps"))
    default_rate = confirms.get(describe(default), {}).get("max_rate_rps")
    winner = max((c for c in confirms.values() if c.get("max_rate_rps")),
                 key=lambda c: c["max_rate_rps"], default=None)
    if winner and default_rate and winner["max_rate_rps"] <= default_rate * (
            1 + options.min_gain):
        winner = confirms[describe(default)]  # not a confirmed gain: the default stays
    row = {"kind": "tune", **target.describe(protocol), "model": options.model,
           "bound_ms": options.bound_ms, "default_configuration": default,
           "default_rate_rps": default_rate,
           "screened_configuration": best_values if best.get("screen_rps") else None,
           **({"best_configuration": winner["configuration"],
               "best_rate_rps": winner["max_rate_rps"]} if winner else {}),
           "gain": (round(winner["max_rate_rps"] / default_rate, 2)
                    if default_rate and winner else None),
           "probes": len(screens) + len(confirms),
           "seconds": round(time.monotonic() - started, 1),
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
    with private_state():  # not the state of servers `serve` started
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
