"""The long fuzzing run (not a test): many generated bodies per protocol against every server
the kit runs natively (TorchServe, the KServe targets) and the TF Serving test double, each
started here on free loopback ports and stopped afterwards, for a model of one float input
(digits-mlp) or of two int32 inputs (text-bert: token ids and mask). Prints a table (examples
tried and failures per server and protocol), writes it as JSON, exits 1 on any failure.

    .venv/bin/python -m tests.fuzz_decoders --examples 1000 --out fuzz.json   # make fuzz
    .venv/bin/python -m tests.fuzz_decoders --model text-bert --artifacts ROOT
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("digits-mlp", "text-bert")
SERVERS = ("torchserve", "kserve-tensorflow", "kserve-pytorch", "kserve-onnxruntime")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz_decoders")
    parser.add_argument("--examples", type=int, default=1000, help="per server and protocol")
    parser.add_argument("--model", choices=MODELS, default=MODELS[0])
    parser.add_argument("--artifacts", type=Path,
                        help="an export root holding the model (default: export it here)")
    parser.add_argument("--out", type=Path, default=Path("fuzz-results.json"))
    args = parser.parse_args(argv)
    model = args.model
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from rich.console import Console
    from rich.table import Table

    from deploybench.files import atomic_write_json
    from deploybench.manifest import load_manifest
    from deploybench.serving import targets
    from deploybench.serving.manager import serve, stop
    from tests.conftest import invoke
    from tests.fuzz_bodies import fuzz
    from tests.servers import free_offset

    console = Console()
    work = Path(tempfile.mkdtemp(prefix="deploybench-fuzz-"))
    os.environ["DEPLOYBENCH_STATE_DIR"] = str(work / "state")
    root = args.artifacts
    if root is None:
        root = work / "export"
        with console.status(f"exporting {model}"):
            result = invoke("export", "--model", model, "--out", str(root))
        if result.exit_code:
            console.print(result.output)
            return 1
    manifest = load_manifest(root, model)
    rows: list[dict[str, object]] = []

    def run(target: str, protocol: str, address: str) -> None:
        with console.status(f"{target} {protocol}: {args.examples} examples"):
            started = time.perf_counter()
            tried, failures = fuzz(target, protocol, address, model, manifest.signature(),
                                   manifest.outputs[0].name, args.examples,
                                   stop_at_first=False)
        rows.append({"target": target, "protocol": protocol, "examples": tried,
                     "failures": len(failures), "seconds": round(time.perf_counter() - started, 1),
                     "failed": failures[:20]})

    deployment = serve(root, mode="native", models=[model], run_dir=work / "run",
                       endpoints=targets.loopback_endpoints(free_offset()), servers=SERVERS,
                       log=lambda text: console.print(text, highlight=False))
    try:
        endpoints = deployment.endpoints_obj()
        for target in deployment.up():
            for protocol in targets.get(target).protocol_names:
                run(target, protocol, endpoints.address(target, protocol))
    finally:
        stop(deployment)
    from tests.fake_tfserving import FakeTFServing

    with FakeTFServing(root, models=[model]) as fake:
        run("tfserving", "rest", fake.rest_url)
        run("tfserving", "grpc", fake.grpc_target)

    table = Table("server", "protocol", "examples", "failures", "seconds",
                  title=f"fuzzing the decoders with {model} (tfserving: the test double)")
    for row in rows:
        table.add_row(*(str(row[key]) for key in ("target", "protocol", "examples", "failures",
                                                  "seconds")))
    console.print(table)
    for row in rows:
        for failure in row["failed"]:  # type: ignore[union-attr]
            console.print(f"{row['target']} {row['protocol']}: {failure}", highlight=False,
                          markup=False)
    atomic_write_json(args.out, {"model": model, "examples_per_protocol": args.examples,
                                 "rows": rows})
    console.print(f"results: {args.out}")
    return 1 if any(row["failures"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
