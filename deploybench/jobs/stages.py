"""A stage run into a run folder: the stage measures and emits records; here its writer gets
them, with what the stage used to keep itself (the environment, notes, the partial flag).
Shared by the CLI's `load` and `edge` commands and the jobs that drive several stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from deploybench.edge.bench import EdgeIncompleteError, edge_environment, run_edge
from deploybench.jobs.writer import RunWriter
from deploybench.loadtest.calibration import calibrate
from deploybench.loadtest.runner import LoadPlan, LoadRun, ServerGone, load_generator
from deploybench.records import ServerRecord, to_record
from deploybench.serving import targets
from deploybench.serving.manager import Deployment


def server_records(deployment: Deployment, **context: Any) -> list[ServerRecord]:
    """One record per server a deployment tried: up, or why not, with the registry's words
    for it and the job's `context` (mode, batching)."""
    return [ServerRecord(**targets.get(s.name).describe(), status=s.status, reason=s.reason,
                         **{"mode": s.mode or None, **context},
                         **({"configuration": deployment.configurations[s.name]}
                            if s.name in deployment.configurations else {}))
            for s in deployment.servers]


def load_stage(writer: RunWriter, plan: LoadPlan, console: Console) -> LoadRun:
    """Run a load plan; a server that goes away ends it with a note and a partial run (the
    failed step is in the results already). Returns the finished LoadRun (its measurements
    and failed_steps)."""
    writer.set_environment(mode=plan.mode, load_generator=load_generator())
    for skipped in plan.skipped:
        writer.note(f"load: skipped {skipped}")
    if plan.calibrate:
        calibration_stage(writer, plan, console)
    run = LoadRun(plan, console, writer.add)
    try:
        run.run()
    except ServerGone as error:
        writer.note(f"load: stopped: {error.reason}")
        writer.set_partial(True)
        raise
    return run


def calibration_stage(writer: RunWriter, plan: LoadPlan, console: Console) -> None:
    """The load generator's own time per request, before the steps (loadtest/calibration.py)."""
    model = plan.models[0]
    with console.status("calibrating the load generator against a trivial local endpoint"):
        found = calibrate(plan.root, model, plan.run_dir)
    writer.add(to_record(found))
    if found["status"] != "ok":
        writer.note(f"load: the load generator was not calibrated: {found['reason']}")
        console.print(f"[yellow]load generator not calibrated[/yellow]: {found['reason']}",
                      highlight=False)
        return
    client, floor = found["client_latency_ms"], found["floor_latency_ms"]
    console.print(f"load generator's own time per request: {found['overhead_p50_ms']:.3f} ms "
                  f"at p50 (kit {client['p50']:.3f} ms, raw socket {floor['p50']:.3f} ms, "
                  "one connection to a trivial local endpoint)", highlight=False)


def edge_stage(writer: RunWriter, root: Path, models: list[str], threads: list[int], runs: int,
               warmup: int, console: Console, baselines: bool = True, repeats: int = 1,
               variants: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Run the edge stage; the run is marked partial while it measures, so a killed one says
    so, and gets its earlier flag back once every row is in (failed rows included)."""
    extra: dict[str, Any] = {"edge": edge_environment(root, threads, runs, warmup, baselines,
                                                      repeats, variants)}
    if "mode" not in writer.environment:
        extra["mode"] = "in-process"
    writer.set_environment(**extra)
    if variants is not None:  # the report's matrix shows the rest as not measured: say why
        writer.note(f"edge: only {', '.join(variants)} measured (a chosen subset)")
    cpus = writer.environment["cpus_available"]
    if max(threads) > cpus:
        writer.note(f"edge: {max(threads)} threads requested on {cpus} available CPUs; "
                    "those figures are oversubscribed")
    partial = writer.partial
    writer.set_partial(True)
    try:
        rows = run_edge(root, models, threads, runs, warmup, console, writer.add, baselines,
                        repeats, variants)
    except EdgeIncompleteError:  # every row is in, some failed: the stage did finish
        writer.set_partial(partial)
        console.print(f"results: {writer.path}")
        raise
    writer.set_partial(partial)
    console.print(f"results: {writer.path}")
    return rows
