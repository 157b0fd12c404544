"""The load generator's own time per request, measured at the start of every load run.

The kit's JSON user class (same locustfile, same golden requests, answers checked) runs one
closed-loop connection against the replay endpoint (loadtest/replay.py: answers from a table,
no model) for a couple of seconds; before and after it, a plain blocking socket sends the same
request bytes to the same endpoint: the floor, what the loopback and the endpoint themselves
take. The kit's p50 minus the floor's is what the load generator adds to every latency it
reports; the record (kind "loadgen-calibration") keeps both, so a server's figures can be read
against it.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from deploybench.errors import DeploybenchError
from deploybench.golden import Golden
from deploybench.loadtest import histogram, wire
from deploybench.loadtest import measurement as measure
from deploybench.loadtest.process import LocustRun, run_locust
from deploybench.loadtest.replay import ReplayEndpoint
from deploybench.manifest import load_manifest
from deploybench.serving import payload, targets

WARMUP_SECONDS = 0.5
MEASURE_SECONDS = 2.0
FLOOR_EXCHANGES = 1000  # each side of the kit's run
FLOOR_WARMUP = 50


def json_pair() -> tuple[str, str]:
    """The first (target, protocol) of the registry that sends the kit's JSON body: the body
    the replay endpoint answers."""
    for target in targets.targets().values():
        for protocol in target.protocols:
            if protocol.body == "json":
                return target.name, protocol.name
    raise LookupError("no target speaks the JSON body")


def calibrate(root: Path, model: str, run_dir: Path) -> dict[str, Any]:
    """The loadgen-calibration record for `model` (its golden samples are the requests)."""
    target, protocol = json_pair()
    try:
        golden = Golden.of(root, load_manifest(root, model))
    except (DeploybenchError, OSError, KeyError, ValueError) as error:
        return record(model, {"status": "failed", "reason": f"no golden samples: {error}"})
    try:
        replay = ReplayEndpoint(root, model).start()
    except RuntimeError as error:
        return record(model, {"status": "failed", "reason": str(error)})
    with replay:
        run = LocustRun.at(replay.url, target, protocol, model=model, export_root=root,
                           users=1, warmup_seconds=WARMUP_SECONDS,
                           measure_seconds=MEASURE_SECONDS,
                           prefix=run_dir / "locust" / f"calibration-{model}")
        body = payload.encode(golden.inputs[:1])
        floor = floor_histogram(replay.port, body)  # before and after: drift hits both alike
        step = measure.build(run, run_locust(run), "calibration", 1, "users", run_dir,
                             replay.url)
        floor.add(floor_histogram(replay.port, body))
    figures = histogram.latency_ms(floor)
    return record(model, step, {key: figures[key] for key in ("p50", "p90", "p99")})


def record(model: str, step: dict[str, Any], floor: dict[str, float] | None = None
           ) -> dict[str, Any]:
    """The record of a calibration: the kit's step against the replay endpoint (a load step
    of measurement.build) beside the floor."""
    target, protocol = json_pair()
    base: dict[str, Any] = {
        "kind": "loadgen-calibration", "model": model, "connections": 1,
        "user_class": targets.get(target).protocol(protocol).locust_user,
        "endpoint": "replay endpoint (asyncio, its own process, answers from a table)"}
    if step["status"] != "ok" or floor is None:
        return {**base, "status": "failed", "reason": step.get("reason") or "no floor"}
    client = step["latency_ms"]
    return {**base, "status": "ok", "requests": step["requests"],
            "failures": step["failures"], "throughput_rps": step["throughput_rps"],
            "client_latency_ms": {key: client[key] for key in ("p50", "p90", "p99")},
            "floor_latency_ms": floor,
            "overhead_p50_ms": round(client["p50"] - floor["p50"], 3),
            "loadgen_cpu_percent": step["loadgen_cpu_percent"]}


def floor_histogram(port: int, body: bytes) -> HdrHistogram:
    """A blocking socket's exchanges of one prepared request (no HTTP client, no answer
    check): the loopback's and the endpoint's own time."""
    # the very bytes the kit's REST users send (loadtest/wire.py), built the same way
    request = wire.Connections(f"http://127.0.0.1:{port}", timeout=10).request(
        "/", body, payload.BODIES["json"].request_headers(body))
    recorded = histogram.new()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index in range(FLOOR_WARMUP + FLOOR_EXCHANGES):
            start = time.perf_counter()
            sock.sendall(request)
            _read_answer(sock)
            if index >= FLOOR_WARMUP:
                histogram.record_ms(recorded, (time.perf_counter() - start) * 1000.0)
    return recorded


def _read_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += _recv(sock)
    return body


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("the replay endpoint closed the connection")
    return chunk
