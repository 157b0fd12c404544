"""Serving-efficiency benchmark (a script, not a test): in one run, with the servers and the
load generator on separate cores,
  - the ceiling: in-process throughput of the TorchScript (torch) and the SavedModel
    (TensorFlow) on the server's cores, at batch 1, 8 and the batching bound, measured before
    and after the servers (their mean is the ceiling; their difference, the drift, says how
    steady the machine was);
  - each available server's highest open-loop rate with p99 under the bound, without and with
    dynamic batching, and its saturated throughput (a closed loop that keeps it busy: 2 users
    without batching, 2 x the batching bound with it), whatever the latency;
  - the ratios: server rate / its framework's in-process ceiling ("serving efficiency") and
    the batching gain. Without batching the server runs batch 1, so its ceiling is batch 1;
    with batching it may run any batch up to N, so its ceiling is the better of batch 1 and
    batch N (on one core a big batch can be slower per image than batch 1: the ceiling never
    flatters the server).

Every protocol of every server by default (`--target`, `--protocol` choose): TorchServe with
JSON and its binary .npy body, KServe's servers with V1 and the Open Inference Protocol's three.
A server is held to the ceiling of what it serves: TorchServe to TorchScript in torch,
KServe-PyTorch to the AOTInductor package, the TensorFlow servers to the SavedModel. KServe's
servers offer no batching: their batching-on row says so.

    deploybench bench --model mobilenet-v2 --out runs/bench
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from deploybench import fresh
from deploybench.errors import DeploybenchError
from deploybench.formatting import DASH, configuration_text, fixed, percent, times
from deploybench.jobs.stages import load_stage, server_records
from deploybench.jobs.writer import RunWriter
from deploybench.loadtest.queueing import ideal_rate_rps
from deploybench.loadtest.runner import LoadPlan, LoadRun
from deploybench.loadtest.scenarios import RateSearch, Scenario
from deploybench.manifest import load_manifest, verify_artifacts
from deploybench.records import to_record
from deploybench.report import write_reports
from deploybench.serving import targets
from deploybench.serving.manager import Deployment, private_state, serve, stop
from deploybench.serving.profile import Profile
from deploybench.serving.targets import loopback_endpoints
from deploybench.settings import ServerSettings, load_settings
from deploybench.verdict import server_label

# The in-process ceiling a server is held to, by the artifact it serves: the runtime that runs
# the same model there, and the artifact it runs (the .mar holds the TorchScript file).
CEILINGS = {"mar": ("torch", "torchscript"), "savedmodel": ("tensorflow", "savedmodel"),
            "aoti": ("aoti", "aoti"), "torchscript": ("torch", "torchscript"),
            "onnx-torch": ("onnxruntime", "onnx-torch")}
CEILING_FORMATS = dict(CEILINGS.values())
FRAMEWORK_NAME = {"torch": "PyTorch", "tensorflow": "TensorFlow", "aoti": "PyTorch",
                  "onnxruntime": "ONNX Runtime"}


def ceiling_runtime(target: str) -> str:
    """The runtime whose in-process ceiling `target` is held to: the one running what it
    serves."""
    return CEILINGS[targets.get(target).artifact_format][0]

# ceilings always measured besides batch 1 and the batching bound, for the picture of how each
# framework scales with the batch (the servers are held to batch 1 and the bound only)
CEILING_BATCHES = (8,)


@dataclass
class BenchOptions:
    model: str
    artifacts: Path
    out: Path
    server_cpus: str = "1"  # taskset lists: the server gets these cores ...
    loadgen_cpus: str = "0"  # ... and locust these, never the same
    ceiling_seconds: float = 5.0
    step_seconds: float = 8.0
    warmup_seconds: float = 3.0
    bound_ms: float = 100.0
    # a rate step is measured until about this many requests (at most 4 x step_seconds): a p99
    # from ~80 requests is the single slowest one, and one stall decides the step
    min_requests: int = 400
    # Batching, tuned for one server core and mobilenet-v2: in-process torch runs 60 images/s
    # at batch 1, 2 or 4 but 45 at batch 8, whose 178 ms alone would break a 100 ms p99; batch 4
    # (68 ms) fits. A 5 ms wait caps what a lone request pays for a batch that never fills.
    max_batch_size: int = 4
    batch_timeout_ms: int = 5
    port_offset: int = 0
    # (target, protocol) pairs to measure (targets.pairs); None: every protocol of every server
    pairs: tuple[tuple[str, str], ...] | None = None
    # each server it names at its tuned configuration (`deploybench tune`): measured in the
    # batching pass its profile says, with its own batch size, threads and workers
    profile: Profile | None = None

    def chosen(self) -> tuple[tuple[str, str], ...]:
        return self.pairs if self.pairs is not None else tuple(targets.pairs("all", None))

    def tuned(self, target: str) -> dict[str, int | bool]:
        return self.profile.servers.get(target, {}) if self.profile else {}

    def max_batch(self, target: str) -> int:
        """The batching bound `target` runs with: its profile's, else the bench's."""
        return int(self.tuned(target).get("max_batch_size", self.max_batch_size))

    def servers(self, batching: bool) -> tuple[str, ...]:
        """The servers to start: with batching on, those that offer it; a server whose
        profile sets batching, in that pass only."""
        chosen = dict.fromkeys(target for target, _ in self.chosen())
        return tuple(t for t in chosen if (not batching or targets.get(t).batching)
                     and self.tuned(t).get("batching", batching) == batching)


def cpu_count(cpus: str) -> int:
    count = 0
    for part in cpus.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def measure_ceiling(options: BenchOptions, runtime: str, batch: int) -> dict[str, Any]:
    """One ceiling figure, in a fresh process pinned to the server's cores."""
    root = options.artifacts
    manifest = load_manifest(root, options.model)
    job = {"runtime": runtime, "path": str(root / manifest.artifact(CEILING_FORMATS[runtime]).path),
           "golden": str(root / manifest.golden["path"]), "batch": batch,
           "threads": cpu_count(options.server_cpus), "seconds": options.ceiling_seconds}
    try:
        # the servers' process environment (.env: the allocator setting), so the framework
        # alone and the framework in a server run alike
        result = fresh.run("deploybench.loadtest.ceiling", job, cpus=options.server_cpus,
                           env=load_settings().process_env(),
                           timeout=options.ceiling_seconds + 120)
    except fresh.WorkerFailed as error:
        raise DeploybenchError(f"ceiling {runtime} batch {batch} failed: {error}") from error
    return {"kind": "bench-ceiling", "model": options.model, "framework": FRAMEWORK_NAME[runtime],
            "format": CEILING_FORMATS[runtime], "cpus": options.server_cpus, **result}


PASS_REQUESTS = 400  # a p99's 95% interval has a top from about 370 requests


def rate_scenario(options: BenchOptions, batching: bool, saturated_rps: float | None,
                  ceiling_rps: float | None) -> Scenario:
    """The open-loop search, bracketed by what the server sustains when kept busy: the rate
    under a p99 bound can only be lower, so start at a quarter of it, double, then bisect.
    Without a saturation figure, start low under the framework's own ceiling instead. Each
    step is decided by early stopping, as the tuner's are: it passes once its p99's 95%
    interval lies wholly under the bound (on at least `min_requests`, and 400: fewer leave
    the interval without a top) and fails once it lies wholly over it, so that one stall in
    a step of a few hundred requests neither passes nor fails a rate on its own."""
    if saturated_rps:
        start, top = saturated_rps / 4, saturated_rps * 1.2
    else:
        start, top = min(10.0, (ceiling_rps or 4.0) / 4), (ceiling_rps or 4.0) * 3
    return Scenario(
        name=f"bench-batching-{'on' if batching else 'off'}", kind="open",
        step_seconds=options.step_seconds, warmup_seconds=options.warmup_seconds,
        rate_bound_ms=options.bound_ms,
        search=RateSearch(start_rps=max(0.5, round(start, 1)), growth=2.0,
                          max_rps=max(1.0, round(top, 1)), refine_steps=3),
        open_loop_users=1, early_stop=True,
        min_pass_requests=max(options.min_requests, PASS_REQUESTS),
    )


def saturation_scenario(options: BenchOptions, batching: bool,
                        max_batch: int | None = None) -> Scenario:
    # enough users that the server never waits for a request: 2 keep one queued behind the one
    # running; with batching, 2 x the bound keep every batch full
    users = 2 * (max_batch or options.max_batch_size) if batching else 2
    return Scenario(name=f"bench-saturation-{'on' if batching else 'off'}", kind="closed",
                    levels=(users,), step_seconds=options.step_seconds,
                    warmup_seconds=options.warmup_seconds)


def measure_ceilings(options: BenchOptions, when: str, console: Console, writer: RunWriter
                     ) -> dict[tuple[str, int], float]:
    """Every ceiling the chosen servers are held to, once, saved as it comes; run before and
    after the servers (`when`)."""
    ceilings = {}
    # runtime -> its batch sizes: a server without batching runs batch 1 only, and so does its
    # ceiling; one with batching also its bound
    sizes: dict[str, set[int]] = {}
    for target, _ in options.chosen():
        runtime = ceiling_runtime(target)
        sizes.setdefault(runtime, {1})
        if targets.get(target).batching:
            sizes[runtime] |= {*CEILING_BATCHES, options.max_batch(target)}
    max_rows = load_manifest(options.artifacts.resolve(), options.model).max_rows
    for runtime, batches in sizes.items():
        # an AOTInductor package takes no more rows than the model's max_rows, and a server
        # running one (Triton) batches no further
        for batch in sorted(b for b in batches if runtime != "aoti" or b <= max_rows):
            console.print(f"ceiling ({when}): {FRAMEWORK_NAME[runtime]} batch {batch} on CPUs "
                          f"{options.server_cpus} ...", highlight=False)
            row = measure_ceiling(options, runtime, batch) | {"when": when}
            ceilings[(runtime, batch)] = row["inferences_per_s"]
            writer.add(to_record(row))
    return ceilings


def bracket(before: dict[tuple[str, int], float], after: dict[tuple[str, int], float]
            ) -> dict[tuple[str, int], float]:
    """The ceilings the servers are held to: the mean of the measurements taken before and
    after them, so a machine that speeds up or slows down meanwhile (a shared virtual machine
    does) moves the ratio less; how far the two differ is reported as the drift."""
    return {key: round((before[key] + after[key]) / 2, 2) for key in before if key in after}


def measure_load(options: BenchOptions, deployment: Deployment, target: str, protocol: str,
                 scenario: Scenario, console: Console, writer: RunWriter) -> LoadRun:
    """One scenario against one server and protocol, locust pinned to the load generator's
    cores; its measurements are saved into the bench's results.json as they come. The load
    generator is calibrated once per results.json: the same locust on the same cores."""
    plan = LoadPlan([(target, protocol)], [options.model], options.artifacts.resolve(),
                    deployment.endpoints_obj(), scenario, options.out, "native")
    plan.observers = deployment.observers()
    plan.loadgen_cpus = options.loadgen_cpus
    plan.calibrate = not any(m.kind == "loadgen-calibration" for m in writer.measurements)
    return load_stage(writer, plan, console)


def run_bench(options: BenchOptions, console: Console) -> list[dict[str, Any]]:
    root = options.artifacts.resolve()
    manifest = load_manifest(root, options.model)
    verify_artifacts(root, manifest)
    writer = RunWriter(options.out)
    writer.set_environment(mode="native", bench=asdict(options) | {
        "artifacts": str(root), "out": str(options.out),
        "profile": options.profile.source if options.profile else None})

    before = measure_ceilings(options, "before", console, writer)

    threads = cpu_count(options.server_cpus)
    with private_state():  # not the state of servers `serve` started
        for batching in (False, True):
            settings = load_settings(batching=batching, max_batch_size=options.max_batch_size,
                                     batch_timeout_ms=options.batch_timeout_ms,
                                     intra_op_threads=threads, inter_op_threads=1,
                                     cpus=float(threads))
            # one server at a time on the server's cores: an idle neighbour's timers and
            # collectors would stall the one measured, and its p99 with them
            for server in options.servers(batching):
                measure_server(options, server, batching, settings, before, console, writer)

    ceilings = bracket(before, measure_ceilings(options, "after", console, writer))
    rows = summarize(writer.rows(), ceilings, options)
    writer.add(*(to_record(row) for row in rows))
    write_reports(options.out)
    console.print(render(rows, options))
    console.print(f"results: {options.out / 'results.json'}, report: "
                  f"{options.out / 'report.html'}", highlight=False)
    if not any(r.get("max_rate_rps") for r in rows):
        raise DeploybenchError("no server reached a rate under the bound (see the table and "
                               f"{options.out / 'results.json'})")
    return rows


def ceiling_for(ceilings: dict[tuple[str, int], float], runtime: str, batching: bool,
                max_batch_size: int) -> tuple[int, float | None]:
    """The batch size and in-process rate a server is held to (see the module's docstring)."""
    batches = (1, max_batch_size) if batching else (1,)
    measured = [(batch, ceilings[(runtime, batch)]) for batch in batches
                if (runtime, batch) in ceilings]
    return max(measured, key=lambda item: item[1], default=(batches[-1], None))


def measure_server(options: BenchOptions, server: str, batching: bool,
                   settings: ServerSettings, before: dict[tuple[str, int], float],
                   console: Console, writer: RunWriter) -> None:
    """One server started alone, natively, on the server's cores: for each chosen protocol,
    its saturated rate, then its rate search under the bound; stopped after."""
    deployment = serve(options.artifacts.resolve(), "native", [options.model],
                       options.out / f"serving-batching-{'on' if batching else 'off'}",
                       loopback_endpoints(options.port_offset), (server,), settings,
                       log=lambda text: console.print(text, highlight=False),
                       cpus=options.server_cpus, profile=options.profile)
    try:
        writer.add(*server_records(deployment, batching=batching))
        if server not in deployment.up():
            return
        _, ceiling = ceiling_for(before, ceiling_runtime(server), batching,
                                 options.max_batch(server))
        for protocol in [p for t, p in options.chosen() if t == server]:
            steps = measure_load(options, deployment, server, protocol,
                                 saturation_scenario(options, batching,
                                                     options.max_batch(server)),
                                 console, writer).measurements
            saturated = max((m["throughput_rps"] for m in steps
                             if m.get("kind") == "load" and m.get("status") == "ok"),
                            default=None)
            measure_load(options, deployment, server, protocol,
                         rate_scenario(options, batching, saturated, ceiling), console, writer)
    finally:
        stop(deployment)


def ideal_server_rps(ceilings: dict[tuple[str, int], float], runtime: str, batching: bool,
                     options: BenchOptions, max_batch: int | None = None) -> float | None:
    """The highest rate under the bound for a server with no overhead, given the framework's
    in-process time per batch (batch 1, and with batching up to `max_batch`, by default the
    bench's bound)."""
    max_batch = max_batch or options.max_batch_size
    batches = (1, max_batch) if batching else (1,)
    latency_ms = {batch: batch * 1000 / ceilings[(runtime, batch)] for batch in batches
                  if ceilings.get((runtime, batch))}
    if 1 not in latency_ms:
        return None
    # with batching, the better of batching and not (a batch dearer per row only hurts)
    rates = [ideal_rate_rps({1: latency_ms[1]}, options.bound_ms)]
    if len(latency_ms) > 1:
        rates.append(ideal_rate_rps(latency_ms, options.bound_ms, max_batch))
    return max((rate for rate in rates if rate is not None), default=None)


def summarize(measurements: list[dict[str, Any]], ceilings: dict[tuple[str, int], float],
              options: BenchOptions) -> list[dict[str, Any]]:
    """One row per server, protocol and batching: best rate, ceiling, efficiency, gain."""
    best: dict[tuple[str, str, bool], float | None] = {}
    saturation: dict[tuple[str, str, bool], dict[str, Any]] = {}  # the closed-loop step
    measured: dict[tuple[str, int], list[float]] = {}  # ceilings, before and after
    configured = {(m["target"], m["batching"]): m["configuration"] for m in measurements
                  if m.get("kind") == "server" and m.get("configuration") is not None}
    for m in measurements:
        if m.get("kind") == "bench-ceiling":
            measured.setdefault((m["runtime"], m["batch"]), []).append(m["inferences_per_s"])
        if m.get("kind") == "load" and m.get("scenario", "").startswith("bench-saturation-"):
            saturation[(m["target"], m["protocol"], m["scenario"].endswith("-on"))] = m
        if m.get("kind") == "load-slo" and m["scenario"].startswith("bench-batching-"):
            batching = m["scenario"].endswith("-on")
            best[(m["target"], m["protocol"], batching)] = m.get("max_rate_rps")
    rows = []
    for (target, protocol, batching), rate in sorted(best.items()):
        batch, ceiling = ceiling_for(ceilings, ceiling_runtime(target), batching,
                                     options.max_batch(target))
        off = best.get((target, protocol, False))
        step = saturation.get((target, protocol, batching), {})
        runs = measured.get((ceiling_runtime(target), batch), [])
        saturated = step.get("throughput_rps") if step.get("status") == "ok" else None
        ideal = ideal_server_rps(ceilings, ceiling_runtime(target), batching, options,
                                 options.max_batch(target))
        rows.append({
            "kind": "bench", "model": options.model, **targets.get(target).describe(protocol),
            "batching": batching, "max_rate_rps": rate, "bound_ms": options.bound_ms,
            **({"configuration": configured[(target, batching)]}
               if (target, batching) in configured else {}),
            "ceiling_framework": FRAMEWORK_NAME[ceiling_runtime(target)], "ceiling_batch": batch,
            "ceiling_rps": ceiling,
            # how far the ceiling moved between before and after the servers ran
            "ceiling_drift": (round((max(runs) - min(runs)) / ceiling, 3)
                              if len(runs) > 1 and ceiling else None),
            "efficiency": round(rate / ceiling, 3) if rate and ceiling else None,
            "batching_gain": (round(rate / off, 2) if batching and rate and off else None),
            # the same bound met by a server with no overhead (queueing.py): what is left of
            # the gap to the ceiling once Poisson queueing is paid is the server's own doing
            "ideal_rate_rps": ideal,
            "bound_efficiency": round(rate / ideal, 3) if rate and ideal else None,
            # what it sustains kept busy, whatever the latency: the serving overhead alone,
            # without the queueing that Poisson arrivals and the p99 bound add
            "saturated_rps": saturated,
            "saturated_users": step.get("level"),
            "saturated_p99_ms": (step.get("latency_ms") or {}).get("p99"),
            "saturated_efficiency": (round(saturated / ceiling, 3)
                                     if saturated and ceiling else None),
        })
    for target in dict.fromkeys(target for target, _ in options.chosen()):
        if not any(r["target"] == target for r in rows):
            rows.append({"kind": "bench", "model": options.model,
                         **targets.get(target).describe(), "protocol": None,
                         "batching": None, "max_rate_rps": None,
                         "reason": "server not available here (see the server rows)"})
        elif not targets.get(target).batching:
            rows.append({"kind": "bench", "model": options.model,
                         **targets.get(target).describe(), "protocol": None,
                         "batching": True, "max_rate_rps": None,
                         "reason": f"{targets.get(target).label} offers no batching"})
    return rows


def render(rows: list[dict[str, Any]], options: BenchOptions) -> Table:
    table = Table(title=f"serving efficiency, {options.model}: servers on CPUs "
                        f"{options.server_cpus}, locust on {options.loadgen_cpus}, "
                        f"p99 <= {options.bound_ms:g} ms")
    for column in ("server", "batching", "best rate (req/s)", "ceiling (inf/s)", "efficiency",
                   "ideal server under bound", "batching gain", "saturated (req/s, closed loop)"):
        table.add_column(column, justify="left" if column == "server" else "right")
    for r in rows:
        if r.get("protocol") is None:
            table.add_row(r["target"], "on" if r["batching"] else "-",
                          f"not measured: {r['reason']}", "-", "-", "-", "-", "-")
            continue
        table.add_row(
            server_label(r) + (f"\n{configuration_text(r['configuration'], chr(10))}"
                               if options.profile and r.get("configuration") else ""),
            "on" if r["batching"] else "off",
            # a zero here means nothing was measured: a dash, as for None
            fixed(r["max_rate_rps"], 1) if r["max_rate_rps"] else "none under bound",
            (f"{fixed(r['ceiling_rps'], 1)} (batch {r['ceiling_batch']}, drift "
             f"{percent(r['ceiling_drift'])})" if r["ceiling_rps"] else DASH),
            percent(r["efficiency"]) if r["efficiency"] else DASH,
            (fixed(r["ideal_rate_rps"], 1) + (f" = {percent(r['bound_efficiency'])}"
                                              if r["bound_efficiency"] else "")
             if r["ideal_rate_rps"] else DASH),
            times(r["batching_gain"]) if r["batching_gain"] else DASH,
            (f"{fixed(r['saturated_rps'], 1)} = {percent(r['saturated_efficiency'])} (p99 "
             f"{fixed(r['saturated_p99_ms'], 0, ' ms')})"
             if r.get("saturated_efficiency") else DASH),
        )
    return table
