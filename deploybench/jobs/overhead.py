"""Where a server's own time goes (a benchmark, not a test): the server kept busy by a closed
loop while py-spy samples its Python stacks, each sample put in the model's run or in the
server around it, and the server's part split by package and by function.

    .venv/bin/python -m deploybench.jobs.overhead --artifacts artifacts --model mobilenet-v2 \\
        --target kserve-pytorch --protocol v2-binary --out runs/overhead

The server runs natively on --server-cpus, locust on --loadgen-cpus (2 users: one request
queued behind the one running). The figures: the step's rate, the server's CPU per request,
the share of the server's samples inside the model's run (`runner.predict` on the stack: the
kit's hosting of the framework, serving/hosting.py) and outside it, and the CPU per request
that share stands for. Printed as tables and written to OUT/overhead.json; py-spy's raw
samples stay in OUT/pyspy.txt (collapsed stacks: open them in speedscope or flamegraph.pl).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from deploybench.errors import DeploybenchError
from deploybench.files import atomic_write_text
from deploybench.jobs.bench import BenchOptions, measure_load, saturation_scenario
from deploybench.jobs.loadgen import native_server
from deploybench.jobs.writer import RunWriter
from deploybench.settings import REPO_ROOT

# py-spy names a frame "function (path:line)", the path relative to the interpreter's path
# when it can. A frame of the model's run (deploybench/runtimes.py's runner, which every kit
# server hosts): everything under it is the framework's time, not the server's
MODEL_FRAME = re.compile(r"\bpredict \([^;]*deploybench/runtimes\.py:\d+\)")
# a thread waiting for I/O in the event loop's selector: not work (py-spy's own idle
# detection lets some through)
IDLE_FRAME = re.compile(r"\bselect \([^;]*selectors\.py:\d+\)$")
# the kit's own source folders, as py-spy shortens their paths
KIT_FOLDERS = ("deploybench/", "serving/", "loadtest/", "export/", "edge/")
# the package a frame's file belongs to, first match wins
PACKAGES = (("kserve/", "kserve"),
            ("fastapi/", "fastapi"), ("starlette/", "starlette"), ("uvicorn/", "uvicorn"),
            ("pydantic", "pydantic"), ("prometheus_client/", "prometheus_client"),
            ("orjson", "orjson"), ("numpy/", "numpy"), ("asyncio/", "asyncio"),
            ("concurrent/", "concurrent.futures"), ("logging/", "logging"),
            ("grpc", "grpc"), ("threading.py", "threading"))


def package(frame: str) -> str:
    path = frame.rpartition(" (")[2]
    if path.startswith(KIT_FOLDERS) or (path.startswith(str(REPO_ROOT))
                                        and "/.venv/" not in path):
        return "deploybench (the kit)"
    for marker, name in PACKAGES:
        if marker in frame:
            return name
    return "other"


def split_samples(raw: str) -> dict[str, Any]:
    """py-spy's collapsed stacks ("frame;frame;... count" per line) split into the model's run
    and the rest, the rest by the package and the function of its innermost frame; samples
    of a thread waiting in the event loop's selector left out."""
    model = server = idle = 0
    packages: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        if IDLE_FRAME.search(stack):
            idle += samples
            continue
        if MODEL_FRAME.search(stack):
            model += samples
            continue
        server += samples
        leaf = stack.split(";")[-1]
        packages[package(leaf)] += samples
        functions[leaf] += samples
    total = model + server
    return {"samples": total, "model_samples": model, "server_samples": server,
            "idle_samples": idle,
            "server_share": round(server / total, 3) if total else None,
            "packages": dict(packages.most_common()),
            "functions": dict(functions.most_common(15))}


def profile(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise DeploybenchError("py-spy is not installed: pip install py-spy (the dev extra)")
    args.out.mkdir(parents=True, exist_ok=True)
    options = BenchOptions(args.model, args.artifacts.resolve(), args.out,
                           server_cpus=args.server_cpus, loadgen_cpus=args.loadgen_cpus,
                           step_seconds=args.seconds, warmup_seconds=2.0)
    writer = RunWriter(args.out)
    raw_path = args.out / "pyspy.txt"
    with native_server(options.artifacts, args.model, args.target, args.out,
                       cpus=args.server_cpus) as deployment:
        (process,) = [p for p in deployment.processes if p.name == args.target]
        sampler = subprocess.Popen([spy, "record", "--pid", str(process.pid), "--format", "raw",
                                    "--rate", "250", "--nonblocking", "--output",
                                    str(raw_path)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        try:
            with console.status(f"{args.target}/{args.protocol}: 2 users, {args.seconds:g} s, "
                                "py-spy sampling the server"):
                steps = measure_load(options, deployment, args.target, args.protocol,
                                     saturation_scenario(options, False),
                                     Console(quiet=True), writer).measurements
        finally:
            sampler.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
            _, errors = sampler.communicate(timeout=60)
    if not raw_path.is_file():
        raise DeploybenchError(f"py-spy wrote no samples: {errors.decode()[-300:]}")
    (step,) = [m for m in steps if m.get("kind") == "load"]
    split = split_samples(raw_path.read_text())
    cpu_ms = (step.get("server_cpu_s_per_1k") or 0) or None  # CPU-s per 1k = ms per request
    return {"target": args.target, "protocol": args.protocol, "model": args.model,
            "label": args.label, "throughput_rps": step.get("throughput_rps"),
            "p50_ms": (step.get("latency_ms") or {}).get("p50"),
            "server_cpu_ms_per_request": cpu_ms,
            "outside_model_cpu_ms_per_request": (round(cpu_ms * split["server_share"], 2)
                                                 if cpu_ms and split["server_share"] else None),
            **split}


def render(row: dict[str, Any]) -> list[Table]:
    summary = Table(title=f"{row['target']}/{row['protocol']} {row['model']} ({row['label']}): "
                          "2 users, closed loop")
    for column in ("req/s", "p50 ms", "server CPU ms / request", "share outside the model",
                   "CPU ms / request outside the model", "samples"):
        summary.add_column(column, justify="right")
    summary.add_row(f"{row['throughput_rps']:.1f}", f"{row['p50_ms']:.2f}",
                    f"{row['server_cpu_ms_per_request'] or 0:.2f}",
                    f"{(row['server_share'] or 0):.1%}",
                    f"{row['outside_model_cpu_ms_per_request'] or 0:.2f}", str(row["samples"]))
    where = Table(title="outside the model: the innermost frame's package and function")
    where.add_column("package or function")
    where.add_column("share of all samples", justify="right")
    for name, count in [*row["packages"].items(), *row["functions"].items()]:
        where.add_row(name, f"{count / max(row['samples'], 1):.1%}")
    return [summary, where]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--model", default="mobilenet-v2")
    parser.add_argument("--target", default="kserve-pytorch")
    parser.add_argument("--protocol", default="v2-binary")
    parser.add_argument("--out", type=Path, default=Path("runs") / "overhead")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--loadgen-cpus", default="0")
    parser.add_argument("--label", default="", help="a name for this run (before, after)")
    args = parser.parse_args(argv)
    console = Console()
    row = profile(args, console)
    for table in render(row):
        console.print(table)
    atomic_write_text(args.out / "overhead.json", json.dumps(row, indent=2) + "\n")
    console.print(f"results: {args.out / 'overhead.json'}; samples: {args.out / 'pyspy.txt'}",
                  highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
