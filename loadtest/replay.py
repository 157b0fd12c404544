"""A trivially fast HTTP endpoint: each golden JSON request answered with its golden answer from
a table (asyncio, its own process, no model). What the load generator measures against it is
the load generator's own cost: its capacity (deploybench.jobs.loadgen) and its time per request
(loadtest/calibration.py).

    python -m deploybench.loadtest.replay --port N --artifacts DIR --model NAME
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

from deploybench.golden import Golden
from deploybench.manifest import load_manifest
from deploybench.serving import payload

NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


def replay_table(root: Path, model: str) -> dict[bytes, bytes]:
    """Each golden request body -> a complete HTTP answer carrying its golden output."""
    golden = Golden.of(root, load_manifest(root, model))
    inputs, outputs = golden.inputs, golden.outputs
    table = {}
    for index in range(len(inputs)):
        body = json.dumps({"predictions": outputs[index:index + 1].tolist()}).encode()
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        table[payload.encode(inputs[index:index + 1])] = head + body
    return table


class Replay(asyncio.Protocol):
    table: dict[bytes, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            start = head.find(b"content-length:")
            if start >= 0:
                line_end = head.find(b"\r\n", start)
                length = int(head[start + 15:line_end if line_end >= 0 else None])
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body, self.buffer = self.buffer[end + 4:total], self.buffer[total:]
            self.transport.write(self.table.get(body, NOT_FOUND))  # type: ignore[attr-defined]


def serve(port: int, root: Path, model: str) -> None:
    Replay.table = replay_table(root, model)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Replay, "127.0.0.1", port)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ReplayEndpoint:
    """The endpoint as a context manager: started in its own process, stopped on exit."""

    def __init__(self, root: Path, model: str) -> None:
        self.root, self.model = root, model
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ReplayEndpoint:
        return self if self.process is not None else self.start()

    def start(self) -> ReplayEndpoint:
        """Start it; RuntimeError (with its output) when it does not come up."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deploybench.loadtest.replay", "--port", str(self.port),
             "--artifacts", str(self.root), "--model", self.model],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        line = self.process.stdout.readline() if self.process.stdout else b""
        if b"ready" not in line:
            rest = self.process.stdout.read() if self.process.stdout else b""
            self.stop()
            raise RuntimeError(f"the replay endpoint did not start: "
                               f"{(line + rest).decode(errors='replace').strip()[-300:]}")
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args(argv)
    serve(args.port, args.artifacts.resolve(), args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
