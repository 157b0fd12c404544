"""The load generator's own cost, beside an independent one written in C (wrk), one connection.

    .venv/bin/python -m deploybench.jobs.clientcost --artifacts artifacts --out runs/clientcost \
        [--model digits-mlp] [--target NAME] [--rounds 3] [--seconds 5]

Both generators send the same golden JSON bodies, in the same order, over one keep-alive
connection, closed loop (the next request when the answer is in), to:
1. the replay endpoint (loadtest/replay.py: no model, answers from a table): what each
   generator itself takes per request;
2. the target serving the model, started natively on free loopback ports.
The generators take turns within each round, so the machine's drift hits both alike; the
ratios compare the two in the same round. The kit checks every answer (outside its timed
interval); wrk checks none.

Prints a table and writes OUT/results.json (kind "loadgen-cost"). A benchmark, not a test.
wrk must be on PATH (Debian's package `wrk`); without it, its rows say so.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from deploybench.golden import Golden
from deploybench.jobs.loadgen import json_protocol, native_server
from deploybench.jobs.writer import RunWriter
from deploybench.loadtest import measurement as measure
from deploybench.loadtest.process import LocustRun, run_locust
from deploybench.loadtest.replay import ReplayEndpoint
from deploybench.loadtest.runner import load_generator
from deploybench.manifest import load_manifest
from deploybench.records import to_record
from deploybench.serving import payload, targets

WARMUP_SECONDS = 1.0
WRK_TIMEOUT_S = 30


def wrk_script(bodies: list[bytes], path: str) -> str:
    """wrk's Lua: the bodies as prepared requests, sent in turn; at the end, the figures as
    one JSON line (its histogram has microsecond resolution)."""
    quoted = ",\n".join(f"[==[{body.decode()}]==]" for body in bodies)
    return f"""
local bodies = {{
{quoted}
}}
local prepared = {{}}
local next_index = 0
init = function(args)
  for index, body in ipairs(bodies) do
    prepared[index] = wrk.format("POST", "{path}",
      {{["Content-Type"] = "{payload.JSON_CONTENT_TYPE}"}}, body)
  end
end
request = function()
  next_index = next_index % #prepared + 1
  return prepared[next_index]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{{"requests": %d, "errors": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "mean_us": %.1f}}\\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


def run_wrk(url: str, script: Path, seconds: float) -> dict[str, Any]:
    """One wrk run (one thread, one connection); its figures and the CPU it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        ["wrk", "-t1", "-c1", f"-d{max(int(seconds), 1)}s", "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + WRK_TIMEOUT_S, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((text for text in done.stdout.splitlines() if text.startswith("{")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-300:]}")
    figures = json.loads(line)
    wall = figures["duration_us"] / 1e6
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"requests": figures["requests"], "failures": figures["errors"],
            "duration_s": round(wall, 3),
            "throughput_rps": round((figures["requests"] - figures["errors"]) / wall, 1),
            "latency_ms": {key: round(figures[f"{key}_us"] / 1000.0, 3)
                           for key in ("p50", "p90", "p99", "mean")},
            "loadgen_cpu_percent": round(100.0 * cpu / wall, 1)}


def run_kit(root: Path, model: str, target: str, url: str, seconds: float, prefix: Path,
            run_dir: Path) -> dict[str, Any]:
    """The kit's user class for the target's JSON protocol, one user, closed loop."""
    run = LocustRun.at(url, target, json_protocol(target), model=model, export_root=root,
                       users=1, warmup_seconds=WARMUP_SECONDS, measure_seconds=seconds,
                       prefix=prefix)
    step = measure.build(run, run_locust(run), "clientcost", 1, "users", run_dir, url)
    if step["status"] != "ok":
        raise RuntimeError(step["reason"])
    return {key: step[key] for key in ("requests", "failures", "duration_s", "throughput_rps",
                                       "loadgen_cpu_percent")} | {
        "latency_ms": {key: step["latency_ms"][key] for key in ("p50", "p90", "p99", "mean")}}


def measure_endpoint(name: str, url: str, path: str, args: argparse.Namespace, round_: int,
                     script: Path, writer: RunWriter, console: Console) -> dict[str, Any]:
    """Both generators against one endpoint in one round: their records, by generator."""
    rows: dict[str, Any] = {}
    base = {"kind": "loadgen-cost", "endpoint": name, "model": args.model, "round": round_,
            "connections": 1}
    for generator in ("wrk", "deploybench"):
        row = {**base, "generator": generator}
        try:
            if generator == "wrk":
                if shutil.which("wrk") is None:
                    raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
                run_wrk(url + path, script, WARMUP_SECONDS)  # its own warm-up
                row.update(status="ok", **run_wrk(url + path, script, args.seconds))
            else:
                prefix = writer.run_dir / "locust" / f"{name.split()[0].lower()}-round{round_}"
                row.update(status="ok", **run_kit(args.artifacts, args.model, args.target, url,
                                                  args.seconds, prefix, writer.run_dir))
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            row.update(status="failed", reason=str(error))
        rows[generator] = row
    wrk, kit = rows["wrk"], rows["deploybench"]
    if wrk["status"] == kit["status"] == "ok":
        kit["p50_vs_wrk"] = round(kit["latency_ms"]["p50"] / wrk["latency_ms"]["p50"], 3)
        kit["rps_vs_wrk"] = round(kit["throughput_rps"] / wrk["throughput_rps"], 3)
    for row in rows.values():
        writer.add(to_record(row))
        console.print(line(row), highlight=False)
    return rows


def line(row: dict[str, Any]) -> str:
    head = f"round {row['round']}, {row['endpoint']}, {row['generator']}:"
    if row["status"] != "ok":
        return f"{head} failed: {row['reason']}"
    return (f"{head} p50 {row['latency_ms']['p50']:.3f} ms, p99 {row['latency_ms']['p99']:.3f} "
            f"ms, {row['throughput_rps']:.0f} req/s, CPU {row['loadgen_cpu_percent']} %")


def table(rows: list[dict[str, Any]]) -> Table:
    out = Table(title="the load generator's own cost: one connection, closed loop, "
                      "medians over the rounds")
    for column in ("endpoint", "generator", "rounds", "p50 ms", "p99 ms", "req/s", "CPU %",
                   "p50/wrk", "req/s/wrk"):
        out.add_column(column, justify="left" if column in ("endpoint", "generator")
                       else "right")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["endpoint"], row["generator"]), []).append(row)
    for (endpoint, generator), group in groups.items():
        ok = [row for row in group if row["status"] == "ok"]
        if not ok:
            out.add_row(endpoint, generator, str(len(group)), group[0]["reason"], *[""] * 5)
            continue

        def median(value: Any, digits: int, ok: list[dict[str, Any]] = ok) -> str:
            found = [value(row) for row in ok if value(row) is not None]
            return f"{statistics.median(found):.{digits}f}" if found else "-"

        out.add_row(endpoint, generator, str(len(ok)),
                    median(lambda r: r["latency_ms"]["p50"], 3),
                    median(lambda r: r["latency_ms"]["p99"], 2),
                    median(lambda r: r["throughput_rps"], 0),
                    median(lambda r: r["loadgen_cpu_percent"], 0),
                    median(lambda r: r.get("p50_vs_wrk"), 2),
                    median(lambda r: r.get("rps_vs_wrk"), 2))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--model", default="digits-mlp")
    parser.add_argument("--target", default=targets.reference_target(),
                        help="The server measured beside the replay endpoint (a target with a "
                             "JSON protocol)")
    parser.add_argument("--out", type=Path, default=Path("runs") / "clientcost")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="Measured seconds per run")
    args = parser.parse_args(argv)
    args.artifacts = args.artifacts.resolve()
    console = Console(width=max(Console().width, 110))  # the table whole, in a log too
    path = targets.get(args.target).protocol(json_protocol(args.target)).client.PREDICT_PATH
    path = path.format(model=args.model)
    golden = Golden.of(args.artifacts, load_manifest(args.artifacts, args.model))
    bodies = [payload.encode(golden.inputs[i:i + 1]) for i in range(len(golden.inputs))]
    writer = RunWriter(args.out.resolve())
    writer.set_environment(mode="benchmark", load_generator=load_generator())
    script = writer.run_dir / "wrk-requests.lua"
    script.write_text(wrk_script(bodies, path))
    rows: list[dict[str, Any]] = []
    label = targets.label(args.target)
    with ReplayEndpoint(args.artifacts, args.model) as replay, \
            native_server(args.artifacts, args.model, args.target, writer.run_dir) as server:
        server_url = server.endpoints_obj().address(args.target, json_protocol(args.target))
        for round_ in range(1, args.rounds + 1):
            for name, url in (("replay", replay.url), (f"{label} {args.model}", server_url)):
                rows += measure_endpoint(name, url, path, args, round_, script, writer,
                                         console).values()
    writer.note("clientcost: the kit's load generator beside wrk, one connection, closed loop")
    console.print(table(rows))
    console.print(f"results: {writer.path}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
