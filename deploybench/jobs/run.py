"""`deploybench run`: export -> serve -> load -> edge -> report, with the servers always stopped
and whatever was measured kept (and marked partial) when something fails or Ctrl-C arrives."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from deploybench import slo
from deploybench.errors import DeploybenchError
from deploybench.jobs.writer import RunWriter
from deploybench.manifest import FP32_TOLERANCE, exported_models, load_manifest
from deploybench.records import ExportRecord
from deploybench.serving import targets
from deploybench.serving.profile import Profile
from deploybench.serving.targets import Endpoints
from deploybench.zoo.spec import ModelSpec


@dataclass
class RunOptions:
    specs: list[ModelSpec]
    artifacts: Path = Path("artifacts")
    run_dir: Path | None = None
    mode: str | None = None  # docker | native | None: docker when an engine answers
    # None: the main run's (targets.parse_targets("main")). The defaults below are sized so
    # that `make run` (digits-cnn) ends within 5 minutes on a quiet 2-core machine
    servers: tuple[str, ...] | None = None
    users: tuple[int, ...] = (1, 4)
    step_seconds: float = 2.0
    warmup_seconds: float = 0.5
    rate_search: bool = True
    rate_bound_ms: float = 100.0
    edge_threads: tuple[int, ...] = (1,)
    edge_runs: int = 300
    edge_repeats: int = 1  # fresh processes per edge measurement (2: the run-to-run noise)
    edge_variants: tuple[str, ...] | None = None  # edge formats measured (None: every one)
    export: bool = True
    endpoints: Endpoints | None = None
    # False: each server's JSON and binary protocol in the sweep and its binary one in the rate
    # search (targets.run_pairs); True: every protocol in both
    all_protocols: bool = False
    gates: list[slo.Gate] = field(default_factory=list)  # SLO gates on every load step
    junit: Path | None = None  # where their outcomes go as JUnit XML
    profile: Profile | None = None  # each server at its tuned configuration (`tune`)


def default_run_dir() -> Path:
    return Path("runs") / dt.datetime.now().strftime("%Y%m%dT%H%M%S")


def export_rows(root: Path, models: list[str]) -> list[ExportRecord]:
    """The parity matrix: one record per artifact, from each model's manifest."""
    rows = []
    for model in models:
        manifest = load_manifest(root, model)
        for artifact in manifest.artifacts:
            rows.append(ExportRecord(
                model=model,
                tolerance=manifest.tolerance.get("fp32_max_abs_diff", FP32_TOLERANCE),
                reference_accuracy=manifest.golden["reference_accuracy"],
                min_top1_agreement=manifest.tolerance.get("min_top1_agreement"),
                model_source=manifest.source, model_frameworks=manifest.frameworks,
                random_inputs=bool(manifest.data and manifest.data.get("random_inputs")),
                **{k: v for k, v in vars(artifact).items() if k != "sha256"}))
    return rows


def run(options: RunOptions, console: Console) -> Path:
    """Run every stage into one run folder and write the reports; returns the run folder."""
    from deploybench.report import write_reports

    run_dir = (options.run_dir or default_run_dir()).resolve()
    artifacts = options.artifacts.resolve()
    writer = RunWriter(run_dir)
    writer.set_partial(True)
    writer.set_environment(run={
        "models": [s.name for s in options.specs],
        "servers": list(options.servers or targets.parse_targets("main")),
        "users": list(options.users), "step_seconds": options.step_seconds,
        "warmup_seconds": options.warmup_seconds, "rate_bound_ms": options.rate_bound_ms,
        "edge_threads": list(options.edge_threads), "edge_runs": options.edge_runs,
        "edge_repeats": options.edge_repeats,
    })
    started = time.perf_counter()
    deployment = None
    stage = "export"
    failure: BaseException | None = None
    decisions: list[slo.Decision] = []
    stage_seconds: dict[str, float] = {}
    clock = [started]

    def finished(name: str) -> None:
        """Record a stage's wall time (results.json: environment.stage_seconds)."""
        now = time.perf_counter()
        stage_seconds[name] = round(now - clock[0], 1)
        clock[0] = now
        writer.set_environment(stage_seconds=dict(stage_seconds))

    try:
        console.print(Rule("1/5 export"))
        models = [s.name for s in options.specs]
        if options.export or any(m not in exported_models(artifacts) for m in models):
            from deploybench.export.exporter import export

            export(options.specs, artifacts, console)
        writer.add(*export_rows(artifacts, models))
        finished("export")

        stage = "serve"
        console.print(Rule("2/5 serve"))
        from deploybench.jobs.stages import server_records
        from deploybench.serving.manager import serve, stop

        deployment = serve(artifacts, options.mode, models, run_dir / "serving",
                           endpoints=options.endpoints,
                           servers=options.servers or targets.parse_targets("main"),
                           log=lambda text: console.print(text, highlight=False),
                           profile=options.profile)
        writer.set_environment(mode=deployment.mode, deployment=deployment.settings,
                               **({"profile": options.profile.to_dict() | {
                                   "source": options.profile.source}}
                                  if options.profile else {}))
        writer.add(*server_records(deployment))  # each with the mode it ran in
        finished("serve")

        stage = "load"
        console.print(Rule("3/5 load"))
        if deployment.up():
            steps = _load(options, deployment, artifacts, writer, console)
            if options.gates:
                from deploybench.jobs.gates import judge

                decisions = judge(options.gates, steps, writer, console, options.junit)
        else:
            console.print("no server is up: load skipped (reasons above)")
        stop(deployment)
        deployment = None
        finished("load")

        stage = "edge"
        console.print(Rule("4/5 edge"))
        from deploybench.jobs.stages import edge_stage

        for model in models:  # this run's models only, whatever else the export root holds
            try:
                edge_stage(writer, artifacts, [model], list(options.edge_threads),
                           options.edge_runs, 20, console, repeats=options.edge_repeats,
                           variants=options.edge_variants)
            except DeploybenchError as error:  # failed rows are in the results already
                writer.note(f"edge: {error}")
        finished("edge")
        writer.note(f"all stages ran in {time.perf_counter() - started:.0f} s")
        writer.set_partial(False)
    except (Exception, KeyboardInterrupt) as error:
        failure = error
        why = (getattr(error, "why", "interrupted (Ctrl-C)")
               if isinstance(error, KeyboardInterrupt) else str(error))
        writer.note(f"partial run: stopped during {stage}: {why}")
        writer.set_partial(True)
    finally:
        if deployment is not None:
            from deploybench.serving.manager import stop

            stop(deployment)
        console.print(Rule("5/5 report"))
        html, markdown = write_reports(run_dir)
        finished("report")  # after it: results.json has every stage's time, the report not
        console.print(f"report: {html} and {markdown}", highlight=False)
    if failure is not None:
        raise failure
    gate_error = slo.exit_error(decisions)
    if gate_error:  # after the report: the run is whole, its gates say how it came out
        raise gate_error
    return run_dir


def _load(options: RunOptions, deployment, artifacts: Path, writer: RunWriter,  # noqa: ANN001
          console: Console) -> list[dict]:
    """Every load step of the run (closed-loop sweep, then the rate search) and each rate
    search's outcome."""
    from deploybench.jobs.stages import load_stage
    from deploybench.loadtest.runner import LoadPlan
    from deploybench.loadtest.scenarios import RateSearch, load_scenario, search_start
    servers = tuple(deployment.up())
    every = [(target, protocol) for target in servers
             for protocol in targets.get(target).protocol_names]
    scenarios = [(load_scenario("sweep", levels=options.users, step_seconds=options.step_seconds,
                                warmup_seconds=options.warmup_seconds),
                  every if options.all_protocols else targets.run_pairs(servers))]
    if options.rate_search:
        # two bisections after the seeded start's first pass and failure: the bracket is an
        # eighth of the sweep's busiest rate wide
        scenarios.append((load_scenario("rate", step_seconds=options.step_seconds,
                                        warmup_seconds=options.warmup_seconds,
                                        rate_bound_ms=options.rate_bound_ms,
                                        search=RateSearch(refine_steps=2)),
                          every if options.all_protocols
                          else targets.run_pairs(servers, binary_only=True)))
    steps: list[dict] = []
    for scenario, pairs in scenarios:
        plan = LoadPlan(pairs, deployment.models, artifacts, deployment.endpoints_obj(),
                        scenario, writer.run_dir, deployment.mode)
        plan.observers = deployment.observers()
        # each rate search starts near its server's capacity, as the sweep measured it
        plan.search_starts = search_start(steps)
        plan.calibrate = not steps  # the load generator once, before the first scenario
        finished = load_stage(writer, plan, console)
        steps += finished.measurements + finished.searches
    return steps
