"""How much load can one locust process generate here, and is that enough for a server?

    .venv/bin/python -m deploybench.jobs.loadgen --artifacts artifacts --out runs/bench \
        [--target NAME]  (default: the registry's reference server)

1. Capacity: the very locustfile and user class the kit measures the target's JSON protocol
   with (same golden bodies, same answer check per response), pointed at a trivially fast local
   endpoint: a replay server (asyncio, its own process) that answers each golden request with
   its golden answer from a table. The highest goodput over a user sweep is what one locust
   process sustains on this machine.
2. The server's highest throughput in the same run: a closed-loop sweep against the real server
   (started natively on free ports, or the one on the published ports shifted by
   --port-offset).
3. Verdict: if the server's peak comes near locust's capacity (over half of it), or locust
   flagged itself saturated while measuring the server, the load generator could be the
   bottleneck and its figures are a lower bound on the server.

Prints a table and writes OUT/results.json (kinds "loadgen-capacity", "load", "loadgen-check").
A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from deploybench.errors import UsageError
from deploybench.jobs.stages import load_stage
from deploybench.jobs.writer import RunWriter
from deploybench.loadtest import measurement as measure
from deploybench.loadtest.process import LocustRun, run_locust
from deploybench.loadtest.replay import ReplayEndpoint
from deploybench.loadtest.runner import LoadPlan, check_reachable, load_generator
from deploybench.records import LoadgenCheckRecord, Sink, to_record
from deploybench.serving import targets
from deploybench.serving.manager import Deployment
from deploybench.serving.targets import Endpoints

BOTTLENECK_SHARE = 0.5  # a server peak above half of locust's capacity: locust may limit it


# -- the benchmark ---------------------------------------------------------------------------------

def json_protocol(target: str) -> str:
    """The target's protocol with the JSON body: the one the replay endpoint answers."""
    for protocol in targets.get(target).protocols:
        if protocol.body == "json":
            return protocol.name
    raise UsageError(f"{target} speaks no JSON protocol: the replay endpoint answers JSON only")


def capacity_steps(root: Path, model: str, target: str, url: str, users: list[int],
                   seconds: float, run_dir: Path, console: Console, emit: Sink
                   ) -> list[dict[str, Any]]:
    protocol = json_protocol(target)
    steps = []
    for count in users:
        run = LocustRun.at(url, target, protocol, model=model, export_root=root, users=count,
                           warmup_seconds=1.0, measure_seconds=seconds,
                           prefix=run_dir / "locust" / f"capacity-{model}-{count}u")
        output = run_locust(run)
        step = measure.build(run, output, "capacity", count, "users", run_dir, url)
        step.update(kind="loadgen-capacity", target="replay-endpoint",
                    target_label="replay endpoint", framework=None,
                    note=f"the kit's {targets.label(target, protocol)} user class against a "
                         "local replay endpoint")
        steps.append(step)
        emit(to_record(step))
        if step["status"] == "ok":
            console.print(f"locust capacity, {count} users: {step['throughput_rps']:.0f} rps, "
                          f"locust CPU {step['loadgen_cpu_percent']} %, failures "
                          f"{step['failures']}", highlight=False)
        else:
            console.print(f"[red]capacity step failed[/red]: {step['reason']}", highlight=False)
    return steps


@contextmanager
def native_server(root: Path, model: str, target: str, run_dir: Path,
                  cpus: str | None = None) -> Iterator[Deployment]:
    """`target` serving `model`, started natively on free loopback ports (on `cpus`, a taskset
    list, if given), stopped on exit."""
    from deploybench.serving.manager import private_state, serve, stop
    from deploybench.serving.targets import loopback_endpoints

    endpoints = loopback_endpoints(random.randrange(10_000, 30_000, 10))
    with private_state():
        deployment = serve(root, mode="native", models=[model], run_dir=run_dir / "serve",
                           endpoints=endpoints, servers=(target,), log=lambda text: None,
                           cpus=cpus)
        try:
            if target not in deployment.up():
                reason = next((s.reason for s in deployment.servers if s.name == target), "")
                raise UsageError(f"{targets.label(target)} did not start: {reason}")
            yield deployment
        finally:
            stop(deployment)


def server_steps(root: Path, model: str, target: str, port_offset: int | None,
                 users: list[int], seconds: float, writer: RunWriter
                 ) -> tuple[list[dict[str, Any]], str]:
    """A closed-loop sweep against the target's JSON protocol: the server already running on
    the published ports shifted by `port_offset`, else one started here on free ports."""
    from deploybench.loadtest.scenarios import load_scenario
    from deploybench.serving.targets import loopback_endpoints

    scenario = load_scenario("sweep", levels=users, step_seconds=seconds, warmup_seconds=1.0)

    def sweep(endpoints: Endpoints, mode: str, deployment: Deployment | None
              ) -> list[dict[str, Any]]:
        plan = LoadPlan([(target, json_protocol(target))], [model], root, endpoints, scenario,
                        writer.run_dir, mode, calibrate=False)
        if deployment is not None:
            plan.observers = deployment.observers()
        check_reachable(plan, skip_unreachable=False)
        return load_stage(writer, plan, Console(file=io.StringIO())).measurements

    if port_offset is None:
        with native_server(root, model, target, writer.run_dir) as deployment:
            steps = sweep(deployment.endpoints_obj(), "native", deployment)
        return steps, f"native {targets.label(target)} started by this benchmark"
    endpoints = loopback_endpoints(port_offset)
    steps = sweep(endpoints, "external", None)
    return steps, f"{targets.label(target)} at {endpoints.address(target, json_protocol(target))}"


def verdict(capacity: list[dict[str, Any]], server: list[dict[str, Any]],
            name: str = "the server") -> dict[str, Any]:
    """Whether one locust process could limit the server `name` (its display name)."""
    ok_capacity = [s for s in capacity if s["status"] == "ok"]
    ok_server = [s for s in server if s["status"] == "ok"]
    best_capacity = max(ok_capacity, key=lambda s: s["throughput_rps"], default=None)
    best_server = max(ok_server, key=lambda s: s["throughput_rps"], default=None)
    locust_rps = best_capacity["throughput_rps"] if best_capacity else None
    server_rps = best_server["throughput_rps"] if best_server else None
    share = server_rps / locust_rps if locust_rps and server_rps else None
    saturated = any(s["loadgen_saturated"] for s in ok_server)
    could_limit = bool(saturated or (share is not None and share > BOTTLENECK_SHARE))
    if share is None:
        text = "no comparison: a side has no figures"
    elif could_limit:
        text = (f"the load generator COULD be the bottleneck: {name}'s peak is "
                f"{share:.0%} of what one locust process sustains"
                + (", and locust flagged itself saturated" if saturated else "")
                + "; add locust workers (--master/--worker) before trusting the peak")
    else:
        text = (f"the load generator is not the bottleneck: {name}'s peak is {share:.0%} "
                f"of what one locust process sustains, and locust never passed 90 % CPU")
    peak_cpu = best_server["loadgen_cpu_percent"] if best_server else None
    if peak_cpu is not None and share is not None:
        text += (f" (at that peak locust itself used {peak_cpu:g} % of one core, CPU the "
                 f"server shares when both run on this {os.cpu_count()}-core machine)")
    return {
        "kind": "loadgen-check", "locust_capacity_rps": locust_rps,
        "locust_capacity_users": best_capacity["level"] if best_capacity else None,
        "server_peak_rps": server_rps,
        "server_peak_users": best_server["level"] if best_server else None,
        "share": round(share, 3) if share is not None else None,
        "loadgen_saturated_on_server": saturated, "could_be_bottleneck": could_limit,
        "locust_cpu_percent_at_peak": peak_cpu,
        "verdict": text, "threshold_share": BOTTLENECK_SHARE,
    }


def table(capacity: list[dict[str, Any]], server: list[dict[str, Any]], name: str) -> Table:
    out = Table(title=f"one locust process vs {name} (closed loop, same user class; "
                      "CPU in % of one core)")
    for column in ("endpoint", "users", "rps", "p50 ms", "p99 ms", "locust %", "other %",
                   "saturated"):
        out.add_column(column, justify="left" if column == "endpoint" else "right")
    for label, steps in (("replay", capacity), (name, server)):
        for s in steps:
            if s["status"] != "ok":
                out.add_row(label, f"{s['level']:g}", "failed", *[""] * 5)
                continue
            other = (s.get("cpu") or {}).get("other_percent")
            out.add_row(label, f"{s['level']:g}", f"{s['throughput_rps']:.0f}",
                        f"{s['latency_ms']['p50']:.2f}", f"{s['latency_ms']['p99']:.2f}",
                        f"{s['loadgen_cpu_percent']}", "-" if other is None else f"{other}",
                        "yes" if s["loadgen_saturated"] else "no")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--model", default="digits-mlp")
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-locust")
    parser.add_argument("--capacity-users", default="1,4,16,64")
    parser.add_argument("--target", default=targets.reference_target(),
                        help="The server to hold against locust's capacity (a target with a "
                             "JSON protocol)")
    parser.add_argument("--server-users", default="1,2,4,8,16")
    parser.add_argument("--step-seconds", type=float, default=5.0)
    parser.add_argument("--port-offset", type=int, default=None,
                        help="Use the server running on the published ports shifted by N "
                             "(default: start one natively on free ports)")
    args = parser.parse_args(argv)
    console = Console()
    json_protocol(args.target)  # a target that cannot be measured here: before any work
    name = targets.label(args.target)
    root, run_dir = args.artifacts.resolve(), args.out.resolve()
    writer = RunWriter(run_dir)
    writer.set_environment(mode="benchmark", load_generator=load_generator())
    with ReplayEndpoint(root, args.model) as replay:
        capacity = capacity_steps(root, args.model, args.target, replay.url,
                                  [int(u) for u in args.capacity_users.split(",")],
                                  args.step_seconds, run_dir, console, writer.add)
    console.print(f"{name} sweep ...")
    server, origin = server_steps(root, args.model, args.target, args.port_offset,
                                  [int(u) for u in args.server_users.split(",")],
                                  args.step_seconds, writer)
    check = verdict(capacity, server, name)
    check.update(targets.get(args.target).describe(), server=origin)
    writer.add(LoadgenCheckRecord(**check))
    writer.note(f"loadgen: locust capacity against a replay endpoint beside {name}")
    console.print(table(capacity, server, name))
    console.print(check["verdict"], highlight=False)
    console.print(f"results: {run_dir / 'results.json'}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
